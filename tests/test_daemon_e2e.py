"""The real daemon as a subprocess, driven through the lockerd CLI like a person would."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rig import DATA, TOML

from lockerd.journal import Journal, verify


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockerd", *args, "-c", str(cfg)], capture_output=True,
                          text=True, timeout=30)


def wait_for_socket(path: Path, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"daemon exited: {proc.stderr.read()}")
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
                return
        except OSError:
            time.sleep(0.02)  # polling for readiness, not standing in for it
    raise AssertionError("daemon did not open its control socket")


@contextlib.contextmanager
def running_daemon(folder: Path, text: str = TOML) -> Iterator[tuple[Path, subprocess.Popen]]:
    """`lockerd run` on ``text`` in ``folder`` (the rig's people and items beside it in data.json), once its
    control socket answers; killed afterwards if the test has not stopped it."""
    cfg = folder / "lockerd.toml"
    cfg.write_text(text)
    (folder / "data.json").write_text(json.dumps(DATA))
    proc = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(folder / "lockerd.sock", proc)
        yield cfg, proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def daemon(tmp_path):
    with running_daemon(tmp_path) as d:
        yield d


def test_scan_to_open_through_the_cli(daemon):
    cfg, proc = daemon
    r = cli(cfg, "import", str(cfg.parent / "data.json"))
    assert r.returncode == 0 and "imported 4 people, 4 badges, 5 items" in r.stdout
    r = cli(cfg, "sim", "scan", "D-1", "--pull")
    assert r.returncode == 0 and "open d01: deposit D-1" in r.stdout and "door pulled open" in r.stdout
    assert cli(cfg, "sim", "close", "d01").stdout == "closed the door of d01\n"
    r = cli(cfg, "custody", "--out")
    assert r.returncode == 0 and r.stdout == "no item is out\n"
    r = cli(cfg, "sim", "scan", "NOT-A-CODE")
    assert "refused: unknown code" in r.stdout
    r = cli(cfg, "sim", "force", "d06")
    r = cli(cfg, "status", "--json")
    st = json.loads(r.stdout)
    assert st["compartments"]["d06"]["alarm"] == "forced"
    assert cli(cfg, "sim", "pull", "d02").stdout.startswith("door stays shut")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(15) == 0
    r = cli(cfg, "history", "--dossier", "D-1")
    header, rule, *lines = r.stdout.splitlines()
    assert header.split() == ["seq", "time", "(UTC)", "kind", "compartment", "item", "people", "details"]
    assert set(rule) <= {"-", " "}
    kinds = [line.split()[3] for line in lines]  # seq, date, time, kind, ...
    assert kinds[:2] == ["item.assigned", "scan"] and "dossier.deposited" in kinds
    grant = next(line for line in lines if " access.granted " in line)
    assert "items: D-1 deposit" in grant and "pulse: yes" in grant and "{" not in grant  # words, not reprs
    r = cli(cfg, "history", "--kind", "alarm", "--json")
    assert [json.loads(x)["kind"] for x in r.stdout.splitlines()] == ["alarm.forced"]
    r = cli(cfg, "verify")
    assert r.returncode == 0 and "hash chain intact" in r.stdout
    assert verify(cfg.parent / "journal.db").ok


def test_sigterm_mid_pulse_leaves_no_relay_on_and_exits_cleanly(daemon):
    cfg, proc = daemon
    cli(cfg, "import", str(cfg.parent / "data.json"))
    r = cli(cfg, "sim", "scan", "D-3")
    assert "open d02" in r.stdout
    proc.send_signal(signal.SIGTERM)  # within the 500 ms pulse
    assert proc.wait(15) == 0
    log = proc.stderr.read()
    assert "stopped" in log
    r = cli(cfg, "history", "--limit", "3")
    # The stop is the last thing journaled, then signed by the stop checkpoint; the last line says what was left out.
    *_, stopped, signed, left_out = r.stdout.splitlines()
    assert [stopped.split()[3], signed.split()[3]] == ["daemon.stopped", "journal.checkpoint"]
    total = len(cli(cfg, "history", "--limit", "100000", "--json").stdout.splitlines())
    assert left_out == f"({total - 3} older events not shown: raise --limit, or narrow with --since, --kind, " \
                       "--dossier, --compartment or --person)"
    assert cli(cfg, "verify").returncode == 0


def test_second_daemon_on_the_same_journal_refuses_to_start(daemon, tmp_path):
    cfg, proc = daemon
    other = tmp_path / "other.toml"
    other.write_text(TOML.replace('control_socket = "lockerd.sock"', 'control_socket = "other.sock"'))
    # Same journal, same cabinet: the hardware lock beside the journal refuses the second daemon.
    p2 = subprocess.run([sys.executable, "-m", "lockerd", "run", "-c", str(other)], capture_output=True, text=True,
                        timeout=30)
    assert p2.returncode == 1
    assert "not starting" in p2.stderr and "in use by the lockerd daemon" in p2.stderr
    # And the journal's own single-writer lock still guards the hash chain against any other writer.
    j = Journal(tmp_path / "journal.db")
    assert asyncio.run(_open(j)) is False and "in use by another lockerd" in (j.error or "")
    assert json.loads(cli(cfg, "status", "--json").stdout)["journal"]["healthy"]


async def _open(j: Journal) -> bool:
    return j.open()


def test_start_to_ready_is_logged(daemon):
    cfg, proc = daemon
    proc.send_signal(signal.SIGTERM)
    proc.wait(15)
    err = proc.stderr.read()
    assert "ready in" in err and os.path.exists(cfg.parent / "journal.db")
