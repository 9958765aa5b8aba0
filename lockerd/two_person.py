"""The evidence rule at the cabinet: two people, an officer and a case manager, in either order, in one window.

Badges, the item and a reason card scanned at one scanner gather in a
pending handling for ``evidence_window_s``; the door opens once the rule is
met, and the handling is refused when the window runs out first. Taking an
item out needs a reason (a card at the cabinet, or a station authorisation)
and never the officer who deposited it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from lockerd.domain import OFFICER_ROLES, Action, Item, ItemState, Person, Role
from lockerd.drivers.base import Scan
from lockerd.evidence import Authorisations
from lockerd.opening import Core, OpenRequest, Outcome, Slot, scan_fields


@dataclass
class Pending:
    """Badges and an evidence item scanned together at one scanner."""

    badges: dict[str, float] = field(default_factory=dict)  # person id -> monotonic time
    item: str | None = None
    started: float = 0.0
    expiry: asyncio.Task[None] | None = None
    reason: tuple[str, str, bool] | None = None  # a reason card: (barcode, text, is a release)


def burst_partner(burst_ms: int, scan: Scan, person: Person, badges: Iterable[tuple[str, float]]) -> str | None:
    """Another person among ``badges`` (person, scan time, at this scanner) read within ``burst_ms`` of
    ``scan``: one printed code with embedded line ends reads as several badges at once, and no two people
    badge within a fraction of a second."""
    burst_s = burst_ms / 1000
    return next((pid for pid, at in badges if pid != person.id and abs(scan.at - at) < burst_s), None)


def journal_badge(core: Core, scan: Scan, person: Person, **fields: Any) -> None:
    """A badge that counted: its scan (by fingerprint) and its acceptance."""
    core.journal.append("scan", people=(person.id,), **scan_fields(scan))
    core.journal.append("badge.accepted", people=(person.id,), scanner=scan.scanner, role=str(person.role), **fields)


class TwoPersonRule:
    def __init__(self, core: Core, authorisations: Authorisations) -> None:
        self.core = core
        self.authorisations = authorisations  # station-authorised retrievals stand in for a reason card
        self.rules = core.config.evidence
        self.window_s = core.config.timing.evidence_window_s
        self.pending: dict[str, Pending] = {}  # scanner -> the handling gathering there

    def serves_evidence(self, served: tuple[str, ...]) -> bool:
        cabinets = self.core.config.cabinets
        return any(cabinets[c].kind == "evidence" for c in served if c in cabinets)

    def cancel(self) -> None:
        for p in self.pending.values():
            if p.expiry:
                p.expiry.cancel()

    # -- what is scanned ------------------------------------------------------------

    async def item(self, scan: Scan, code: str) -> Outcome:
        pend = self._pending_for(scan.scanner)
        pend.item = code
        return await self._try(scan, pend)

    async def badge(self, scan: Scan, person: Person) -> Outcome:
        pend = self._pending_for(scan.scanner)
        if (other := burst_partner(self.rules.badge_burst_ms, scan, person, pend.badges.items())) is not None:
            gap_ms = (scan.at - pend.badges[other]) * 1000
            self._drop(scan.scanner, pend)
            return self.core.deny(scan, f"badges of {other} and {person.id} read {gap_ms:.0f} ms apart at one "
                                        f"scanner (under {self.rules.badge_burst_ms} ms): one scan cannot be two "
                                        "people; both badge again, one after the other",
                                  people=(other, person.id))
        # Keyed by person: two badges of one person still count as one person.
        pend.badges[person.id] = scan.at
        journal_badge(self.core, scan, person)
        if pend.item is not None:
            return await self._try(scan, pend, scanned=False)
        return Outcome(accepted=True, message=f"badge of {person.name} ({person.role}) accepted: "
                             "scan the item and the second person's badge")

    async def reason_card(self, scan: Scan, code: str, card: tuple[str, bool], served: tuple[str, ...]) -> Outcome:
        """A reason card joins the evidence handling at this scanner: why the item leaves the locker."""
        text, release = card
        if not self.serves_evidence(served):
            return self.core.deny(scan, "reason card scanned where no evidence cabinet is served")
        pend = self._pending_for(scan.scanner)
        pend.reason = (code, text, release)
        self.core.journal.append("scan", **scan_fields(scan))
        self.core.journal.append("reason.accepted", scanner=scan.scanner, reason_code=code, evidence_reason=text,
                                 release=release)
        if pend.item is not None:
            return await self._try(scan, pend, scanned=False)
        what = "release for good" if release else "retrieval"
        return Outcome(accepted=True, message=f"reason {text!r} ({what}) accepted: scan the item and both badges")

    # -- the window ------------------------------------------------------------------

    def _pending_for(self, scanner: str) -> Pending:
        now = self.core.clock.monotonic()
        p = self.pending.get(scanner)
        if p is None or now - p.started > self.window_s:
            if p and p.expiry:
                p.expiry.cancel()
            p = Pending(started=now)
            self.pending[scanner] = p
            p.expiry = self.core.spawn(self._expiry(scanner, p), f"evidence-window-{scanner}")
        return p

    def _drop(self, scanner: str, p: Pending) -> None:
        if p.expiry:
            p.expiry.cancel()
        if self.pending.get(scanner) is p:
            del self.pending[scanner]

    async def _expiry(self, scanner: str, p: Pending) -> None:
        await self.core.clock.sleep(self.window_s)
        if self.pending.get(scanner) is not p:
            return
        del self.pending[scanner]
        if p.item is None:
            return
        reason = f"evidence rule not met within {self.window_s:g} s: {self._missing(p)}"
        item = self.core.registry.items.get(p.item)
        self.core.journal.append("access.denied", compartment=item.compartment if item else None, dossier=p.item,
                                 people=tuple(p.badges), scanner=scanner, reason=reason)
        with contextlib.suppress(Exception):
            await self.core.show(scanner, accepted=False, message=f"refused: {reason}")

    # -- the rule --------------------------------------------------------------------

    def _missing(self, p: Pending) -> str:
        registry = self.core.registry
        people = [registry.people[pid] for pid in p.badges if pid in registry.people]
        officers = {x.id for x in people if x.role in OFFICER_ROLES}
        managers = {x.id for x in people if x.role is Role.CASE_MANAGER}
        item = registry.items.get(p.item) if p.item is not None else None
        taking = item is not None and item.state is ItemState.IN  # a retrieval or a release
        barred = ""
        if item is not None and taking and not self.rules.depositor_may_retrieve:
            # The officer who first deposited it (who seized it) is barred for the item's whole life, and so
            # is whoever deposited it last.
            depositors = {d for d in (self._first_depositor(item.code), item.depositor) if d} & officers
            if depositors:
                officers -= depositors
                barred = f" (not the depositor {', '.join(sorted(depositors))}: may not co-sign taking it out)"
        # A person has one role, so an officer and a case manager are two people.
        if not officers and not managers:
            missing = f"needs an officer's and a case manager's badge{barred}"
        elif not managers:
            missing = "needs a case manager's badge"
        elif not officers:
            missing = f"needs an officer's badge{barred}"
        else:
            missing = ""
        if item is not None and taking and p.reason is None and self.authorisations.reason_for(item.code) is None:
            missing += ("; " if missing else "") + "needs a reason card (why the item leaves the locker)"
        return missing

    def _first_depositor(self, code: str) -> str | None:
        """The officer of the item's first evidence deposit, from the journal."""
        journal = self.core.journal
        if not journal.healthy:
            return None
        rows = journal.query("SELECT people FROM events WHERE kind = 'evidence.deposited' AND dossier = ? "
                             "ORDER BY seq LIMIT 1", code)
        people = json.loads(rows[0][0]) if rows and rows[0][0] else []
        return next((pid for pid in people if (p := self.core.registry.people.get(pid)) and p.role in OFFICER_ROLES),
                    None)

    async def _try(self, scan: Scan, pend: Pending, scanned: bool = True) -> Outcome:
        """Open an evidence compartment once both people are there; ``scanned``
        is False when the triggering scan (a badge) is journaled already."""
        assert pend.item is not None
        item = self.core.registry.items[pend.item]
        missing = self._missing(pend)
        if missing:
            if scanned:
                self.core.journal.append("scan", dossier=item.code, **scan_fields(scan))
            self.core.journal.append("access.pending", compartment=item.compartment, dossier=item.code,
                                     people=tuple(pend.badges), scanner=scan.scanner, reason=missing)
            # Not a refusal yet: the second person may still come within the window.
            return Outcome(accepted=True, message=f"evidence {item.code}: {missing}",
                           compartment=item.compartment, reason=missing)
        people = tuple(pend.badges)
        self._drop(scan.scanner, pend)
        note: dict[str, Any] = {}
        # A card scanned at the cabinet comes first; else the station's authorisation stands in for one.
        authorised = self.authorisations.reason_for(item.code) if pend.reason is None else None
        reason = pend.reason or authorised
        if item.state is ItemState.IN and reason is not None:
            code, text, release = reason
            action = Action.RELEASE if release else Action.RETRIEVE
            note = {"evidence_reason": text, "reason_code": code}
        else:
            action = Action.DEPOSIT
        slot = self._door_for(item, action)
        wrong = self._wrong_side(scan.scanner, slot)
        if wrong:
            return self.core.deny(scan, wrong, compartment=slot.cfg.id, dossier=item.code, people=people,
                                  journal_scan=scanned)
        out = await self.core.open(slot, OpenRequest({item.code: action}, people, scan=scan,
                                                     scan_journaled=not scanned, note=note))
        if authorised is not None and action is not Action.DEPOSIT and out.accepted:
            self.authorisations.used(item.code)
        return out

    def _door_for(self, item: Item, action: Action) -> Slot:
        """Deposits open the front door; retrievals and releases the rear door of a pass-through compartment."""
        assert item.compartment is not None  # checked before an item's scan gets here
        rear = self.core.config.compartments[item.compartment].rear_id
        slots = self.core.slots
        return slots[rear] if rear is not None and action in (Action.RETRIEVE, Action.RELEASE) \
            else slots[item.compartment]

    def _wrong_side(self, scanner: str, slot: Slot) -> str | None:
        """A scanner on one side of a pass-through cabinet never opens the door on the other side."""
        sec = self.core.config.scanners.get(scanner)
        side = sec.options.get("side", "both") if sec else "both"
        if side == "both" or self.core.config.compartments[slot.compartment].rear_id is None:
            return None
        door = "rear" if slot.parent is not None else "front"
        if door == side:
            return None
        what = "retrievals and releases" if door == "rear" else "deposits"
        return f"{what} open the {door} door of {slot.compartment}: scan at a {door} scanner, not this {side} one"
