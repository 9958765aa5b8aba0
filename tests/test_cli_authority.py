"""The control socket knows who is talking, and typed names open no evidence: the CLI attacks of issue 13
against `lockerd run`, over the real socket (and a real serial scanner on a pty for the one-print-two-people
case)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ptys import SocatPair
from rig import DATA, TOML
from test_daemon_e2e import cli, running_daemon

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534"]

PEOPLE = copy.deepcopy(DATA)
PEOPLE["people"].append({"id": "holm", "name": "Erik Holm", "role": "supervisor"})
PEOPLE["badges"].append({"code": "B-HOLM", "person": "holm"})
# Two CLI scans are a process start apart (>100 ms): a burst window below that lets each count.
EVIDENCE_TOML = TOML + "[evidence]\nbadge_burst_ms = 50\n"


def history(cfg: Path, kind: str | None = None) -> list[dict[str, Any]]:
    args = ("history", "--json") + (("--kind", kind) if kind else ())
    return [json.loads(x) for x in cli(cfg, *args).stdout.splitlines()]


def until(what: str, check: Any, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.05)  # polling the daemon's journal, not standing in for it
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder another user can read (pytest's own tmp folders are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="lockerd-cli-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_cli_emergency_open_of_evidence_waits_for_both_badges_and_names_the_os_user(tmp_path: Path) -> None:
    with running_daemon(tmp_path, EVIDENCE_TOML) as (cfg, proc):
        (tmp_path / "data.json").write_text(json.dumps(PEOPLE))
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        # Who may co-sign evidence changed: the import raised notices for the supervisor and the case manager.
        notices = history(cfg, "notice.authority_changed")
        assert sorted((n["people"][0], "badge" in n["data"]) for n in notices) == [
            ("holm", False), ("holm", True), ("lind", False), ("lind", True)]
        assert all(n["data"]["user"] == "root" for n in notices)
        out = cli(cfg, "emergency-open", "e01", "--person", "holm", "--person", "lind", "--reason", "flooding")
        assert out.returncode == 0, out.stderr
        assert "waiting: holm and lind must badge at a scanner of cabinet e within 60 s; then e01 opens" in out.stdout
        [waiting] = history(cfg, "override.waiting")
        assert waiting["data"]["uid"] == os.getuid() and waiting["data"]["user"] == "root"
        assert isinstance(waiting["data"]["pid"], int) and waiting["data"]["via"] == "cli"
        status = json.loads(cli(cfg, "status", "--json").stdout)
        assert status["compartments"]["e01"]["lock"] == "locked" and not history(cfg, "alarm.emergency_open")
        # A badge of someone not named counts for nothing; the named people's badges let it go ahead.
        assert "waiting for lind" in cli(cfg, "sim", "scan", "B-HOLM").stdout
        assert "goes ahead" in cli(cfg, "sim", "scan", "B-LIND").stdout
        [alarm] = until("the emergency open", lambda: history(cfg, "alarm.emergency_open"))
        assert alarm["data"]["waited_seq"] == waiting["seq"] and alarm["data"]["user"] == "root"
        grants = until("its grant", lambda: [e for e in history(cfg, "access.granted") if e["compartment"] == "e01"])
        assert grants[0]["data"]["source"] == "emergency"


def test_a_maintenance_open_of_evidence_needs_a_witness_and_both_badges(tmp_path: Path) -> None:
    with running_daemon(tmp_path, EVIDENCE_TOML) as (cfg, proc):
        data = copy.deepcopy(PEOPLE)
        data["badges"].append({"code": "B-NOWAK", "person": "nowak"})
        (tmp_path / "data.json").write_text(json.dumps(data))
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        assert cli(cfg, "maintenance", "on", "--person", "nowak", "--reason", "solenoid").returncode == 0
        alone = cli(cfg, "maintenance", "open", "e02", "--person", "nowak")
        assert alone.returncode != 0 and "only with a witness" in alone.stderr
        officer = cli(cfg, "maintenance", "open", "e02", "--person", "nowak", "--witness", "berg")
        assert officer.returncode != 0 and "berg is officer" in officer.stderr
        out = cli(cfg, "maintenance", "open", "e02", "--person", "nowak", "--witness", "lind")
        assert out.returncode == 0 and "waiting: nowak and lind must badge" in out.stdout
        assert not [e for e in history(cfg, "maintenance.open")]
        cli(cfg, "sim", "scan", "B-NOWAK")
        cli(cfg, "sim", "scan", "B-LIND")
        [opened] = until("the maintenance open", lambda: history(cfg, "maintenance.open"))
        assert opened["compartment"] == "e02" and opened["people"] == ["nowak", "lind"]
        refusals = history(cfg, "override.refused")
        assert len(refusals) == 2 and all(r["data"]["user"] == "root" for r in refusals)


def test_only_administrators_change_people_through_the_socket(shared_folder: Path) -> None:
    text = TOML.replace('control_socket = "lockerd.sock"', 'control_socket = "lockerd.sock"\nadmin_group = "users"')
    with running_daemon(shared_folder, text) as (cfg, proc):
        data = shared_folder / "data.json"
        data.chmod(0o644)
        cfg.chmod(0o644)
        (shared_folder / "lockerd.sock").chmod(0o666)  # nobody stands for a member of the duty staff's group
        as_nobody = [*NOBODY, "--clear-groups", sys.executable, "-m", "lockerd", "import", str(data), "-c", str(cfg)]
        r = subprocess.run(as_nobody, capture_output=True, text=True, timeout=30)
        assert r.returncode != 0 and "only root, the daemon's user or members of group users may; nobody may not" \
            in r.stderr, r.stderr
        [refusal] = history(cfg, "control.refused")
        assert refusal["data"]["op"] == "import" and refusal["data"]["uid"] == 65534
        assert refusal["data"]["user"] == "nobody" and not history(cfg, "person.registered")
        # A member of the admin group may.
        as_admin = [*NOBODY, "--groups=100", sys.executable, "-m", "lockerd", "import", str(data), "-c", str(cfg)]
        r = subprocess.run(as_admin, capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        registered = history(cfg, "person.registered")
        assert registered and all(e["data"]["user"] == "nobody" and e["data"]["uid"] == 65534 for e in registered)


def test_one_printed_code_carrying_two_badges_is_not_two_people(tmp_path: Path) -> None:
    pair = SocatPair(tmp_path, "front").start()
    try:
        serial = f'[scanners.front]\ntype = "serial"\nport = "{pair.device}"'
        text = TOML.replace('[scanners.front]\ntype = "sim"', serial)
        with running_daemon(tmp_path, text) as (cfg, proc):
            assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
            until("the scanner online", lambda: json.loads(cli(cfg, "status", "--json").stdout)
                  ["scanners"]["front"]["online"])
            pair.write_now(b"B-BERG\rB-LIND\rE-1\r")  # one QR code with embedded CRs: one person, one print
            pending = until("the item scan", lambda: history(cfg, "access.pending"))
            assert pending[-1]["dossier"] == "E-1"
            [denied] = [e for e in history(cfg, "access.denied") if "one scan cannot be two people" in e["data"]
                        ["reason"]]
            assert denied["people"] == ["berg", "lind"]
            assert not [e for e in history(cfg, "access.granted") if e["compartment"] == "e01"]
            assert json.loads(cli(cfg, "status", "--json").stdout)["compartments"]["e01"]["lock"] == "locked"
            # No badge code is journaled: the badge scans carry fingerprints.
            codes = [e["data"]["code"] for e in history(cfg, "scan")]
            assert [c.split("~")[0] for c in codes] == ["ERG", "IND", "E-1"]
            assert all(len(c.split("~")[1]) == 24 for c in codes[:2])
    finally:
        pair.stop()
