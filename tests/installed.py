"""What a user installs, seen from outside the checkout: fresh venvs, the modules of the tree, a running daemon."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from broker import Mosquitto, Recorder, station_config

REPO = Path(__file__).resolve().parent.parent
RUNTIME_LOCK = REPO / "requirements" / "runtime.lock"
# Where each source folder lands in the installed package.
FOLDERS = {"lockerd": "lockerd", "drivers": "lockerd.drivers", "hil": "lockerd.hil"}


def outside_env() -> dict[str, str]:
    """The environment of a user's shell: nothing points into this checkout or its venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "DESTDIR")}
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def run(cmd: list[str | Path], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=outside_env(), capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, f"{cmd} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def clean_copy(dst: Path) -> Path:
    """The checkout as a fresh clone has it: no venv, no build folders, no bytecode."""
    junk = shutil.ignore_patterns(".git", ".venv*", "build", "var", "*.egg-info", "__pycache__", ".pytest_cache",
                                  ".ruff_cache", "bench-report")
    shutil.copytree(REPO, dst, ignore=junk)
    return dst


def tree_modules() -> list[str]:
    """Every module of the source tree, by the name it has once installed."""
    out = []
    for folder, package in FOLDERS.items():
        for p in sorted((REPO / folder).rglob("*.py")):
            rel = p.relative_to(REPO / folder).with_suffix("")
            parts = [part for part in rel.parts if part != "__init__"]
            out.append(".".join([package, *parts]))
    return out


IMPORT_ALL = """
import importlib, importlib.util, sys
names = sys.argv[1:]
def found(n):
    try:
        return importlib.util.find_spec(n) is not None
    except ImportError:  # its package is missing
        return False
absent = [n for n in names if not found(n)]
broken = []
for n in names:
    if n not in absent and not n.endswith("__main__"):
        try:
            importlib.import_module(n)
        except Exception as e:
            broken.append(f"{n}: {e!r}")
import lockerd
print("FROM", lockerd.__file__)
print("ABSENT", " ".join(absent))
print("BROKEN", " | ".join(broken))
"""


def check_modules(python: Path, cwd: Path) -> Path:
    """Every module of the tree is installed and imports; returns where lockerd was imported from."""
    r = run([python, "-c", IMPORT_ALL, *tree_modules()], cwd)
    lines = dict(line.split(" ", 1) if " " in line else (line, "") for line in r.stdout.splitlines())
    assert lines["ABSENT"] == "", f"modules missing from the install: {lines['ABSENT']}"
    assert lines["BROKEN"] == "", f"modules that do not import: {lines['BROKEN']}"
    return Path(lines["FROM"])


def daemon_comes_online(lockerd: Path, folder: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    """The installed ``lockerd run`` with a [station] section says "online", then stops cleanly on SIGTERM."""
    folder.mkdir(parents=True, exist_ok=True)
    config = station_config(folder, [f"127.0.0.1:{mosquitto.port}"])
    run([lockerd, "check-config", config], folder)
    rec = Recorder(mosquitto.port, ["lockerd/#"], client_id=f"rec-{folder.name}")
    recorders.append(rec)
    log = folder / "daemon.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(lockerd), "run", "-c", str(config)], cwd=folder, env=outside_env(),
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        try:
            rec.wait(lambda r: any(p.get("state") == "online" for p in r.on("/presence")), timeout=60)
        except TimeoutError:
            raise AssertionError(f"no presence 'online' from the installed daemon:\n{log.read_text()}") from None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text()
        rec.wait(lambda r: r.on("/presence")[-1].get("state") == "offline", timeout=30)
        assert rec.on("/presence")[-1]["clean"] is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def demo_plays(lockerd: Path, folder: Path) -> None:
    """The installed ``lockerd demo`` sets up its station in ``folder``, plays the first deposit, stops on Ctrl-C."""
    proc = subprocess.Popen([str(lockerd), "demo", "--dir", str(folder / "demo")], cwd=folder, env=outside_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    seen: list[str] = []
    try:
        for line in proc.stdout:  # ends if the demo dies; the test's timeout bounds a hang
            seen.append(line)
            if "result: open d01" in line:
                break
        assert seen and "result: open d01" in seen[-1], "".join(seen)
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (folder / "demo" / "demo.toml").is_file() and (folder / "demo" / "journal.db").is_file()
