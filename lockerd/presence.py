"""The people named by a CLI override of an evidence compartment badge at the cabinet before it acts.

Anyone who may use the control socket can type two names; only the people
themselves can badge. So a CLI emergency open or maintenance open that
touches an evidence cabinet is journaled as waiting (override.waiting) and
acts only once each named person has badged at a scanner serving one of
those cabinets, within the evidence window. Badges of two people read in
one burst at one scanner count for neither, as at the cabinet.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from lockerd.domain import Person
from lockerd.drivers.base import Scan
from lockerd.opening import Core, Outcome, scan_fields
from lockerd.two_person import burst_partner, journal_badge


@dataclass
class Presence:
    """One override waiting for its people."""

    action: str
    people: tuple[str, ...]
    cabinets: frozenset[str]
    seq: int  # of override.waiting
    seen: dict[str, tuple[str, float]] = field(default_factory=dict)  # person -> (scanner, scan time)
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def missing(self) -> list[str]:
        return [p for p in self.people if p not in self.seen]


class PresenceChecks:
    def __init__(self, core: Core):
        self.core = core
        self.waiting: list[Presence] = []

    async def require(self, action: str, people: tuple[str, ...], cabinets: set[str],
                      via: dict[str, Any], **fields: Any) -> Presence:
        """Journal (durably) that ``action`` waits for ``people`` to badge at ``cabinets``; start waiting."""
        window = self.core.config.timing.evidence_window_s
        ev = await self.core.journal.append_durable("override.waiting", people=people, action=action,
                                                    cabinets=sorted(cabinets), window_s=window, **fields, **via)
        p = Presence(action, people, frozenset(cabinets), ev.seq)
        self.waiting.append(p)
        return p

    async def wait(self, p: Presence) -> bool:
        """True once everyone badged; False when the evidence window ran out first."""
        done = asyncio.ensure_future(p.complete.wait())
        timer = asyncio.ensure_future(self.core.clock.sleep(self.core.config.timing.evidence_window_s))
        try:
            await asyncio.wait({done, timer}, return_when=asyncio.FIRST_COMPLETED)
            return p.complete.is_set()
        finally:
            for t in (done, timer):
                t.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await t
            if p in self.waiting:
                self.waiting.remove(p)

    def badge(self, scan: Scan, person: Person, served: tuple[str, ...]) -> Outcome | None:
        """Count a badge toward a waiting override that names its holder; None when none does."""
        p = next((w for w in self.waiting if person.id in w.people and w.cabinets & set(served)
                  and not w.complete.is_set()), None)
        if p is None:
            return None
        here = ((pid, at) for pid, (sc, at) in p.seen.items() if sc == scan.scanner)
        if (other := burst_partner(self.core.config.evidence.badge_burst_ms, scan, person, here)) is not None:
            p.seen.pop(other)
            reason = (f"badges of {other} and {person.id} read in one burst at one scanner: "
                      f"one scan cannot be two people; both badge again for the {p.action}")
            self.core.journal.append("scan", people=(person.id,), **scan_fields(scan))
            self.core.journal.append("access.denied", people=(other, person.id), scanner=scan.scanner, reason=reason,
                                  override_seq=p.seq)
            return Outcome(accepted=False, message=f"refused: {reason}", reason=reason)
        p.seen[person.id] = (scan.scanner, scan.at)
        journal_badge(self.core, scan, person, override_seq=p.seq)
        missing = p.missing()
        if missing:
            return Outcome(accepted=True, message=f"badge of {person.name} accepted for the {p.action}: waiting for "
                                 f"{' and '.join(missing)}")
        p.complete.set()
        return Outcome(accepted=True, message=f"badge of {person.name} accepted: the {p.action} goes ahead")
