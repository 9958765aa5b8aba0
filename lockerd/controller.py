"""The controller: scan -> decide -> journal the grant durably -> pulse -> supervise the door.

The safety path (``_open``) is plain awaits, readable top to bottom: the
grant is on disk before the lock moves, and nothing an observer does can
block or break it. Everything else here is supervision: did the door open
after the pulse, was it forced, is it held open, did the sensor bounce.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from lockerd import __version__
from lockerd.badges import BadgeKey
from lockerd.clock import Clock, iso_utc
from lockerd.config import Compartment, Config
from lockerd.custody import Custody
from lockerd.domain import OFFICER_ROLES, Item, ItemState, Person, Registry, Role
from lockerd.drivers.base import DoorChange, DoorState, DriverStatus, Feedback, Scan
from lockerd.drivers.sim import ConsoleFeedback
from lockerd.errors import CommandError, DriverError, DriverTimeout, JournalError
from lockerd.evidence import Authorisations
from lockerd.hardware import Hardware
from lockerd.journal import Event, Journal, StateOp
from lockerd.overrides import Overrides
from lockerd.presence import PresenceChecks

log = logging.getLogger(__name__)

# What a grant does to each item when the door closes again.
CHECKOUT, RETURN, DEPOSIT, RETRIEVE, RELEASE = "checkout", "return", "deposit", "retrieve", "release"
ITEM_EVENT = {
    ("dossier", CHECKOUT): "dossier.checked_out",
    ("dossier", RETURN): "dossier.returned",
    ("dossier", DEPOSIT): "dossier.deposited",
    ("evidence", DEPOSIT): "evidence.deposited",
    ("evidence", RETRIEVE): "evidence.retrieved",
    ("evidence", RELEASE): "evidence.released",
    ("dossier", RELEASE): "dossier.released",
}


def _log_failure(task: asyncio.Task) -> None:
    # A loop that dies (a scanner reader, a door loop) stops its heartbeat and the
    # watchdog says which; the traceback of why belongs in the log, once.
    if not task.cancelled() and task.exception() is not None:
        log.error("task %s failed", task.get_name(), exc_info=task.exception())


@dataclass
class Session:
    """One opening of a compartment: from the grant until the door closes."""

    grant_seq: int
    pulsed_at: float
    items: dict[str, str] = field(default_factory=dict)  # code -> action
    people: list[str] = field(default_factory=list)
    opened: bool = False
    opened_at: float | None = None
    note: dict[str, Any] = field(default_factory=dict)  # recorded with the items (an evidence reason)


@dataclass
class Slot:
    """The live state of one compartment."""

    cfg: Compartment
    door: DoorState = DoorState.UNKNOWN
    raw: DoorState = DoorState.UNKNOWN  # last sensor reading, before debouncing
    raw_at: float = 0.0
    settling: bool = False
    session: Session | None = None
    faults: dict[str, str] = field(default_factory=dict)
    alarms: set[str] = field(default_factory=set)
    not_opened: int = 0
    held_task: asyncio.Task | None = None
    open_task: asyncio.Task | None = None
    released: bool = False  # lock pulse running
    parent: str | None = None  # set on a pass-through compartment's rear door: the compartment's id

    @property
    def compartment(self) -> str:
        """The compartment this door belongs to (itself, or the front of a rear door)."""
        return self.parent or self.cfg.id


# Alarms that stay after the door closes, until a person acknowledges them; and who may.
STAYING_ALARMS = frozenset({"forced"})
ALARM_ACK_ROLES = frozenset({Role.SUPERVISOR, Role.CASE_MANAGER})


@dataclass
class Pending:
    """Badges and an evidence item scanned together at one scanner."""

    badges: dict[str, float] = field(default_factory=dict)  # person id -> monotonic time
    item: str | None = None
    started: float = 0.0
    expiry: asyncio.Task | None = None
    reason: tuple[str, str, bool] | None = None  # a reason card: (barcode, text, is a release)


@dataclass(frozen=True)
class Outcome:
    """What became of one scan or command, as the person is told."""

    accepted: bool
    message: str
    compartment: str | None = None
    reason: str | None = None
    pulsed: bool = False


class Controller:
    def __init__(self, config: Config, journal: Journal, hardware: Hardware, clock: Clock):
        self.config = config
        self.journal = journal
        self.hw = hardware
        self.clock = clock
        self.t = config.timing
        self.registry = Registry(BadgeKey.for_journal(config.badge_key))
        self.slots = {cid: Slot(c) for cid, c in config.compartments.items()}
        for c in config.compartments.values():
            if c.rear_id is not None:
                # A pass-through compartment's rear door is supervised as a door of its own.
                rear = replace(c, id=c.rear_id, lock_driver=c.rear_lock_driver, lock=c.rear_lock,
                               sensor_driver=c.rear_sensor_driver, sensor=c.rear_sensor, rear_lock=None,
                               rear_sensor=None)
                self.slots[c.rear_id] = Slot(rear, parent=c.id)
        self._by_sensor = {(s.cfg.sensor_driver, s.cfg.sensor): cid for cid, s in self.slots.items()}
        self._by_lock = {(s.cfg.lock_driver, s.cfg.lock): cid for cid, s in self.slots.items()}
        self._pending: dict[str, Pending] = {}
        self._who: dict[str, tuple[str, float]] = {}  # scanner -> (person, scan time) of its last badge
        self._tasks: set[asyncio.Task] = set()
        self._state_listeners: list[Callable[[dict[str, Any]], None]] = []
        self._outcome_listeners: list[Callable[[Scan, Outcome], None]] = []
        self._default_feedback = ConsoleFeedback("console", clock)
        self._accepting = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.overrides = Overrides(self)  # emergency open and maintenance mode
        self.presence = PresenceChecks(self)  # people named by a CLI override of evidence, badging at the cabinet
        self.authorisations = Authorisations(journal, clock)  # station-authorised evidence retrievals
        self.custody = Custody(self)  # deadlines and escalating reminders
        self._refusing = "controller starting"  # why scans are refused while not accepting
        # Liveness for the service watchdog: a no-op unless the daemon calls watch().
        self._beat: Callable[[str], None] | None = None
        self.beat_s = 1.0
        self.photos: Any = None  # lockerd.photos.Photographer when a cabinet has a camera

    # -- life ------------------------------------------------------------------

    def watch(self, beat: Callable[[str], None], every_s: float) -> list[str]:
        """Beat ``beat(name)`` from each long-running task at least every ``every_s``; returns the names.

        Call before start(). "controller" beats after a round trip through
        the journal writer (a writer hung in fsync leaves every grant
        waiting), "scanner:NAME" and "doors:DRIVER" from the loops that
        take scans and door changes, even while nothing arrives.
        """
        self._beat, self.beat_s = beat, every_s
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
        saved = self._load_compartments()
        # Listen before starting: a board found dead during start must be seen.
        for d in self.hw.drivers.values():
            d.on_status(self._driver_status)
            if hasattr(d, "on_lock_fault"):
                d.on_lock_fault(lambda ch, detail, name=d.name: self._lock_fault(name, ch, detail))
        for sc in self.hw.scanners.values():
            sc.on_status(self._journal_status)
        await self.hw.start()  # every lock bank switches all outputs off first
        if any(cab.camera for cab in self.config.cabinets.values()):
            from lockerd.photos import Photographer  # an observer of the journal, off the safety path

            self.photos = Photographer(self.config, self.journal, self._spawn)
        # Read before this start is journaled: the openings the last run left going (none in a reload, which
        # waits for a moment with nothing in flight).
        unfinished = {} if reloaded else self._unfinished_grants()
        if not reloaded:
            self.journal.append("daemon.started", version=__version__, config=self.config.digest,
                                boot=self.journal.boot, site=self.config.site, node=self.config.node)
        for cid, slot in self.slots.items():
            self._recover(slot, saved.get(cid), unfinished.get(cid))
        # The doors as read at start, saved so the next start can tell what changed meanwhile.
        self.journal.append("daemon.ready", doors={cid: str(s.door) for cid, s in self.slots.items()},
                            state=[self._comp_op(s) for s in self.slots.values()])
        for name in {s.cfg.sensor_driver for s in self.slots.values()}:
            self._spawn(self._door_loop(name), f"doors-{name}")
        for name, scanner in self.hw.scanners.items():
            self._spawn(self._scan_loop(name, scanner), f"scanner-{name}")
        if self._beat is not None:
            self._spawn(self._tick(), "controller-tick")
        self.custody.start()
        self._accepting = True

    def busy(self) -> str | None:
        """What is in flight (a scan being decided, a pulse, a door opened by a grant and not yet shut), or None."""
        if self._inflight:
            return f"{self._inflight} scan(s) being decided"
        for slot in self.slots.values():
            if slot.released:
                return f"compartment {slot.cfg.id} is being pulsed"
            if slot.session is not None:
                return f"compartment {slot.cfg.id} is open for a grant and not yet shut"
        for d in self.hw.drivers.values():
            if getattr(d, "energised", None):
                return f"driver {d.name} has a lock energised"
        return None

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
                    await asyncio.wait_for(d.wait_pulses(), self.t.pulse_ms / 1000 + 2)
        if self.photos is not None:
            self.photos.close()
        for t in list(self._tasks):
            t.cancel()
        for slot in self.slots.values():
            for t in (slot.held_task, slot.open_task):
                if t:
                    t.cancel()
        for p in self._pending.values():
            if p.expiry:
                p.expiry.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if final:
            with contextlib.suppress(Exception):
                await self.journal.record("daemon.stopped")
        await self.hw.close()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    def _load_compartments(self) -> dict[str, dict[str, Any]]:
        if not self.journal.healthy:
            return {}
        rows = self.journal.query("SELECT id, door, faults, alarm, not_opened FROM compartments")
        return {r[0]: {"door": r[1], "faults": json.loads(r[2] or "{}"),
                       "alarms": json.loads(r[3] or "[]"), "not_opened": r[4] or 0} for r in rows}

    def _recover(self, slot: Slot, saved: dict[str, Any] | None,
                 unfinished: tuple[int, dict[str, Any], list[str], bool] | None) -> None:
        cid = slot.cfg.id
        now = self.hw.sensors(slot.cfg.sensor_driver).door(slot.cfg.sensor)
        slot.door = slot.raw = now
        if saved:
            slot.faults = {k: v for k, v in saved["faults"].items() if k == "jam"}
            slot.alarms = set(saved["alarms"])
            slot.not_opened = saved["not_opened"]
            was = DoorState(saved["door"]) if saved["door"] else DoorState.UNKNOWN
            if was != now and DoorState.UNKNOWN not in (was, now):
                self.journal.append("door.changed_while_down", compartment=cid, was=str(was), now=str(now),
                                    state=[self._comp_op(slot)])
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
                self.journal.append("alarm.forced", compartment=cid, reason="door open at start",
                                    state=[self._comp_op(slot)])
            slot.held_task = self._spawn(self._held_open(slot), f"held-{cid}")
        elif slot.alarms and now is DoorState.CLOSED:
            for alarm in sorted(slot.alarms - STAYING_ALARMS):
                slot.alarms.discard(alarm)
                self.journal.append("alarm.cleared", compartment=cid, alarm=alarm, reason="door closed at start")

    def _resume_opening(self, slot: Slot, now: DoorState, grant: tuple[int, dict[str, Any], list[str], bool]
                        ) -> bool:
        """A grant of the last run whose door never closed: that opening goes on (True), it is not forced.

        Open now: the session is back, and its close records the items' move.
        Shut now, but it had opened: it closed while the controller was down,
        so the move is recorded now. Shut and never seen open: nothing is
        known to have moved, and the journal says so."""
        if now is DoorState.UNKNOWN:
            return False
        seq, data, people, opened = grant
        note = {k: data[k] for k in ("evidence_reason", "reason_code", "reason") if k in data}
        mono = self.clock.monotonic()
        session = Session(grant_seq=seq, pulsed_at=mono, items=dict(data.get("items") or {}), people=list(people),
                          opened=True, opened_at=mono, note=note)
        if now is DoorState.OPEN:
            slot.session = session
            self.journal.append("grant.resumed", compartment=slot.cfg.id, grant_seq=seq, door="open",
                                outcome="the opening goes on: its close records the move")
            slot.held_task = self._spawn(self._held_open(slot), f"held-{slot.cfg.id}")
        elif opened:
            self.journal.append("grant.resumed", compartment=slot.cfg.id, grant_seq=seq, door="closed",
                                outcome="closed while the controller was down: the move is recorded now")
            self._record_items(slot, session)
        else:
            self.journal.append("grant.resumed", compartment=slot.cfg.id, grant_seq=seq, door="closed",
                                outcome="never seen open: nothing is recorded as moved")
        return True

    def _unfinished_grants(self) -> dict[str, tuple[int, dict[str, Any], list[str], bool]]:
        """Per door, the last pulsed grant of the previous run (or one it resumed) that no close, refusal or
        not-opened followed: (seq, data, people, whether its door was seen open). Read from the events since
        that run started, through the kind index, so a start on a long journal stays quick."""
        if not self.journal.healthy:
            return {}
        rows = self.journal.query("SELECT MAX(seq) FROM events WHERE kind = 'daemon.started'")
        since = rows[0][0] or 0
        latest: dict[str, tuple[int, int]] = {}  # door -> (seq of the event, the grant it names)
        for cid, seq in self.journal.query(
                "SELECT compartment, MAX(seq) FROM events WHERE kind IN ('access.granted', 'maintenance.open') "
                "AND seq > ? AND json_extract(data, '$.pulse') = 1 GROUP BY compartment", since):
            latest[cid] = (seq, seq)
        for cid, seq, grant in self.journal.query(  # an opening the previous run resumed, going on when it stopped
                "SELECT compartment, MAX(seq), json_extract(data, '$.grant_seq') FROM events "
                "WHERE kind = 'grant.resumed' AND seq > ? GROUP BY compartment", since):
            if seq > latest.get(cid, (0, 0))[0]:
                latest[cid] = (seq, grant)
        last = {cid: grant for cid, (_, grant) in latest.items()}
        out: dict[str, tuple[int, dict[str, Any], list[str], bool]] = {}
        for cid, seq in last.items():
            after = {k for (k,) in self.journal.query(
                "SELECT kind FROM events WHERE compartment = ? AND seq > ? AND json_extract(data, '$.grant_seq') = ?",
                cid, seq, seq)}
            if after & {"door.closed", "lock.failed", "door.not_opened"} or "grant.resumed" in after and \
                    self.journal.query("SELECT 1 FROM events WHERE kind = 'grant.resumed' AND compartment = ? "
                                       "AND seq > ? AND json_extract(data, '$.door') = 'closed'", cid, seq):
                continue
            data, people = self.journal.query("SELECT data, people FROM events WHERE seq = ?", seq)[0]
            out[cid] = (seq, json.loads(data), json.loads(people or "[]"), "door.opened" in after)
        return out

    # -- observers -----------------------------------------------------------------

    def on_state(self, listener: Callable[[dict[str, Any]], None]) -> None:
        self._state_listeners.append(listener)

    def on_outcome(self, listener: Callable[[Scan, Outcome], None]) -> None:
        self._outcome_listeners.append(listener)

    def off_outcome(self, listener: Callable[[Scan, Outcome], None]) -> None:
        self._outcome_listeners.remove(listener)

    def state_of(self, slot: Slot) -> dict[str, Any]:
        c = slot.cfg
        return {
            "compartment": c.id,
            "cabinet": c.cabinet,
            "kind": c.kind,
            "door": str(slot.door),
            "lock": "released" if slot.released else "locked",
            "items": self.registry.in_compartment(slot.compartment),
            "faults": sorted(f"{k}: {v}" for k, v in slot.faults.items()),
            "alarm": ",".join(sorted(slot.alarms)) or None,
        }

    def states(self) -> dict[str, dict[str, Any]]:
        return {cid: self.state_of(s) for cid, s in self.slots.items()}

    def _changed(self, slot: Slot) -> None:
        if not self._state_listeners:
            return
        state = self.state_of(slot)
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
        fresh = Registry(self.registry.badge_key)
        if self.journal.healthy:
            fresh.load(self.journal)
        self.registry = fresh

    def _comp_op(self, slot: Slot) -> StateOp:
        return ("upsert", "compartments", {
            "id": slot.cfg.id, "door": str(slot.door), "faults": slot.faults,
            "alarm": sorted(slot.alarms), "not_opened": slot.not_opened,
        })

    # -- scans ---------------------------------------------------------------------

    async def _tick(self) -> None:
        """Beat "controller" after each round trip through the journal writer."""
        while True:
            # An unusable journal answers at once: that is fail-secure mode, logged elsewhere, not a hang.
            with contextlib.suppress(JournalError):
                await self.journal.flush()
            self._beat("controller")  # type: ignore[misc]
            await self.clock.sleep(self.beat_s)

    async def _beating(self, items: AsyncIterator[Any], name: str) -> AsyncIterator[Any]:
        """Yield from ``items``, beating ``name`` per item and every beat_s while waiting for one.

        A loop whose body hangs, or that ended, stops beating. The wait for
        the next item runs as its own task so that a timeout never cancels
        (and so closes) the driver's stream.
        """
        beat = self._beat
        if beat is None:
            async for item in items:
                yield item
            return
        it = aiter(items)
        nxt: asyncio.Future | None = None
        try:
            while True:
                beat(name)
                if nxt is None:
                    nxt = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait({nxt}, timeout=self.beat_s)
                if not done:
                    continue
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                yield item
        finally:
            if nxt is not None:
                nxt.cancel()

    async def _scan_loop(self, name: str, scanner: Any) -> None:
        async for scan in self._beating(scanner.scans(), f"scanner:{name}"):
            if not self._accepting:
                # Every scan leaves a trace, even one that arrives while stopping or reloading.
                with contextlib.suppress(Exception):
                    self._deny(scan, self._refusing, f"refused: {self._refusing}, scan again in a moment")
                continue
            # One task per scan: a pulse waiting for the power budget must
            # not hold up the next person's scan.
            self._spawn(self.handle_scan(scan), f"scan-{name}")

    def _feedback_for(self, scanner: str) -> Feedback:
        sec = self.config.scanners.get(scanner)
        name = sec.options.get("feedback") if sec else ""
        return self.hw.feedback.get(name, self._default_feedback) if name else self._default_feedback

    async def handle_scan(self, scan: Scan) -> Outcome:
        self._inflight += 1
        self._idle.clear()
        try:
            outcome = await self._decide_and_act(scan)
        except Exception as e:  # never let one scan take the loop down
            log.exception("scan from %s failed", scan.scanner)
            outcome = Outcome(False, f"internal error: {e}", reason="internal error")
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()
        try:
            await self._feedback_for(scan.scanner).show(scan.scanner, outcome.accepted, outcome.message)
        except Exception:
            log.exception("feedback on %s failed", scan.scanner)
        for listener in list(self._outcome_listeners):
            try:
                listener(scan, outcome)
            except Exception:
                log.exception("outcome listener failed")
        return outcome

    def scan_fields(self, scan: Scan) -> dict[str, Any]:
        shown = scan.code if scan.code is not None else scan.raw[:64].decode("utf-8", "replace")
        f: dict[str, Any] = {"scanner": scan.scanner, "code": shown}
        if scan.symbology:
            f["symbology"] = scan.symbology
        if scan.code is None:
            f["raw_hex"] = scan.raw[:64].hex()
        return f

    def _deny(self, scan: Scan, reason: str, message: str | None = None, *,
              compartment: str | None = None, dossier: str | None = None,
              people: tuple[str, ...] = (), journal_scan: bool = True) -> Outcome:
        # A refusal moves no lock, so it shares the next group commit.
        if journal_scan:
            self.journal.append("scan", compartment=compartment, dossier=dossier, **self.scan_fields(scan))
        self.journal.append("access.denied", compartment=compartment, dossier=dossier, people=people,
                            scanner=scan.scanner, reason=reason)
        return Outcome(False, message or f"refused: {reason}", compartment, reason)

    async def _decide_and_act(self, scan: Scan) -> Outcome:
        if scan.code is None:
            return self._deny(scan, f"malformed input: {scan.error}")
        code = scan.code
        served = self._served(scan.scanner)
        badge = self.registry.read_badge(code)
        if badge is not None:
            fp, person = badge
            masked = replace(scan, code=fp, raw=b"")  # journaled by its fingerprint, never its code
            if person is None:
                return self._deny(masked, "badge revoked or its holder inactive")
            return await self._badge(masked, person, served)
        card = self.config.evidence.reason_card(code)
        if card is not None:
            return await self._reason_card(scan, code, card, served)
        item = self.registry.items.get(code)
        if item is None:
            return self._deny(scan, "unknown code", f"refused: unknown code {code}")
        if item.state is ItemState.RELEASED:
            return self._deny(scan, f"released on {item.since}: no longer kept in this locker",
                              compartment=item.compartment, dossier=code)
        cid = item.compartment
        if cid is None:
            return self._deny(scan, "not assigned to a compartment", dossier=code)
        slot = self.slots.get(cid)
        if slot is None:
            return self._deny(scan, f"assigned compartment {cid} is not in this locker", dossier=code)
        if slot.cfg.cabinet not in served:
            return self._deny(scan, f"belongs to cabinet {slot.cfg.cabinet}, not served by this scanner",
                              f"refused: {code} belongs in cabinet {slot.cfg.cabinet}",
                              compartment=cid, dossier=code)
        if slot.cfg.kind != item.kind:
            return self._deny(scan, f"a {item.kind} assigned to {slot.cfg.kind} compartment {cid}",
                              compartment=cid, dossier=code)
        if item.kind == "evidence":
            pend = self._pending_for(scan.scanner)
            pend.item = code
            return await self._try_evidence(scan, pend)
        action = CHECKOUT if item.state is ItemState.IN else (DEPOSIT if item.state is ItemState.NEW else RETURN)
        who = self._badged_before(scan)
        if who is None and self.config.custody.dossier_badge == "required":
            return self._deny(scan, "no badge before the dossier", "refused: scan your badge, then the dossier",
                              compartment=cid, dossier=code)
        return await self._open(slot, {code: action}, (who,) if who else (), scan=scan)

    def _badged_before(self, scan: Scan) -> str | None:
        """The person whose badge was scanned at this scanner within badge_window_s before ``scan`` (used once)."""
        last = self._who.pop(scan.scanner, None)
        if last is None or scan.at - last[1] > self.config.custody.badge_window_s:
            return None
        return last[0] if self.registry.active_person(last[0]) is not None else None

    def _served(self, scanner: str) -> tuple[str, ...]:
        sec = self.config.scanners.get(scanner)
        return tuple(sec.options["cabinets"]) if sec else tuple(self.config.cabinets)

    # -- evidence: two people, either order, within the window ---------------------------

    def _pending_for(self, scanner: str) -> Pending:
        now = self.clock.monotonic()
        p = self._pending.get(scanner)
        if p is None or now - p.started > self.t.evidence_window_s:
            if p and p.expiry:
                p.expiry.cancel()
            p = Pending(started=now)
            self._pending[scanner] = p
            p.expiry = self._spawn(self._pending_expiry(scanner, p), f"evidence-window-{scanner}")
        return p

    def _drop_pending(self, scanner: str, p: Pending) -> None:
        if p.expiry:
            p.expiry.cancel()
        if self._pending.get(scanner) is p:
            del self._pending[scanner]

    async def _pending_expiry(self, scanner: str, p: Pending) -> None:
        await self.clock.sleep(self.t.evidence_window_s)
        if self._pending.get(scanner) is not p:
            return
        del self._pending[scanner]
        if p.item is None:
            return
        missing = self._evidence_missing(p)
        reason = f"evidence rule not met within {self.t.evidence_window_s:g} s: {missing}"
        item = self.registry.items.get(p.item)
        self.journal.append("access.denied", compartment=item.compartment if item else None, dossier=p.item,
                            people=tuple(p.badges), scanner=scanner, reason=reason)
        with contextlib.suppress(Exception):
            await self._feedback_for(scanner).show(scanner, False, f"refused: {reason}")

    def _serves_evidence(self, served: tuple[str, ...]) -> bool:
        return any(self.config.cabinets[c].kind == "evidence" for c in served if c in self.config.cabinets)

    async def _reason_card(self, scan: Scan, code: str, card: tuple[str, bool], served: tuple[str, ...]) -> Outcome:
        """A reason card joins the evidence handling at this scanner: why the item leaves the locker."""
        text, release = card
        if not self._serves_evidence(served):
            return self._deny(scan, "reason card scanned where no evidence cabinet is served")
        pend = self._pending_for(scan.scanner)
        pend.reason = (code, text, release)
        self.journal.append("scan", **self.scan_fields(scan))
        self.journal.append("reason.accepted", scanner=scan.scanner, reason_code=code, evidence_reason=text,
                            release=release)
        if pend.item is not None:
            return await self._try_evidence(scan, pend, scanned=False)
        what = "release for good" if release else "retrieval"
        return Outcome(True, f"reason {text!r} ({what}) accepted: scan the item and both badges")

    def _door_for(self, compartment: str, action: str) -> Slot:
        """Deposits open the front door; retrievals and releases the rear door of a pass-through compartment."""
        rear = self.config.compartments[compartment].rear_id
        return self.slots[rear] if rear is not None and action in (RETRIEVE, RELEASE) else self.slots[compartment]

    def _wrong_side(self, scanner: str, slot: Slot) -> str | None:
        """A scanner on one side of a pass-through cabinet never opens the door on the other side."""
        sec = self.config.scanners.get(scanner)
        side = sec.options.get("side", "both") if sec else "both"
        if side == "both" or self.config.compartments[slot.compartment].rear_id is None:
            return None
        door = "rear" if slot.parent is not None else "front"
        if door == side:
            return None
        what = "retrievals and releases" if door == "rear" else "deposits"
        return f"{what} open the {door} door of {slot.compartment}: scan at a {door} scanner, not this {side} one"

    def burst_partner(self, scan: Scan, person: Person, badges: Iterable[tuple[str, float]]) -> str | None:
        """Another person among ``badges`` (person, scan time, at this scanner) read within badge_burst_ms of
        ``scan``: one printed code with embedded line ends reads as several badges at once, and no two people
        badge within a fraction of a second."""
        burst_s = self.config.evidence.badge_burst_ms / 1000
        return next((pid for pid, at in badges if pid != person.id and abs(scan.at - at) < burst_s), None)

    def journal_badge(self, scan: Scan, person: Person, **fields: Any) -> None:
        """A badge that counted: its scan (by fingerprint) and its acceptance."""
        self.journal.append("scan", people=(person.id,), **self.scan_fields(scan))
        self.journal.append("badge.accepted", people=(person.id,), scanner=scan.scanner, role=str(person.role),
                            **fields)

    async def _badge(self, scan: Scan, person: Person, served: tuple[str, ...]) -> Outcome:
        # A badge just before a dossier names who takes it out or brings it back.
        self._who[scan.scanner] = (person.id, scan.at)
        if not self._serves_evidence(served):
            self.journal_badge(scan, person)
            return Outcome(True, f"badge of {person.name} accepted: scan the dossier")
        if (out := self.presence.badge(scan, person, served)) is not None:
            return out
        pend = self._pending_for(scan.scanner)
        if (other := self.burst_partner(scan, person, pend.badges.items())) is not None:
            gap_ms = (scan.at - pend.badges[other]) * 1000
            self._drop_pending(scan.scanner, pend)
            return self._deny(scan, f"badges of {other} and {person.id} read {gap_ms:.0f} ms apart at one scanner "
                                    f"(under {self.config.evidence.badge_burst_ms} ms): one scan cannot be two "
                                    "people; both badge again, one after the other",
                              people=(other, person.id))
        # Keyed by person: two badges of one person still count as one person.
        pend.badges[person.id] = scan.at
        self.journal_badge(scan, person)
        if pend.item is not None:
            return await self._try_evidence(scan, pend, scanned=False)
        return Outcome(True, f"badge of {person.name} ({person.role}) accepted: "
                             "scan the item and the second person's badge")

    def _evidence_missing(self, p: Pending) -> str:
        people = [self.registry.people[pid] for pid in p.badges if pid in self.registry.people]
        officers = {x.id for x in people if x.role in OFFICER_ROLES}
        managers = {x.id for x in people if x.role is Role.CASE_MANAGER}
        item = self.registry.items.get(p.item) if p.item is not None else None
        taking = item is not None and item.state is ItemState.IN  # a retrieval or a release
        barred = ""
        if taking and not self.config.evidence.depositor_may_retrieve:
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
        if taking and p.reason is None and self.authorisations.reason_for(item.code) is None:
            missing += ("; " if missing else "") + "needs a reason card (why the item leaves the locker)"
        return missing

    async def _try_evidence(self, scan: Scan, pend: Pending, scanned: bool = True) -> Outcome:
        """Open an evidence compartment once both people are there; ``scanned``
        is False when the triggering scan (a badge) is journaled already."""
        assert pend.item is not None
        item = self.registry.items[pend.item]
        missing = self._evidence_missing(pend)
        if missing:
            if scanned:
                self.journal.append("scan", dossier=item.code, **self.scan_fields(scan))
            self.journal.append("access.pending", compartment=item.compartment, dossier=item.code,
                                people=tuple(pend.badges), scanner=scan.scanner, reason=missing)
            # Not a refusal yet: the second person may still come within the window.
            return Outcome(True, f"evidence {item.code}: {missing}", item.compartment, missing)
        people = tuple(pend.badges)
        self._drop_pending(scan.scanner, pend)
        note: dict[str, Any] = {}
        # A card scanned at the cabinet comes first; else the station's authorisation stands in for one.
        authorised = self.authorisations.reason_for(item.code) if pend.reason is None else None
        reason = pend.reason or authorised
        if item.state is ItemState.IN and reason is not None:
            code, text, release = reason
            action = RELEASE if release else RETRIEVE
            note = {"evidence_reason": text, "reason_code": code}
        else:
            action = DEPOSIT
        slot = self._door_for(item.compartment, action)  # type: ignore[arg-type]
        wrong = self._wrong_side(scan.scanner, slot)
        if wrong:
            return self._deny(scan, wrong, compartment=slot.cfg.id, dossier=item.code, people=people,
                              journal_scan=scanned)
        out = await self._open(slot, {item.code: action}, people, scan=scan, journal_scan=scanned, note=note)
        if authorised is not None and action != DEPOSIT and out.accepted:
            self.authorisations.used(item.code)
        return out

    # -- the safety path -------------------------------------------------------------------

    async def _open(self, slot: Slot, items: dict[str, str], people: tuple[str, ...], *,
                    scan: Scan | None = None, journal_scan: bool = True,
                    source: dict[str, Any] | None = None, note: dict[str, Any] | None = None,
                    grant_kind: str = "access.granted", allow_faults: frozenset[str] = frozenset()) -> Outcome:
        """Grant, journal durably, pulse. ``scan`` is None for a station command
        (``source`` says who asked); ``journal_scan`` is False when the scan that
        completed the grant was journaled already (an evidence co-signer's badge).
        ``note`` goes with the grant and the item events (an evidence reason);
        ``grant_kind`` names the grant event (a maintenance open is not an access);
        ``allow_faults`` are faults that do not stop this opening (a technician testing a jam)."""
        if scan is None and (why := self.not_now()) is not None:
            raise CommandError(why)  # a command while starting, reloading or stopping (a scan never gets here then)
        cid = slot.cfg.id
        dossier = next(iter(items), None)
        what = ", ".join(f"{a} {c}" for c, a in items.items()) or "open"
        note = note or {}
        blocking = {k: v for k, v in slot.faults.items() if k not in allow_faults}
        if blocking:
            reason = f"compartment {cid} in fault ({'; '.join(f'{k}: {v}' for k, v in blocking.items())})"
            if scan is None:
                raise CommandError(reason)
            return self._deny(scan, reason, compartment=cid, dossier=dossier, people=people,
                              journal_scan=journal_scan)
        origin = self.scan_fields(scan) if scan else dict(source or {})
        journal_scan = journal_scan and scan is not None
        if slot.session is not None or slot.door is DoorState.OPEN:
            # Already unlocking or open: never pulse twice. Add the items to
            # the running session so the close records them too.
            s = slot.session
            if s is None:
                s = slot.session = Session(grant_seq=0, pulsed_at=self.clock.monotonic(), opened=True,
                                           opened_at=self.clock.monotonic())
            repeat = all(c in s.items for c in items) and bool(items)
            s.items.update(items)
            s.people.extend(p for p in people if p not in s.people)
            s.note.update(note)
            if journal_scan:
                self.journal.append("scan", compartment=cid, dossier=dossier, **origin)
            self.journal.append(grant_kind, compartment=cid, dossier=dossier, people=people,
                                items=items, pulse=False,
                                no_pulse="repeat scan, door already open" if repeat else "door already open",
                                **({} if scan else origin), **note)
            return Outcome(True, f"compartment {cid} is already open ({what})", cid)

        now = self.clock.monotonic()
        session = Session(grant_seq=0, pulsed_at=now, items=dict(items), people=list(people), note=dict(note))
        slot.session = session  # claimed before any await: a second scan now sees it
        try:
            if journal_scan:
                self.journal.append("scan", compartment=cid, dossier=dossier, **origin)
            grant = await self.journal.record(
                grant_kind, compartment=cid, dossier=dossier, people=people, items=items,
                pulse=True, **({} if scan else origin), **note)
        except JournalError as e:
            slot.session = None
            msg = f"refused: cannot record the opening ({e}); nothing opened"
            log.error("%s: %s", cid, msg)
            # Held and journaled late with the scan before it: the record says it was refused, and why.
            self.journal.append("access.denied", compartment=cid, dossier=dossier, people=people,
                                reason="journal unavailable", error=str(e), **({} if scan else origin))
            return Outcome(False, msg, cid, "journal unavailable")
        session.grant_seq = grant.seq

        bank = self.hw.lock_bank(slot.cfg.lock_driver)
        try:
            await bank.pulse(slot.cfg.lock, self.t.pulse_ms)
        except DriverTimeout as e:
            # No answer in time is not "no": a slow board may still switch the relay. The grant
            # stays open for the door, so an opening now is this grant's, not a forced door.
            self.journal.append("lock.unconfirmed", compartment=cid, grant_seq=grant.seq, error=str(e),
                                driver=bank.name, channel=slot.cfg.lock)
            slot.open_task = self._spawn(self._expect_open(slot, session), f"expect-open-{cid}")
            self._changed(slot)
            return Outcome(True, f"opening {cid}, not confirmed by the board ({e}): pull the door", cid,
                           reason="lock unconfirmed")
        except DriverError as e:
            slot.session = None
            self._set_fault(slot, "lock", str(e))
            self.journal.append("lock.failed", compartment=cid, grant_seq=grant.seq, error=str(e),
                                driver=bank.name, channel=slot.cfg.lock)
            return Outcome(False, f"refused: lock of {cid} did not respond ({e})", cid, "lock failed")
        slot.released = True
        self.journal.append("lock.pulsed", compartment=cid, grant_seq=grant.seq, ms=self.t.pulse_ms,
                            driver=bank.name, channel=slot.cfg.lock,
                            latency_ms=round((self.clock.monotonic() - (scan.at if scan else now)) * 1000, 3))
        slot.open_task = self._spawn(self._expect_open(slot, session), f"expect-open-{cid}")
        self._spawn(self._relock(slot), f"relock-{cid}")
        self._changed(slot)
        return Outcome(True, f"open {cid}: {what}", cid, pulsed=True)

    async def _relock(self, slot: Slot) -> None:
        await self.clock.sleep(self.t.pulse_ms / 1000)
        slot.released = False
        self._changed(slot)

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
        return await self._open(slot, {}, (person,) if person else (), source=src)

    async def release_open(self, item: Item, person: str, reason: str, by: dict[str, Any]) -> Outcome:
        """Open a dossier's compartment so an authorised person removes it for good (checked by custody)."""
        slot = self.slots[item.compartment]  # type: ignore[index]
        src = {"source": "station", "requested_by": person} | by
        return await self._open(slot, {item.code: RELEASE}, (person,), source=src, note={"reason": reason})

    # -- doors ---------------------------------------------------------------------------

    async def _door_loop(self, driver: str) -> None:
        sensors = self.hw.sensors(driver)
        async for change in self._beating(sensors.door_changes(), f"doors:{driver}"):
            cid = self._by_sensor.get((driver, change.channel))
            if cid is None:
                continue
            try:
                self._raw_door(self.slots[cid], change, sensors.sample_period_s)
            except Exception:
                log.exception("door change on %s failed", cid)

    def _raw_door(self, slot: Slot, change: DoorChange, sampled_every_s: float = 0.0) -> None:
        """Debounce: a reading counts once it has held for the settle window.

        Acting on the first edge would be faster but turns a vibrating open
        door into close/forced-open pairs; a few tens of ms is the price.
        A board polled less often than the window cannot show a bounce inside
        it (the next reading comes later): there the wait would only delay.
        """
        slot.raw, slot.raw_at = change.state, self.clock.monotonic()
        if self.t.debounce_ms <= 0 or sampled_every_s * 1000 >= self.t.debounce_ms:
            if slot.raw != slot.door:
                self._door_changed(slot, slot.raw)
            return
        if not slot.settling:
            slot.settling = True
            self._spawn(self._settle(slot), f"settle-{slot.cfg.id}")

    async def _settle(self, slot: Slot) -> None:
        window = self.t.debounce_ms / 1000
        while (wait := slot.raw_at + window - self.clock.monotonic()) > 0:
            await self.clock.sleep(wait)
        slot.settling = False
        if slot.raw != slot.door:
            self._door_changed(slot, slot.raw)

    def _door_changed(self, slot: Slot, state: DoorState) -> None:
        cid = slot.cfg.id
        was = slot.door
        slot.door = state
        now = self.clock.monotonic()
        if was is DoorState.UNKNOWN and "sensor" in slot.faults and state is not DoorState.UNKNOWN:
            self._clear_fault(slot, "sensor")
        if state is DoorState.UNKNOWN:
            self._set_fault(slot, "sensor", "door state unknown")
            self.journal.append("door.unknown", compartment=cid, state=[self._comp_op(slot)])
        elif state is DoorState.OPEN:
            s = slot.session
            if s is not None and not s.opened:
                s.opened, s.opened_at = True, now
                if slot.open_task:
                    slot.open_task.cancel()
                slot.not_opened = 0
                if "jam" in slot.faults:
                    self._clear_fault(slot, "jam")
                self.journal.append("door.opened", compartment=cid, granted=True, grant_seq=s.grant_seq,
                                    after_ms=round((now - s.pulsed_at) * 1000, 1),
                                    state=[self._comp_op(slot)])
            elif s is not None:
                self.journal.append("door.opened", compartment=cid, granted=True, grant_seq=s.grant_seq,
                                    state=[self._comp_op(slot)])
            elif (pulsed := self._pulsed_elsewhere(slot)) is not None:
                self._wiring_suspected(pulsed, slot)
            else:
                slot.alarms.add("forced")
                self.journal.append("door.opened", compartment=cid, granted=False, state=[self._comp_op(slot)])
                self.journal.append("alarm.forced", compartment=cid, reason="door opened without a grant",
                                    state=[self._comp_op(slot)])
                self._alarm_feedback(slot, f"ALARM: compartment {cid} forced open")
            if slot.held_task is None or slot.held_task.done():
                slot.held_task = self._spawn(self._held_open(slot), f"held-{cid}")
        elif state is DoorState.CLOSED:
            if slot.held_task:
                slot.held_task.cancel()
                slot.held_task = None
            s = slot.session
            if s is not None and s.opened:
                slot.session = None
            self.journal.append("door.closed", compartment=cid, granted=s is not None and s.opened,
                                grant_seq=s.grant_seq if s else None,
                                open_s=round(now - s.opened_at, 3) if s and s.opened_at else None,
                                state=[self._comp_op(slot)])
            if s is not None and s.opened:
                self._record_items(slot, s)
            for alarm in sorted(slot.alarms - STAYING_ALARMS):  # a forced door stays an alarm until acknowledged
                slot.alarms.discard(alarm)
                self.journal.append("alarm.cleared", compartment=cid, alarm=alarm, reason="door closed",
                                    state=[self._comp_op(slot)])
        self._changed(slot)

    def _pulsed_elsewhere(self, opened: Slot) -> Slot | None:
        """The door of the same cabinet pulsed last and not opened yet, within open_timeout_s: when another
        door opens without a grant meanwhile, the pulse most likely opened it (crossed wiring)."""
        now = self.clock.monotonic()
        waiting = [s for s in self.slots.values() if s is not opened and s.session is not None and not s.session.opened
                   and s.cfg.cabinet == opened.cfg.cabinet and now - s.session.pulsed_at <= self.t.open_timeout_s
                   and s.door is DoorState.CLOSED]
        return max(waiting, key=lambda s: s.session.pulsed_at) if waiting else None  # type: ignore[union-attr]

    def _wiring_suspected(self, pulsed: Slot, opened: Slot) -> None:
        """A pulse on one door, and another opened: both are blocked until a technician has checked the wiring."""
        a, b = pulsed.cfg.id, opened.cfg.id
        detail = (f"pulse on {a} ({pulsed.cfg.lock_driver} channel {pulsed.cfg.lock}) opened {b} "
                  f"(sensor {opened.cfg.sensor_driver} channel {opened.cfg.sensor}): lock or sensor wires crossed? "
                  "check with lockerd-hil, then lockerd clear-fault")
        self.journal.append("door.opened", compartment=b, granted=False, state=[self._comp_op(opened)])
        self.journal.append("fault.wiring_suspected", compartment=b, pulsed=a, opened=b,
                            grant_seq=pulsed.session.grant_seq if pulsed.session else None, detail=detail)
        for slot in (pulsed, opened):
            self._set_fault(slot, "wiring", detail)
        self._alarm_feedback(opened, f"FAULT: {detail}")
        log.error("wiring suspected: %s", detail)

    def _record_items(self, slot: Slot, s: Session) -> None:
        """The door closed after a grant: the items of the session changed hands."""
        ts = iso_utc(self.clock.wall())
        holder = next(iter(s.people), None)
        for code, action in s.items.items():
            item = self.registry.items.get(code)
            if item is None:
                continue
            if item.kind == "evidence":
                holder = self._depositor(s) or holder  # the officer of the two, not the case manager
            if action in (CHECKOUT, RETRIEVE):
                item.state, item.holder = ItemState.OUT, holder
            elif action == RELEASE:
                item.state, item.holder = ItemState.RELEASED, holder
            else:
                item.state, item.holder = ItemState.IN, None
                if item.kind == "evidence" and action == DEPOSIT:
                    item.depositor = self._depositor(s)
            item.since = ts
            due, due_ops = self.custody.moved(item, action, s.note)  # a return deadline, same transaction
            self.journal.append(ITEM_EVENT[(item.kind, action)], compartment=slot.compartment, dossier=code,
                                people=tuple(s.people), grant_seq=s.grant_seq, case_name=item.case_name,
                                officer=item.officer, **s.note, **due,
                                state=self.registry.put_item(item) + due_ops)

    def _first_depositor(self, code: str) -> str | None:
        """The officer of the item's first evidence deposit, from the journal."""
        if not self.journal.healthy:
            return None
        rows = self.journal.query("SELECT people FROM events WHERE kind = 'evidence.deposited' AND dossier = ? "
                                  "ORDER BY seq LIMIT 1", code)
        people = json.loads(rows[0][0]) if rows and rows[0][0] else []
        return next((pid for pid in people if (p := self.registry.people.get(pid)) and p.role in OFFICER_ROLES),
                    None)

    def _depositor(self, s: Session) -> str | None:
        for pid in s.people:
            p = self.registry.people.get(pid)
            if p and p.role in OFFICER_ROLES:
                return pid
        return None

    async def _expect_open(self, slot: Slot, session: Session) -> None:
        """Pulse sent is not door opened: say so when the door stays shut."""
        await self.clock.sleep(self.t.open_timeout_s)
        if slot.session is not session or session.opened:
            return
        slot.session = None
        slot.not_opened += 1
        cid = slot.cfg.id
        self.journal.append("door.not_opened", compartment=cid, grant_seq=session.grant_seq,
                            timeout_s=self.t.open_timeout_s, in_a_row=slot.not_opened,
                            state=[self._comp_op(slot)])
        if slot.not_opened >= self.t.jam_after:
            self._set_fault(slot, "jam", f"{slot.not_opened} pulses in a row without the door opening")
        self._changed(slot)

    async def _held_open(self, slot: Slot) -> None:
        opened = self.clock.monotonic()
        await self.clock.sleep(self.t.max_open_s)
        count = 0
        while slot.door is DoorState.OPEN:
            count += 1
            slot.alarms.add("held-open")
            cid = slot.cfg.id
            self.journal.append("alarm.held_open", compartment=cid, count=count,
                                open_s=round(self.clock.monotonic() - opened, 1), state=[self._comp_op(slot)])
            self._alarm_feedback(slot, f"ALARM: compartment {cid} open too long ({count})")
            self._changed(slot)
            await self.clock.sleep(self.t.alarm_repeat_s)

    def _alarm_feedback(self, slot: Slot, message: str) -> None:
        log.warning("%s", message)
        for name, sec in self.config.scanners.items():
            if slot.cfg.cabinet in sec.options["cabinets"]:
                self._spawn(self._feedback_for(name).show(name, False, message), f"alarm-fb-{name}")

    # -- faults --------------------------------------------------------------------------

    def _set_fault(self, slot: Slot, key: str, detail: str) -> None:
        if slot.faults.get(key) == detail:
            return
        slot.faults[key] = detail
        self.journal.append("compartment.fault", compartment=slot.cfg.id, fault=key, detail=detail,
                            state=[self._comp_op(slot)])
        self._changed(slot)

    def _clear_fault(self, slot: Slot, key: str, by: str | None = None, via: dict[str, Any] | None = None) -> None:
        if slot.faults.pop(key, None) is None:
            return
        self.journal.append("compartment.fault_cleared", compartment=slot.cfg.id, fault=key,
                            people=(by,) if by else (), state=[self._comp_op(slot)], **(via or {}))
        self._changed(slot)

    async def acknowledge_alarm(self, compartment: str, person: str, note: str, via: dict[str, Any]
                                ) -> dict[str, Any]:
        """A supervisor or case manager acknowledges a forced door, once it is shut again."""
        slot = self.slots.get(compartment)
        if slot is None:
            raise CommandError(f"unknown compartment {compartment!r}")
        p = self.registry.active_person(person)
        if p is None:
            raise CommandError(f"unknown or revoked person {person!r}")
        if p.role not in ALARM_ACK_ROLES:
            raise CommandError(f"{person} is {p.role}: a supervisor or a case manager acknowledges an alarm")
        staying = sorted(slot.alarms & STAYING_ALARMS)
        if not staying:
            raise CommandError(f"compartment {compartment} has no alarm waiting for acknowledgement")
        if slot.door is not DoorState.CLOSED:
            raise CommandError(f"compartment {compartment} is not shut ({slot.door}): close it first")
        slot.alarms -= STAYING_ALARMS
        ev = await self.journal.record("alarm.acknowledged", compartment=compartment, people=(person,),
                                       alarms=staying, note=note, **via, state=[self._comp_op(slot)])
        self._changed(slot)
        return {"seq": ev.seq, "acknowledged": staying}

    def unacknowledged(self) -> list[dict[str, Any]]:
        """Alarms that wait for a person: each compartment's, with the door as it is now."""
        return [{"compartment": cid, "alarms": sorted(slot.alarms & STAYING_ALARMS), "door": str(slot.door)}
                for cid, slot in self.slots.items() if slot.alarms & STAYING_ALARMS]

    def clear_faults(self, compartment: str, person: str, via: dict[str, Any] | None = None) -> list[str]:
        """A technician clears a compartment's faults after fixing it."""
        slot = self.slots.get(compartment)
        if slot is None:
            raise CommandError(f"unknown compartment {compartment!r}")
        cleared = [k for k in list(slot.faults) if k in ("jam", "lock", "relay", "wiring")]
        for k in cleared:
            self._clear_fault(slot, k, person, via)
        slot.not_opened = 0
        return cleared

    def _driver_status(self, st: DriverStatus) -> None:
        for slot in self.slots.values():
            if slot.cfg.lock_driver == st.driver:
                if st.online:
                    self._clear_fault(slot, "lock")
                else:
                    self._set_fault(slot, "lock", f"driver {st.driver} offline: {st.detail}")
        self._journal_status(st)

    def _journal_status(self, st: DriverStatus) -> None:
        """A board or scanner gone, missing at start or back: journaled, so the station sees it."""
        self.journal.append("driver.online" if st.online else "driver.offline", driver=st.driver,
                            detail=st.detail)

    def _lock_fault(self, driver: str, channel: int, detail: str | None) -> None:
        cid = self._by_lock.get((driver, channel))
        if cid is None:
            return
        if detail is None:
            self._clear_fault(self.slots[cid], "relay")
        else:
            self._set_fault(self.slots[cid], "relay", detail)

    # -- registry changes (import, station commands) ----------------------------------------

    def check_item(self, code: str, kind: str | None, compartment: str | None, case_name: str | None,
                   category: str | None, officer: str | None, people: dict[str, Person] | None = None) -> Item:
        """The item a registration makes. A field given as None keeps its registered value (a new item: empty,
        a dossier); an item's kind never changes, and a released item's record is closed."""
        known = people if people is not None else self.registry.people
        if not code or not isinstance(code, str) or len(code) > 128:
            raise CommandError(f"item code {code!r}: expected 1-128 characters")
        old = self.registry.items.get(code)
        if old is not None and old.state is ItemState.RELEASED:
            raise CommandError(f"item {code} was released on {old.since}: its record is closed")
        if old is not None and kind is not None and kind != old.kind:
            raise CommandError(f"item {code} is registered as {old.kind}: an item's kind never changes "
                               f"(not to {kind})")
        kind = kind if kind is not None else old.kind if old is not None else "dossier"
        if kind not in ("dossier", "evidence"):
            raise CommandError(f"item {code}: kind {kind!r}: expected 'dossier' or 'evidence'")
        if self.registry.is_badge(code):
            raise CommandError(f"item {code}: that code is already a badge")
        if self.config.evidence.reason_card(code) is not None:
            raise CommandError(f"item {code}: that code is a reason card in [evidence]")
        if compartment is not None:
            c = self.config.compartments.get(compartment)
            if c is None:
                raise CommandError(f"item {code}: unknown compartment {compartment!r}")
            if c.kind != kind:
                raise CommandError(f"item {code}: a {kind} cannot go in {c.kind} compartment {compartment}")
        if officer:
            p = known.get(officer)
            if p is None or not p.active:
                raise CommandError(f"item {code}: unknown or revoked responsible officer {officer!r}")
        if old is not None and old.state is ItemState.IN and old.compartment != compartment:
            raise CommandError(f"item {code} is in compartment {old.compartment}: take it out before moving it")
        if old is None:
            return Item(code, kind, case_name or "", category or "", officer or "", compartment)
        return replace(old, compartment=compartment,
                       case_name=old.case_name if case_name is None else case_name,
                       category=old.category if category is None else category,
                       officer=old.officer if officer is None else officer)

    async def assign(self, item: Item, by: dict[str, Any], extra: dict[str, Any] | None = None,
                     ops: list[StateOp] | None = None) -> Event:
        """Journal an item's registration; ``extra`` and ``ops`` carry its deposit deadline (custody)."""
        return await self.journal.record("item.assigned", compartment=item.compartment, dossier=item.code,
                                         item_kind=item.kind, case_name=item.case_name, category=item.category,
                                         officer=item.officer, **by, **(extra or {}),
                                         state=self.registry.put_item(item) + (ops or []))

    async def unassign(self, code: str, by: dict[str, Any]) -> Event:
        item = self.registry.items.get(code)
        if item is None:
            raise CommandError(f"item {code}: not registered")
        if item.state is ItemState.IN:
            raise CommandError(f"item {code} is in compartment {item.compartment}: take it out first")
        if item.kind == "evidence" and item.state is ItemState.OUT:
            raise CommandError(f"evidence {code} is out (since {item.since}, with {item.holder or 'unknown'}): "
                               "it must come back, or be released at its cabinet; it cannot be unregistered")
        self.registry.items.pop(code)
        return await self.journal.record("item.unassigned", compartment=item.compartment, dossier=code, **by,
                                         state=[("delete", "items", {"code": code})])

