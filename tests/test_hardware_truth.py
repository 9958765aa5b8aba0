"""Tell the truth when the hardware is ambiguous (issue 16): `lockerd run` with a serial scanner on a socat pty."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from modbus_peer import RelayPeer
from ptys import SocatPair
from rig import DATA, TOML, close_rig, make_rig
from test_cli_authority import history, until
from test_daemon_e2e import cli, running_daemon, wait_for_socket


def test_a_scan_paused_in_the_middle_opens_nothing_and_is_journaled_once_with_its_bytes(tmp_path: Path) -> None:
    pair = SocatPair(tmp_path, "front").start()
    try:
        serial = f'[scanners.front]\ntype = "serial"\nport = "{pair.device}"\nidle_timeout_ms = 150'
        with running_daemon(tmp_path, TOML.replace('[scanners.front]\ntype = "sim"', serial)) as (cfg, proc):
            data = copy.deepcopy(DATA)
            data["items"].append({"code": "D-12", "kind": "dossier", "case_name": "Twelve", "category": "theft",
                                  "officer": "okafor", "compartment": "d02"})
            (tmp_path / "data.json").write_text(json.dumps(data))
            assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
            until("the scanner online", lambda: json.loads(cli(cfg, "status", "--json").stdout)
                  ["scanners"]["front"]["online"])
            pair.write_now(b"D-1")  # the scan of D-12 (in d02) pauses after "D-1", itself the code of d01's dossier
            first = until("the incomplete scan", lambda: history(cfg, "access.denied"))
            pair.write_now(b"2\r")  # the rest of the scan, after the pause
            denied = until("both parts refused", lambda: d if len(d := history(cfg, "access.denied")) == 2 else None)
            assert denied[0]["data"]["reason"] == "malformed input: incomplete scan: no terminator within 150 ms"
            assert first[0]["seq"] == denied[0]["seq"]
            assert denied[1]["data"]["reason"] == "unknown code"
            [scan] = [e for e in history(cfg, "scan") if e["data"].get("raw_hex")]
            assert bytes.fromhex(scan["data"]["raw_hex"]) == b"D-1"
            assert not history(cfg, "access.granted")
            status = json.loads(cli(cfg, "status", "--json").stdout)["compartments"]
            assert status["d01"]["lock"] == "locked" and status["d02"]["lock"] == "locked"
    finally:
        pair.stop()


def test_a_forced_door_stays_an_alarm_across_a_restart_until_acknowledged_at_the_cli(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as (cfg, proc):
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        cli(cfg, "sim", "force", "d04")
        until("the forced alarm", lambda: history(cfg, "alarm.forced"))
        assert cli(cfg, "sim", "close", "d04").stdout == "closed the door of d04\n"  # one line: what was done
        until("the door shut", lambda: history(cfg, "door.closed"))
        assert "UNACKNOWLEDGED ALARM: d04 forced (door closed)" in cli(cfg, "status").stdout
        proc.terminate()
        assert proc.wait(15) == 0
    with running_daemon(tmp_path) as (cfg, proc):
        status = json.loads(cli(cfg, "status", "--json").stdout)
        assert status["alarms"] == [{"compartment": "d04", "alarms": ["forced"], "door": "closed"}]
        refused = cli(cfg, "acknowledge-alarm", "d04", "--person", "berg")
        assert refused.returncode != 0 and "a supervisor or a case manager acknowledges" in refused.stderr
        out = cli(cfg, "acknowledge-alarm", "d04", "--person", "lind", "--note", "hinge checked")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("acknowledged the forced alarm on d04 for lind (journal seq ")
        [ack] = history(cfg, "alarm.acknowledged")
        assert ack["people"] == ["lind"] and ack["data"]["user"] == "root" and ack["data"]["alarms"] == ["forced"]
        assert json.loads(cli(cfg, "status", "--json").stdout)["alarms"] == []
        assert not history(cfg, "alarm.cleared")


def kill_hard(proc) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(15)


def test_an_opening_survives_a_daemon_killed_while_the_door_is_open(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as (cfg, proc):
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        out = cli(cfg, "sim", "scan", "D-1", "--pull")  # deposit: the door is pulled open ...
        assert "door pulled open" in out.stdout
        until("the door open", lambda: history(cfg, "door.opened"))
        kill_hard(proc)  # ... and the controller dies before the door shuts
    with running_daemon(tmp_path) as (cfg, proc):
        [resumed] = until("the opening resumed", lambda: history(cfg, "grant.resumed"))
        [grant] = history(cfg, "access.granted")
        assert resumed["compartment"] == "d01" and resumed["data"]["grant_seq"] == grant["seq"]
        assert resumed["data"]["door"] == "open" and not history(cfg, "alarm.forced")
        kill_hard(proc)  # and once more, the door still open
    with running_daemon(tmp_path) as (cfg, proc):
        resumed = until("resumed again", lambda: r if len(r := history(cfg, "grant.resumed")) == 2 else None)
        assert resumed[1]["data"]["grant_seq"] == grant["seq"] and not history(cfg, "alarm.forced")
        cli(cfg, "sim", "close", "d01")
        [moved] = until("the deposit", lambda: history(cfg, "dossier.deposited"))
        assert moved["dossier"] == "D-1" and moved["data"]["grant_seq"] == grant["seq"]
        status = json.loads(cli(cfg, "status", "--json").stdout)
        assert status["compartments"]["d01"]["items"] == ["D-1"] and status["alarms"] == []


def test_a_door_that_shut_while_the_controller_was_down_records_the_move_at_start(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as (cfg, proc):
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        cli(cfg, "sim", "scan", "D-1", "--pull")
        until("the door open", lambda: history(cfg, "door.opened"))
        kill_hard(proc)
    state = tmp_path / "sim-d.json"  # the officer shuts the door while the controller is down
    doors = json.loads(state.read_text())
    doors["doors"][0]["open"] = False
    state.write_text(json.dumps(doors))
    with running_daemon(tmp_path) as (cfg, proc):
        [moved] = until("the deposit", lambda: history(cfg, "dossier.deposited"))
        [resumed] = history(cfg, "grant.resumed")
        assert resumed["data"]["door"] == "closed" and "the move is recorded now" in resumed["data"]["outcome"]
        assert moved["dossier"] == "D-1" and not history(cfg, "alarm.forced")


@pytest.mark.asyncio
async def test_a_pulse_that_opens_the_neighbour_is_a_wiring_fault_blocking_both(tmp_path: Path) -> None:
    crossed = TOML.replace('[drivers.sim-d]\ntype = "sim"\nchannels = 6\n',
                           '[drivers.sim-d]\ntype = "sim"\nchannels = 6\ncrossed = [0, 1]\n')
    assert "crossed" in crossed
    rig = await make_rig(tmp_path, crossed)
    try:
        assert (await rig.scan("D-1")).pulsed  # d01's lock is pulsed ...
        await rig.pull(rig.d, 0)  # ... its door opens, and its sensor is wired to d02's input
        evs = await rig.events()
        [fault] = [e for e in evs if e.kind == "fault.wiring_suspected"]
        assert (fault.data["pulsed"], fault.data["opened"]) == ("d01", "d02") and "lockerd-hil" in fault.data["detail"]
        assert not [e for e in evs if e.kind == "alarm.forced"]  # not blamed on a person
        for cid, code in (("d01", "D-2"), ("d02", "D-3")):  # one occurrence blocks both
            assert "wiring" in rig.c.slots[cid].faults
            out = await rig.scan(code)
            assert not out.pulsed and "in fault (wiring" in out.message
        await rig.close(rig.d, 0)
        await rig.clock.advance(11)  # d01's door was never seen open: door.not_opened, nothing recorded as moved
        assert rig.c.registry.items["D-1"].state == "new"
        assert rig.c.doors.clear_faults("d01", "nowak") == ["wiring"]
        assert rig.c.doors.clear_faults("d02", "nowak") == ["wiring"]
    finally:
        await close_rig(rig)


BOARD_TOML = """
[controller]
site = "test-site"
node = "node-1"
control_socket = "lockerd.sock"
[journal]
path = "journal.db"
[timing]
pulse_ms = 5000
[buses.gw]
type = "tcp"
host = "127.0.0.1"
port = {port}
timeout_ms = 300
[drivers.board]
type = "modbus"
bus = "gw"
unit = 1
coils = 4
inputs = 4
[cabinets.d]
kind = "dossier"
lock_driver = "board"
count = 4
[scanners.front]
type = "sim"
cabinets = ["d"]
"""


@pytest.mark.asyncio
async def test_a_killed_daemons_relay_is_switched_off_by_the_service_managers_all_off(tmp_path: Path) -> None:
    """The unit's ExecStopPost= runs `lockerd all-off`: a relay left on by a SIGKILL goes off within moments."""
    peer = RelayPeer([1], coils=4, inputs=4)
    port = await peer.start_tcp()
    try:
        cfg = tmp_path / "lockerd.toml"
        cfg.write_text(BOARD_TOML.format(port=port))
        (tmp_path / "data.json").write_text(json.dumps({"items": [
            {"code": "D-9", "kind": "dossier", "case_name": "", "category": "", "officer": "", "compartment": "d02"}]}))
        proc = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            await asyncio.to_thread(wait_for_socket, tmp_path / "lockerd.sock", proc)
            assert (await asyncio.to_thread(cli, cfg, "import", str(tmp_path / "data.json"))).returncode == 0
            out = await asyncio.to_thread(cli, cfg, "sim", "scan", "D-9")
            assert "open d02" in out.stdout, out
            await peer.wait_for(lambda: peer.coils_of(1), timeout_s=3.0)
            assert (await peer.coils_of(1))[1] is True  # a 5 s pulse: the solenoid is energised ...
        finally:
            proc.kill()  # ... and the daemon dies in the middle of it
            await asyncio.to_thread(proc.wait)
        killed = time.monotonic()
        off = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "lockerd", "all-off", "-c", str(cfg)],
                                      capture_output=True, text=True, timeout=30)
        assert off.returncode == 0, off.stderr
        assert "board: every relay off" in off.stdout
        assert (await peer.coils_of(1)) == [False] * 4
        assert time.monotonic() - killed < 2.0  # interpreter start included; the unit adds no delay of its own
    finally:
        await peer.stop()

