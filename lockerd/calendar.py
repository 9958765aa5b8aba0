"""The station calendar: time zone, shifts, working days and holidays.

It answers one question for custody: when is a dossier taken out at a given
instant due back? The rule (also in docs/custody.md):

- Taken out during a worked shift: due at the end of that shift. A shift
  that crosses midnight belongs to the day it starts on.
- Taken out outside every worked shift (between shifts, on a non-working
  day or on a holiday): due at the end of the next worked shift, so a
  dossier taken on a Saturday is due at the end of Monday's first shift.
- A shift is worked when the day it starts on is a working day and not a
  holiday; a night shift starting on the eve of a holiday is still worked.
- Times are local wall times in the station's time zone (zoneinfo), so a
  shift spanning a daylight-saving change is an hour shorter or longer.

The calendar is immutable and built by :mod:`lockerd.config`, which checks
it strictly (overlapping shifts, bad times, unknown zones are errors).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_DAY = 24 * 60
# How far ahead the next worked shift is looked for: a year of holidays is a config mistake.
SEARCH_DAYS = 400


@dataclass(frozen=True)
class Shift:
    """A daily shift from ``start`` to ``end`` (minutes after local midnight); may cross midnight."""

    name: str
    start: int
    end: int

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def spans(self) -> list[tuple[int, int]]:
        """The minutes of a day the shift covers, as half-open ranges within 0..1440."""
        if self.crosses_midnight:
            return [(self.start, MINUTES_PER_DAY), (0, self.end)] if self.end else [(self.start, MINUTES_PER_DAY)]
        return [(self.start, self.end)]

    def overlaps(self, other: Shift) -> bool:
        return any(a < d and c < b for a, b in self.spans() for c, d in other.spans())


@dataclass(frozen=True)
class Calendar:
    timezone: str = "UTC"
    shifts: tuple[Shift, ...] = ()
    working_days: frozenset[int] = frozenset(range(5))  # 0 = Monday
    holidays: frozenset[date] = field(default_factory=frozenset)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def worked(self, day: date) -> bool:
        """Whether shifts starting on this local day are worked."""
        return day.weekday() in self.working_days and day not in self.holidays

    def occurrences(self, day: date) -> list[tuple[float, float, Shift]]:
        """The shifts starting on a local day, as (start, end) epoch seconds, in start order."""
        tz = self.tz
        out = []
        for s in self.shifts:
            start = datetime.combine(day, _clock(s.start), tzinfo=tz)
            end_day = day + timedelta(days=1) if s.crosses_midnight else day
            end = datetime.combine(end_day, _clock(s.end), tzinfo=tz)
            out.append((start.timestamp(), end.timestamp(), s))
        return sorted(out, key=lambda o: o[0])

    def local_day(self, ts: float) -> date:
        return datetime.fromtimestamp(ts, self.tz).date()

    def shift_at(self, ts: float) -> tuple[float, float, Shift] | None:
        """The worked shift running at ``ts``, if any."""
        today = self.local_day(ts)
        for day in (today - timedelta(days=1), today):
            if not self.worked(day):
                continue
            for start, end, s in self.occurrences(day):
                if start <= ts < end:
                    return start, end, s
        return None

    def next_shift(self, ts: float) -> tuple[float, float, Shift] | None:
        """The first worked shift starting after ``ts``."""
        today = self.local_day(ts)
        for n in range(SEARCH_DAYS):
            day = today + timedelta(days=n)
            if not self.worked(day):
                continue
            for start, end, s in self.occurrences(day):
                if start > ts:
                    return start, end, s
        return None

    def end_of_shift(self, ts: float) -> tuple[float, str] | None:
        """When a dossier taken out at ``ts`` is due back, and the shift that sets it.

        None when the calendar has no shifts (or no worked shift within a
        year): the caller then falls back to a fixed number of hours.
        """
        if not self.shifts:
            return None
        running = self.shift_at(ts)
        if running is not None:
            return running[1], running[2].name
        nxt = self.next_shift(ts)
        return (nxt[1], nxt[2].name) if nxt is not None else None


def _clock(minutes: int) -> dtime:
    return dtime(minutes // 60, minutes % 60)


def parse_clock(value: object) -> int | None:
    """'HH:MM' (or a TOML local time) as minutes after midnight; None if malformed."""
    if isinstance(value, dtime):
        if value.second or value.microsecond or value.tzinfo is not None:
            return None
        return value.hour * 60 + value.minute
    if not isinstance(value, str) or len(value) != 5 or value[2] != ":":
        return None
    hh, mm = value[:2], value[3:]
    if not (hh.isdigit() and mm.isdigit()):
        return None
    h, m = int(hh), int(mm)
    if h > 23 or m > 59:
        return None
    return h * 60 + m


def parse_day(value: object) -> date | None:
    """'YYYY-MM-DD' (or a TOML local date) as a date; None if malformed."""
    if isinstance(value, datetime):
        return None
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        return None
    try:
        return date.fromisoformat(value) if len(value) == 10 else None
    except ValueError:
        return None


def iso_local(ts: float, tz: ZoneInfo) -> str:
    """Local time with its offset, for people reading the CLI."""
    return datetime.fromtimestamp(ts, UTC).astimezone(tz).isoformat(timespec="minutes")
