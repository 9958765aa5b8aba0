"""Overrides: the two-person emergency open and the technician's maintenance mode."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import jsonschema
import pytest
import pytest_asyncio
from broker import Mosquitto, Recorder, wait_for
from evidence_rig import deposit, evidence_rig
from rig import close_rig, make_rig
from test_station_commands import reply_for
from test_station_daemon import station_daemon

from lockerd import cli
from lockerd.control_socket import ControlServer
from lockerd.errors import CommandError
from lockerd.journal import verify
from lockerd.station import contract


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await evidence_rig(tmp_path)
    yield r
    await close_rig(r)


async def refused(rig, coro, message: str) -> None:
    """The override is refused with ``message``, journaled as override.refused, and nothing moved."""
    start = rig.journal.last_seq
    pulses = len(rig.d.pulse_log) + len(rig.e.pulse_log)
    with pytest.raises(CommandError) as e:
        await coro
    assert message in str(e.value), str(e.value)
    evs = await rig.events(start)
    assert [ev.kind for ev in evs] == ["override.refused"]
    assert evs[0].data["error"] == str(e.value)
    assert len(rig.d.pulse_log) + len(rig.e.pulse_log) == pulses


# -- emergency open ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_emergency_open_with_one_person_is_refused(rig):
    await refused(rig, rig.c.overrides.emergency_open(["holm"], "flooding", compartment="e01"),
                  "needs two people")


async def badge_in(rig, *codes: str) -> None:
    """The named people badge at the cabinet's scanner, one after the other; the override then goes ahead."""
    for code in codes:
        out = await rig.scan(code)
        assert out.accepted, out.message
    while rig.c.overrides.awaiting:
        await rig.clock.advance(0.01)
    await rig.flush()


@pytest.mark.asyncio
async def test_cli_emergency_open_of_evidence_waits_for_both_badges_then_opens_and_journals_both(rig):
    await deposit(rig)
    start = rig.journal.last_seq
    seen = []
    energise = rig.e._energise

    async def spy(channel, ms):
        # A second connection sees only what is committed: the alarm and the grant must be there.
        conn = sqlite3.connect(rig.cfg.journal_path)
        seen.append([k for (k,) in conn.execute("SELECT kind FROM events WHERE seq > ?", (start,))])
        conn.close()
        await energise(channel, ms)

    rig.e._energise = spy
    rig.e.pulse_log.clear()  # the deposit's pulse
    res = await rig.c.overrides.emergency_open(["lind", "holm"], "water coming through the ceiling",
                                               compartment="e01", via={"via": "cli", "user": "duty"})
    # Typed names open nothing: the CLI is told who must badge, and nothing moved yet.
    assert res["waiting"] is True and res["people"] == ["lind", "holm"] and res["cabinets"] == ["e"]
    assert "lind and holm must badge at a scanner of cabinet e" in res["message"]
    assert rig.e.pulse_log == []
    out = await rig.scan("B-LIND")
    assert "waiting for holm" in out.message and rig.e.pulse_log == []
    await badge_in(rig, "B-HOLM")
    assert [ch for ch, _, _ in rig.e.pulse_log] == [0]
    assert seen == [["override.waiting", "scan", "badge.accepted", "scan", "badge.accepted",
                     "alarm.emergency_open", "access.granted"]]
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    evs = await rig.events(start)
    waiting, alarm = evs[0], evs[5]
    assert waiting.kind == "override.waiting" and waiting.seq == res["seq"] and waiting.data["user"] == "duty"
    assert [e.data["override_seq"] for e in evs if e.kind == "badge.accepted"] == [waiting.seq] * 2
    assert alarm.kind == "alarm.emergency_open" and alarm.data["waited_seq"] == waiting.seq
    assert list(alarm.people) == ["lind", "holm"] and alarm.data["reason"] == "water coming through the ceiling"
    assert alarm.data["compartments"] == ["e01"] and alarm.data["via"] == "cli" and alarm.data["user"] == "duty"
    grant = evs[6]
    assert grant.kind == "access.granted" and list(grant.people) == ["lind", "holm"]
    assert grant.data["source"] == "emergency" and grant.data["override_seq"] == alarm.seq
    assert grant.data["reason"] == "water coming through the ceiling"
    # No items moved: the evidence stays deposited, and the door was a granted opening, not forced.
    assert rig.c.registry.items["E-1"].state == "in"
    assert not [e for e in evs if e.kind in ("alarm.forced", "evidence.retrieved")]
    assert verify(rig.cfg.journal_path).ok


