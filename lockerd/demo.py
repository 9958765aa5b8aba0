"""`lockerd demo`: the demo station on simulated hardware, with a short scripted shift.

It runs the real daemon in this process and plays a person at the cabinet
through the same control requests the `lockerd sim` commands send, then
leaves the daemon running for the newcomer's own scans.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from lockerd import config as config_mod
from lockerd import peer
from lockerd.daemon import Daemon, setup_logging
from lockerd.drivers.base import DoorState

DATA = Path(__file__).resolve().parent.parent / "config" / "demo-data.json"
PAUSE = 1.6  # seconds between steps, so a person can follow (and past the scanner's repeat window)


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

    say(f"Importing people, badges and dossier assignments from {DATA.name}")
    if DATA.exists():
        print(f"    {await do('import', text=DATA.read_text(), name=str(DATA), by='demo')}")
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
    cfg = daemon.config
    say("Demo shift done. The daemon keeps running: in another terminal try")
    print(f"    .venv/bin/lockerd sim scan D-2026-0431 --pull -c {cfg.path}   # officer Okafor's dossier -> d02")
    print(f"    .venv/bin/lockerd sim close d02 -c {cfg.path}")
    print(f"    .venv/bin/lockerd status -c {cfg.path}")
    print(f"    .venv/bin/lockerd history -c {cfg.path}")
    print(f"    .venv/bin/lockerd verify -c {cfg.path}")
    print(f"    .venv/bin/lockerd chain-of-custody E-2026-0090 -c {cfg.path}   # with the cabinet camera's stills")
    print(f"    .venv/bin/lockerd occupancy -c {cfg.path}")
    print(f"    .venv/bin/lockerd export -o shift.csv -c {cfg.path} && .venv/bin/lockerd verify-export shift.csv "
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
        await play(daemon, pause)
        if stay:
            if screens is not None:
                d = cfg.display
                first = next(iter(cfg.scanners), next(iter(cfg.cabinets), ""))
                print(f"    Screens (lockerd-display, read-only): http://{d.bind}:{d.port}/cabinet/{first}   "
                      f"http://{d.bind}:{d.port}/wall", flush=True)
            await daemon.stopping.wait()
    finally:
        if screens is not None:
            screens.terminate()
            screens.wait(5)
        await daemon.stop()
    return 0


def _screens(cfg: config_mod.Config) -> subprocess.Popen[bytes] | None:
    """lockerd-display beside the demo daemon: its own process, as on a board (never inside the daemon)."""
    try:
        return subprocess.Popen([sys.executable, "-m", "lockerd.display", "-c", str(cfg.path)])
    except OSError as e:
        print(f"    (the screens did not start: {e})")
        return None


def main(config_path: str, keep: bool = False, pause: float = PAUSE, stay: bool = True) -> int:
    cfg = config_mod.load(config_path)
    setup_logging("warning")
    state = cfg.journal_path.parent
    if not keep and state.exists() and state.name == "demo":
        shutil.rmtree(state)  # a fresh station each run; --keep to continue the last one
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(_main(cfg, pause, stay))
    return 0
