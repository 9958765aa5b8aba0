"""`lockerd demo`: the demo station on simulated hardware, with a short scripted shift.

It runs the real daemon in this process and plays a person at the cabinet
through the same control requests the `lockerd sim` commands send, then
leaves the daemon running for the newcomer's own scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from lockerd import config as config_mod
from lockerd import peer
from lockerd.daemon import Daemon, setup_logging
from lockerd.drivers.base import DoorState

PAUSE = 1.6  # seconds between steps, so a person can follow (and past the scanner's repeat window)
CONFIG, DATA = "demo.toml", "demo-data.json"
# The first line of the demo config: a folder whose demo.toml starts so is one `lockerd demo` made.
MARK = "# The demo station:"
HERE = Path(__file__).resolve().parent
CHECKOUT_CONFIG = HERE.parent / "config"  # in a checkout: the demo station's own files
CHECKOUT_DEMO = HERE.parent / "var" / "demo"  # in a checkout, where config/demo.toml keeps its state


def demo_files() -> Path:
    """The folder of the demo station's config and data: the installed package's, or a checkout's config/."""
    packaged = HERE / "demo_station"  # pyproject.toml installs config/ there
    return packaged if (packaged / CONFIG).is_file() else CHECKOUT_CONFIG


def default_folder() -> Path:
    """Where the demo station lives: a checkout's var/demo (its README's commands use it), else the user's state."""
    if (CHECKOUT_CONFIG / CONFIG).is_file() and (HERE.parent / "pyproject.toml").is_file():
        return CHECKOUT_DEMO
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "lockerd-demo"


def prepare(folder: Path, keep: bool = False) -> Path:
    """The demo station's config in ``folder`` with its state beside it (journal, sim boards, socket).

    A fresh station each run unless ``keep``. Only a folder the demo made (or an empty one) is wiped.
    """
    config = folder / CONFIG
    if folder.is_dir() and any(folder.iterdir()):
        ours = config.is_file() and config.read_text().startswith(MARK)
        if not ours and folder != CHECKOUT_DEMO:  # a checkout's var/demo from before the copy
            raise SystemExit(f"lockerd demo: {folder} holds files that are not a demo station's; "
                             "choose another --dir")
        if not keep:
            shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    source = demo_files()
    # The shipped config keeps its state in ../var/demo/ (a checkout's layout): here it is beside the config.
    config.write_text((source / CONFIG).read_text().replace('"../var/demo/', '"'))
    shutil.copyfile(source / DATA, folder / DATA)
    return config


def clear_checkout_state(state: Path) -> bool:
    """Wipe a checkout's var/demo (config/demo.toml's state) for a fresh run; True if it was that folder.

    Any other state folder is a station's journal, whatever its name: it is never deleted.
    """
    if state.resolve() != CHECKOUT_DEMO.resolve():
        return False
    if state.exists():
        shutil.rmtree(state)
    return True


def lockerd_command() -> str:
    """How the person who ran the demo runs lockerd again (for the commands it prints)."""
    exe = Path(sys.argv[0])
    return str(exe) if exe.name == "lockerd" else f"{sys.executable} -m lockerd"


def say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


