"""The controller: scan -> decide -> journal the grant durably -> pulse -> hand the door to supervision.

The safety path (``open``) is plain awaits, readable top to bottom: the
grant is on disk before the lock moves, and nothing an observer does can
block or break it. The parts around it live in their own modules: the
evidence rule at the cabinet (two_person), door supervision and faults
(supervision), what a start finds (recovery), item registrations
(registration), the overrides and custody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import replace
from typing import Any

from lockerd import __version__
from lockerd.alarms import Alarms
from lockerd.badges import BadgeKey
from lockerd.clock import Clock
from lockerd.config import Config
from lockerd.custody import Custody
from lockerd.domain import Action, Item, ItemKind, ItemState, Person, Registry
from lockerd.drivers.base import DoorState, Feedback, Scan
from lockerd.drivers.sim import ConsoleFeedback
from lockerd.errors import CommandError, DriverError, DriverTimeout, JournalError
from lockerd.evidence import Authorisations
from lockerd.hardware import Hardware
from lockerd.journal import Journal
from lockerd.liveness import Heartbeat
from lockerd.opening import OpenRequest, Outcome, Session, Slot, scan_fields
from lockerd.overrides import Overrides
from lockerd.presence import PresenceChecks
from lockerd.recovery import Recovery
from lockerd.registration import Registrations
from lockerd.supervision import Doors
from lockerd.tasks import Tasks
from lockerd.two_person import TwoPersonRule, journal_badge

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, config: Config, journal: Journal, hardware: Hardware, clock: Clock):
        self.config = config
        self.journal = journal
        self.hw = hardware
        self.clock = clock
        self.timing = config.timing
        self.registry = Registry(BadgeKey.for_journal(config.badge_key))
        self.slots = {cid: Slot(c) for cid, c in config.compartments.items()}
        for c in config.compartments.values():
            if c.rear_id is not None:
                # A pass-through compartment's rear door is supervised as a door of its own.
                rear = replace(c, id=c.rear_id, lock_driver=c.rear_lock_driver, lock=c.rear_lock,
                               sensor_driver=c.rear_sensor_driver, sensor=c.rear_sensor, rear_lock=None,
                               rear_sensor=None)
                self.slots[c.rear_id] = Slot(rear, parent=c.id)
        self.tasks = Tasks()
        self.heartbeat = Heartbeat()  # liveness for the service watchdog: a no-op unless the daemon calls watch()
        self._who: dict[str, tuple[str, float]] = {}  # scanner -> (person, scan time) of its last badge
        self._state_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._outcome_listeners: list[Callable[[Scan, Outcome], None]] = []
        self._default_feedback = ConsoleFeedback("console", clock)
        self._accepting = False
        self._refusing = "controller starting"  # why scans are refused while not accepting
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.authorisations = Authorisations(journal, clock)  # station-authorised evidence retrievals
        self.custody = Custody(self)  # deadlines and escalating reminders
        self.doors = Doors(self, self.heartbeat, self._changed, self.custody.moved)
        self.alarms = Alarms(self, self._changed)  # forced doors waiting for a person to acknowledge them
        self.evidence = TwoPersonRule(self, self.authorisations)
        self.registrations = Registrations(self)
        self.presence = PresenceChecks(self)  # people named by a CLI override of evidence, badging at the cabinet
        self.overrides = Overrides(self, self.presence)  # emergency open and maintenance mode
        self.photos: Any = None  # lockerd.photos.Photographer when a cabinet has a camera

    # -- life ------------------------------------------------------------------

    def watch(self, beat: Callable[[str], None], every_s: float) -> list[str]:
        """Beat ``beat(name)`` from each long-running task at least every ``every_s``; returns the names.

        Call before start(). "controller" beats after a round trip through
        the journal writer (a writer hung in fsync leaves every grant
        waiting), "scanner:NAME" and "doors:DRIVER" from the loops that
        take scans and door changes, even while nothing arrives.
        """
        self.heartbeat.beat, self.heartbeat.every_s = beat, every_s
        return ["controller", *(f"scanner:{n}" for n in self.hw.scanners),
                *(f"doors:{n}" for n in sorted({s.cfg.sensor_driver for s in self.slots.values()}))]

    async def start(self, reloaded: bool = False) -> None:
        """Load state, de-energise every lock, read the doors, journal what changed while down.

        ``reloaded``: the daemon restarts the controller with a new config
        in-process; it journals config.reloaded itself, not daemon.started.
        """
        if self.journal.healthy:
            self.registry.load(self.journal)
            if ops := self.registry.fingerprint_ops():
                # A journal from before fingerprints: its badge codes leave the tables (older events keep them).
                self.journal.append("badges.fingerprinted", badges=len(ops) - 1, state=ops)
        self.overrides.restore()
        self.authorisations.load()
        recovery = Recovery(self, self.hw, self.doors)
        saved = recovery.saved()
        self.doors.listen(self.hw)  # before starting: a board found dead during start must be seen
        await self.hw.start()  # every lock bank switches all outputs off first
        if any(cab.camera for cab in self.config.cabinets.values()):
            from lockerd.photos import Photographer  # an observer of the journal, off the safety path

            self.photos = Photographer(self.config, self.journal, self.spawn)
        # Read before this start is journaled: the openings the last run left going (none in a reload, which
        # waits for a moment with nothing in flight).
        unfinished = {} if reloaded else recovery.unfinished_grants()
        if not reloaded:
            self.journal.append("daemon.started", version=__version__, config=self.config.digest,
                                boot=self.journal.boot, site=self.config.site, node=self.config.node)
        for cid, slot in self.slots.items():
            recovery.recover(slot, saved.get(cid), unfinished.get(cid))
        # The doors as read at start, saved so the next start can tell what changed meanwhile.
        self.journal.append("daemon.ready", doors={cid: str(s.door) for cid, s in self.slots.items()},
                            state=[s.state_op() for s in self.slots.values()])
        for name in {s.cfg.sensor_driver for s in self.slots.values()}:
            self.spawn(self.doors.loop(name, self.hw.sensors(name)), f"doors-{name}")
        for name, scanner in self.hw.scanners.items():
            self.spawn(self._scan_loop(name, scanner), f"scanner-{name}")
        if self.heartbeat.beat is not None:
            self.spawn(self.heartbeat.journal_round_trips(self.journal, self.clock), "controller-tick")
        self.custody.start()
        self._accepting = True

    def busy(self) -> str | None:
        """What is in flight (a scan being decided, a pulse, a door opened by a grant and not yet shut), or None."""
        if self._inflight:
            return f"{self._inflight} scan(s) being decided"
        for slot in self.slots.values():
            if slot.pulsing:
                return f"compartment {slot.cfg.id} is being pulsed"
            if slot.session is not None:
                return f"compartment {slot.cfg.id} is open for a grant and not yet shut"
        for d in self.hw.drivers.values():
            if getattr(d, "energised", None):
                return f"driver {d.name} has a lock energised"
        return None

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self, reason: str) -> None:
        """Refuse every scan and station open from now on, saying ``reason``."""
        self._accepting = False
        self._refusing = reason

    def not_now(self) -> str | None:
        """Why nothing may open now (starting, reloading, stopping), or None."""
        return None if self._accepting else f"not now: {self._refusing}; send it again in a moment"

    async def stop(self, final: bool = True) -> None:
        """Stop taking scans, finish what is in flight, de-energise every lock.

        ``final`` journals daemon.stopped; a reload passes False.
        """
        if self._accepting:
            self.stop_accepting("controller stopping")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), 5.0)
        for d in self.hw.drivers.values():
            if hasattr(d, "wait_pulses"):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(d.wait_pulses(), self.timing.pulse_ms / 1000 + 2)
        if self.photos is not None:
            self.photos.close()
        await self.tasks.cancel_all()  # the loops, door timers and evidence windows
        if final:
            with contextlib.suppress(Exception):
                await self.journal.append_durable("daemon.stopped")
        await self.hw.close()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        return self.tasks.spawn(coro, name)

    # -- observers -----------------------------------------------------------------

    def on_state(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._state_listeners.append(listener)

    def on_outcome(self, listener: Callable[[Scan, Outcome], None]) -> None:
        self._outcome_listeners.append(listener)

    def off_outcome(self, listener: Callable[[Scan, Outcome], None]) -> None:
        self._outcome_listeners.remove(listener)

    def overdue(self) -> list[dict[str, Any]]:
        """The items overdue now, for the station's dashboards (lockerd.station.link publishes them)."""
        return self.custody.overdue()

    def states(self) -> dict[str, dict[str, Any]]:
        return {cid: s.view(self.registry.in_compartment(s.compartment)) for cid, s in self.slots.items()}

    def _changed(self, slot: Slot) -> None:
        if not self._state_listeners:
            return
        state = slot.view(self.registry.in_compartment(slot.compartment))
        for listener in list(self._state_listeners):
            try:
                listener(state)
            except Exception:
                log.exception("state listener failed")

    def items_changed(self, compartments: set[str]) -> None:
        for cid in compartments:
            if cid in self.slots:
                self._changed(self.slots[cid])

    def reload_registry(self) -> None:
        self.registry.reload(self.journal)

    # -- what people are told ----------------------------------------------------------

    def _feedback_for(self, scanner: str) -> Feedback:
        sec = self.config.scanners.get(scanner)
        name = sec.options.get("feedback") if sec else ""
        return self.hw.feedback.get(name, self._default_feedback) if name else self._default_feedback

    async def show(self, scanner: str, accepted: bool, message: str) -> None:
        """Tell the person at ``scanner`` (a beep, an LED, a console line)."""
        await self._feedback_for(scanner).show(scanner, accepted, message)

    def alarm(self, slot: Slot, message: str) -> None:
        """Sound an alarm at every scanner of the door's cabinet, without waiting for it."""
        log.warning("%s", message)
        for name, sec in self.config.scanners.items():
            if slot.cfg.cabinet in sec.options["cabinets"]:
                self.spawn(self.show(name, accepted=False, message=message), f"alarm-fb-{name}")

    # -- scans ---------------------------------------------------------------------

    async def _scan_loop(self, name: str, scanner: Any) -> None:
        async for scan in self.heartbeat.through(scanner.scans(), f"scanner:{name}"):
            if not self._accepting:
                # Every scan leaves a trace, even one that arrives while stopping or reloading.
                with contextlib.suppress(Exception):
                    self.deny(scan, self._refusing, f"refused: {self._refusing}, scan again in a moment")
                continue
            # One task per scan: a pulse waiting for the power budget must
            # not hold up the next person's scan.
            self.spawn(self.handle_scan(scan), f"scan-{name}")

    async def handle_scan(self, scan: Scan) -> Outcome:
        self._inflight += 1
        self._idle.clear()
        try:
            outcome = await self._decide_and_act(scan)
        except Exception as e:  # never let one scan take the loop down
            log.exception("scan from %s failed", scan.scanner)
            outcome = Outcome(accepted=False, message=f"internal error: {e}", reason="internal error")
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        try:
            await self.show(scan.scanner, outcome.accepted, outcome.message)
        except Exception:
            log.exception("feedback on %s failed", scan.scanner)
        for listener in list(self._outcome_listeners):
            try:
                listener(scan, outcome)
            except Exception:
                log.exception("outcome listener failed")
        return outcome

    def deny(self, scan: Scan, reason: str, message: str | None = None, *,
             compartment: str | None = None, dossier: str | None = None,
             people: tuple[str, ...] = (), journal_scan: bool = True) -> Outcome:
        """Refuse a scan: journal it and why (``journal_scan`` False: the scan is journaled already)."""
        # A refusal moves no lock, so it shares the next group commit.
        if journal_scan:
            self.journal.append("scan", compartment=compartment, dossier=dossier, **scan_fields(scan))
        self.journal.append("access.denied", compartment=compartment, dossier=dossier, people=people,
                            scanner=scan.scanner, reason=reason)
        return Outcome(accepted=False, message=message or f"refused: {reason}", compartment=compartment,
                       reason=reason)

    async def _decide_and_act(self, scan: Scan) -> Outcome:
        if scan.code is None:
            return self.deny(scan, f"malformed input: {scan.error}")
        code = scan.code
        served = self._served(scan.scanner)
        badge = self.registry.read_badge(code)
        if badge is not None:
            fp, person = badge
            masked = replace(scan, code=fp, raw=b"")  # journaled by its fingerprint, never its code
            if person is None:
                return self.deny(masked, "badge revoked or its holder inactive")
            return await self._badge(masked, person, served)
        card = self.config.evidence.reason_card(code)
        if card is not None:
            return await self.evidence.reason_card(scan, code, card, served)
        item = self.registry.items.get(code)
        if item is None:
            return self.deny(scan, "unknown code", f"refused: unknown code {code}")
        if (why := self._not_here(scan, item, served)) is not None:
            return why
        if item.kind is ItemKind.EVIDENCE:
            return await self.evidence.item(scan, code)
        action = {ItemState.IN: Action.CHECKOUT, ItemState.NEW: Action.DEPOSIT}.get(item.state, Action.RETURN)
        who = self._badged_before(scan)
        cid = item.compartment
        if who is None and self.config.custody.dossier_badge == "required":
            return self.deny(scan, "no badge before the dossier", "refused: scan your badge, then the dossier",
                             compartment=cid, dossier=code)
        return await self.open(self.slots[cid], OpenRequest({code: action}, (who,) if who else (), scan=scan))  # type: ignore[index]

    def _not_here(self, scan: Scan, item: Item, served: tuple[str, ...]) -> Outcome | None:
        """The refusal of an item's scan that this locker or this scanner cannot serve, or None."""
        code, cid = item.code, item.compartment
        if item.state is ItemState.RELEASED:
            return self.deny(scan, f"released on {item.since}: no longer kept in this locker",
                             compartment=cid, dossier=code)
        if cid is None:
            return self.deny(scan, "not assigned to a compartment", dossier=code)
        slot = self.slots.get(cid)
        if slot is None:
            return self.deny(scan, f"assigned compartment {cid} is not in this locker", dossier=code)
        if slot.cfg.cabinet not in served:
            return self.deny(scan, f"belongs to cabinet {slot.cfg.cabinet}, not served by this scanner",
                             f"refused: {code} belongs in cabinet {slot.cfg.cabinet}", compartment=cid, dossier=code)
        if slot.cfg.kind != item.kind:
            return self.deny(scan, f"a {item.kind} assigned to {slot.cfg.kind} compartment {cid}",
                             compartment=cid, dossier=code)
        return None

    async def _badge(self, scan: Scan, person: Person, served: tuple[str, ...]) -> Outcome:
        # A badge just before a dossier names who takes it out or brings it back.
        self._who[scan.scanner] = (person.id, scan.at)
        if self.alarms.second_badge(scan, person, served):
            return await self.alarms.at_cabinet(scan, person, served)
        out = await self._badge_counts(scan, person, served)
        hint = self.alarms.hint(person, served)
        return replace(out, message=f"{out.message}; {hint}") if hint else out

    async def _badge_counts(self, scan: Scan, person: Person, served: tuple[str, ...]) -> Outcome:
        """A badge at the cabinet: for a dossier after it, an override waiting for it, or an evidence handling."""
        if not self.evidence.serves_evidence(served):
            journal_badge(self, scan, person)
            return Outcome(accepted=True, message=f"badge of {person.name} accepted: scan the dossier")
        if (out := self.presence.badge(scan, person, served)) is not None:
            return out
        return await self.evidence.badge(scan, person)

    def _badged_before(self, scan: Scan) -> str | None:
        """The person whose badge was scanned at this scanner within badge_window_s before ``scan`` (used once)."""
        last = self._who.pop(scan.scanner, None)
        if last is None or scan.at - last[1] > self.config.custody.badge_window_s:
            return None
        return last[0] if self.registry.active_person(last[0]) is not None else None

    def _served(self, scanner: str) -> tuple[str, ...]:
        sec = self.config.scanners.get(scanner)
        return tuple(sec.options["cabinets"]) if sec else tuple(self.config.cabinets)

    # -- the safety path -------------------------------------------------------------------

    def _refuse(self, req: OpenRequest, reason: str, compartment: str) -> Outcome:
        """The one way an opening is refused before its grant: a scan is told and journaled, a command raises."""
        if req.scan is None:
            raise CommandError(reason)
        return self.deny(req.scan, reason, compartment=compartment, dossier=req.dossier, people=req.people,
                         journal_scan=not req.scan_journaled)

    async def open(self, slot: Slot, req: OpenRequest) -> Outcome:
        """Grant, journal durably, pulse, and hand the door to supervision."""
        if req.scan is None and (why := self.not_now()) is not None:
            raise CommandError(why)  # a command while starting, reloading or stopping (a scan never gets here then)
        cid = slot.cfg.id
        blocking = {k: v for k, v in slot.faults.items() if k not in req.allow_faults}
        if blocking:
            faults = "; ".join(f"{k}: {v}" for k, v in blocking.items())
            return self._refuse(req, f"compartment {cid} in fault ({faults})", cid)
        if slot.session is not None or slot.door is DoorState.OPEN:
            return self._join_opening(slot, req)

        # The grant, claimed before any await (a second scan now sees it), then on disk before the lock moves.
        now = self.clock.monotonic()
        session = Session(grant_seq=0, pulsed_at=now, items=dict(req.items), people=list(req.people),
                          note=dict(req.note))
        slot.session = session
        command = {} if req.scan is not None else req.origin()
        try:
            self._journal_scan(req, cid)
            grant = await self.journal.append_durable(
                req.grant_kind, compartment=cid, dossier=req.dossier, people=req.people, items=req.items,
                pulse=True, **command, **req.note)
        except JournalError as e:
            slot.session = None
            msg = f"refused: cannot record the opening ({e}); nothing opened"
            # One line, no traceback: an unusable journal is expected, and msg carries its error.
            log.error("%s: %s", cid, msg)  # noqa: TRY400
            # Held and journaled late with the scan before it: the record says it was refused, and why.
            self.journal.append("access.denied", compartment=cid, dossier=req.dossier, people=req.people,
                                reason="journal unavailable", error=str(e), **command)
            return Outcome(accepted=False, message=msg, compartment=cid, reason="journal unavailable")
        session.grant_seq = grant.seq
        # The storage's own share of the opening: a slow card or disk shows here, not as "lockerd is slow".
        durable_ms = round((self.clock.monotonic() - now) * 1000, 3)

        bank = self.hw.lock_bank(slot.cfg.lock_driver)
        try:
            await bank.pulse(slot.cfg.lock, self.timing.pulse_ms)
        except DriverTimeout as e:
            # No answer in time is not "no": a slow board may still switch the relay. The grant
            # stays open for the door, so an opening now is this grant's, not a forced door.
            self.journal.append("lock.unconfirmed", compartment=cid, grant_seq=grant.seq, error=str(e),
                                driver=bank.name, channel=slot.cfg.lock, durable_ms=durable_ms)
            slot.open_task = self.spawn(self.doors.expect_open(slot, session), f"expect-open-{cid}")
            self._changed(slot)
            return Outcome(accepted=True, message=f"opening {cid}, not confirmed by the board ({e}): pull the door",
                           compartment=cid, reason="lock unconfirmed")
        except DriverError as e:
            slot.session = None
            self.doors.set_fault(slot, "lock", str(e))
            self.journal.append("lock.failed", compartment=cid, grant_seq=grant.seq, error=str(e),
                                driver=bank.name, channel=slot.cfg.lock, durable_ms=durable_ms)
            return Outcome(accepted=False, message=f"refused: lock of {cid} did not respond ({e})", compartment=cid,
                           reason="lock failed")
        slot.pulsing = True
        # Scan -> pulse for a scan; a command has no scan, and its grant's share is durable_ms.
        scanned = {} if req.scan is None else {"latency_ms": round((self.clock.monotonic() - req.scan.at) * 1000, 3)}
        self.journal.append("lock.pulsed", compartment=cid, grant_seq=grant.seq, ms=self.timing.pulse_ms,
                            driver=bank.name, channel=slot.cfg.lock, durable_ms=durable_ms, **scanned)
        slot.open_task = self.spawn(self.doors.expect_open(slot, session), f"expect-open-{cid}")
        self.spawn(self.doors.relock(slot), f"relock-{cid}")
        self._changed(slot)
        what = ", ".join(f"{a} {c}" for c, a in req.items.items()) or "open"
        return Outcome(accepted=True, message=f"open {cid}: {what}", compartment=cid, pulsed=True)

    def _join_opening(self, slot: Slot, req: OpenRequest) -> Outcome:
        """Already unlocking or open: never pulse twice. The items join the running session, so the close
        records them too."""
        cid, s = slot.cfg.id, slot.session
        if s is None:
            s = slot.session = Session(grant_seq=0, pulsed_at=self.clock.monotonic(), opened=True,
                                       opened_at=self.clock.monotonic())
        repeat = all(c in s.items for c in req.items) and bool(req.items)
        s.items.update(req.items)
        s.people.extend(p for p in req.people if p not in s.people)
        s.note.update(req.note)
        self._journal_scan(req, cid)
        self.journal.append(req.grant_kind, compartment=cid, dossier=req.dossier, people=req.people,
                            items=req.items, pulse=False,
                            no_pulse="repeat scan, door already open" if repeat else "door already open",
                            **({} if req.scan is not None else req.origin()), **req.note)
        what = ", ".join(f"{a} {c}" for c, a in req.items.items()) or "open"
        return Outcome(accepted=True, message=f"compartment {cid} is already open ({what})", compartment=cid)

    def _journal_scan(self, req: OpenRequest, cid: str) -> None:
        if req.scan is not None and not req.scan_journaled:
            self.journal.append("scan", compartment=cid, dossier=req.dossier, **scan_fields(req.scan))

    async def remote_open(self, compartment: str, reason: str, by: dict[str, Any]) -> Outcome:
        """Open a dossier compartment on the station's signed request (no items change hands)."""
        slot = self.slots.get(compartment)
        if slot is None:
            raise CommandError(f"unknown compartment {compartment!r}")
        if slot.cfg.kind == "evidence":  # the link's gate refuses it first; this is the last line
            raise CommandError(f"compartment {compartment} holds evidence: never opened on a station command alone")
        if not reason.strip():
            raise CommandError("a remote open needs a reason")
        src = {"source": "station", "reason": reason} | {k: v for k, v in by.items() if k != "by"}
        person = str(by.get("requested_by") or "")
        return await self.open(slot, OpenRequest(people=(person,) if person else (), source=src))
