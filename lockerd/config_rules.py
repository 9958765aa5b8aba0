"""[evidence], [calendar] and [custody]: reason cards, the station's shifts and the custody deadlines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lockerd.calendar import DAY_NAMES, Calendar, Shift, parse_clock, parse_day
from lockerd.config_check import Checker
from lockerd.custody_rules import DEADLINE_KINDS, DEFAULT_LADDERS, RECIPIENTS, RELEASE_ROLES, Ladder, Rules, Step
from lockerd.domain import Role
from lockerd.drivers.options import MISSING, Opt

EVIDENCE = {
    "depositor_may_retrieve": Opt("bool", default=True,
                                  doc="the officer who deposited an item may be the officer "
                                  "co-signing its retrieval or release (never alone: a case manager is always needed)"),
    "reasons": Opt("table", {}, doc="reason cards for a retrieval: barcode = reason text"),
    "release_reasons": Opt("table", {}, doc="reason cards for a release (the item leaves for good): barcode = text"),
    "due_back_h": Opt("float", 24.0, min=0.1, max=8760, doc="evidence taken out is due back after this, unless "
                      "its reason card has its own time in [evidence.due_back]"),
    "due_back": Opt("table", {}, doc="reason card barcode = hours until evidence taken out with it is due back"),
    "badge_burst_ms": Opt("int", 300, min=0, max=5000, doc="two people's badges read closer than this at one "
                          "scanner are one burst (one printed code carrying two): neither counts"),
}


@dataclass(frozen=True)
class EvidenceRules:
    """How evidence is handled: reason cards and who may retrieve."""

    depositor_may_retrieve: bool = True
    reasons: dict[str, str] = field(default_factory=dict)  # card barcode -> text (retrieval)
    release_reasons: dict[str, str] = field(default_factory=dict)  # card barcode -> text (release for good)
    badge_burst_ms: int = 300
    due_back_h: float = 24.0
    due_back: dict[str, float] = field(default_factory=dict)  # reason card -> hours

    def due_back_h_for(self, card: str | None) -> float:
        """Hours until evidence taken out with reason ``card`` (None: a station authorisation) is due back."""
        return self.due_back.get(card, self.due_back_h) if card else self.due_back_h

    def reason_card(self, code: str) -> tuple[str, bool] | None:
        """(text, is_release) for a reason card's barcode, else None."""
        if code in self.reasons:
            return self.reasons[code], False
        if code in self.release_reasons:
            return self.release_reasons[code], True
        return None


def evidence(c: Checker, raw: Any) -> EvidenceRules:
    """[evidence]: reason cards (barcode = text) and the depositor rule."""
    opts = c.table("evidence", raw, EVIDENCE)
    tables: dict[str, dict[str, str]] = {}
    for key in ("reasons", "release_reasons"):
        table = opts[key] if isinstance(opts[key], dict) else {}
        for code, text in table.items():
            if not 1 <= len(code) <= 128:
                c.problem(f"evidence.{key}", code, "card barcodes of 1-128 characters")
            if not isinstance(text, str) or not text.strip() or len(text) > 256:
                c.problem(f"evidence.{key}.{code}", text, "the reason as a non-empty text of at most 256 characters")
        tables[key] = {k: v.strip() for k, v in table.items() if isinstance(v, str)}
    for code in sorted(set(tables["reasons"]) & set(tables["release_reasons"])):
        c.problem(f"evidence.release_reasons.{code}", tables["release_reasons"][code],
                  "a card barcode not also in evidence.reasons (one card, one meaning)")
    may = opts["depositor_may_retrieve"]
    burst = opts["badge_burst_ms"] if isinstance(opts["badge_burst_ms"], int) else 300
    due_back: dict[str, float] = {}
    for code, hours in (opts["due_back"] if isinstance(opts["due_back"], dict) else {}).items():
        if code not in tables["reasons"]:
            c.problem(f"evidence.due_back.{code}", hours, "a card barcode from [evidence.reasons]")
        elif isinstance(hours, bool) or not isinstance(hours, int | float) or not 0.1 <= hours <= 8760:
            c.problem(f"evidence.due_back.{code}", hours, "hours from 0.1 to 8760")
        else:
            due_back[code] = float(hours)
    default = opts["due_back_h"] if isinstance(opts["due_back_h"], int | float) else 24.0
    return EvidenceRules(may if isinstance(may, bool) else True, tables["reasons"], tables["release_reasons"], burst,
                         float(default), due_back)