@pytest.mark.asyncio
@pytest.mark.parametrize("people,reason,message", [
    (["holm", "lind"], "", "a reason is required"),
    (["holm", "lind"], "   \n", "a reason is required"),
    (["holm", "lind"], "x" * 257, "at most 256"),
    (["holm", "holm"], "fire", "two different people"),
    (["holm", "nobody"], "fire", "unknown person 'nobody'"),
    (["holm", "ex"], "fire", "person 'ex' is revoked"),
    (["berg", "lind"], "fire", "berg is officer, lind is case_manager"),
    (["holm", "nowak"], "fire", "nowak is technician"),
    (["holm", "lind", "sato"], "fire", "3 given"),
    ("holm", "fire", "expected a list of two person ids"),
])
async def test_bad_emergency_requests_are_refused_with_nothing_applied(rig, people, reason, message):
    await refused(rig, rig.c.overrides.emergency_open(people, reason, compartment="d01"), message)


@pytest.mark.asyncio
async def test_emergency_open_needs_one_target(rig):
    await refused(rig, rig.c.overrides.emergency_open(["holm", "lind"], "fire"), "not both and not neither")
    await refused(rig, rig.c.overrides.emergency_open(["holm", "lind"], "fire", compartment="z99"),
                  "unknown compartment 'z99'")
    await refused(rig, rig.c.overrides.emergency_open(["holm", "lind"], "fire", all_compartments=True,
                                                      cabinet="q"), "unknown cabinet 'q'")


@pytest.mark.asyncio
async def test_two_supervisors_may_authorise(rig):
    res = await rig.c.overrides.emergency_open(["holm", "sato"], "fire alarm", compartment="d03")
    assert res["pulsed"] and [ch for ch, _, _ in rig.d.pulse_log] == [2]


@pytest.mark.asyncio
async def test_all_in_turn_never_energises_more_than_the_budget(rig):
    res = await rig.c.overrides.emergency_open(["holm", "lind"], "building evacuation", all_compartments=True)
    assert res["waiting"] and res["compartments"] == [f"d{i:02d}" for i in range(1, 7)] + [
        f"e{i:02d}" for i in range(1, 5)]
    await badge_in(rig, "B-HOLM", "B-LIND")
    [alarm] = [e for e in await rig.events() if e.kind == "alarm.emergency_open"]
    while not rig.c.overrides.running.done():
        await rig.clock.advance(0.1)
    assert rig.hw.budget.peak <= rig.cfg.max_energised
    # In turn: each pulse starts after the previous one was switched off.
    pulses = sorted((at, ms) for board in (rig.d, rig.e) for _, ms, at in board.pulse_log)
    assert len(pulses) == 10
    assert all(b[0] >= a[0] + a[1] / 1000 for a, b in zip(pulses, pulses[1:], strict=False))
    evs = await rig.events()
    grants = [e for e in evs if e.kind == "access.granted"]
    assert [g.compartment for g in grants] == res["compartments"]
    assert all(g.data["source"] == "emergency" and g.data["override_seq"] == alarm.seq for g in grants)
    [done] = [e for e in evs if e.kind == "override.finished"]
    assert done.data["opened"] == res["compartments"] and done.data["failed"] == {}


@pytest.mark.asyncio
async def test_all_in_turn_skips_a_compartment_whose_lock_is_offline_and_says_so(rig):
    rig.c.slots["d02"].faults["lock"] = "driver sim-d offline: test"
    await rig.c.overrides.emergency_open(["holm", "lind"], "evacuation", all_compartments=True, cabinet="d")
    while not rig.c.overrides.running.done():
        await rig.clock.advance(0.1)
    evs = await rig.events()
    [done] = [e for e in evs if e.kind == "override.finished"]
    assert "d02" in done.data["failed"] and "d02" not in done.data["opened"] and len(done.data["opened"]) == 5
    denied = [e for e in evs if e.kind == "access.denied" and e.compartment == "d02"]
    assert denied and denied[0].data["source"] == "emergency"


