"""Door supervision: what a door did after a pulse, and the faults and alarms that follow.

Pulse sent is not door opened. After each grant this watches the door:
opened (the grant's), not opened in time (a jam after several), opened
without a grant (forced, or a pulse on another door that opened this one:
crossed wiring), held open too long; it debounces the sensors, records the
items' move when a granted door closes, and keeps each compartment's
faults (lock, relay, sensor, jam, wiring) and alarms (forced, held-open).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lockerd.clock import iso_utc
from lockerd.domain import ITEM_EVENT, OFFICER_ROLES, Action, Item, ItemKind, ItemState
from lockerd.drivers.base import DoorChange, DoorState, DriverStatus
from lockerd.errors import CommandError
from lockerd.hardware import Hardware
from lockerd.journal import StateOp
from lockerd.liveness import Heartbeat
from lockerd.opening import STAYING_ALARMS, Core, Session, Slot

log = logging.getLogger(__name__)

# Faults a technician clears by hand once fixed; the others clear themselves (sensor back, board back).
CLEARED_BY_HAND = ("jam", "lock", "relay", "wiring")

# custody.moved: an item changed hands; returns its deadline's fields and state ops
Moved = Callable[[Item, dict[str, Any]], tuple[dict[str, Any], list[StateOp]]]


@dataclass
class Doors:
    """Supervises every door of one controller."""

    core: Core
    heartbeat: Heartbeat
    changed: Callable[[Slot], None]  # a door's state changed: tell the listeners
    moved: Moved

    def __post_init__(self) -> None:
        slots = self.core.slots
        self.timing = self.core.config.timing
        self.by_sensor = {(s.cfg.sensor_driver, s.cfg.sensor): cid for cid, s in slots.items()}
        self.by_lock = {(s.cfg.lock_driver, s.cfg.lock): cid for cid, s in slots.items()}

    # -- sensors ---------------------------------------------------------------------

    async def loop(self, driver: str, sensors: Any) -> None:
        async for change in self.heartbeat.through(sensors.door_changes(), f"doors:{driver}"):
            cid = self.by_sensor.get((driver, change.channel))
            if cid is None:
                continue
            try:
                self.reading(self.core.slots[cid], change, sensors.sample_period_s)
            except Exception:
                log.exception("door change on %s failed", cid)

    def reading(self, slot: Slot, change: DoorChange, sampled_every_s: float = 0.0) -> None:
        """Debounce: a reading counts once it has held for the settle window.

        Acting on the first edge would be faster but turns a vibrating open
        door into close/forced-open pairs; a few tens of ms is the price.
        A board polled less often than the window cannot show a bounce inside
        it (the next reading comes later): there the wait would only delay.
        """
        slot.raw, slot.raw_at = change.state, self.core.clock.monotonic()
        if self.timing.debounce_ms <= 0 or sampled_every_s * 1000 >= self.timing.debounce_ms:
            if slot.raw != slot.door:
                self._door_changed(slot, slot.raw)
            return
        if not slot.settling:
            slot.settling = True
            self.core.spawn(self._settle(slot), f"settle-{slot.cfg.id}")

    async def _settle(self, slot: Slot) -> None:
        window = self.timing.debounce_ms / 1000
        while (wait := slot.raw_at + window - self.core.clock.monotonic()) > 0:
            await self.core.clock.sleep(wait)
        slot.settling = False
        if slot.raw != slot.door:
            self._door_changed(slot, slot.raw)

    def _door_changed(self, slot: Slot, state: DoorState) -> None:
        was = slot.door
        slot.door = state
        if was is DoorState.UNKNOWN and "sensor" in slot.faults and state is not DoorState.UNKNOWN:
            self.clear_fault(slot, "sensor")
        if state is DoorState.UNKNOWN:
            self.set_fault(slot, "sensor", "door state unknown")
            self.core.journal.append("door.unknown", compartment=slot.cfg.id, state=[slot.state_op()])
        elif state is DoorState.OPEN:
            self._opened(slot)
        elif state is DoorState.CLOSED:
            self._closed(slot)
        self.changed(slot)

    def _opened(self, slot: Slot) -> None:
        cid, journal, now = slot.cfg.id, self.core.journal, self.core.clock.monotonic()
        s = slot.session
        if s is not None and not s.opened:
            s.opened, s.opened_at = True, now
            if slot.open_task:
                slot.open_task.cancel()
            slot.not_opened = 0
            if "jam" in slot.faults:
                self.clear_fault(slot, "jam")
            journal.append("door.opened", compartment=cid, granted=True, grant_seq=s.grant_seq,
                           after_ms=round((now - s.pulsed_at) * 1000, 1), state=[slot.state_op()])
        elif s is not None:
            journal.append("door.opened", compartment=cid, granted=True, grant_seq=s.grant_seq,
                           state=[slot.state_op()])
        elif (pulsed := self._pulsed_elsewhere(slot)) is not None:
            self._wiring_suspected(pulsed, slot)
        else:
            slot.alarms.add("forced")
            journal.append("door.opened", compartment=cid, granted=False, state=[slot.state_op()])
            journal.append("alarm.forced", compartment=cid, reason="door opened without a grant",
                           state=[slot.state_op()])
            self.core.alarm(slot, f"ALARM: compartment {cid} forced open")
        if slot.held_task is None or slot.held_task.done():
            slot.held_task = self.core.spawn(self.held_open(slot), f"held-{cid}")

    def _closed(self, slot: Slot) -> None:
        cid, journal, now = slot.cfg.id, self.core.journal, self.core.clock.monotonic()
        if slot.held_task:
            slot.held_task.cancel()
            slot.held_task = None
        s = slot.session
        if s is not None and s.opened:
            slot.session = None
        journal.append("door.closed", compartment=cid, granted=s is not None and s.opened,
                       grant_seq=s.grant_seq if s else None,
                       open_s=round(now - s.opened_at, 3) if s and s.opened_at else None,
                       state=[slot.state_op()])
        if s is not None and s.opened:
            self.record_items(slot, s)
        for alarm in sorted(slot.alarms - STAYING_ALARMS):  # a forced door stays an alarm until acknowledged
            slot.alarms.discard(alarm)
            journal.append("alarm.cleared", compartment=cid, alarm=alarm, reason="door closed",
                           state=[slot.state_op()])

    def _pulsed_elsewhere(self, opened: Slot) -> Slot | None:
        """The door of the same cabinet pulsed last and not opened yet, within open_timeout_s: when another
        door opens without a grant meanwhile, the pulse most likely opened it (crossed wiring)."""
        now = self.core.clock.monotonic()
        waiting = [(s.session.pulsed_at, s) for s in self.core.slots.values()
                   if s is not opened and s.session is not None and not s.session.opened
                   and s.cfg.cabinet == opened.cfg.cabinet and now - s.session.pulsed_at <= self.timing.open_timeout_s
                   and s.door is DoorState.CLOSED]
        return max(waiting, key=lambda w: w[0])[1] if waiting else None

    def _wiring_suspected(self, pulsed: Slot, opened: Slot) -> None:
        """A pulse on one door, and another opened: both are blocked until a technician has checked the wiring."""
        a, b = pulsed.cfg.id, opened.cfg.id
        detail = (f"pulse on {a} ({pulsed.cfg.lock_driver} channel {pulsed.cfg.lock}) opened {b} "
                  f"(sensor {opened.cfg.sensor_driver} channel {opened.cfg.sensor}): lock or sensor wires crossed? "
                  "check with lockerd-hil, then lockerd clear-fault")
        self.core.journal.append("door.opened", compartment=b, granted=False, state=[opened.state_op()])
        self.core.journal.append("fault.wiring_suspected", compartment=b, pulsed=a, opened=b,
                                 grant_seq=pulsed.session.grant_seq if pulsed.session else None, detail=detail)
        for slot in (pulsed, opened):
            self.set_fault(slot, "wiring", detail)
        self.core.alarm(opened, f"FAULT: {detail}")
        log.error("wiring suspected: %s", detail)

    # -- after a pulse ---------------------------------------------------------------

    def record_items(self, slot: Slot, s: Session) -> None:
        """The door closed after a grant: the items of the session changed hands."""
        registry = self.core.registry
        ts = iso_utc(self.core.clock.wall())
        holder = next(iter(s.people), None)
        for code, action in s.items.items():
            item = registry.items.get(code)
            if item is None:
                continue
            if item.kind is ItemKind.EVIDENCE:
                holder = self._officer_of(s) or holder  # the officer of the two, not the case manager
            if action in (Action.CHECKOUT, Action.RETRIEVE):
                item.state, item.holder = ItemState.OUT, holder
            elif action is Action.RELEASE:
                item.state, item.holder = ItemState.RELEASED, holder
            else:
                item.state, item.holder = ItemState.IN, None
                if item.kind is ItemKind.EVIDENCE and action is Action.DEPOSIT:
                    item.depositor = self._officer_of(s)
            item.since = ts
            due, due_ops = self.moved(item, s.note)  # a return deadline, same transaction
            self.core.journal.append(ITEM_EVENT[(item.kind, action)], compartment=slot.compartment, dossier=code,
                                     people=tuple(s.people), grant_seq=s.grant_seq, case_name=item.case_name,
                                     officer=item.officer, **s.note, **due,
                                     state=registry.put_item(item) + due_ops)

    def _officer_of(self, s: Session) -> str | None:
        for pid in s.people:
            p = self.core.registry.people.get(pid)
            if p and p.role in OFFICER_ROLES:
                return pid
        return None

    async def relock(self, slot: Slot) -> None:
        """The pulse has ended: the lock holds again."""
        await self.core.clock.sleep(self.timing.pulse_ms / 1000)
        slot.pulsing = False
        self.changed(slot)

    async def expect_open(self, slot: Slot, session: Session) -> None:
        """Pulse sent is not door opened: say so when the door stays shut."""
        await self.core.clock.sleep(self.timing.open_timeout_s)
        if slot.session is not session or session.opened:
            return
        slot.session = None
        slot.not_opened += 1
        self.core.journal.append("door.not_opened", compartment=slot.cfg.id, grant_seq=session.grant_seq,
                                 timeout_s=self.timing.open_timeout_s, in_a_row=slot.not_opened,
                                 state=[slot.state_op()])
        if slot.not_opened >= self.timing.jam_after:
            self.set_fault(slot, "jam", f"{slot.not_opened} pulses in a row without the door opening")
        self.changed(slot)

    async def held_open(self, slot: Slot) -> None:
        clock = self.core.clock
        opened = clock.monotonic()
        await clock.sleep(self.timing.max_open_s)
        count = 0
        while slot.door is DoorState.OPEN:
            count += 1
            slot.alarms.add("held-open")
            cid = slot.cfg.id
            self.core.journal.append("alarm.held_open", compartment=cid, count=count,
                                     open_s=round(clock.monotonic() - opened, 1), state=[slot.state_op()])
            self.core.alarm(slot, f"ALARM: compartment {cid} open too long ({count})")
            self.changed(slot)
            await clock.sleep(self.timing.alarm_repeat_s)

    # -- faults and alarms -------------------------------------------------------------

    def set_fault(self, slot: Slot, key: str, detail: str) -> None:
        if slot.faults.get(key) == detail:
            return
        slot.faults[key] = detail
        self.core.journal.append("compartment.fault", compartment=slot.cfg.id, fault=key, detail=detail,
                                 state=[slot.state_op()])
        self.changed(slot)

    def clear_fault(self, slot: Slot, key: str, by: str | None = None, via: dict[str, Any] | None = None) -> None:
        if slot.faults.pop(key, None) is None:
            return
        self.core.journal.append("compartment.fault_cleared", compartment=slot.cfg.id, fault=key,
                                 people=(by,) if by else (), state=[slot.state_op()], **(via or {}))
        self.changed(slot)

    def clear_faults(self, compartment: str, person: str, via: dict[str, Any] | None = None) -> list[str]:
        """A technician clears a compartment's faults after fixing it."""
        slot = self._slot(compartment)
        cleared = [k for k in list(slot.faults) if k in CLEARED_BY_HAND]
        for k in cleared:
            self.clear_fault(slot, k, person, via)
        slot.not_opened = 0
        return cleared

    def _slot(self, compartment: str) -> Slot:
        slot = self.core.slots.get(compartment)
        if slot is None:
            raise CommandError(f"unknown compartment {compartment!r}")
        return slot

    # -- boards ------------------------------------------------------------------------

    def listen(self, hw: Hardware) -> None:
        """Hear every board and scanner go and come back, and every relay a board reports stuck."""
        for d in hw.drivers.values():
            d.on_status(self.driver_status)
            if hasattr(d, "on_lock_fault"):
                d.on_lock_fault(lambda ch, detail, name=d.name: self.lock_fault(name, ch, detail))
        for sc in hw.scanners.values():
            sc.on_status(self.journal_status)

    def driver_status(self, st: DriverStatus) -> None:
        """A lock board gone or back: its compartments' lock fault follows it."""
        for slot in self.core.slots.values():
            if slot.cfg.lock_driver == st.driver:
                if st.online:
                    self.clear_fault(slot, "lock")
                else:
                    self.set_fault(slot, "lock", f"driver {st.driver} offline: {st.detail}")
        self.journal_status(st)

    def journal_status(self, st: DriverStatus) -> None:
        """A board or scanner gone, missing at start or back: journaled, so the station sees it."""
        self.core.journal.append("driver.online" if st.online else "driver.offline", driver=st.driver,
                                 detail=st.detail)

    def lock_fault(self, driver: str, channel: int, detail: str | None) -> None:
        """A relay the board reports stuck (``detail``) or freed again (None)."""
        cid = self.by_lock.get((driver, channel))
        if cid is None:
            return
        if detail is None:
            self.clear_fault(self.core.slots[cid], "relay")
        else:
            self.set_fault(self.core.slots[cid], "relay", detail)