CALENDAR = {
    "timezone": Opt("str", "UTC", doc="IANA zone of the station, e.g. Europe/Berlin"),
    "working_days": Opt("list-str", DAY_NAMES[:5], doc="days whose shifts are worked: mon .. sun"),
    # plus "holidays" (dates) and "shifts" (an array of tables), checked below
}

SHIFT_KEYS = ("name", "start", "end")

CUSTODY = {
    "deposit_within_h": Opt("float", 24.0, min=0.01, max=8760, doc="deposit deadline after intake, by default"),
    "return_without_shifts_h": Opt("float", 12.0, min=0.01, max=8760,
                                   doc="when the calendar has no shifts: a dossier taken out is due back after this"),
    "tick_s": Opt("float", 30.0, min=1, max=3600, doc="how often deadlines are checked against the wall clock"),
    "release_roles": Opt("list-str", RELEASE_ROLES, doc="roles that may release a dossier for good"),
    "dossier_badge": Opt("str", "optional", choices=("optional", "required"),
                         doc="a badge scanned just before a dossier names who takes it out or brings it; "
                             "required: a dossier without one is refused"),
    "badge_window_s": Opt("float", 30.0, min=1, max=600, doc="how long a badge waits for its dossier scan"),
    # plus one table per kind of deadline: deposit, return, evidence_deposit, evidence_return
}


def _ladder_spec(kind: str) -> dict[str, Opt]:
    d = DEFAULT_LADDERS[kind]
    return {
        "levels": Opt("list-str", tuple(s.to for s in d.steps), doc=f"who is told, in order: {', '.join(RECIPIENTS)}"),
        "after_s": Opt("list-int", tuple(int(s.after_s) for s in d.steps), min=0, max=31_536_000,
                       doc="per level: seconds after the deadline (first) or after the previous level"),
        "ack_pause_s": Opt("float", d.ack_pause_s, min=0, max=31_536_000,
                           doc="an acknowledgement holds the next level back this long"),
    }


def calendar(c: Checker, raw: Any) -> Calendar:
    if not isinstance(raw, dict):
        c.problem("calendar", raw, "a table")
        return Calendar()
    body = dict(raw)
    holidays_raw = body.pop("holidays", [])
    shifts_raw = body.pop("shifts", [])
    opts = c.table("calendar", body, CALENDAR)
    tz = opts["timezone"]
    ok = _zone_ok(c, tz)
    days, days_ok = _working_days(c, opts["working_days"])
    holidays, holidays_ok = _holidays(c, holidays_raw)
    ok = ok and days_ok and holidays_ok
    if not isinstance(shifts_raw, list):
        c.problem("calendar.shifts", shifts_raw, "an array of tables ([[calendar.shifts]])")
        shifts_raw = []
    shifts: list[Shift] = []
    for i, item in enumerate(shifts_raw):
        # A shift is compared with the others only while everything before it was sound.
        ok = _shift(c, f"calendar.shifts[{i}]", item, shifts, ok)
    if shifts and not days:
        c.problem("calendar.working_days", [], "at least one working day when shifts are defined")
        ok = False
    if not ok:
        return Calendar()
    return Calendar(tz, tuple(shifts), frozenset(days), frozenset(holidays))


def _zone_ok(c: Checker, tz: Any) -> bool:
    if tz is MISSING:
        return True  # its own check said what is wrong
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        c.problem("calendar.timezone", tz, "an IANA time zone name such as 'Europe/Berlin' (zoneinfo)")
        return False
    return True


def _working_days(c: Checker, names: Any) -> tuple[set[int], bool]:
    days: set[int] = set()
    ok = True
    for i, name in enumerate(names if names is not MISSING else ()):
        if name not in DAY_NAMES:
            c.problem(f"calendar.working_days[{i}]", name, f"one of {', '.join(DAY_NAMES)}")
            ok = False
        else:
            days.add(DAY_NAMES.index(name))
    return days, ok


