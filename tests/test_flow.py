"""The scan-to-open flow on simulated hardware, with time driven by hand."""

from __future__ import annotations

import sqlite3

import pytest
import pytest_asyncio
from rig import TOML, close_rig, make_rig

from lockerd.errors import CommandError
from lockerd.journal import verify

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await make_rig(tmp_path)
    yield r
    await close_rig(r)


async def test_deposit_checkout_return_cycle(rig):
    start = rig.journal.last_seq
    out = await rig.scan("D-1")
    assert out.accepted and out.pulsed and out.compartment == "d01"
    assert await rig.pull(rig.d, 0)  # the latch is released: the door opens
    await rig.close(rig.d, 0)
    await rig.flush()
    assert rig.c.registry.items["D-1"].state == "in"
    await rig.clock.advance(1)
    out = await rig.scan("D-1")
    assert "checkout" in out.message
    await rig.pull(rig.d, 0)
    await rig.close(rig.d, 0)
    await rig.flush()
    assert rig.c.registry.items["D-1"].state == "out"
    await rig.clock.advance(1)
    assert "return" in (await rig.scan("D-1")).message
    await rig.pull(rig.d, 0)
    await rig.close(rig.d, 0)
    kinds = await rig.kinds(start, "d01")
    assert [k for k in kinds if k.startswith("dossier.")] == [
        "dossier.deposited", "dossier.checked_out", "dossier.returned"]
    assert kinds[:6] == ["scan", "access.granted", "lock.pulsed", "door.opened", "door.closed",
                         "dossier.deposited"]
    assert rig.c.registry.items["D-1"].state == "in"
    assert verify(rig.cfg.journal_path).ok


async def test_grant_is_on_disk_before_the_lock_moves(rig):
    seen = []
    energise = rig.d._energise

    async def spy(channel, ms):
        # A separate connection sees only what is committed (and fsynced).
        conn = sqlite3.connect(rig.cfg.journal_path)
        rows = conn.execute("SELECT kind, dossier FROM events WHERE kind = 'access.granted'").fetchall()
        conn.close()
        seen.append(rows)
        await energise(channel, ms)

    rig.d._energise = spy
    await rig.scan("D-3")
    assert seen == [[("access.granted", "D-3")]]


async def test_dossier_opens_only_its_own_compartment(rig):
    await rig.scan("D-3")
    assert [ch for ch, _, _ in rig.d.pulse_log] == [1]
    assert rig.e.pulse_log == []
    assert rig.d.released(1) and not any(rig.d.released(c) for c in (0, 2, 3, 4, 5))


async def test_repeat_scan_while_open_does_not_pulse_again(rig):
    await rig.scan("D-1")
    await rig.pull(rig.d, 0)
    await rig.flush()
    out = await rig.scan("D-1")
    assert out.accepted and not out.pulsed
    out2 = await rig.scan("D-2")  # another dossier of the same open compartment
    assert out2.accepted and not out2.pulsed
    assert len(rig.d.pulse_log) == 1
    await rig.close(rig.d, 0)
    await rig.flush()
    assert rig.c.registry.items["D-2"].state == "in"  # recorded with the same opening


async def test_second_scan_while_unlocking_does_not_pulse_twice(rig):
    await rig.scan("D-1")
    out = await rig.scan("D-1")
    assert not out.pulsed
    assert len(rig.d.pulse_log) == 1


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        ("NOPE-123", "unknown code"),
        ("D-NOWHERE", "not assigned"),
        (b"", "empty"),
        (b"\xff\xfeabc", "UTF-8"),
        (b"AB\x07CD", "control character"),
        (b"X" * 300, "too long"),
    ],
)
async def test_refusals_are_journaled_with_a_reason(rig, code, reason):
    start = rig.journal.last_seq
    out = await rig.scan(code)
    assert not out.accepted and reason in out.message
    evs = await rig.events(start)
    assert [e.kind for e in evs] == ["scan", "access.denied"]
    assert reason in evs[1].data["reason"]
    assert rig.d.pulse_log == [] and rig.e.pulse_log == []


async def test_a_badge_before_a_dossier_names_who_takes_it_out(rig):
    out = await rig.scan("B-BERG", scanner="side")  # the side scanner serves dossiers only
    assert out.accepted and out.message == "badge of Anna Berg accepted: scan the dossier"


async def test_dossier_at_a_scanner_of_another_cabinet_is_refused(tmp_path):
    r = await make_rig(tmp_path, TOML.replace('[scanners.side]\ntype = "sim"\ncabinets = ["d"]',
                                              '[scanners.side]\ntype = "sim"\ncabinets = ["e"]'))
    try:
        out = await r.scan("D-1", scanner="side")
        assert not out.accepted and "cabinet d" in out.message
    finally:
        await close_rig(r)


async def test_evidence_needs_officer_and_case_manager_in_either_order(rig):
    assert (await rig.scan("E-1")).accepted  # waiting for people, not refused
    await rig.scan("B-LIND")
    assert rig.e.pulse_log == []
    out = await rig.scan("B-BERG")
    assert out.pulsed and out.compartment == "e01"
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    evs = await rig.events()
    dep = [e for e in evs if e.kind == "evidence.deposited"]
    assert len(dep) == 1 and set(dep[0].people) == {"berg", "lind"}
    assert rig.c.registry.items["E-1"].depositor == "berg"


