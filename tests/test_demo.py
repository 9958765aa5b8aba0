"""`lockerd demo`: every step of the scripted shift does what it says, as the journal shows."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lockerd import config as config_mod
from lockerd import demo
from lockerd.clock import Clock
from lockerd.daemon import Daemon
from lockerd.demo import MARK, play, prepare
from lockerd.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.asyncio
async def test_the_scripted_shift_deposits_checks_out_returns_refuses_and_opens_the_evidence_door(tmp_path):
    text = (ROOT / "config" / "demo.toml").read_text()
    # At full speed the same dossier is scanned again within the scanner's repeat
    # window (1.5 s), which a person at the cabinet (PAUSE) is not.
    fast = text.replace('feedback = "counter"\n', 'feedback = "counter"\ndebounce_ms = 0\n', 1)
    assert fast != text
    (tmp_path / "config").mkdir()
    cfg_path = tmp_path / "config" / "demo.toml"
    cfg_path.write_text(fast)
    shutil.copyfile(ROOT / "config" / "demo-data.json", tmp_path / "config" / "demo-data.json")
    daemon = Daemon(config_mod.load(cfg_path), Clock())
    await daemon.start()
    try:
        await play(daemon, pause=0)
    finally:
        await daemon.stop()
    journal = Journal(daemon.config.journal_path, Clock())  # the daemon's is closed: read the file again
    assert journal.open()
    try:
        events = journal.read(limit=10_000)
    finally:
        journal.close()
    # The import names a case manager and a supervisor: who may co-sign changed, and the station is told.
    assert {e.data["role"] for e in events if e.kind == "notice.authority_changed"} == {"case_manager", "supervisor"}
    shift = [(e.kind, e.compartment, e.dossier) for e in events
             if e.kind not in ("scan", "lock.pulsed", "photo.taken", "badge.accepted", "deadline.closed",
                               "notice.authority_changed")
             and not e.kind.endswith(".registered") and e.kind != "item.assigned"
             and not e.kind.startswith("journal.")]  # the journal's own snapshots and signed checkpoints
    assert shift[:2] == [("daemon.started", None, None), ("daemon.ready", None, None)]
    dossier = "D-2026-0417"
    granted_by_door = [
        ("access.granted", "d01", dossier), ("door.opened", "d01", None), ("door.closed", "d01", None),
    ]
    assert shift[2:] == [
        *granted_by_door, ("dossier.deposited", "d01", dossier),
        *granted_by_door, ("dossier.checked_out", "d01", dossier),
        *granted_by_door, ("dossier.returned", "d01", dossier),
        ("access.denied", None, None),
        ("access.pending", "e01", "E-2026-0090"),
        ("access.granted", "e01", "E-2026-0090"),
        ("door.opened", "e01", None), ("door.closed", "e01", None),
        ("evidence.deposited", "e01", "E-2026-0090"),
        ("door.opened", "d07", None), ("alarm.forced", "d07", None),
        ("door.closed", "d07", None),  # the forced door stays an alarm until someone acknowledges it
        ("daemon.stopped", None, None),
    ]
    by_kind = {e.kind: e for e in events}
    assert by_kind["access.denied"].data["reason"] == "unknown code"
    # Two people for the evidence: the depositing officer and the case manager.
    assert by_kind["evidence.deposited"].people == ("p-berg", "p-lindqvist")
    evidence_doors = [e for e in events if e.compartment == "e01" and e.kind.startswith("door.")]
    assert [e.data["granted"] for e in evidence_doors] == [True, True]
    forced_doors = [e for e in events if e.compartment == "d07" and e.kind.startswith("door.")]
    assert [e.data["granted"] for e in forced_doors] == [False, False]


def test_the_demo_station_is_set_up_in_a_folder_of_its_own(tmp_path: Path) -> None:
    """What `lockerd demo --dir` (and an installed `lockerd demo`) runs: the shipped config, its state beside it."""
    folder = tmp_path / "demo-here"
    cfg = config_mod.load(prepare(folder))
    assert cfg.path.parent == folder
    assert cfg.journal_path.parent == folder and cfg.control_socket.parent == folder
    assert (folder / "demo-data.json").read_text() == (ROOT / "config" / "demo-data.json").read_text()
    (folder / "journal.db").write_text("the last run")
    prepare(folder, keep=True)
    assert (folder / "journal.db").read_text() == "the last run"
    prepare(folder)
    assert not (folder / "journal.db").exists()  # a fresh station each run


def test_the_demo_never_wipes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / "papers"
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    with pytest.raises(SystemExit, match="not a demo station's"):
        prepare(folder)
    assert (folder / "thesis.txt").read_text() == "years of work"
    assert (ROOT / "config" / "demo.toml").read_text().startswith(MARK)


@pytest.mark.parametrize("checkout", [False, True])
def test_demo_with_a_config_wipes_only_the_checkouts_own_demo_state(tmp_path: Path, monkeypatch, checkout) -> None:
    """`lockerd demo -c FILE` on a station whose journal folder happens to be named demo keeps that journal; only
    the checkout's var/demo (config/demo.toml's state) starts fresh. Before, any folder named demo was deleted."""
    state = tmp_path / "demo"
    state.mkdir()
    (state / "journal.db").write_text("a station's records")
    (tmp_path / "config").mkdir()
    cfg_path = tmp_path / "config" / "demo.toml"
    cfg_path.write_text((ROOT / "config" / "demo.toml").read_text().replace('"../var/demo/', f'"{state}/'))
    shutil.copyfile(ROOT / "config" / "demo-data.json", tmp_path / "config" / "demo-data.json")
    if checkout:
        monkeypatch.setattr(demo, "CHECKOUT_DEMO", state)
    played = []

    async def shift(cfg, pause, stay):
        played.append(cfg.journal_path)
        return 0

    monkeypatch.setattr(demo, "_main", shift)
    assert demo.main(str(cfg_path), stay=False) == 0
    assert played == [state / "journal.db"]
    assert (state / "journal.db").exists() is not checkout


def test_the_screens_address_is_given_only_while_the_screens_run(tmp_path: Path) -> None:
    """A demo whose screens died (their extra not installed, their port taken) says so, not where to browse."""
    cfg = config_mod.load(prepare(tmp_path / "demo", keep=False))
    stopped = subprocess.Popen([sys.executable, "-c", "raise SystemExit(2)"])
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stopped.wait(30)
        assert demo.screens_line(cfg, stopped) == "    (the screens stopped, exit code 2: see above)"
        assert "http://127.0.0.1:8470/wall" in demo.screens_line(cfg, running)
    finally:
        running.kill()
        running.wait()


def test_lockerd_display_without_its_extra_says_so_in_one_line() -> None:
    """As the demo starts it (python -m lockerd.display), with aiohttp not importable: one sentence, exit 2."""
    hide = ("import runpy, sys; sys.modules['aiohttp'] = None; "
            "runpy.run_module('lockerd.display', run_name='__main__')")
    r = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr == ("lockerd-display needs the Python module aiohttp, which cannot be imported: "
                        "install lockerd[display]\n")
