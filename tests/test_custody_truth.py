"""Custody records stay true (issue 15): each defect found by a property-room manager, on the controller and the
station's command handler with time driven by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import pytest_asyncio
from custody_rig import CUSTODY, HOUR, MONDAY_0500, command, custody_rig, deposit, ladder, reminders, restart
from rig import TOML, close_rig, make_rig

from lockerd import importer
from lockerd.clock import ManualClock, iso_utc, parse_time
from lockerd.deadlines import custody_rows
from lockerd.errors import CommandError
from lockerd.journal import connect

pytestmark = pytest.mark.asyncio

EVIDENCE = """
[evidence]
depositor_may_retrieve = false
due_back_h = 8
[evidence.reasons]
R-LAB = "forensic laboratory"
R-COURT = "court hearing"
[evidence.due_back]
R-LAB = 72
[custody.evidence_return]
levels = ["officer", "supervisor"]
after_s = [0, 3600]
ack_pause_s = 1800
"""


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await custody_rig(tmp_path)
    yield r
    await close_rig(r)


@pytest_asyncio.fixture
async def erig(tmp_path):
    r = await custody_rig(tmp_path, extra=CUSTODY + EVIDENCE)
    yield r
    await close_rig(r)


async def evidence_in_out(r, officer: str, card: str = "R-LAB") -> None:
    """``officer`` and the case manager take E-1 out with reason ``card``; the door opens and shuts."""
    for code in (officer, "E-1", card, "B-LIND"):
        out = await r.scan(code)
    assert out.pulsed, out.message
    assert await r.pull(r.e, 0)
    await r.close(r.e, 0)
    await r.clock.advance(1)  # the pulse ended
    await r.flush()


async def evidence_deposit(r, officer: str) -> None:
    for code in (officer, "E-1", "B-LIND"):
        out = await r.scan(code)
    assert out.pulsed, out.message
    assert await r.pull(r.e, 0)
    await r.close(r.e, 0)
    await r.clock.advance(1)
    await r.flush()


# 1 --------------------------------------------------------------------------------------------------------


async def test_an_items_kind_never_changes_by_re_registration(rig):
    with pytest.raises(CommandError, match="E-1 is registered as evidence: an item's kind never changes"):
        await command(rig, "assign", code="E-1", compartment="d02", kind="dossier")
    with pytest.raises(CommandError, match="kind never changes"):
        await importer.apply(rig.c, {"items": [{"code": "E-1", "kind": "dossier", "compartment": "d02"}]})
    await command(rig, "assign", code="E-1", compartment="e02")  # no kind named: it stays evidence
    assert rig.c.registry.items["E-1"].kind == "evidence"
    out = await rig.scan("E-1")
    assert not out.pulsed and "needs an officer's and a case manager's badge" in out.message


# 2 --------------------------------------------------------------------------------------------------------


async def test_re_registration_keeps_what_it_does_not_name_and_a_released_record_is_closed(rig):
    await command(rig, "assign", code="D-NEW", compartment="d03", officer="berg", case_name="Fraud 12",
                  category="fraud", supervisor="chief")
    await command(rig, "assign", code="D-NEW", compartment="d04")  # only what the contract requires
    item = rig.c.registry.items["D-NEW"]
    assert (item.compartment, item.officer, item.case_name, item.category) == ("d04", "berg", "Fraud 12", "fraud")
    await command(rig, "release", code="D-NEW", person="chief", reason="case closed")
    with pytest.raises(CommandError, match="was released on .*: its record is closed"):
        await command(rig, "assign", code="D-NEW", compartment="d04")
    assert rig.c.registry.items["D-NEW"].case_name == "Fraud 12"


# 3 and 4 --------------------------------------------------------------------------------------------------


async def test_a_badge_before_the_dossier_names_its_holder_who_is_reminded_first_then_the_named_supervisor(rig):
    await command(rig, "assign", code="D-3", compartment="d02", officer="okafor", supervisor="chief")
    [assigned] = [e for e in await rig.events() if e.kind == "item.assigned" and e.dossier == "D-3"][-1:]
    assert assigned.data["supervisor"] == "chief"
    await rig.clock.advance(HOUR)  # 06:00: the early shift
    await deposit(rig, "D-3", 1)
    assert (await rig.scan("B-BERG", scanner="side")).message == "badge of Anna Berg accepted: scan the dossier"
    await rig.scan("B-BERG")  # at the front scanner, where the dossier is scanned
    await deposit(rig, "D-3", 1)  # taken out by berg, okafor's dossier
    assert rig.c.registry.items["D-3"].holder == "berg"
    [out] = [e for e in await rig.events() if e.kind == "dossier.checked_out"]
    assert list(out.people) == ["berg"]
    with connect(rig.cfg.journal_path, readonly=True) as conn:
        [row] = custody_rows(conn, code="D-3")
    assert (row["holder"], row["officer"]) == ("berg", "okafor")
    await rig.clock.advance(8 * HOUR + 1900)  # past the end of the shift and the supervisor's 30 minutes
    sent = [e for e in await reminders(rig, "D-3") if e.kind.startswith("reminder.") and "level" in e.data]
    assert [(e.data["level"], e.data["to"], e.data["recipient"]) for e in sent] == [
        (1, "officer", "berg"), (2, "supervisor", "chief")]


async def test_a_station_may_require_a_badge_before_every_dossier(tmp_path):
    r = await custody_rig(tmp_path, extra=CUSTODY.replace("tick_s = 600", 'tick_s = 600\ndossier_badge = "required"'))
    try:
        out = await r.scan("D-1")
        assert not out.accepted and out.message == "refused: scan your badge, then the dossier"
        await r.scan("B-BERG")
        assert (await r.scan("D-1")).pulsed
    finally:
        await close_rig(r)


# 5 --------------------------------------------------------------------------------------------------------


async def test_reminders_reach_active_people_only_and_say_who_was_passed_over(rig):
    await importer.apply(rig.c, {"people": [{"id": "gone", "name": "Gone", "role": "officer"}]})
    await command(rig, "revoke-person", id="gone")
    with pytest.raises(CommandError, match="unknown or revoked responsible officer 'gone'"):
        await command(rig, "assign", code="D-X", compartment="d03", officer="gone")
    await command(rig, "assign", code="D-NEW", compartment="d03", officer="okafor", supervisor="chief",
                  deposit_due=iso_utc(rig.clock.wall() + HOUR))
    await command(rig, "revoke-person", id="okafor")
    await command(rig, "revoke-person", id="chief")
    await rig.clock.advance(HOUR + 10)
    [sent] = [e for e in await reminders(rig, "D-NEW") if e.kind == "reminder.due"]
    # Neither the officer nor the supervisor may be told: legal is, at once, and the event says why.
    assert (sent.data["level"], sent.data["to"], sent.data["recipient"]) == (3, "legal", None)
    assert sent.data["skipped"] == [
        {"level": 1, "to": "officer", "why": "responsible officer okafor is revoked"},
        {"level": 2, "to": "supervisor", "why": "supervisor chief is revoked"}]


# 6 --------------------------------------------------------------------------------------------------------


async def test_a_deadline_computed_from_an_unsynchronised_clock_is_corrected_once_it_is_synchronised(tmp_path):
    three_days = 3 * 24 * HOUR
    clock = ManualClock(wall=MONDAY_0500 + HOUR - three_days)  # no RTC: the board starts 3 days behind
    r = await custody_rig(tmp_path, clock=clock)
    try:
        await deposit(r, "D-3", 1)
        clock.synced = False
        await deposit(r, "D-3", 1)  # taken out at "06:00, three days ago"
        [out] = [e for e in await r.events() if e.kind == "dossier.checked_out"]
        assert out.data["clock_unsynchronised"] is True
        await clock.advance(6)
        clock.jump_wall(three_days)  # NTP sets the clock
        clock.synced = True
        await clock.advance(601)  # the deadlines' next look (custody.tick_s)
        [fixed] = [e for e in await r.events() if e.kind == "deadline.corrected"]
        assert fixed.data["was_due"] == out.data["due"] and fixed.data["clock_error_s"] == pytest.approx(three_days)
        assert fixed.data["due"] == "2026-12-21T13:00:00.000Z"  # the end of today's early shift
        assert not await reminders(r, "D-3")  # not "overdue 72 h" six seconds after the correction
        await clock.advance(8 * HOUR)  # 14:10 Berlin: ten minutes past the end of the shift
        assert ladder(await reminders(r, "D-3")) == [("reminder.due", 1, "officer")]
    finally:
        await close_rig(r)


async def test_a_daemon_restart_measures_the_next_rung_on_the_monotonic_clock_of_the_same_boot(tmp_path):
    r = await custody_rig(tmp_path)
    await command(r, "assign", code="D-NEW", compartment="d03", officer="berg", supervisor="chief",
                  deposit_due=iso_utc(r.clock.wall() + HOUR))
    await r.clock.advance(HOUR + 10)
    assert ladder(await reminders(r, "D-NEW")) == [("reminder.due", 1, "officer")]
    r2 = await restart(r, tmp_path)  # a new daemon process, the same OS boot
    try:
        r2.clock.jump_wall(-3 * 24 * HOUR)  # and the wall clock goes wrong meanwhile
        await r2.clock.advance(HOUR)  # the supervisor's rung is an hour after the officer's, by the monotonic clock
        assert ladder(await reminders(r2, "D-NEW")) == [("reminder.due", 1, "officer"),
                                                        ("reminder.escalated", 2, "supervisor")]
    finally:
        await close_rig(r2)


# 7 and 8 --------------------------------------------------------------------------------------------------


async def test_the_seizing_officer_never_co_signs_a_retrieval_and_evidence_out_is_due_back(erig):
    r = erig
    await evidence_deposit(r, "B-BERG")  # berg seized and deposited it
    await evidence_in_out(r, "B-OKAFOR")  # okafor takes it to the laboratory
    [retrieved] = [e for e in await r.events() if e.kind == "evidence.retrieved"]
    assert retrieved.data["due"] == iso_utc(parse_time(retrieved.ts) + 72 * HOUR)  # R-LAB: 72 h
    with pytest.raises(CommandError, match="cannot be unregistered"):
        await command(r, "unassign", code="E-1")
    await evidence_deposit(r, "B-OKAFOR")  # back from the lab: okafor deposited it last
    for code in ("B-BERG", "E-1", "R-COURT", "B-LIND"):
        out = await r.scan(code)
    assert not out.pulsed and "not the depositor berg" in out.message


async def test_evidence_kept_out_past_its_due_back_time_climbs_its_ladder(erig):
    r = erig
    await evidence_deposit(r, "B-BERG")
    await evidence_in_out(r, "B-OKAFOR", "R-COURT")  # court: due back after due_back_h (8 h)
    await r.clock.advance(8 * HOUR + 3700)
    sent = await reminders(r, "E-1")
    assert [(e.data["deadline"], e.data["level"], e.data["recipient"]) for e in sent] == [
        ("evidence_return", 1, "okafor"), ("evidence_return", 2, None)]


# 9 --------------------------------------------------------------------------------------------------------


async def test_a_registration_past_its_deadline_is_recorded_as_late_and_its_ladder_starts(rig):
    reply = await command(rig, "assign", code="D-LATE", compartment="d03", officer="berg",
                          taken_in=iso_utc(rig.clock.wall() - 25 * HOUR))
    assert reply["late"] is True and reply["late_s"] == pytest.approx(HOUR)
    await rig.clock.advance(1)
    assert ladder(await reminders(rig, "D-LATE")) == [("reminder.due", 1, "officer")]


# 10 -------------------------------------------------------------------------------------------------------


def run_cli(rig, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockerd", *args, "-c", str(rig.cfg.path)], capture_output=True,
                          text=True, timeout=30)


async def test_listings_speak_local_time_and_say_who_has_it_how_late_and_who_was_reminded(rig):
    await command(rig, "assign", code="D-NEW", compartment="d03", officer="berg", supervisor="chief",
                  deposit_due=iso_utc(rig.clock.wall() + HOUR))  # 06:00 Berlin
    await rig.clock.advance(2 * HOUR + 10)  # officer at 06:00, supervisor at 07:00
    await rig.flush()
    # 06:30 without an offset is the station's local time; the level reached by then is 1, not the 2 of now.
    at = json.loads(run_cli(rig, "overdue", "--at", "2026-12-21T06:30", "--json").stdout)
    assert (at["code"], at["level"], at["overdue_s"]) == ("D-NEW", 1, 1800)
    line = run_cli(rig, "custody", "--dossier", "D-NEW").stdout
    assert "holder -" in line and "officer berg" in line and "due 2026-12-21T06:00+01:00" in line
    assert "reminded berg (level 1, 2026-12-21T06:00+01:00), chief (level 2, 2026-12-21T07:00+01:00)" in line
    with pytest.raises(CommandError, match="items record 1: "):
        await importer.apply(rig.c, {"items": [{"code": "E-1", "kind": "dossier", "compartment": "d02"}]})


async def test_an_import_without_a_kind_keeps_the_kind(tmp_path):
    r = await make_rig(tmp_path, TOML)
    try:
        await importer.apply(r.c, {"items": [{"code": "E-1", "compartment": "e02", "case_name": ""}]})
        item = r.c.registry.items["E-1"]
        assert (item.kind, item.compartment, item.case_name) == ("evidence", "e02", "Case one")
    finally:
        await close_rig(r)
