"""A cabinet screen: the last outcome at its scanners, the evidence handling in progress, the door to go to.

Built from the journal's events alone, so it shows what really happened
(the journal is what the controller did), and keeps working with the
station link down. A screen is one scanner (the cabinets it serves) or one
cabinet (the scanners that serve it), chosen by its address.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from lockerd.clock import parse_time
from lockerd.config import Config
from lockerd.config_hardware import REAR_SUFFIX
from lockerd.display.i18n import N_, Lang, Text
from lockerd.display.texts import ACTIONS, DOORS, ROLES, action, reason
from lockerd.journal import Event

OUTCOME_KINDS = ("access.granted", "access.denied", "access.pending", "badge.accepted", "reason.accepted",
                 "lock.pulsed", "lock.unconfirmed", "lock.failed", "door.opened", "door.closed", "alarm.forced",
                 "alarm.held_open")


@dataclass
class Outcome:
    tone: str  # open | refused | alarm | info
    headline: Text
    detail: Text | None
    compartment: str | None
    seq: int
    at: float  # epoch of the event


@dataclass
class Pending:
    item: str | None = None
    compartment: str | None = None
    people: list[tuple[str, str]] = field(default_factory=list)  # (person id, role)
    missing: str | None = None
    reason_card: str | None = None
    started: float = 0.0


@dataclass
class CabinetScreen:
    name: str
    scanners: frozenset[str]
    compartments: tuple[str, ...]  # the drawing, in order
    columns: int
    window_s: float
    outcome: Outcome | None = None
    pending: Pending | None = None
    last_scanner: str | None = None
    is_scanner: bool = False

    def _mine(self, compartment: str | None) -> bool:
        return compartment is not None and compartment.removesuffix(REAR_SUFFIX) in self.compartments

    def apply(self, e: Event) -> bool:  # noqa: C901 - one branch per event kind, read as a table
        """Take one event; True when what the screen shows changed."""
        d, at = e.data, parse_time(e.ts)
        scanner = d.get("scanner")
        here = scanner in self.scanners
        if e.kind == "scan":
            self.last_scanner = scanner
            return False
        if e.kind == "access.granted" and self._mine(e.compartment):
            items = d.get("items") or {}
            code, act = next(iter(items.items()), ("", ""))
            base = e.compartment.removesuffix(REAR_SUFFIX)  # type: ignore[union-attr]
            if d.get("source") == "emergency":
                head = N_("Emergency open: compartment {compartment}", compartment=base)
            elif d.get("source"):
                head = N_("Compartment {compartment} opened by the station", compartment=base)
            elif d.get("pulse") is False:
                head = N_("Compartment {compartment} is already open: {item}, {action}", compartment=base,
                          item=code, action=action(act))
            else:
                head = N_("Compartment {compartment} is open: {item}, {action}", compartment=base, item=code,
                          action=action(act))
            more = len(items) - 1
            detail = N_("and {n} more items", n=more) if more > 0 else None
            self.outcome = Outcome("open", head, detail, base, e.seq, at)
            if self.last_scanner in self.scanners:
                self.pending = None
            return True
        if e.kind == "access.denied" and (here or (scanner is None and self._mine(e.compartment))):
            why = d.get("reason") or ""
            if e.dossier:
                head = N_("Refused: {item}: {reason}", item=e.dossier, reason=reason(why))
            else:
                head = N_("Refused: {reason}", reason=reason(why))
            self.outcome = Outcome("refused", head, None, e.compartment, e.seq, at)
            self.pending = None
            return True
        if e.kind in ("access.pending", "badge.accepted", "reason.accepted") and here:
            p = self.pending or Pending(started=at)
            self.pending = p
            for pid in e.people:
                if pid not in [x for x, _ in p.people]:
                    p.people.append((pid, d.get("role", "")))
            if e.kind == "access.pending":
                p.item, p.compartment, p.missing = e.dossier, e.compartment, d.get("reason")
            if e.kind == "reason.accepted":
                p.reason_card = d.get("evidence_reason")
            return True
        if not self._mine(e.compartment):
            return False
        base = e.compartment.removesuffix(REAR_SUFFIX)  # type: ignore[union-attr]
        o = self.outcome
        ours = o is not None and o.compartment == base and o.tone == "open"
        if e.kind == "lock.unconfirmed" and ours:
            o.detail = N_("opening, not confirmed by the board")  # type: ignore[union-attr]
            return True
        if e.kind == "lock.failed":
            self.outcome = Outcome("refused", N_("Compartment {compartment} did not open: the lock did not answer",
                                                 compartment=base), None, base, e.seq, at)
            return True
        if e.kind in ("door.opened", "door.closed") and ours and d.get("granted"):
            o.detail = N_("door {state}", state=DOORS["open" if e.kind == "door.opened" else "closed"])  # type: ignore[union-attr]
            o.at = at  # type: ignore[union-attr]
            return True
        if e.kind == "alarm.forced":
            self.outcome = Outcome("alarm", N_("Alarm: compartment {compartment} was forced open", compartment=base),
                                   None, base, e.seq, at)
            return True
        if e.kind == "alarm.held_open":
            self.outcome = Outcome("alarm", N_("Compartment {compartment} has been open for {s} s: please close it",
                                               compartment=base, s=int(d.get("open_s") or 0)), None, base, e.seq, at)
            return True
        return False

    def view(self, lang: Lang, names: dict[str, str], now: float, idle_after_s: float,
             doors: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """What the page shows, in one language: texts already translated, times as epochs for the page's timer."""
        out: dict[str, Any] = {"screen": self.name, "columns": self.columns, "idle_after_s": idle_after_s}
        o = self.outcome
        p = self.pending
        live = p is not None and now - p.started < self.window_s
        # A handling started after the last outcome is what the people at the cabinet are doing now.
        if o is not None and now - o.at < idle_after_s and not (live and p.started >= o.at):  # type: ignore[union-attr]
            out["outcome"] = {"tone": o.tone, "headline": lang.text(o.headline),
                              "detail": lang.text(o.detail) if o.detail else "", "compartment": o.compartment,
                              "seq": o.seq, "at": o.at, "time": lang.time(o.at)}
        if live and p is not None:
            people = [lang.text(N_("{role} {name} badged", role=ROLES.get(role, N_("{reason}", reason=role)),
                                   name=names.get(pid, pid))) for pid, role in p.people]
            if p.missing:
                missing = lang.text(reason(p.missing))
            elif p.people:
                missing = lang.text(N_("scan the item"))
            else:
                missing = ""
            out["pending"] = {"item": p.item or "", "compartment": p.compartment, "people": people,
                              "missing": missing, "reason_card": p.reason_card or "",
                              "until": p.started + self.window_s,
                              "left": lang.text(N_("{s} s left", s=math.ceil(p.started + self.window_s - now)))}
        highlight = (out.get("pending") or {}).get("compartment") or (out.get("outcome") or {}).get("compartment")
        out["grid"] = [{"id": c, "door": (doors.get(c) or {}).get("door") or "unknown",
                        "alarm": bool((doors.get(c) or {}).get("alarm")),
                        "fault": bool((doors.get(c) or {}).get("faults")),
                        "here": c == highlight} for c in self.compartments]
        out["idle"] = lang.text(N_("Scan a dossier or your badge"))
        out["title"] = lang.text(N_("Scanner {name}", name=self.name) if self.is_scanner
                                 else N_("Cabinet {name}", name=self.name))
        out["left_template"] = lang.text(N_("{s} s left", s="{s}"))
        return out


