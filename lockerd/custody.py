"""Custody deadlines and the reminders that escalate when one is missed.

A dossier registered by the station must be deposited by its deposit
deadline (default 24 hours after intake); one taken out must be back by the
end of the shift it was taken in (see :mod:`lockerd.calendar`); a seized
item registered as evidence has a deposit deadline too. Each missed
deadline climbs a ladder of reminders configured per kind of deadline
(``[custody.deposit]``, ``[custody.return]``, ``[custody.evidence_deposit]``):
by default the responsible officer at the deadline, the supervisor after a
delay with nothing done, the legal/oversight section after another.

How time is counted, so that restarts and clock jumps neither lose nor
repeat a reminder:

- A deadline is a wall-clock instant: the first level is due once the wall
  clock passes it (plus that level's ``after_s``). A wall clock jumping
  forward past many deadlines sends each one's first level, once.
- Each later level is due ``after_s`` after the previous level was sent, a
  duration: measured on the monotonic clock within one boot (immune to wall
  jumps), on the wall clock across a restart (the only clock that survives).
- The level reached is stored in the ``deadlines`` table by the reminder
  event itself, in the same transaction: after a crash either both exist or
  neither, so a level is sent once and never again, even if the wall clock
  jumps back behind the deadline.
- An acknowledgement from the station holds the next level back for the
  ladder's ``ack_pause_s`` (counted the same way).
- A deadline ends the moment its item moves (deposited, returned, released,
  unassigned): the check happens before every send, and the deadline row is
  deleted by a ``reminder.cleared`` (reminders were sent) or
  ``deadline.closed`` (none were) event.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from lockerd.calendar import Calendar
from lockerd.clock import iso_utc, parse_time
from lockerd.custody_rules import OUT_KINDS, DeadlineKind, Rules
from lockerd.deadlines import DEADLINES_SQL, Deadline, deadline_id, overdue_rows
from lockerd.domain import Action, Item, ItemState, Role
from lockerd.errors import CommandError
from lockerd.journal import Event, StateOp
from lockerd.opening import Core, OpenRequest

log = logging.getLogger(__name__)

# How long a deadline whose reminder could not be journaled waits before the next try.
RETRY_S = 5.0


class Custody:
    """Deadlines of one controller's items, and the task that sends their reminders."""

    def __init__(self, core: Core):
        self.core = core
        self.journal = core.journal
        self.clock = core.clock
        self.rules: Rules = core.config.custody
        self.calendar: Calendar = core.config.calendar
        self.deadlines: dict[str, Deadline] = {}
        self._hold: dict[str, float] = {}  # deadline id -> monotonic time before which it is not retried
        self._wake = asyncio.Event()

    # -- life ------------------------------------------------------------------

    def start(self) -> None:
        """Load the running deadlines and start watching them."""
        if self.journal.healthy:
            self.deadlines = {d.id: d for d in (Deadline(*r) for r in self.journal.query(DEADLINES_SQL))}
        self.core.spawn(self._run(), "custody")

    def poke(self) -> None:
        """Look at the deadlines now (something moved)."""
        self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                self.evaluate()
            except Exception:  # one bad row must not stop every other reminder
                log.exception("custody: evaluating deadlines failed")
            wait = max(0.05, self.next_wait())
            self._wake.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep(wait))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    # -- time ------------------------------------------------------------------

    def _elapsed(self, ts: float, mono: float | None, boot: str | None) -> float:
        """Seconds since an instant recorded as wall, monotonic and boot."""
        if boot == self.clock.boot_id() and mono is not None:
            return self.clock.monotonic() - mono
        return self.clock.wall() - ts

    def remaining(self, d: Deadline) -> float | None:
        """Seconds until the next level of ``d`` is due (<= 0: due now); None at the top of the ladder."""
        ladder = self.rules.ladders[d.kind]
        if d.level >= len(ladder.steps):
            return None
        step = ladder.steps[d.level]
        if d.level == 0:
            left = d.due_ts + step.after_s - self.clock.wall()
        else:
            assert d.sent_ts is not None
            left = step.after_s - self._elapsed(d.sent_ts, d.sent_mono, d.sent_boot)
        if d.ack_ts is not None:
            left = max(left, ladder.ack_pause_s - self._elapsed(d.ack_ts, d.ack_mono, d.ack_boot))
        return left

    def next_wait(self) -> float:
        """How long the watcher may sleep: until the next level is due, at most tick_s.

        The cap is what notices a wall clock jumping forward: a sleep runs on
        the monotonic clock and would oversleep a deadline the jump crossed.
        """
        wait = self.rules.tick_s
        now = self.clock.monotonic()
        for d in self.deadlines.values():
            left = self.remaining(d)
            if left is not None:
                wait = min(wait, max(left, self._hold.get(d.id, now) - now))
        return wait

    # -- the watcher -------------------------------------------------------------

    def _resolved(self, d: Deadline) -> str | None:
        """Why ``d`` no longer runs (its item moved), or None while it does."""
        item = self.core.registry.items.get(d.code)
        if item is None:
            return "unassigned"
        if item.state is ItemState.RELEASED:
            return "released"
        if d.kind in OUT_KINDS:
            return None if item.state is ItemState.OUT and item.since == d.since else "returned"
        return None if item.state is ItemState.NEW else "deposited"

    def evaluate(self) -> None:
        """Close the deadlines whose items moved; send every level that is due, once."""
        self._correct_provisional()
        now = self.clock.monotonic()
        for d in list(self.deadlines.values()):
            if self._hold.get(d.id, now) > now:
                continue
            reason = self._resolved(d)
            if reason is not None:
                self._close(d, reason)
                continue
            left = self.remaining(d)
            if left is not None and left <= 0:
                self._send(d)

    def _provisional(self, d: Deadline) -> Deadline:
        """``d`` as computed from a wall clock the kernel does not call synchronised: kept with the monotonic
        time of its start, so that it is corrected once the clock is right (a board without RTC before NTP)."""
        if self.clock.synchronised():
            return d
        return replace(d, since_mono=self.clock.monotonic(), since_boot=self.clock.boot_id(), provisional=1)

    def _correct_provisional(self) -> None:
        """The clock is synchronised now: move each provisional deadline by the error its start was read with."""
        pending = [d for d in self.deadlines.values() if d.provisional]
        if not pending or not self.clock.synchronised():
            return
        for d in pending:
            fixed = replace(d, provisional=0)
            fields: dict[str, Any] = {}
            if d.since_boot == self.clock.boot_id() and d.since_mono is not None and d.since is not None:
                start = self.clock.wall() - (self.clock.monotonic() - d.since_mono)
                error = start - parse_time(d.since)
                due_ts = d.due_ts + error
                if d.kind == DeadlineKind.RETURN and (end := self.calendar.end_of_shift(start)) is not None:
                    due_ts = end[0]  # the shift it was really taken out in
                fixed = replace(fixed, due=iso_utc(due_ts), due_ts=due_ts)
                fields = {"clock_error_s": round(error, 1)}
            else:
                fields = {"uncorrected": "the board restarted before its clock was synchronised: the due time "
                                         "stays as computed from the unsynchronised clock"}
            self.deadlines[d.id] = fixed
            item = self.core.registry.items.get(d.code)
            fut = self.journal.append("deadline.corrected", keep=False, compartment=item.compartment if item else None,
                                      dossier=d.code, deadline=d.kind, was_due=d.due, due=fixed.due, **fields,
                                      state=[fixed.op()])
            fut.add_done_callback(lambda f, d=d, fixed=fixed: self._written(f, d, fixed))
            log.warning("custody: the clock is synchronised now: %s %s due %s (was %s)", d.code, d.kind, fixed.due,
                        d.due)

    def _recipient(self, d: Deadline, to: str) -> tuple[str | None, str | None]:
        """Who a rung to ``to`` goes to, resolved now from active people: (person, None); (None, None) when the
        station resolves it (legal, or no supervisor named); (None, why) when nobody there may be told."""
        reg = self.core.registry
        if to == "officer":
            named = [(what, pid) for what, pid in (("holder", d.holder), ("responsible officer", d.officer)) if pid]
            for _, pid in named:
                if reg.active_person(pid) is not None:
                    return pid, None
            why = "; ".join(f"{what} {pid} is revoked" for what, pid in named) or "nobody named"
            return None, why
        if to == "supervisor" and d.supervisor:
            if reg.active_person(d.supervisor) is not None:
                return d.supervisor, None
            return None, f"supervisor {d.supervisor} is revoked"
        return None, None  # the legal/oversight section, or a supervisor the station knows

    def _send(self, d: Deadline) -> None:
        ladder = self.rules.ladders[d.kind]
        level = d.level + 1
        skipped: list[dict[str, Any]] = []
        recipient, why = self._recipient(d, ladder.steps[level - 1].to)
        while why is not None and level < len(ladder.steps):
            # Nobody at this rung may be told: the next rung is told now, and why.
            skipped.append({"level": level, "to": ladder.steps[level - 1].to, "why": why})
            level += 1
            recipient, why = self._recipient(d, ladder.steps[level - 1].to)
        step = ladder.steps[level - 1]
        sent = replace(d, level=level, sent_ts=self.clock.wall(), sent_mono=self.clock.monotonic(),
                       sent_boot=self.clock.boot_id())
        item = self.core.registry.items.get(d.code)
        # Memory moves first so the next look does not send it again while
        # the writer works; a failed write puts the deadline back.
        self.deadlines[d.id] = sent
        # keep=False: a reminder the journal cannot take is retried here, at its level, not journaled late.
        fut = self.journal.append(
            "reminder.due" if d.level == 0 else "reminder.escalated", keep=False,
            compartment=item.compartment if item else None, dossier=d.code,
            people=(recipient,) if recipient else (),
            deadline=d.kind, due=d.due, level=level, levels=len(ladder.steps), to=step.to, recipient=recipient,
            officer=d.officer, holder=d.holder, case_name=item.case_name if item else "",
            overdue_s=round(self.clock.wall() - d.due_ts, 1), state=[sent.op()],
            **({"skipped": skipped} if skipped else {}), **({"unreachable": why} if why else {}))
        fut.add_done_callback(lambda f: self._written(f, d, sent))
        log.info("custody: %s %s overdue: level %d to %s%s", d.code, d.kind, level, step.to,
                 f" ({recipient})" if recipient else "")

    def _close(self, d: Deadline, reason: str) -> None:
        del self.deadlines[d.id]
        item = self.core.registry.items.get(d.code)
        late_s = round(self.clock.wall() - d.due_ts, 1)
        kw: dict[str, Any] = {"compartment": item.compartment if item else None, "dossier": d.code,
                              "deadline": d.kind, "due": d.due, "reason": reason,
                              "state": [("delete", "deadlines", {"id": d.id})]}
        if d.level > 0:
            fut = self.journal.append("reminder.cleared", keep=False, level=d.level, late_s=late_s, **kw)
        else:
            fut = self.journal.append("deadline.closed", keep=False, on_time=late_s <= 0, late_s=late_s, **kw)
        fut.add_done_callback(lambda f: self._written(f, d, None))

    def _written(self, fut: asyncio.Future, before: Deadline, after: Deadline | None) -> None:
        if fut.cancelled() or fut.exception() is None:
            self._hold.pop(before.id, None)
            self.poke()
            return
        # Not on disk, so not sent: restore and retry after a pause.
        current = self.deadlines.get(before.id)
        if current is after:
            self.deadlines[before.id] = before
        self._hold[before.id] = self.clock.monotonic() + RETRY_S
        self.poke()  # the watcher sleeps until the next rung it believed sent: wake it for the retry
        log.warning("custody: %s not journaled (%s); retrying in %g s", before.id, fut.exception(), RETRY_S)

    # -- changes from the controller and the station -------------------------------

    def registration(self, item: Item, args: dict[str, Any]) -> tuple[Deadline | None, dict[str, Any]]:
        """Check an ``assign``'s deadline arguments; the deposit deadline to set (if any) and event data.

        Raises CommandError before anything is applied.
        """
        people = self.core.registry.people
        officer = people.get(item.officer) if item.officer else None
        if officer is not None and officer.role not in (Role.OFFICER, Role.SUPERVISOR):
            raise CommandError(f"item {item.code}: responsible officer {item.officer} is a {officer.role}, "
                               "expected an officer or supervisor")
        supervisor = args.get("supervisor")
        if supervisor is not None:
            p = self.core.registry.active_person(str(supervisor))
            if p is None:
                raise CommandError(f"item {item.code}: unknown or revoked supervisor {supervisor!r}")
            if p.role is not Role.SUPERVISOR:
                raise CommandError(f"item {item.code}: {supervisor} is a {p.role}, not a supervisor")
        now = self.clock.wall()
        taken_in = self._time(item.code, "taken_in", args.get("taken_in"), now)
        if taken_in > now + 60:
            raise CommandError(f"item {item.code}: taken_in {args['taken_in']} is in the future")
        given = args.get("deposit_due")
        kind = DeadlineKind.EVIDENCE_DEPOSIT if item.kind == "evidence" else DeadlineKind.DEPOSIT
        old = self.deadlines.get(deadline_id(item.code, kind))
        if item.state is not ItemState.NEW:
            if given is not None or args.get("taken_in") is not None:
                raise CommandError(f"item {item.code} was deposited already ({item.state}): no deposit deadline")
            return None, {}
        if given is None and old is not None and args.get("taken_in") is None:
            return None, {"deposit_due": old.due}  # re-registration keeps the running deadline and its ladder
        due_ts = (self._time(item.code, "deposit_due", given, now) if given is not None
                  else taken_in + self.rules.deposit_within_h * 3600)
        d = Deadline(deadline_id(item.code, kind), item.code, kind, iso_utc(due_ts), due_ts,
                     since=iso_utc(taken_in), officer=item.officer or None,
                     supervisor=str(supervisor) if supervisor is not None else None)
        if given is None and args.get("taken_in") is None:
            d = self._provisional(d)  # counted from this controller's "now"
        data: dict[str, Any] = {"deposit_due": d.due, "taken_in": d.since}
        if d.provisional:
            data["clock_unsynchronised"] = True
        if due_ts <= now:
            # Registered after its deadline ran out: recorded as late, and its reminders start at once.
            data |= {"late": True, "late_s": round(now - due_ts, 1)}
        return d, data

    @staticmethod
    def _time(code: str, key: str, value: Any, default: float) -> float:
        if value is None:
            return default
        try:
            return parse_time(str(value))
        except ValueError:
            raise CommandError(f"item {code}: {key} {value!r} is not an ISO 8601 time") from None

    def registered(self, d: Deadline | None) -> None:
        """The assign carrying ``d`` is durable: watch it."""
        if d is not None:
            self.deadlines[d.id] = d
            self.poke()

    def moved(self, item: Item, note: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], list[StateOp]]:
        """An item changed hands (door closed after a grant): event data and deadline rows to journal with it.

        A dossier's checkout starts its return deadline (the end of the shift),
        an evidence retrieval its due-back time (from the reason card), in the
        same transaction as the move; a deposit, return or release ends
        deadlines on the watcher's next look, which follows at once.
        """
        self.poke()
        if item.state is not ItemState.OUT:
            return {}, []
        taken = self.clock.wall()
        shift = None
        if item.kind == "evidence":
            kind = DeadlineKind.EVIDENCE_RETURN
            due_ts = taken + self.core.config.evidence.due_back_h_for((note or {}).get("reason_code")) * 3600
        else:
            kind = DeadlineKind.RETURN
            end = self.calendar.end_of_shift(taken)
            if end is None:
                due_ts = taken + self.rules.return_without_shifts_h * 3600
            else:
                due_ts, shift = end
        old = self.deadlines.get(deadline_id(item.code, kind))
        supervisor = old.supervisor if old else self._supervisor_of(item.code)
        d = self._provisional(Deadline(deadline_id(item.code, kind), item.code, kind, iso_utc(due_ts), due_ts,
                                       since=item.since, officer=item.officer or None, holder=item.holder,
                                       supervisor=supervisor))
        self.deadlines[d.id] = d
        data = {"due": d.due} | ({"shift": shift} if kind == DeadlineKind.RETURN else {})
        return data | ({"clock_unsynchronised": True} if d.provisional else {}), [d.op()]

    def _supervisor_of(self, code: str) -> str | None:
        """The supervisor named when the item was registered, kept on its deposit deadline."""
        for kind in (DeadlineKind.DEPOSIT, DeadlineKind.EVIDENCE_DEPOSIT):
            d = self.deadlines.get(deadline_id(code, kind))
            if d is not None and d.supervisor:
                return d.supervisor
        rows = self.journal.query(
            "SELECT json_extract(data, '$.supervisor') FROM events WHERE kind = 'item.assigned' AND dossier = ? "
            "AND json_extract(data, '$.supervisor') IS NOT NULL ORDER BY seq DESC LIMIT 1", code)
        return rows[0][0] if rows else None

    async def acknowledge(self, code: str, kind: str | None, person: str, note: str,
                          by: dict[str, Any]) -> Event:
        """The station acknowledges a reminder: escalation pauses for the ladder's ack_pause_s."""
        p = self.core.registry.active_person(person)
        if p is None:
            raise CommandError(f"acknowledge {code}: unknown or revoked person {person!r}")
        running = [d for d in self.deadlines.values() if d.code == code and (kind is None or d.kind == kind)]
        sent = [d for d in running if d.level > 0]
        if not sent:
            what = f"{kind} deadline" if kind else "deadline"
            raise CommandError(f"acknowledge {code}: no {what} with a reminder sent"
                               + (f" (running: {', '.join(d.kind for d in running)})" if running else ""))
        if len(sent) > 1:
            raise CommandError(f"acknowledge {code}: say which deadline ({', '.join(d.kind for d in sent)})")
        d = sent[0]
        acked = replace(d, ack_ts=self.clock.wall(), ack_mono=self.clock.monotonic(), ack_boot=self.clock.boot_id(),
                        ack_by=person)
        pause = self.rules.ladders[d.kind].ack_pause_s
        item = self.core.registry.items.get(code)
        # In memory before the write, as a reminder is: the watcher must not
        # send the next rung (with a row lacking the acknowledgement) meanwhile.
        self.deadlines[d.id] = acked
        try:
            ev = await self.journal.append_durable(
                "reminder.acknowledged", compartment=item.compartment if item else None, dossier=code,
                people=(person,), deadline=d.kind, due=d.due, level=d.level, pause_s=pause,
                until=iso_utc(acked.ack_ts + pause), note=note, **by, state=[acked.op()])
        except Exception:
            if self.deadlines.get(d.id) is acked:
                self.deadlines[d.id] = d
            raise
        self.poke()
        return ev

    def check_release(self, code: str, person: str, reason: str) -> Item:
        """Who may release a dossier, and with what: raises CommandError, changes nothing."""
        if not reason.strip():
            raise CommandError(f"release {code}: a reason is required")
        p = self.core.registry.active_person(person)
        if p is None:
            raise CommandError(f"release {code}: unknown or revoked person {person!r}")
        if str(p.role) not in self.rules.release_roles:
            raise CommandError(f"release {code}: {person} is a {p.role}; a release needs one of "
                               f"{', '.join(self.rules.release_roles)}")
        item = self.core.registry.items.get(code)
        if item is None:
            raise CommandError(f"release {code}: not registered")
        if item.kind != "dossier":
            raise CommandError(f"release {code}: evidence is released at its cabinet, with an officer's and "
                               "a case manager's badge and a release reason card")
        if item.state is ItemState.RELEASED:
            raise CommandError(f"release {code}: released already ({item.since})")
        return item

    async def release(self, code: str, person: str, reason: str, by: dict[str, Any]) -> dict[str, Any]:
        """Release a dossier for good: open its compartment if it is in, else record it at once."""
        item = self.check_release(code, person, reason)
        if item.state is ItemState.IN and item.compartment is not None:
            # The item leaves when its door closes again; the station asked, for this person.
            src = {"source": "station", "requested_by": person} | by
            out = await self.core.open(self.core.slots[item.compartment], OpenRequest(
                {code: Action.RELEASE}, (person,), source=src, note={"reason": reason}))
            if not out.accepted:
                raise CommandError(out.message)
            return {"compartment": out.compartment, "pulsed": out.pulsed, "on_close": True}
        was = item.state
        updated = replace(item, state=ItemState.RELEASED, holder=person, since=iso_utc(self.clock.wall()))
        ev = await self.journal.append_durable(
            "dossier.released", compartment=item.compartment, dossier=code, people=(person,),
            case_name=item.case_name, officer=item.officer, reason=reason, was=str(was), **by,
            state=[("upsert", "items", updated.row())])
        self.core.registry.items[code] = updated
        self.poke()
        return {"seq": ev.seq, "on_close": False}

    # -- reading -------------------------------------------------------------------

    def overdue(self) -> list[dict[str, Any]]:
        """What is overdue now, from memory (the running daemon's view)."""
        return overdue_rows(list(self.deadlines.values()), self.clock.wall(), self.rules)

