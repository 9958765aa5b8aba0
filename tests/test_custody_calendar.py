"""The station calendar: when a dossier taken out is due back, and a strict [calendar]/[custody] schema."""

from __future__ import annotations

from datetime import date

import pytest
from custody_rig import CUSTODY
from rig import TOML, write_config

from lockerd import config
from lockerd.calendar import Calendar, Shift
from lockerd.clock import iso_utc, parse_time
from lockerd.errors import ConfigError

BERLIN = Calendar("Europe/Berlin",
                  (Shift("early", 6 * 60, 14 * 60), Shift("late", 14 * 60, 22 * 60), Shift("night", 22 * 60, 6 * 60)),
                  frozenset(range(5)), frozenset({date(2026, 12, 25)}))


def due(cal: Calendar, local: str) -> tuple[str, str]:
    """When a dossier taken out at a Berlin local time is due back (UTC), and the shift."""
    ts, shift = cal.end_of_shift(parse_time(local))  # type: ignore[misc]
    return iso_utc(ts), shift


@pytest.mark.parametrize("taken,expected", [
    # during a shift: its end
    ("2026-12-21T06:00:00+01:00", ("2026-12-21T13:00:00.000Z", "early")),
    ("2026-12-21T13:59:59+01:00", ("2026-12-21T13:00:00.000Z", "early")),
    ("2026-12-21T14:00:00+01:00", ("2026-12-21T21:00:00.000Z", "late")),
    # a night shift crossing midnight belongs to the day it starts on
    ("2026-12-21T23:30:00+01:00", ("2026-12-22T05:00:00.000Z", "night")),
    ("2026-12-22T03:00:00+01:00", ("2026-12-22T05:00:00.000Z", "night")),
    # Friday night's shift is worked (Friday is a working day) and ends on Saturday morning
    ("2026-12-19T02:00:00+01:00", ("2026-12-19T05:00:00.000Z", "night")),
    # Saturday: no worked shift; due at the end of Monday's first
    ("2026-12-19T10:00:00+01:00", ("2026-12-21T13:00:00.000Z", "early")),
    # the holiday (Friday 25th): its shifts are not worked, nor its night; Monday again
    ("2026-12-25T09:00:00+01:00", ("2026-12-28T13:00:00.000Z", "early")),
    # the night shift that started on the eve of the holiday still runs
    ("2026-12-25T01:00:00+01:00", ("2026-12-25T05:00:00.000Z", "night")),
])
def test_end_of_the_shift(taken, expected):
    assert due(BERLIN, taken) == expected


def test_between_shifts_it_is_the_end_of_the_next_shift():
    cal = Calendar("UTC", (Shift("day", 8 * 60, 16 * 60),), frozenset(range(7)))
    assert due(cal, "2026-12-21T07:00:00Z") == ("2026-12-21T16:00:00.000Z", "day")
    assert due(cal, "2026-12-21T17:00:00Z") == ("2026-12-22T16:00:00.000Z", "day")


def test_a_shift_across_the_daylight_saving_change_is_an_hour_shorter():
    cal = Calendar("Europe/Berlin", (Shift("night", 22 * 60, 6 * 60),), frozenset(range(7)))
    start, end, _ = cal.shift_at(parse_time("2026-03-29T01:00:00+01:00"))  # type: ignore[misc]
    assert end - start == 7 * 3600


def test_no_shifts_means_no_end_of_shift():
    assert Calendar().end_of_shift(parse_time("2026-12-21T10:00:00Z")) is None


def test_the_custody_rig_config_loads(tmp_path):
    cfg = config.load(write_config(tmp_path, TOML + CUSTODY))
    assert [s.name for s in cfg.calendar.shifts] == ["early", "late"]
    assert [(s.to, s.after_s) for s in cfg.custody.ladders["evidence_deposit"].steps] == [
        ("officer", 600.0), ("supervisor", 1800.0)]


def problems(tmp_path, extra: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        config.load(write_config(tmp_path, TOML + extra))
    return e.value.problems


def test_overlapping_shifts_are_a_config_error(tmp_path):
    extra = """
[calendar]
[[calendar.shifts]]
name = "day"
start = "06:00"
end = "18:00"
[[calendar.shifts]]
name = "night"
start = "17:00"
end = "07:00"
"""
    p = problems(tmp_path, extra)
    file = str(tmp_path / "lockerd.toml")
    second = [n for n, line in enumerate((TOML + extra).splitlines(), 1) if line == "[[calendar.shifts]]"][1]
    assert p == [f"{file}:{second}: calendar.shifts[1] = 'night 17:00-07:00': expected a shift not overlapping "
                 "shifts[0] (day)"]


def test_every_calendar_and_custody_mistake_is_reported_at_once(tmp_path):
    p = problems(tmp_path, """
[calendar]
timezone = "Mars/Olympus"
working_days = ["mon", "funday"]
holidays = ["2026-12-25", "25.12.2026"]
lunch = true
[[calendar.shifts]]
name = "early"
start = "6:00"
end = "25:00"
[custody]
deposit_within_h = -1
[custody.deposit]
levels = ["officer", "chief"]
after_s = [0, 60]
[custody.return]
levels = ["officer", "supervisor"]
after_s = [0]
[custody.evidence_deposit]
levels = []
""")
    text = "\n".join(p)
    for expected in (
        "calendar.timezone = 'Mars/Olympus': expected an IANA time zone name",
        "calendar.working_days[1] = 'funday': expected one of mon, tue, wed, thu, fri, sat, sun",
        "calendar.holidays[1] = '25.12.2026': expected a date (YYYY-MM-DD)",
        "calendar.lunch: unknown option",
        "calendar.shifts[0].start = '6:00': expected a local time 'HH:MM' (24-hour clock)",
        "calendar.shifts[0].end = '25:00': expected a local time 'HH:MM'",
        "custody.deposit_within_h = -1.0: expected a number from 0.01 to 8760",
        "custody.deposit.levels[1] = 'chief': expected one of officer, supervisor, legal",
        "custody.return.after_s = [0]: expected one delay per level (2)",
        "custody.evidence_deposit.levels = []: expected at least one level",
    ):
        assert expected in text, (expected, p)
    assert all(x.startswith(str(tmp_path / "lockerd.toml") + ":") for x in p)  # the file, and its line


def test_unknown_roles_in_custody_are_config_errors(tmp_path):
    p = problems(tmp_path, """
[custody]
release_roles = ["supervisor", "janitor"]
""")
    assert any("custody.release_roles[1] = 'janitor': expected one of officer, case_manager, supervisor, technician"
               in x for x in p), p


def test_shifts_need_a_working_day(tmp_path):
    p = problems(tmp_path, """
[calendar]
working_days = []
[[calendar.shifts]]
name = "day"
start = "08:00"
end = "16:00"
""")
    assert any("calendar.working_days = []: expected at least one working day" in x for x in p), p