# -- maintenance mode ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_maintenance_open_does_not_change_custody_state(rig):
    await rig.scan("D-1")  # deposit D-1 into d01
    await rig.pull(rig.d, 0)
    await rig.close(rig.d, 0)
    await deposit(rig)  # and E-1 into e01
    start = rig.journal.last_seq
    on = await rig.c.overrides.maintenance_on("nowak", "replacing the solenoid of d01")
    for cid, board, ch in (("d01", rig.d, 0), ("e01", rig.e, 0)):
        if cid == "e01":  # evidence: with a witness, once both badged at the cabinet
            rig.e.pulse_log.clear()  # the deposit's pulse
            res = await rig.c.overrides.maintenance_open(cid, "nowak", witness="lind")
            assert res["waiting"] and rig.e.pulse_log == []
            await badge_in(rig, "B-NOWAK", "B-LIND")
            assert rig.e.pulse_log
        else:
            res = await rig.c.overrides.maintenance_open(cid, "nowak")
            assert res["pulsed"]
        await rig.pull(board, ch)
        await rig.close(board, ch)
    off = await rig.c.overrides.maintenance_off("nowak")
    assert off["opens"] == 2
    evs = await rig.events(start)
    kinds = [e.kind for e in evs]
    assert kinds[0] == "maintenance.started" and kinds[-1] == "maintenance.ended"
    assert kinds.count("maintenance.open") == 2 and "access.granted" not in kinds
    assert not [k for k in kinds if k.startswith(("dossier.", "evidence.", "alarm."))]
    opens = [e for e in evs if e.kind == "maintenance.open"]
    assert all(e.data["maintenance_seq"] == on["seq"] for e in opens)
    assert [list(e.people) for e in opens] == [["nowak"], ["nowak", "lind"]]
    closed = [e for e in evs if e.kind == "door.closed"]
    assert [c.data["grant_seq"] for c in closed] == [e.seq for e in opens]
    assert evs[-1].data["started_seq"] == on["seq"] and evs[-1].data["opens"] == 2
    assert rig.c.registry.items["D-1"].state == "in" and rig.c.registry.items["E-1"].state == "in"
    assert rig.c.registry.items["E-1"].depositor == "berg"


@pytest.mark.asyncio
async def test_maintenance_may_pulse_a_jammed_compartment(rig):
    for _ in range(3):  # three pulses without the door opening: the compartment goes into fault
        await rig.c.remote_open("d04", "test", {"command_id": "c1", "requested_by": "station"})
        await rig.clock.advance(11)
    assert "jam" in rig.c.slots["d04"].faults
    await rig.c.overrides.maintenance_on("nowak", "jam on d04")
    res = await rig.c.overrides.maintenance_open("d04", "nowak")
    assert res["pulsed"]
    await rig.pull(rig.d, 3)
    assert "jam" not in rig.c.slots["d04"].faults  # the door opened: the jam is cleared


@pytest.mark.asyncio
async def test_bad_maintenance_requests_are_refused(rig):
    o = rig.c.overrides
    await refused(rig, o.maintenance_open("d01", "nowak"), "maintenance is not on")
    await refused(rig, o.maintenance_off("nowak"), "maintenance is not on")
    await refused(rig, o.maintenance_on("berg", "testing"), "berg is officer: maintenance is for technicians")
    await refused(rig, o.maintenance_on("nobody", "testing"), "unknown person 'nobody'")
    await refused(rig, o.maintenance_on("nowak", " "), "a reason is required")
    assert o.maintenance is None
    first = await o.maintenance_on("nowak", "testing")
    await refused(rig, o.maintenance_on("nowak", "again"), "maintenance is on already")
    assert o.maintenance is not None and o.maintenance.seq == first["seq"] and o.maintenance.reason == "testing"
    await refused(rig, o.maintenance_open("z99", "nowak"), "unknown compartment 'z99'")
    await refused(rig, o.maintenance_open("d01", "holm"), "holm is supervisor")
    assert rig.d.pulse_log == []


@pytest.mark.asyncio
async def test_maintenance_mode_survives_a_restart(tmp_path):
    r = await evidence_rig(tmp_path)
    try:
        await r.c.overrides.maintenance_on("nowak", "rewiring")
    finally:
        await close_rig(r)
    r2 = await make_rig(tmp_path, r.cfg.path.read_text(), data=None, clock=r.clock)
    try:
        m = r2.c.overrides.maintenance
        assert m is not None and m.person == "nowak" and m.reason == "rewiring"
        assert (await r2.c.overrides.maintenance_off("nowak"))["opens"] == 0
    finally:
        await close_rig(r2)


# -- the paths in: the CLI over the control socket, and the station over MQTT ----------------------


