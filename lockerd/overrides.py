"""Overrides: the two-person emergency open and the technician's maintenance mode.

Both step around the normal who-may-open-what rules, so both are loud and
leave a full trace. An emergency open needs two people who may authorise it
(a supervisor, and a second supervisor or a case manager) and a reason; its
authorisation is an alarm event, durable before any lock moves, and each
compartment it opens has its own durable grant. Opening all of them goes in
turn, one pulse at a time, so the shared power budget is never stretched.

Maintenance mode lets a technician pulse compartments to test locks and
sensors. A maintenance opening moves no items: the door is supervised like
any other, but custody state never changes when it closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from lockerd.domain import Person, Role
from lockerd.errors import CommandError
from lockerd.opening import Core, OpenRequest, Outcome
from lockerd.presence import Presence, PresenceChecks

log = logging.getLogger(__name__)

# Who may authorise an emergency open: a supervisor, and beside them a second
# supervisor or the case manager (the property clerk who answers for the items).
EMERGENCY_LEAD = frozenset({Role.SUPERVISOR})
EMERGENCY_SECOND = frozenset({Role.SUPERVISOR, Role.CASE_MANAGER})
MAINTENANCE_ROLES = frozenset({Role.TECHNICIAN})
# Faults that do not stop an override: the point may be to open a jammed door,
# or to test a sensor. A lock whose driver is offline cannot be pulsed at all.
OVERRIDE_FAULTS = frozenset({"jam", "sensor"})
# Silence between two pulses of an all-in-turn opening, after the first one ended.
STEP_GAP_S = 0.1
MAX_REASON = 256


@dataclass
class Maintenance:
    """Maintenance mode while it is on."""

    person: str
    reason: str
    seq: int  # of maintenance.started
    opens: int = 0


class Overrides:
    """The emergency open and the maintenance mode of one controller."""

    def __init__(self, core: Core, presence: PresenceChecks):
        self.core = core
        self.presence = presence
        self.maintenance: Maintenance | None = None
        self.running: asyncio.Task | None = None  # an all-in-turn emergency opening
        self.awaiting: set[asyncio.Task] = set()  # CLI overrides of evidence waiting for their people's badges

    def restore(self) -> None:
        """Maintenance mode survives a restart: it ends only when a technician ends it."""
        if not self.core.journal.healthy:
            return
        rows = self.core.journal.query(
            "SELECT seq, kind, people, data FROM events WHERE kind IN ('maintenance.started', 'maintenance.ended') "
            "ORDER BY seq DESC LIMIT 1")
        if rows and rows[0][1] == "maintenance.started":
            seq, _, people, data = rows[0]
            person = (json.loads(people) or [""])[0]
            self.maintenance = Maintenance(person, json.loads(data).get("reason", ""), seq)
            log.warning("maintenance mode is still on (started by %s, seq %d)", person, seq)

    # -- checks (nothing is changed until all of them passed) ---------------------------

    async def _refuse(self, action: str, error: str, people: Sequence[Any], reason: Any,
                      via: dict[str, Any], compartment: str | None = None) -> NoReturn:
        """Journal a refused override (it is a security event) and raise the error."""
        shown = [str(p)[:64] for p in people][:8] if isinstance(people, list | tuple) else []
        self.core.journal.append("override.refused", compartment=compartment, people=shown, action=action,
                              error=error, reason=str(reason)[:MAX_REASON] if reason is not None else None, **via)
        log.warning("%s refused: %s", action, error)
        raise CommandError(error)

    def _reason_problem(self, reason: Any) -> str | None:
        if not isinstance(reason, str) or not reason.strip():
            return "a reason is required: say why (it is journaled with the override)"
        if len(reason) > MAX_REASON:
            return f"the reason is {len(reason)} characters long, at most {MAX_REASON}"
        return None

    def _person_problem(self, pid: Any) -> tuple[Person | None, str | None]:
        if not isinstance(pid, str) or not pid:
            return None, f"person {pid!r}: expected a person id"
        p = self.core.registry.people.get(pid)
        if p is None:
            return None, f"unknown person {pid!r}"
        if not p.active:
            return None, f"person {pid!r} is revoked"
        return p, None

    def _emergency_problem(self, people: Any) -> str | None:
        if not isinstance(people, list | tuple):
            return "people: expected a list of two person ids"
        if len(people) != 2:
            return (f"an emergency open needs two people (a supervisor, and a second supervisor or a case "
                    f"manager); {len(people)} given")
        if people[0] == people[1]:
            return f"an emergency open needs two different people; {people[0]!r} was given twice"
        found: list[Person] = []
        for pid in people:
            p, problem = self._person_problem(pid)
            if problem:
                return problem
            assert p is not None
            found.append(p)
        a, b = found
        if not ((a.role in EMERGENCY_LEAD and b.role in EMERGENCY_SECOND)
                or (b.role in EMERGENCY_LEAD and a.role in EMERGENCY_SECOND)):
            return (f"an emergency open needs a supervisor and a second supervisor or a case manager; "
                    f"{a.id} is {a.role}, {b.id} is {b.role}")
        return None

    def _technician(self, pid: Any) -> tuple[Person | None, str | None]:
        p, problem = self._person_problem(pid)
        if p is not None and p.role not in MAINTENANCE_ROLES:
            return None, f"{p.id} is {p.role}: maintenance is for technicians"
        return p, problem

    # -- emergency open --------------------------------------------------------------------

    async def emergency_open(self, people: Sequence[str], reason: str, *, compartment: str | None = None,
                             all_compartments: bool = False, cabinet: str | None = None,
                             via: dict[str, Any] | None = None) -> dict[str, Any]:
        """Open one compartment, or all of them in turn, on two people's authority."""
        via = {"via": "cli"} | (via or {})
        action = "emergency-open"
        targets: list[str] = []
        problem = None
        if all_compartments == (compartment is not None):
            problem = "name one compartment, or all of them, not both and not neither"
        elif compartment is not None:
            if compartment not in self.core.slots:
                problem = f"unknown compartment {compartment!r}"
            targets = [compartment]
        else:
            if cabinet is not None and cabinet not in self.core.config.cabinets:
                problem = f"unknown cabinet {cabinet!r}"
            targets = [cid for cid, comp in self.core.config.compartments.items()
                       if cabinet is None or comp.cabinet == cabinet]
            if problem is None and self.running is not None and not self.running.done():
                problem = "an emergency opening of all compartments is running already"
        problem = (problem or self._reason_problem(reason) or self._emergency_problem(people)
                   or self.core.not_now())
        if problem:
            await self._refuse(action, problem, people, reason, via, compartment)
        people = tuple(people)
        reason = reason.strip()
        evidence = self._evidence_cabinets(targets)
        if evidence and via.get("via") == "cli":
            # Typed names are not people: those named must badge at the cabinet first.
            wait = await self.presence.require(action, people, evidence, via, compartments=targets,
                                                 compartment=compartment, reason=reason)
            waited = via | {"waited_seq": wait.seq}
            self._await_people(wait, lambda: self._emergency_go(targets, people, reason, compartment, cabinet,
                                                                waited), reason, via)
            return self._waiting_reply(wait, targets)
        return await self._emergency_go(targets, people, reason, compartment, cabinet, via)

    def _evidence_cabinets(self, targets: Sequence[str]) -> set[str]:
        return {self.core.slots[t].cfg.cabinet for t in targets if self.core.slots[t].cfg.kind == "evidence"}

    def _waiting_reply(self, wait: Presence, targets: Sequence[str]) -> dict[str, Any]:
        window = self.core.config.timing.evidence_window_s
        return {"accepted": True, "waiting": True, "seq": wait.seq, "people": list(wait.people),
                "cabinets": sorted(wait.cabinets), "compartments": list(targets), "window_s": window,
                "message": f"waiting: {' and '.join(wait.people)} must badge at a scanner of cabinet "
                           f"{', '.join(sorted(wait.cabinets))} within {window:g} s; then {', '.join(targets)} "
                           "opens"}

    def _await_people(self, wait: Presence, go: Callable[[], Awaitable[Any]], reason: str | None,
                      via: dict[str, Any]) -> None:
        task = self.core.spawn(self._when_present(wait, go, reason, via), f"{wait.action}-waiting")
        self.awaiting.add(task)
        task.add_done_callback(self.awaiting.discard)

    async def _when_present(self, wait: Presence, go: Callable[[], Awaitable[Any]], reason: str | None,
                            via: dict[str, Any]) -> None:
        """Run ``go`` once the people badged; journal the refusal when they did not come in time."""
        try:
            present = await self.presence.wait(wait)
            problem = None if present else (
                f"{' and '.join(wait.missing())} did not badge at the cabinet within "
                f"{self.core.config.timing.evidence_window_s:g} s: nothing opened")
            problem = problem or self.core.not_now()
            if problem is None:
                await go()
                return
            await self._refuse(wait.action, problem, list(wait.people), reason, via | {"waited_seq": wait.seq})
        except CommandError:
            pass  # journaled (override.refused) where it was raised

    async def _emergency_go(self, targets: list[str], people: tuple[str, ...], reason: str,
                            compartment: str | None, cabinet: str | None, via: dict[str, Any]) -> dict[str, Any]:
        # The authorisation raises the alarm and is on disk before any lock moves.
        alarm = await self.core.journal.append_durable("alarm.emergency_open", compartment=compartment, people=people,
                                                       reason=reason, compartments=targets, cabinet=cabinet, **via)
        log.warning("EMERGENCY OPEN by %s: %s (%s)", " + ".join(people), ", ".join(targets), reason)
        by_cabinet = {self.core.slots[t].cfg.cabinet: self.core.slots[t] for t in targets}
        for slot in by_cabinet.values():  # once per cabinet: the scanners there show it
            self.core.alarm(slot, f"ALARM: emergency open ({reason})")
        src = {"source": "emergency", "override_seq": alarm.seq, "reason": reason, **via}
        if compartment is not None:
            out = await self._open_one(compartment, people, src)
            if isinstance(out, str):
                raise CommandError(out)
            if not out.accepted:
                raise CommandError(out.message)
            return {"seq": alarm.seq, "compartments": targets, "pulsed": out.pulsed, "message": out.message}
        self.running = self.core.spawn(self._in_turn(targets, people, src), "emergency-in-turn")
        return {"seq": alarm.seq, "compartments": targets, "in_turn": True}

    async def _open_one(self, cid: str, people: tuple[str, ...], src: dict[str, Any]) -> Outcome | str:
        """One emergency opening; a compartment that cannot open is journaled and named."""
        try:
            return await self.core.open(self.core.slots[cid],
                                        OpenRequest(people=people, source=src, allow_faults=OVERRIDE_FAULTS))
        except CommandError as e:
            self.core.journal.append("access.denied", compartment=cid, people=people, reason=str(e),
                                  source="emergency", override_seq=src["override_seq"])
            return str(e)

    async def _in_turn(self, targets: list[str], people: tuple[str, ...], src: dict[str, Any]) -> None:
        """Open each compartment after the previous pulse ended: one solenoid at a time."""
        opened: list[str] = []
        failed: dict[str, str] = {}
        step = self.core.config.timing.pulse_ms / 1000 + STEP_GAP_S
        for cid in targets:
            if (busy := self.core.not_now()) is not None:  # the daemon is stopping or reloading
                failed[cid] = busy
                continue
            try:
                out = await self._open_one(cid, people, src)
            except Exception as e:  # one compartment's trouble must not strand the rest
                log.exception("emergency open of %s failed", cid)
                out = f"internal error: {type(e).__name__}: {e}"
            if isinstance(out, str) or not out.accepted:
                failed[cid] = out if isinstance(out, str) else out.message
                continue
            opened.append(cid)
            if out.pulsed:
                await self.core.clock.sleep(step)
        self.core.journal.append("override.finished", people=people, override_seq=src["override_seq"],
                              opened=opened, failed=failed)

    # -- maintenance mode -----------------------------------------------------------------

    async def maintenance_on(self, person: str, reason: str, via: dict[str, Any] | None = None) -> dict[str, Any]:
        via = {"via": "cli"} | (via or {})
        _, problem = self._technician(person)
        problem = problem or self._reason_problem(reason)
        if problem is None and self.maintenance is not None:
            problem = f"maintenance is on already (by {self.maintenance.person}, seq {self.maintenance.seq})"
        if problem:
            await self._refuse("maintenance-on", problem, [person], reason, via)
        ev = await self.core.journal.append_durable("maintenance.started", people=(person,), reason=reason.strip(),
                                                    **via)
        self.maintenance = Maintenance(person, reason.strip(), ev.seq)
        return {"seq": ev.seq}

    async def maintenance_off(self, person: str, reason: str = "", via: dict[str, Any] | None = None
                              ) -> dict[str, Any]:
        via = {"via": "cli"} | (via or {})
        _, problem = self._technician(person)
        if problem is None and self.maintenance is None:
            problem = "maintenance is not on"
        if problem:
            await self._refuse("maintenance-off", problem, [person], reason, via)
        m = self.maintenance
        assert m is not None
        ev = await self.core.journal.append_durable(
            "maintenance.ended", people=(person,), started_seq=m.seq, started_by=m.person, opens=m.opens,
            reason=reason.strip() or None, **via)
        self.maintenance = None
        return {"seq": ev.seq, "opens": m.opens}

    async def maintenance_open(self, compartment: str, person: str, via: dict[str, Any] | None = None,
                               witness: str | None = None) -> dict[str, Any]:
        """Pulse one compartment (or a rear door) for testing; no items change hands.

        An evidence compartment needs a witness who answers for the items (a
        case manager or a supervisor), and both badge at the cabinet first."""
        via = {"via": "cli"} | (via or {})
        _, problem = self._technician(person)
        if problem is None and self.maintenance is None:
            problem = "maintenance is not on: start it first (lockerd maintenance on --person ID --reason ...)"
        if problem is None and compartment not in self.core.slots:
            problem = f"unknown compartment {compartment!r}"
        evidence = self._evidence_cabinets([compartment]) if problem is None else set()
        if problem is None and evidence:
            problem = self._witness_problem(witness, person)
        problem = problem or self.core.not_now()
        people = [person] + ([witness] if witness else [])
        if problem:
            await self._refuse("maintenance-open", problem, people, None, via,
                               compartment if isinstance(compartment, str) else None)
        if evidence:
            assert witness is not None
            wait = await self._wait_for_maintenance(compartment, (person, witness), evidence, via)
            return self._waiting_reply(wait, [compartment])
        return await self._maintenance_go(compartment, (person,), via)

    def _witness_problem(self, witness: Any, person: str) -> str | None:
        if witness is None:
            return ("an evidence compartment opens for maintenance only with a witness who answers for the "
                    "items (--witness: a case manager or a supervisor); both badge at the cabinet")
        p, problem = self._person_problem(witness)
        if problem:
            return f"witness: {problem}"
        assert p is not None
        if p.id == person:
            return "the witness must be another person than the technician"
        if p.role not in EMERGENCY_SECOND:
            return f"witness {p.id} is {p.role}: a case manager or a supervisor witnesses an evidence maintenance"
        return None

    async def _wait_for_maintenance(self, compartment: str, people: tuple[str, ...], evidence: set[str],
                                    via: dict[str, Any]) -> Presence:
        wait = await self.presence.require("maintenance-open", people, evidence, via, compartment=compartment)
        waited = via | {"waited_seq": wait.seq}
        self._await_people(wait, lambda: self._maintenance_go(compartment, people, waited), None, via)
        return wait

    async def _maintenance_go(self, compartment: str, people: tuple[str, ...], via: dict[str, Any]
                              ) -> dict[str, Any]:
        m = self.maintenance
        if m is None:
            await self._refuse("maintenance-open", "maintenance ended while waiting", list(people), None, via,
                               compartment)
        assert m is not None
        src = {"source": "maintenance", "maintenance_seq": m.seq, **via}
        out = await self.core.open(self.core.slots[compartment], OpenRequest(
            people=people, source=src, grant_kind="maintenance.open", allow_faults=OVERRIDE_FAULTS))
        if not out.accepted:
            raise CommandError(out.message)
        m.opens += 1
        return {"compartment": compartment, "pulsed": out.pulsed, "message": out.message}
