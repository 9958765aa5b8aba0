"""The state tables are a projection of the chain: rows edited with sqlite3 under a stopped daemon are found at
the next start, named in alarm.journal_tampered, and the journaled state is what the daemon acts on."""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

from test_daemon_e2e import cli, running_daemon

from lockerd.badges import BadgeKey
from lockerd.journal import verify


def tamper(journal: Path) -> None:
    """What root with sqlite3 does to the tables alone: the events (and so `verify`) are left intact."""
    conn = sqlite3.connect(journal)
    with conn:
        conn.execute("INSERT INTO badges (code, person, active) VALUES ('B-FORGED', 'lind', 1)")
        conn.execute("UPDATE people SET role = 'supervisor' WHERE id = 'okafor'")
        conn.execute("INSERT INTO items (code, kind, case_name, category, officer, compartment, state) "
                     "VALUES ('D-FORGED', 'dossier', 'forged', 'misc', 'berg', 'd03', 'out')")
        conn.execute("DELETE FROM badges WHERE person = 'okafor'")  # the table holds fingerprints, not codes
    conn.close()


def test_tables_edited_under_a_stopped_daemon_are_found_named_and_overruled(tmp_path: Path) -> None:
    journal = tmp_path / "journal.db"
    with running_daemon(tmp_path) as (cfg, proc):
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    tamper(journal)
    assert verify(journal).ok  # the chain itself is untouched: verify alone cannot see this
    with running_daemon(tmp_path) as (cfg, proc):
        alarms = [json.loads(x) for x in cli(cfg, "history", "--kind", "alarm", "--json").stdout.splitlines()]
        [alarm] = [a for a in alarms if a["kind"] == "alarm.journal_tampered"]
        found = " | ".join(alarm["data"]["differences"])
        assert alarm["data"]["count"] == 4, found
        assert "badges 'B-FORGED' is in the table but in no journaled event" in found
        assert "people 'okafor' differs from the journal in role ('supervisor', journaled 'officer')" in found
        assert "items 'D-FORGED' is in the table but in no journaled event" in found
        okafor = BadgeKey.load_or_create(tmp_path / "badge.key").fingerprint("B-OKAFOR")
        assert f"badges '{okafor}' was deleted from the table" in found
        # The journaled state is what counts: the forged dossier opens nothing, the forged badge is nobody,
        # the deleted badge works, and the "promoted" officer cannot co-sign an emergency open.
        assert "refused: unknown code" in cli(cfg, "sim", "scan", "D-FORGED").stdout
        out = cli(cfg, "emergency-open", "e01", "--person", "okafor", "--person", "lind", "--reason", "test")
        assert out.returncode != 0 and "supervisor" in (out.stdout + out.stderr)
        status = json.loads(cli(cfg, "status", "--json").stdout)
        assert status["compartments"]["e01"]["lock"] == "locked"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    conn = sqlite3.connect(journal)
    assert conn.execute("SELECT role FROM people WHERE id = 'okafor'").fetchone() == ("officer",)
    assert conn.execute("SELECT code FROM badges WHERE code = 'B-FORGED' OR person = 'okafor'").fetchall() == [
        (okafor,)]
    conn.close()
    assert verify(journal).ok
    # A third start finds nothing more: the repair was journaled with the alarm.
    with running_daemon(tmp_path) as (cfg, proc):
        kinds = [json.loads(x)["kind"] for x in cli(cfg, "history", "--kind", "alarm", "--json").stdout.splitlines()]
        assert kinds.count("alarm.journal_tampered") == 1