@pytest.mark.asyncio
async def test_cli_reaches_the_overrides_through_the_control_socket(rig, capsys):
    server = ControlServer(rig.cfg.control_socket, rig.c)
    await server.start()
    conf = str(rig.cfg.path)
    try:
        rc = await asyncio.to_thread(cli.main, ["emergency-open", "d02", "--person", "holm", "--reason", "fire",
                                                "-c", conf])
        assert rc == 1 and "needs two people" in capsys.readouterr().err
        rc = await asyncio.to_thread(cli.main, ["emergency-open", "d02", "--person", "holm", "--person", "lind",
                                                "--reason", "fire in the archive", "-c", conf])
        assert rc == 0 and "open d02" in capsys.readouterr().out
        rc = await asyncio.to_thread(cli.main, ["maintenance", "on", "--person", "nowak", "--reason", "test",
                                                "-c", conf])
        assert rc == 0
        rc = await asyncio.to_thread(cli.main, ["maintenance", "open", "d05", "--person", "nowak", "-c", conf])
        assert rc == 0 and "open d05" in capsys.readouterr().out
        rc = await asyncio.to_thread(cli.main, ["maintenance", "off", "--person", "nowak", "-c", conf])
        assert rc == 0
    finally:
        await server.stop()
    kinds = await rig.kinds()
    ours = [k for k in kinds if k.startswith(("override.", "alarm.emerg", "maintenance."))]
    assert ours == ["override.refused", "alarm.emergency_open", "maintenance.started", "maintenance.open",
                    "maintenance.ended"]
    assert [ch for ch, _, _ in rig.d.pulse_log] == [1, 4]


@pytest.mark.asyncio
async def test_emergency_open_as_a_station_command(tmp_path: Path, mosquitto: Mosquitto,
                                                   recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (_, station, rec):
        people = [station.send("register-person", {"id": pid, "name": pid.title(), "role": role})
                  for pid, role in (("holm", "supervisor"), ("lind", "case_manager"))]
        one = station.send("emergency-open", {"compartment": "d02", "people": ["holm"], "reason": "fire"})
        blank = station.send("emergency-open", {"compartment": "d02", "people": ["holm", "lind"], "reason": " "})
        two = station.send("emergency-open", {"compartment": "d02", "people": ["holm", "lind"], "reason": "fire"})
        sent = [*people, one, blank, two]
        await wait_for(rec, lambda r: all(reply_for(r, c) for c in sent), 15)
        assert "needs two people" in reply_for(rec, one)[0]["error"]
        assert "a reason is required" in reply_for(rec, blank)[0]["error"]
        ok = reply_for(rec, two)[0]
        assert ok["ok"] is True and ok["result"]["pulsed"] is True
        # The alarm reaches the station on the events topic, valid against the contract.
        await wait_for(rec, lambda r: any(e["kind"] == "alarm.emergency_open" for e in r.on("/events")), 10)
        alarm = next(e for e in rec.on("/events") if e["kind"] == "alarm.emergency_open")
        jsonschema.validate(alarm, contract.EVENT)
        assert alarm["people"] == ["holm", "lind"] and alarm["data"]["command_id"] == two
        assert alarm["data"]["via"] == "station" and alarm["data"]["requested_by"] == "sgt-1"
        await wait_for(rec, lambda r: len([e for e in r.on("/events") if e["kind"] == "override.refused"]) == 2, 10)


@pytest.mark.asyncio
async def test_nothing_opens_while_the_controller_is_stopping(rig):
    await rig.c.overrides.maintenance_on("nowak", "testing")
    rig.c.stop_accepting("controller stopping")
    await refused(rig, rig.c.overrides.emergency_open(["holm", "lind"], "fire", compartment="d01"), "not now")
    await refused(rig, rig.c.overrides.maintenance_open("d01", "nowak"), "not now")


@pytest.mark.asyncio
async def test_a_cli_override_of_evidence_whose_people_do_not_badge_in_time_opens_nothing(rig):
    res = await rig.c.overrides.emergency_open(["lind", "holm"], "flooding", compartment="e02",
                                               via={"via": "cli", "user": "duty"})
    assert res["waiting"]
    await rig.scan("B-LIND")  # only one of the two comes
    while rig.c.overrides.awaiting:
        await rig.clock.advance(5)
    evs = await rig.events()
    [refusal] = [e for e in evs if e.kind == "override.refused"]
    assert refusal.data["error"] == "holm did not badge at the cabinet within 60 s: nothing opened"
    assert refusal.data["waited_seq"] == res["seq"] and refusal.data["user"] == "duty"
    assert rig.e.pulse_log == [] and not [e for e in evs if e.kind == "alarm.emergency_open"]
    # A later badge of the missing person counts for nothing: the wait is over.
    out = await rig.scan("B-HOLM")
    assert "waiting" not in out.message and rig.e.pulse_log == []