async def test_depositor_alone_can_never_reopen_evidence(rig):
    await rig.scan("B-BERG")
    await rig.scan("E-1")
    await rig.scan("B-LIND")
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    await rig.clock.advance(120)
    # Now the depositor alone, even with two of his own badges.
    await rig.scan("B-BERG")
    await rig.scan("E-1")
    out = await rig.scan("B-BERG-2")
    assert not out.pulsed and "case manager" in out.message
    await rig.clock.advance(61)  # the window closes: the attempt is refused and journaled
    evs = await rig.events()
    denied = [e for e in evs if e.kind == "access.denied" and e.dossier == "E-1"]
    assert denied and "evidence rule not met" in denied[-1].data["reason"]
    assert len(rig.e.pulse_log) == 1


async def test_two_officers_do_not_make_an_evidence_opening(rig):
    await rig.scan("B-BERG")
    await rig.scan("B-OKAFOR")
    out = await rig.scan("E-1")
    assert not out.pulsed and "case manager" in out.message


async def test_badges_expire_after_the_window(rig):
    await rig.scan("B-BERG")
    await rig.clock.advance(61)
    await rig.scan("E-1")
    out = await rig.scan("B-LIND")
    assert not out.pulsed and "officer" in out.message


async def test_a_forced_door_stays_an_alarm_until_a_supervisor_or_case_manager_acknowledges_it(rig):
    rig.d.force(3)
    await rig.clock.advance(0.05)
    assert "forced" in rig.c.states()["d04"]["alarm"]
    with pytest.raises(CommandError, match="not shut"):
        await rig.c.alarms.acknowledge("d04", "lind", "", {"via": "cli"})
    await rig.close(rig.d, 3)
    kinds = await rig.kinds(compartment="d04")
    assert kinds[-3:] == ["door.opened", "alarm.forced", "door.closed"]  # shut, and still an alarm
    assert rig.c.states()["d04"]["alarm"] == "forced"
    assert rig.c.alarms.waiting() == [{"compartment": "d04", "alarms": ["forced"], "door": "closed"}]
    with pytest.raises(CommandError, match="berg is officer: a supervisor or a case manager acknowledges"):
        await rig.c.alarms.acknowledge("d04", "berg", "", {"via": "cli"})
    out = await rig.c.alarms.acknowledge("d04", "lind", "hinge checked, nothing missing", {"via": "cli", "uid": 0})
    assert out["acknowledged"] == ["forced"]
    [ack] = [e for e in await rig.events() if e.kind == "alarm.acknowledged"]
    assert list(ack.people) == ["lind"] and ack.data["note"] == "hinge checked, nothing missing"
    assert rig.c.states()["d04"]["alarm"] is None and rig.c.alarms.waiting() == []


async def test_a_case_manager_acknowledges_a_forced_door_at_the_cabinet_by_badging_twice(rig):
    rig.d.force(3)
    await rig.clock.advance(0.05)
    # An officer's badges never acknowledge; the case manager's first badge is told what waits.
    for _ in range(2):
        out = await rig.scan("B-BERG")
        assert "acknowledge" not in out.message
        await rig.clock.advance(1)
    first = await rig.scan("B-LIND")
    assert first.accepted and first.message.endswith("forced alarm on d04: badge again to acknowledge")
    await rig.clock.advance(1)
    still_open = await rig.scan("B-LIND")  # the door is open yet: nothing is acknowledged
    assert not still_open.accepted and "d04 still open: close it" in still_open.message
    assert rig.c.states()["d04"]["alarm"] == "forced"
    await rig.close(rig.d, 3)
    await rig.scan("B-LIND")
    await rig.clock.advance(1)
    out = await rig.scan("B-LIND")
    assert out.accepted and out.message == "alarm on d04 acknowledged by Maria Lindqvist"
    [ack] = [e for e in await rig.events() if e.kind == "alarm.acknowledged"]
    assert ack.compartment == "d04" and list(ack.people) == ["lind"]
    assert ack.data["via"] == "cabinet" and ack.data["scanner"] == "front" and ack.data["alarms"] == ["forced"]
    assert rig.c.states()["d04"]["alarm"] is None and rig.c.alarms.waiting() == []


async def test_one_badge_read_twice_in_a_burst_acknowledges_nothing(tmp_path):
    rig = await make_rig(tmp_path, TOML + "[evidence]\nbadge_burst_ms = 300\n")
    try:
        rig.d.force(3)
        await rig.clock.advance(0.05)
        await rig.close(rig.d, 3)
        await rig.scan("B-LIND")
        await rig.clock.advance(0.05)  # a printed badge read twice: 50 ms apart
        out = await rig.scan("B-LIND")
        assert "acknowledged" not in out.message and rig.c.states()["d04"]["alarm"] == "forced"
    finally:
        await close_rig(rig)


