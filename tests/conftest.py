"""Shared fixtures: a real Mosquitto per test and an independent subscriber; no subprocess outlives its test."""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Recorder


def _children() -> dict[int, str]:
    """This process's running children (daemons, brokers, socat, ...): pid -> command line."""
    me, out = os.getpid(), {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]  # the fields after "(command name)"
            if int(ppid) == me and state != "Z":
                out[int(d.name)] = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except (OSError, ValueError):
            continue  # it ended meanwhile
    return out


@pytest.fixture(autouse=True)
def _spill_files_stay_in_the_test(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A journal that cannot be written spills to $RUNTIME_DIRECTORY, else the temp folder: keep it in the test's.

    Without this, each run of the suite left a spill file in /tmp: a rig
    whose journal is unusable spills what it held when it closes.
    """
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(tmp_path))


@pytest.fixture(autouse=True)
def _no_subprocess_outlives_its_test() -> Iterator[None]:
    """Kill and reap whatever a test started and left running (a failure midway, a missing finally).

    A daemon or broker left behind keeps its ports, files and hardware lock,
    and can hang the run or fail later tests. Torn down after every other
    fixture of the test, so their own clean-up goes first.
    """
    before = set(_children())
    yield
    left = {pid: cmd for pid, cmd in _children().items() if pid not in before}
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):  # its Popen or asyncio watcher may reap it first
            os.waitpid(pid, 0)
    if left:
        warnings.warn(f"killed subprocesses the test left running: {sorted(left.values())}", stacklevel=1)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free loopback port (anonymous, persistent, no queue limit)."""
    b = Mosquitto(tmp_path).start()
    yield b
    b.kill()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    """Recorders made by a test, closed after it."""
    made: list[Recorder] = []
    yield made
    for r in made:
        r.close()
