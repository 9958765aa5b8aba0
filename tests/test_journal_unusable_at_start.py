"""A journal folder that cannot be used at start: the daemon runs, refuses every grant, supervises the doors,
holds their events, tells the station, and journals them once the folder is usable."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from broker import Mosquitto, Recorder, station_config
from test_daemon_e2e import cli, wait_for_socket
from test_station_commands import Station, reply_for

from lockerd.journal import verify


def info(rec: Recorder) -> dict:
    return rec.on("/info")[-1] if rec.on("/info") else {}


@pytest.mark.slow
def test_a_journal_folder_that_is_a_file_gives_a_refusing_daemon_not_a_dead_one(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    blocker = tmp_path / "state"
    blocker.write_text("a file where the journal's folder should be")
    cfg = station_config(tmp_path, [f"127.0.0.1:{mosquitto.port}"], journal="state/journal.db")
    rec = Recorder(mosquitto.port, ["lockerd/#"])
    recorders.append(rec)
    proc = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for_socket(tmp_path / "lockerd.sock", proc)
        rec.wait(lambda r: any(p.get("state") == "online" for p in r.on("/presence")), 20)
        rec.wait(lambda r: info(r).get("journal", {}).get("writable") is False, 20)
        assert "journal" in info(rec)["journal"]["error"]
        # Every opening is refused, with the reason.
        station = Station(mosquitto.port)
        try:
            cid = station.send("open", {"compartment": "d02", "reason": "inspection"})
            rec.wait(lambda r: reply_for(r, cid), 20)
        finally:
            station.close()
        assert reply_for(rec, cid)[0]["ok"] is False and "cannot journal" in reply_for(rec, cid)[0]["error"]
        # The doors are still supervised: a forced door is an alarm on the station's retained state at once,
        # and its events wait in memory.
        assert cli(cfg, "sim", "force", "d03").returncode == 0
        rec.wait(lambda r: any(s.get("alarm") == "forced" for s in r.on("/state/d03")), 20)
        rec.wait(lambda r: info(r).get("journal", {}).get("held", 0) >= 2, 20)
        # The folder is put right: the journal opens, the held events are journaled (late, in order) and the
        # station receives them and hears that the journal is writable again.
        blocker.unlink()
        rec.wait(lambda r: "journal.outage" in {e.get("kind") for e in r.on("/events")}, 30)
        kinds = [e["kind"] for e in rec.on("/events")]
        assert kinds.index("alarm.forced") < kinds.index("journal.outage")
        forced = next(e for e in rec.on("/events") if e["kind"] == "alarm.forced")
        assert forced["compartment"] == "d03" and forced["data"]["journaled_late_s"] > 0
        rec.wait(lambda r: info(r).get("journal", {}).get("writable") is True, 20)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert verify(tmp_path / "state" / "journal.db").ok
