"""Deadlines and escalating reminders on the sim rig, with time driven by hand."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import pytest_asyncio
from custody_rig import HOUR, MONDAY_0500, command, custody_rig, deposit, ladder, reminders, restart
from rig import close_rig, fill_disk

from lockerd.clock import iso_utc, parse_time
from lockerd.custody import RETRY_S
from lockerd.errors import JournalError
from lockerd.journal import verify

pytestmark = pytest.mark.asyncio

LADDER = [("reminder.due", 1, "officer"), ("reminder.escalated", 2, "supervisor"),
          ("reminder.escalated", 3, "legal")]


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await custody_rig(tmp_path)
    yield r
    await close_rig(r)


async def register(rig, code="D-NEW", due_in_h: float | None = 2.0, **kw):
    args = {"code": code, "compartment": "d03", "officer": "berg", "supervisor": "chief", "case_name": "New"} | kw
    if due_in_h is not None:
        args["deposit_due"] = iso_utc(rig.clock.wall() + due_in_h * HOUR)
    return await command(rig, "assign", **args)


async def test_registered_and_never_deposited_walks_the_whole_ladder(rig):
    reply = await register(rig, due_in_h=None)  # default: 24 h from intake
    assert reply["deposit_due"] == iso_utc(MONDAY_0500 + 24 * HOUR)
    await rig.clock.advance(24 * HOUR - 1)
    assert await reminders(rig, "D-NEW") == []
    await rig.clock.advance(2)
    sent = await reminders(rig, "D-NEW")
    assert ladder(sent) == LADDER[:1]
    assert sent[0].people == ("berg",) and sent[0].data["recipient"] == "berg"
    assert sent[0].compartment == "d03" and sent[0].data["deadline"] == "deposit"
    await rig.clock.advance(HOUR - 2)  # one second before the supervisor's hour is up
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    await rig.clock.advance(2)
    sent = await reminders(rig, "D-NEW")
    assert ladder(sent) == LADDER[:2]
    assert sent[1].people == ("chief",)
    await rig.clock.advance(2 * HOUR)
    sent = await reminders(rig, "D-NEW")
    assert ladder(sent) == LADDER
    assert sent[2].people == () and sent[2].data["recipient"] is None  # the station knows the legal section
    # The top of the ladder is the end: days later, nothing more, and it is listed as overdue at level 3.
    await rig.clock.advance(72 * HOUR)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER
    [row] = rig.c.custody.overdue()
    assert (row["code"], row["level"], row["to"], row["next"]) == ("D-NEW", 3, "legal", None)
    assert verify(rig.cfg.journal_path).ok


async def test_deposited_just_before_the_deadline_gets_nothing(rig):
    await register(rig, due_in_h=1)
    await rig.clock.advance(HOUR - 5)
    await deposit(rig, "D-NEW", 2)
    await rig.clock.advance(10 * HOUR)
    events = await reminders(rig, "D-NEW")
    assert [e.kind for e in events] == ["deadline.closed"]
    assert events[0].data["on_time"] is True and events[0].data["reason"] == "deposited"
    assert rig.c.custody.deadlines == {}
    assert rig.journal.query("SELECT COUNT(*) FROM deadlines") == [(0,)]


async def test_deposit_after_a_reminder_clears_it_at_once(rig):
    await register(rig, due_in_h=1)
    await rig.clock.advance(HOUR + 1)
    await deposit(rig, "D-NEW", 2)
    kinds = [e.kind for e in await rig.events() if e.dossier == "D-NEW"]
    # Cleared right after the deposit, before any more time passes.
    assert kinds[-2:] == ["dossier.deposited", "reminder.cleared"]
    await rig.clock.advance(10 * HOUR)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]


async def test_taken_out_at_shift_start_and_returned_late_gets_the_officer_reminder_only(rig):
    await rig.clock.advance(HOUR)  # 06:00 Berlin: the early shift starts
    await deposit(rig, "D-3", 1)  # D-3 was registered by the import, never deposited: now it is in
    start = rig.journal.last_seq
    await deposit(rig, "D-3", 1)  # taken out at the start of the early shift
    [out] = [e for e in await rig.events(start) if e.kind == "dossier.checked_out"]
    assert out.data["due"] == "2026-12-21T13:00:00.000Z" and out.data["shift"] == "early"  # 14:00 Berlin
    await rig.clock.advance(8 * HOUR + 60)  # 14:01: late
    await rig.clock.advance(20 * 60)  # returned at 14:21, before the supervisor's level (30 min)
    await deposit(rig, "D-3", 1)
    await rig.clock.advance(5 * HOUR)
    events = await reminders(rig, "D-3")
    assert ladder(events) == [("reminder.due", 1, "officer")]
    assert events[0].data["deadline"] == "return" and events[0].people == ("okafor",)
    assert events[-1].kind == "reminder.cleared" and events[-1].data["reason"] == "returned"


async def test_an_acknowledgement_pauses_escalation(rig):
    await register(rig, due_in_h=1)
    await rig.clock.advance(HOUR + 1)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    await rig.clock.advance(30 * 60)
    reply = await command(rig, "acknowledge", code="D-NEW", person="chief", note="calling him")
    [ack] = [e for e in await reminders(rig, "D-NEW") if e.kind == "reminder.acknowledged"]
    assert ack.seq == reply["seq"] and ack.people == ("chief",) and ack.data["pause_s"] == 5400
    # Without the acknowledgement the supervisor would be told 60 min after level 1; the pause holds
    # it back until 90 min after the acknowledgement.
    await rig.clock.advance(HOUR)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    await rig.clock.advance(30 * 60 - 2)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    await rig.clock.advance(4)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:2]
    row = rig.journal.query("SELECT level, ack_by FROM deadlines WHERE code = 'D-NEW'")
    assert row == [(2, "chief")]


async def test_a_restart_in_the_middle_of_a_ladder_neither_loses_nor_repeats(tmp_path):
    rig = await custody_rig(tmp_path)
    await register(rig, due_in_h=1)
    await rig.clock.advance(2 * HOUR + 10)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:2]
    rig2 = await restart(rig, tmp_path)
    try:
        assert rig2.c.custody.deadlines["D-NEW:deposit"].level == 2
        await rig2.clock.advance(HOUR)
        assert ladder(await reminders(rig2, "D-NEW")) == LADDER[:2]  # the supervisor is not told twice
        await rig2.clock.advance(HOUR)
        assert ladder(await reminders(rig2, "D-NEW")) == LADDER  # and legal is told, once
        await rig2.clock.advance(10 * HOUR)
        assert ladder(await reminders(rig2, "D-NEW")) == LADDER
    finally:
        await close_rig(rig2)


async def test_a_restart_after_a_power_cut_keeps_the_deadline(tmp_path):
    rig = await custody_rig(tmp_path)
    await register(rig, due_in_h=1)
    # The daemon dies before the deadline: no stop, no last events. The deadline is on disk with the assign.
    # Its tasks are gone before the next boot starts on the same clock.
    tasks = list(rig.c.tasks.running)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    rig.journal.close()
    await rig.hw.close()
    await rig.clock.advance(3 * HOUR)  # down for three hours, past the deadline
    rig2 = await custody_rig(tmp_path, clock=rig.clock, data=None)
    try:
        await rig2.clock.advance(1)
        assert ladder(await reminders(rig2, "D-NEW")) == LADDER[:1]  # due now, sent once
        await rig2.clock.advance(HOUR - 5)
        assert ladder(await reminders(rig2, "D-NEW")) == LADDER[:1]  # the supervisor gets his hour
        await rig2.clock.advance(10)
        assert ladder(await reminders(rig2, "D-NEW")) == LADDER[:2]
    finally:
        await close_rig(rig2)


async def test_the_wall_clock_jumping_forward_and_back(rig):
    await register(rig, due_in_h=5)
    await register(rig, code="D-LATER", due_in_h=50)
    # NTP steps the clock forward two days: the first deadline's first level goes out once
    # (the second deadline too: it is past as well), noticed within one tick.
    rig.clock.jump_wall(48 * HOUR)
    await rig.clock.advance(600)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    assert ladder(await reminders(rig, "D-LATER")) == []
    # ... and back again by a day: before the deadline by the wall clock, but the level stays sent.
    rig.clock.jump_wall(-24 * HOUR - HOUR)
    await rig.clock.advance(600)
    [due] = await reminders(rig, "D-NEW")
    assert ladder([due]) == LADDER[:1]
    # Escalation delays are durations: the supervisor is told an hour after level 1 by the monotonic
    # clock, not an hour after a wall-clock instant the jumps moved.
    await rig.clock.advance(due.mono + HOUR - 1 - rig.clock.monotonic())
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    await rig.clock.advance(2)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:2]
    # A jump forward past the second deadline sends its first level once, however far it goes.
    rig.clock.jump_wall(30 * HOUR)
    await rig.clock.advance(600)
    rig.clock.jump_wall(300 * HOUR)
    await rig.clock.advance(600)
    assert ladder(await reminders(rig, "D-LATER")) == LADDER[:1]
    assert len([e for e in await reminders(rig) if e.kind == "reminder.due"]) == 2


async def test_a_holiday_in_the_calendar(rig):
    # Friday 25 December is a holiday: a dossier taken out that morning is due at the end of the
    # next worked shift, Monday 28th's early shift (14:00 Berlin), not at 14:00 on the holiday.
    await deposit(rig, "D-3", 1)
    target = parse_time("2026-12-25T07:30:00Z")  # 08:30 Berlin, the holiday
    await rig.clock.advance(target - rig.clock.wall())
    start = rig.journal.last_seq
    await deposit(rig, "D-3", 1)
    [out] = [e for e in await rig.events(start) if e.kind == "dossier.checked_out"]
    assert out.data["due"] == "2026-12-28T13:00:00.000Z" and out.data["shift"] == "early"
    await rig.clock.advance(parse_time("2026-12-28T12:59:00Z") - rig.clock.wall())
    assert await reminders(rig, "D-3", start) == []
    await rig.clock.advance(120)
    assert ladder(await reminders(rig, "D-3", start)) == LADDER[:1]


async def test_evidence_has_its_own_deposit_ladder(rig):
    await command(rig, "assign", code="E-NEW", kind="evidence", compartment="e02", officer="berg",
                  deposit_due=iso_utc(rig.clock.wall() + HOUR))
    await rig.clock.advance(HOUR + 599)  # this ladder's first level waits 10 min after the deadline
    assert await reminders(rig, "E-NEW") == []
    await rig.clock.advance(2)
    sent = await reminders(rig, "E-NEW")
    assert ladder(sent) == [("reminder.due", 1, "officer")] and sent[0].data["deadline"] == "evidence_deposit"
    await rig.clock.advance(HOUR)
    # Its ladder has two levels; the supervisor is not named, so the station resolves who that is.
    sent = await reminders(rig, "E-NEW")
    assert ladder(sent) == [("reminder.due", 1, "officer"), ("reminder.escalated", 2, "supervisor")]
    assert sent[1].data["recipient"] is None and sent[1].data["levels"] == 2


async def test_release_of_a_dossier_in_its_compartment(rig):
    await deposit(rig, "D-3", 1)
    reply = await command(rig, "release", code="D-3", person="chief", reason="case closed, archived")
    assert reply["pulsed"] and reply["on_close"]
    assert await rig.pull(rig.d, 1)
    await rig.close(rig.d, 1)
    [ev] = [e for e in await rig.events() if e.kind == "dossier.released"]
    assert ev.people == ("chief",) and ev.data["reason"] == "case closed, archived"
    assert rig.c.registry.items["D-3"].state == "released"
    out = await rig.scan("D-3")
    assert not out.accepted and "released" in out.message


async def test_a_reminder_the_journal_could_not_take_is_sent_once_it_can(rig, caplog):
    await register(rig, due_in_h=1)
    await fill_disk(rig.journal)  # no commit can grow the database by a page
    await rig.clock.advance(HOUR + 1)
    with contextlib.suppress(JournalError):
        await rig.journal.flush()
    await rig.clock.settle()
    assert "D-NEW:deposit not journaled (journal write failed: database or disk is full)" in caplog.text
    # Not on disk, so not sent: the deadline is still at level 0, in memory as on disk.
    assert rig.c.custody.deadlines["D-NEW:deposit"].level == 0
    assert rig.journal.query("SELECT level FROM deadlines") == [(0,)]
    for _ in range(10):
        with contextlib.suppress(JournalError):
            await rig.journal.execute("PRAGMA max_page_count = 1073741823")
            break
    await rig.clock.advance(RETRY_S + 1)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
    await rig.clock.advance(HOUR - 60)
    assert ladder(await reminders(rig, "D-NEW")) == LADDER[:1]