def screens(cfg: Config) -> dict[str, CabinetScreen]:
    """Every screen the config allows: one per scanner and one per cabinet."""
    out: dict[str, CabinetScreen] = {}
    window = cfg.timing.evidence_window_s
    for name, sec in cfg.scanners.items():
        served = tuple(sec.options.get("cabinets") or cfg.cabinets)
        comps = tuple(c for cab in served if cab in cfg.cabinets for c in cfg.cabinets[cab].compartments)
        out[name] = CabinetScreen(name, frozenset({name}), comps, _columns(cfg, name, len(comps)), window,
                                  is_scanner=True)
    for cab_id, cab in cfg.cabinets.items():
        if cab_id in out:
            continue
        scanners = frozenset(n for n, s in cfg.scanners.items()
                             if cab_id in (s.options.get("cabinets") or cfg.cabinets))
        comps = tuple(cab.compartments)
        out[cab_id] = CabinetScreen(cab_id, scanners, comps, _columns(cfg, cab_id, len(comps)), window)
    return out


def _columns(cfg: Config, name: str, count: int) -> int:
    screen = cfg.display.screens.get(name)
    if screen is not None and screen.columns:
        return screen.columns
    return max(1, min(count, 8, round(math.sqrt(count * 1.5))))


__all__ = ["ACTIONS", "OUTCOME_KINDS", "CabinetScreen", "screens"]