async def play(daemon: Daemon, pause: float = PAUSE) -> None:
    ctl = daemon.control

    async def do(op: str, **kw: object) -> dict:
        reply = await ctl.dispatch({"op": op, **kw}, peer.me())
        if "message" in reply:
            print(f"    result: {reply['message']}" + ("  (door pulled open)" if reply.get("opened") else ""))
        return reply

    async def step(text: str) -> None:
        say(text)
        await asyncio.sleep(pause)

    async def seen(compartment: str, state: DoorState) -> None:
        # A door reading counts once it is stable (debounce_ms): a door shut the
        # instant it opened would never have been open at all.
        slot = daemon.controller.slots[compartment]
        # Polled on purpose: the demo reads the slot as the controller holds it,
        # whichever code path set it; a 10 ms poll costs a demo nothing.
        async with asyncio.timeout(5):
            while slot.door is not state:  # noqa: ASYNC110
                await asyncio.sleep(0.01)

    async def shut(compartment: str) -> None:
        await do("close", compartment=compartment)
        await seen(compartment, DoorState.CLOSED)

    async def open_door(code: str, compartment: str) -> None:
        """Scan ``code`` and pull the handle as the lock releases; the door is open once the controller saw it."""
        reply = await do("scan", code=code, pull=True)
        if reply.get("opened"):
            await seen(compartment, DoorState.OPEN)
        else:
            print(f"    (compartment {compartment} did not open)")

    data = daemon.config.path.parent / DATA
    say(f"Importing people, badges and dossier assignments from {data.name}")
    if data.exists():
        print(f"    {await do('import', text=data.read_text(), name=str(data), by='demo')}")
    await step("Officer Berg deposits dossier D-2026-0417 (assigned to her compartment d01)")
    await open_door("D-2026-0417", "d01")
    await step("... puts it in and closes the door")
    await shut("d01")
    await step("Start of shift: she takes the dossier out again (a checkout)")
    await open_door("D-2026-0417", "d01")
    await shut("d01")
    await step("End of shift: she brings it back (a return)")
    await open_door("D-2026-0417", "d01")
    await shut("d01")
    await step("Someone scans a code the locker does not know")
    await do("scan", code="X-UNKNOWN-1")
    await step("Evidence deposit: officer Berg's badge, the item, then case manager Lindqvist's badge")
    # People badge one after the other: faster than badge_burst_ms apart, two badges are one burst, refused.
    person_gap_s = daemon.config.evidence.badge_burst_ms / 1000 + 0.05
    await do("scan", code="B-1001")
    await do("scan", code="E-2026-0090")
    await asyncio.sleep(person_gap_s)
    await open_door("B-2001", "e01")
    await step("... she puts the item in and closes the door")
    await shut("e01")
    await step("Somebody pries compartment d07 open without a grant")
    await do("force", compartment="d07")
    await seen("d07", DoorState.OPEN)
    await step("... and shuts it again")
    await shut("d07")
    await asyncio.sleep(0.2)
    cfg, me = daemon.config, lockerd_command()
    say("Demo shift done. The daemon keeps running: in another terminal try")
    print(f"    {me} sim scan D-2026-0431 --pull -c {cfg.path}   # officer Okafor's dossier -> d02")
    print(f"    {me} sim close d02 -c {cfg.path}")
    print(f"    {me} status -c {cfg.path}")
    print(f"    {me} history -c {cfg.path}")
    print(f"    {me} verify -c {cfg.path}")
    print(f"    {me} chain-of-custody E-2026-0090 -c {cfg.path}   # with the cabinet camera's stills")
    print(f"    {me} occupancy -c {cfg.path}")
    print(f"    {me} export -o shift.csv -c {cfg.path} && {me} verify-export shift.csv "
          f"-c {cfg.path}")
    print("    Press Ctrl-C here to stop the daemon.", flush=True)


async def _main(cfg: config_mod.Config, pause: float, stay: bool) -> int:
    daemon = Daemon(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, daemon.stopping.set)
    await daemon.start()
    screens = _screens(cfg) if stay else None
    try:
        # Ctrl-C stops the demo at once, in the middle of the shift too.
        playing = asyncio.create_task(play(daemon, pause))
        stopping = asyncio.create_task(daemon.stopping.wait())
        await asyncio.wait({playing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for task in (playing, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if stay and not daemon.stopping.is_set():
            if screens is not None:
                print(screens_line(cfg, screens), flush=True)
            await daemon.stopping.wait()
    finally:
        if screens is not None:
            screens.terminate()
            screens.wait(5)
        await daemon.stop()
    return 0


def screens_line(cfg: config_mod.Config, screens: subprocess.Popen[bytes]) -> str:
    """Where the screens are, or that they stopped: their address is given only while they run."""
    code = screens.poll()
    if code is not None:
        return f"    (the screens stopped, exit code {code}: see above)"
    d = cfg.display
    first = next(iter(cfg.scanners), next(iter(cfg.cabinets), ""))
    return (f"    Screens (lockerd-display, read-only): http://{d.bind}:{d.port}/cabinet/{first}   "
            f"http://{d.bind}:{d.port}/wall")


def _screens(cfg: config_mod.Config) -> subprocess.Popen[bytes] | None:
    """lockerd-display beside the demo daemon: its own process, as on a board (never inside the daemon)."""
    try:
        return subprocess.Popen([sys.executable, "-m", "lockerd.display", "-c", str(cfg.path)])
    except OSError as e:
        print(f"    (the screens did not start: {e})")
        return None


def main(config_path: str | None = None, folder: Path | None = None, keep: bool = False, pause: float = PAUSE,
         stay: bool = True) -> int:
    """The demo station in ``folder`` (see prepare), or as ``config_path`` says, then the scripted shift."""
    if config_path is None:
        cfg = config_mod.load(prepare(folder or default_folder(), keep))
    else:
        cfg = config_mod.load(config_path)
        if not keep and not clear_checkout_state(cfg.journal_path.parent):
            print(f"lockerd demo: playing on the journal in {cfg.journal_path.parent} as it is (nothing is wiped)")
    setup_logging("warning")
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main(cfg, pause, stay))
    return 0
