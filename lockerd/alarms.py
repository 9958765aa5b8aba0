"""Alarms that stay until a person acknowledges them: a forced door stays an alarm after it is shut.

A supervisor or a case manager acknowledges, once the door is shut again:
from the CLI (the local user journaled), by a signed station command, or at
the cabinet itself by badging twice at one of its scanners (the first badge
is told the alarm waits; the second, not a double read of the first,
acknowledges every shut door's alarm of the cabinets that scanner serves).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lockerd.domain import Person, Role
from lockerd.drivers.base import DoorState, Scan
from lockerd.errors import CommandError, JournalError
from lockerd.journal import Event
from lockerd.opening import STAYING_ALARMS, Core, Outcome, Slot, scan_fields

# Who may acknowledge an alarm that stays.
ALARM_ACK_ROLES = frozenset({Role.SUPERVISOR, Role.CASE_MANAGER})


@dataclass
class Alarms:
    core: Core
    changed: Callable[[Slot], None]  # a door's state changed: tell the listeners
    first_badge: dict[str, tuple[str, float]] = field(default_factory=dict)  # scanner -> (person, scan time)

    def waiting(self) -> list[dict[str, Any]]:
        """Alarms that wait for a person: each compartment's, with the door as it is now."""
        return [{"compartment": cid, "alarms": sorted(slot.alarms & STAYING_ALARMS), "door": str(slot.door)}
                for cid, slot in self.core.slots.items() if slot.alarms & STAYING_ALARMS]

    async def acknowledge(self, compartment: str, person: str, note: str, via: dict[str, Any]) -> dict[str, Any]:
        """A supervisor or case manager acknowledges a forced door from the CLI or the station, once shut."""
        slot = self.core.slots.get(compartment)
        if slot is None:
            raise CommandError(f"unknown compartment {compartment!r}")
        p = self.core.registry.active_person(person)
        if p is None:
            raise CommandError(f"unknown or revoked person {person!r}")
        if p.role not in ALARM_ACK_ROLES:
            raise CommandError(f"{person} is {p.role}: a supervisor or a case manager acknowledges an alarm")
        if not slot.alarms & STAYING_ALARMS:
            raise CommandError(f"compartment {compartment} has no alarm waiting for acknowledgement")
        if slot.door is not DoorState.CLOSED:
            raise CommandError(f"compartment {compartment} is not shut ({slot.door}): close it first")
        staying = sorted(slot.alarms & STAYING_ALARMS)
        ev = await self._acknowledged(slot, person, note=note, **via)
        return {"seq": ev.seq, "acknowledged": staying}

    async def _acknowledged(self, slot: Slot, person: str, **fields: Any) -> Event:
        staying = sorted(slot.alarms & STAYING_ALARMS)
        slot.alarms -= STAYING_ALARMS
        try:
            ev = await self.core.journal.append_durable("alarm.acknowledged", compartment=slot.cfg.id,
                                                        people=(person,), alarms=staying, **fields,
                                                        state=[slot.state_op()])
        except JournalError:
            slot.alarms.update(staying)  # not recorded: it still waits
            raise
        self.changed(slot)
        return ev

    # -- at the cabinet ------------------------------------------------------------------

    def _here(self, served: tuple[str, ...]) -> list[Slot]:
        return [s for s in self.core.slots.values() if s.alarms & STAYING_ALARMS and s.cfg.cabinet in served]

    def second_badge(self, scan: Scan, person: Person, served: tuple[str, ...]) -> bool:
        """Is this the second badge of one supervisor or case manager at this scanner, with an alarm waiting at
        its cabinets? One badge read twice in a burst is not a second badge. A first one is remembered."""
        if person.role not in ALARM_ACK_ROLES or not self._here(served):
            return False
        first = self.first_badge.pop(scan.scanner, None)
        burst_s = self.core.config.evidence.badge_burst_ms / 1000
        if first is not None and first[0] == person.id and \
                burst_s <= scan.at - first[1] <= self.core.config.custody.badge_window_s:
            return True
        self.first_badge[scan.scanner] = (person.id, scan.at)
        return False

    def hint(self, person: Person, served: tuple[str, ...]) -> str | None:
        """What a first badge is told of the alarms waiting at this scanner's cabinets."""
        here = self._here(served) if person.role in ALARM_ACK_ROLES else []
        if not here:
            return None
        return f"forced alarm on {', '.join(s.cfg.id for s in here)}: badge again to acknowledge"

    async def at_cabinet(self, scan: Scan, person: Person, served: tuple[str, ...]) -> Outcome:
        """The second badge: every shut door's alarm at these cabinets is acknowledged; an open one waits."""
        self.core.journal.append("scan", people=(person.id,), **scan_fields(scan))
        done, still_open = [], []
        for slot in self._here(served):
            if slot.door is not DoorState.CLOSED:
                still_open.append(slot.cfg.id)
                continue
            try:
                await self._acknowledged(slot, person.id, via="cabinet", scanner=scan.scanner)
            except JournalError as e:
                return Outcome(accepted=False, message=f"refused: cannot record the acknowledgement ({e})",
                               compartment=slot.cfg.id, reason="journal unavailable")
            done.append(slot.cfg.id)
        told = [f"alarm on {', '.join(done)} acknowledged by {person.name}"] if done else []
        if still_open:
            told.append(f"{', '.join(still_open)} still open: close it, then badge twice again")
        return Outcome(accepted=bool(done), message="; ".join(told), compartment=(done or still_open)[0])
