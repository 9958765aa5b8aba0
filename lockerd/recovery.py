"""What a start finds: each door as the last run left it, and the openings it left going.

A door that changed while the controller was down is journaled as such; a
door open at start is forced unless an opening of the last run explains it
(a grant whose door never closed): that opening goes on, and its close
records the items' move.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lockerd.domain import Action
from lockerd.drivers.base import DoorState
from lockerd.hardware import Hardware
from lockerd.opening import STAYING_ALARMS, Core, Session, Slot
from lockerd.supervision import Doors

# The last run's opening of one door: (grant seq, grant data, people, whether its door was seen open).
Unfinished = tuple[int, dict[str, Any], list[str], bool]


@dataclass
class Recovery:
    core: Core
    hw: Hardware
    doors: Doors

    def saved(self) -> dict[str, dict[str, Any]]:
        """Each door as the last run left it in the compartments table."""
        journal = self.core.journal
        if not journal.healthy:
            return {}
        rows = journal.query("SELECT id, door, faults, alarm, not_opened FROM compartments")
        return {r[0]: {"door": r[1], "faults": json.loads(r[2] or "{}"),
                       "alarms": json.loads(r[3] or "[]"), "not_opened": r[4] or 0} for r in rows}

    def recover(self, slot: Slot, saved: dict[str, Any] | None, unfinished: Unfinished | None) -> None:
        """Set up one door at start from what it reads now and what the last run left."""
        cid, journal = slot.cfg.id, self.core.journal
        now = self.hw.sensors(slot.cfg.sensor_driver).door(slot.cfg.sensor)
        slot.door = slot.raw = now
        if saved:
            slot.faults = {k: v for k, v in saved["faults"].items() if k == "jam"}
            slot.alarms = set(saved["alarms"])
            slot.not_opened = saved["not_opened"]
            was = DoorState(saved["door"]) if saved["door"] else DoorState.UNKNOWN
            if was != now and DoorState.UNKNOWN not in (was, now):
                journal.append("door.changed_while_down", compartment=cid, was=str(was), now=str(now),
                               state=[slot.state_op()])
        lock_drv = self.hw.drivers[slot.cfg.lock_driver]
        if not lock_drv.online:
            slot.faults["lock"] = f"driver {lock_drv.name} offline: {lock_drv.detail}"
        if now is DoorState.UNKNOWN:
            slot.faults["sensor"] = "door state unknown"
        if unfinished is not None and self._resume_opening(slot, now, unfinished):
            return
        if now is DoorState.OPEN:
            if "forced" not in slot.alarms and "held-open" not in slot.alarms:
                slot.alarms.add("forced")
                journal.append("alarm.forced", compartment=cid, reason="door open at start", state=[slot.state_op()])
            slot.held_task = self.core.spawn(self.doors.held_open(slot), f"held-{cid}")
        elif slot.alarms and now is DoorState.CLOSED:
            for alarm in sorted(slot.alarms - STAYING_ALARMS):
                slot.alarms.discard(alarm)
                journal.append("alarm.cleared", compartment=cid, alarm=alarm, reason="door closed at start")

    def _resume_opening(self, slot: Slot, now: DoorState, grant: Unfinished) -> bool:
        """A grant of the last run whose door never closed: that opening goes on (True), it is not forced.

        Open now: the session is back, and its close records the items' move.
        Shut now, but it had opened: it closed while the controller was down,
        so the move is recorded now. Shut and never seen open: nothing is
        known to have moved, and the journal says so."""
        if now is DoorState.UNKNOWN:
            return False
        seq, data, people, opened = grant
        note = {k: data[k] for k in ("evidence_reason", "reason_code", "reason") if k in data}
        mono = self.core.clock.monotonic()
        items = {code: Action(action) for code, action in (data.get("items") or {}).items()}
        session = Session(grant_seq=seq, pulsed_at=mono, items=items, people=list(people),
                          opened=True, opened_at=mono, note=note)
        journal, cid = self.core.journal, slot.cfg.id
        if now is DoorState.OPEN:
            slot.session = session
            journal.append("grant.resumed", compartment=cid, grant_seq=seq, door="open",
                           outcome="the opening goes on: its close records the move")
            slot.held_task = self.core.spawn(self.doors.held_open(slot), f"held-{cid}")
        elif opened:
            journal.append("grant.resumed", compartment=cid, grant_seq=seq, door="closed",
                           outcome="closed while the controller was down: the move is recorded now")
            self.doors.record_items(slot, session)
        else:
            journal.append("grant.resumed", compartment=cid, grant_seq=seq, door="closed",
                           outcome="never seen open: nothing is recorded as moved")
        return True

    def unfinished_grants(self) -> dict[str, Unfinished]:
        """Per door, the last pulsed grant of the previous run (or one it resumed) that no close, refusal or
        not-opened followed: (seq, data, people, whether its door was seen open). Read from the events since
        that run started, through the kind index, so a start on a long journal stays quick."""
        journal = self.core.journal
        if not journal.healthy:
            return {}
        rows = journal.query("SELECT MAX(seq) FROM events WHERE kind = 'daemon.started'")
        since = rows[0][0] or 0
        latest: dict[str, tuple[int, int]] = {}  # door -> (seq of the event, the grant it names)
        for cid, seq in journal.query(
                "SELECT compartment, MAX(seq) FROM events WHERE kind IN ('access.granted', 'maintenance.open') "
                "AND seq > ? AND json_extract(data, '$.pulse') = 1 GROUP BY compartment", since):
            latest[cid] = (seq, seq)
        for cid, seq, grant in journal.query(  # an opening the previous run resumed, going on when it stopped
                "SELECT compartment, MAX(seq), json_extract(data, '$.grant_seq') FROM events "
                "WHERE kind = 'grant.resumed' AND seq > ? GROUP BY compartment", since):
            if seq > latest.get(cid, (0, 0))[0]:
                latest[cid] = (seq, grant)
        out: dict[str, Unfinished] = {}
        for cid, (_, seq) in latest.items():
            after = {k for (k,) in journal.query(
                "SELECT kind FROM events WHERE compartment = ? AND seq > ? AND json_extract(data, '$.grant_seq') = ?",
                cid, seq, seq)}
            if after & {"door.closed", "lock.failed", "door.not_opened"} or "grant.resumed" in after and \
                    journal.query("SELECT 1 FROM events WHERE kind = 'grant.resumed' AND compartment = ? "
                                  "AND seq > ? AND json_extract(data, '$.door') = 'closed'", cid, seq):
                continue
            data, people = journal.query("SELECT data, people FROM events WHERE seq = ?", seq)[0]
            out[cid] = (seq, json.loads(data), json.loads(people or "[]"), "door.opened" in after)
        return out