def _holidays(c: Checker, raw: Any) -> tuple[set[Any], bool]:
    holidays = set()
    ok = True
    if not isinstance(raw, list):
        c.problem("calendar.holidays", raw, "a list of dates (YYYY-MM-DD)")
        raw = []
    for i, h in enumerate(raw):
        day = parse_day(h)
        if day is None:
            c.problem(f"calendar.holidays[{i}]", h, "a date (YYYY-MM-DD)")
            ok = False
        else:
            holidays.add(day)
    return holidays, ok


def _shift(c: Checker, path: str, s: Any, shifts: list[Shift], ok: bool) -> bool:
    """Check one [[calendar.shifts]] entry and add it to ``shifts`` when sound; ``ok`` as it stands after it."""
    if not isinstance(s, dict):
        c.problem(path, s, "a table with name, start and end")
        return False
    for key in s:
        if key not in SHIFT_KEYS:
            key_path = f"{path}.{key}"
            c.problems.append(f"{c.where(key_path)}: {key_path}: unknown option (known here: {', '.join(SHIFT_KEYS)})")
            ok = False
    name = s.get("name", MISSING)
    if not isinstance(name, str) or not name:
        c.problem(f"{path}.name", name, "a non-empty string")
        ok = False
    times = {}
    for key in ("start", "end"):
        minutes = parse_clock(s.get(key))
        if minutes is None:
            c.problem(f"{path}.{key}", s.get(key, MISSING), "a local time 'HH:MM' (24-hour clock)")
            ok = False
        times[key] = minutes
    if not ok or None in times.values():
        return ok
    shift = Shift(name, times["start"], times["end"])
    for j, other in enumerate(shifts):
        if shift.overlaps(other):
            c.problem(path, f"{name} {s['start']}-{s['end']}", f"a shift not overlapping shifts[{j}] ({other.name})")
            ok = False
    names = [x.name for x in shifts]
    if name in names:
        c.problem(f"{path}.name", name, f"a name not already used by shifts[{names.index(name)}]")
        ok = False
    shifts.append(shift)
    return ok


def custody(c: Checker, raw: Any) -> Rules:
    if not isinstance(raw, dict):
        c.problem("custody", raw, "a table")
        return Rules()
    body = dict(raw)
    ladders_raw = {k: body.pop(k) for k in DEADLINE_KINDS if k in body}
    opts = c.table("custody", body, CUSTODY | {k: Opt("table", {}) for k in DEADLINE_KINDS})
    roles = [r.value for r in Role]
    for i, r in enumerate(opts["release_roles"] if opts["release_roles"] is not MISSING else ()):
        if r not in roles:
            c.problem(f"custody.release_roles[{i}]", r, f"one of {', '.join(roles)}")
    ladders = dict(DEFAULT_LADDERS)
    for kind in DEADLINE_KINDS:
        path = f"custody.{kind}"
        lo = c.table(path, ladders_raw.get(kind, {}), _ladder_spec(kind))
        levels, after = lo["levels"], lo["after_s"]
        if MISSING in (levels, after, lo["ack_pause_s"]):
            continue
        bad = [(i, x) for i, x in enumerate(levels) if x not in RECIPIENTS]
        for i, x in bad:
            c.problem(f"{path}.levels[{i}]", x, f"one of {', '.join(RECIPIENTS)}")
        if not levels:
            c.problem(f"{path}.levels", [], "at least one level")
        elif len(after) != len(levels):
            c.problem(f"{path}.after_s", list(after), f"one delay per level ({len(levels)})")
        elif not bad:
            ladders[kind] = Ladder(tuple(Step(to, float(s)) for to, s in zip(levels, after, strict=True)),
                                   lo["ack_pause_s"])
    if c.problems:
        return Rules()
    return Rules(opts["deposit_within_h"], opts["return_without_shifts_h"], opts["tick_s"],
                 tuple(opts["release_roles"]), ladders, opts["dossier_badge"], opts["badge_window_s"])