async def test_door_held_open_alarm_repeats_until_closed(rig):
    await rig.scan("D-3")
    await rig.pull(rig.d, 1)
    await rig.clock.advance(59)
    assert "alarm.held_open" not in await rig.kinds()
    await rig.clock.advance(2)  # past max_open_s = 60
    await rig.clock.advance(30)  # repeated every alarm_repeat_s = 30
    await rig.clock.advance(30)
    held = [e for e in await rig.events() if e.kind == "alarm.held_open"]
    assert [e.data["count"] for e in held] == [1, 2, 3]
    await rig.close(rig.d, 1)
    await rig.clock.advance(100)
    kinds = await rig.kinds(compartment="d02")
    assert kinds.count("alarm.held_open") == 3 and kinds[-1] == "alarm.cleared"


async def test_pulse_without_opening_is_reported_not_opened(rig):
    await rig.scan("D-3")
    await rig.clock.advance(10.5)
    evs = [e for e in await rig.events() if e.compartment == "d02"]
    assert evs[-1].kind == "door.not_opened"
    assert rig.c.registry.items["D-3"].state == "new"  # nothing changed hands


async def test_jammed_lock_ends_in_fault_and_refusals(rig):
    rig.d.jam(1)
    for _ in range(3):
        out = await rig.scan("D-3")
        assert out.pulsed
        assert not await rig.pull(rig.d, 1)  # pulled, but the latch is jammed
        await rig.clock.advance(11)
    out = await rig.scan("D-3")
    assert not out.accepted and "fault" in out.message
    assert "jam" in " ".join(rig.c.states()["d02"]["faults"])
    assert len(rig.d.pulse_log) == 3
    rig.d.jam(1, jammed=False)
    assert rig.c.doors.clear_faults("d02", "nowak") == ["jam"]
    assert (await rig.scan("D-3")).pulsed


async def test_bouncing_sensor_gives_one_open_and_one_close(rig):
    await rig.scan("D-3")
    await rig.pull(rig.d, 1)
    rig.d.bounce(1, times=4, interval_s=0.003)
    await rig.clock.advance(0.2)
    await rig.close(rig.d, 1)
    rig.d.bounce(1, times=4, interval_s=0.003)
    await rig.clock.advance(0.2)
    kinds = await rig.kinds(compartment="d02")
    assert kinds.count("door.opened") == 1 and kinds.count("door.closed") == 1
    assert "alarm.forced" not in kinds


async def test_a_board_polled_slower_than_the_settle_window_counts_a_reading_at_once(rig):
    await rig.scan("D-3")
    rig.d.pull(1)  # read as it happens (sample_period_s 0): debounced
    await rig.flush()
    assert rig.c.states()["d02"]["door"] == "closed"
    await rig.clock.advance(0.05)
    assert rig.c.states()["d02"]["door"] == "open"
    # Read every 100 ms, like a Modbus board at 10 Hz: no reading can land
    # inside the 20 ms window, so waiting it out would only add latency.
    rig.d.sample_period_s = 0.1
    rig.d.close_door(1)
    await rig.flush()
    assert rig.c.states()["d02"]["door"] == "closed"
    assert (await rig.kinds(compartment="d02")).count("door.closed") == 1


async def test_power_budget_caps_energised_solenoids(rig):
    for code in ("D-1", "D-3"):
        await rig.scan(code)
    assert rig.hw.budget.in_use == 2
    # A third pulse waits for a slot instead of overloading the supply.
    import asyncio

    third = asyncio.create_task(rig.c.remote_open("d05", "test", {"command_id": "cmd-1", "requested_by": "nowak"}))
    await rig.clock.settle()
    assert not third.done()
    await rig.clock.advance(0.6)
    out = await third
    assert out.pulsed and rig.hw.budget.peak == 2


async def test_board_vanishing_puts_its_compartments_in_fault(rig):
    rig.d.vanish()
    await rig.flush()
    out = await rig.scan("D-1")
    assert not out.accepted and "fault" in out.message
    rig.d.reappear()
    await rig.flush()
    assert (await rig.scan("D-1")).pulsed


async def test_stuck_relay_is_reported_and_the_compartment_faulted(rig):
    rig.d.stick(1)
    await rig.scan("D-3")
    await rig.clock.advance(1)
    assert any("relay" in f for f in rig.c.states()["d02"]["faults"])
    rig.d.stick(1, stuck=False)
    await rig.clock.advance(3)
    assert rig.c.states()["d02"]["faults"] == []
    assert 1 not in rig.d.energised


async def test_a_station_open_of_a_compartment_already_open_joins_it_without_a_second_pulse(rig):
    assert (await rig.scan("D-1")).pulsed
    out = await rig.c.remote_open("d01", "officer locked out", {"command_id": "cmd-2", "requested_by": "nowak"})
    assert out.accepted and not out.pulsed
    assert len(rig.d.pulse_log) == 1
    last = [e for e in await rig.events() if e.kind == "access.granted" and e.compartment == "d01"][-1]
    assert last.data["reason"] == "officer locked out" and last.data["command_id"] == "cmd-2"
    assert last.data["pulse"] is False and last.data["no_pulse"] == "door already open"
