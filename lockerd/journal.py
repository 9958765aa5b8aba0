"""The journal: an append-only, hash-chained SQLite event log, and the state tables.

One thread owns the writing connection and is fed by a queue
(lockerd/journal_writer.py): what the loop appends during one pass is
committed together with one fsync, and a grant is durable when its future
resolves (:meth:`Journal.append_durable`). Each event row is chained to the
one before by its hash (lockerd/journal_chain.py), so an edit or a deletion
anywhere is found by :func:`verify`. State changes (dossier in or out,
people, badges, compartment faults) are written in the same transaction as
the event that caused them, and the tables are checked against the chain at
open (lockerd/projection.py). Events that gate no lock are held while the
journal cannot be written, and journaled late (lockerd/journal_outage.py).
The schema and its migrations are in lockerd/journal_schema.py.

This module is the face: every name the rest of lockerd uses is importable
from here.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lockerd import projection
from lockerd.clock import Clock, iso_utc, parse_time
from lockerd.errors import JournalError
from lockerd.journal_chain import (
    EVENT_COLUMNS,
    GENESIS,
    Event,
    VerifyResult,
    canonical,
    canonical_encoder,
    chain_hash,
    verify,
)
from lockerd.journal_outage import HELD_RETRY_S, Holding, Outage, spill_path_for
from lockerd.journal_schema import SCHEMA_VERSION, connect, migrate
from lockerd.journal_snapshot import Snapshotter
from lockerd.journal_wal import WalCheckpointer
from lockerd.journal_writer import (
    Batch,
    Control,
    Pending,
    Requests,
    Writer,
    WriterHooks,
    WriterState,
    new_fields,
    printable,
)
from lockerd.projection import STATE_TABLES, StateOp

# The names the rest of lockerd imports from here. The tunables (HELD_MAX, CHECKPOINT_*, MAX_BATCH) are
# not among them: they are read where they are used, so a test changes them there.
__all__ = [
    "EVENT_COLUMNS", "GENESIS", "SCHEMA_VERSION", "STATE_TABLES", "Event", "Journal", "StateOp", "VerifyResult",
    "canonical", "canonical_encoder", "chain_hash", "connect", "migrate", "printable", "spill_path_for", "verify",
]

log = logging.getLogger(__name__)


class Journal:
    """Writes events durably from one thread; reads from any."""

    def __init__(self, path: Path, clock: Clock | None = None, boot: str | None = None):
        self.path = Path(path)
        self.clock = clock or Clock()
        self.boot = boot or uuid.uuid4().hex[:12]
        # The chain's head, the health and the counters, shared with the writer thread.
        self._state = WriterState()
        self._queue: Requests = queue.SimpleQueue()
        # Requests appended during the current pass of the loop, handed to the
        # writer together at the next pass (see _hand_over).
        self._gathered: Batch = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._lockfile: int | None = None
        self._reader: sqlite3.Connection | None = None
        self._last_attempt = -1e9
        self._appended = 0  # order of appends, so held events are journaled in the order they happened
        self._holding = Holding(spill_path_for(self.path))
        self._drain_timer: asyncio.TimerHandle | None = None
        self._outage_listeners: list[Callable[[], None]] = []

    # -- what the writer thread shares ---------------------------------------------

    @property
    def error(self) -> str | None:
        """Why the journal cannot be written now; None while it can."""
        return self._state.error

    @property
    def last_seq(self) -> int:
        """The seq of the newest committed event (0 for an empty journal)."""
        return self._state.last_seq

    @property
    def last_hash(self) -> str:
        """The hash of the newest committed event (GENESIS for an empty journal)."""
        return self._state.last_hash

    @property
    def commits(self) -> int:
        """Batches committed by the writer since this object was made."""
        return self._state.commits

    @property
    def checkpoints(self) -> int:
        """WAL checkpoints run while the writer was idle."""
        return self._state.checkpoints

    @property
    def spill_path(self) -> Path:
        """Where held events go past HELD_MAX (see lockerd/journal_outage.py)."""
        return self._holding.spill_path

    # -- life ------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self.error is None

    def open(self) -> bool:
        """Open (creating or migrating) the journal and start the writer.

        Never raises: on failure ``error`` says why, every append fails with
        that reason (so nothing unlocks), and appends retry the open now and
        then, so a freed disk or a replaced file heals without a restart.
        """
        self._loop = asyncio.get_running_loop()
        self._last_attempt = self.clock.monotonic()
        try:
            self._open(self._loop)
        except (OSError, sqlite3.Error, JournalError) as e:
            self._state.error = f"journal {self.path} unusable: {e}"
        else:
            self._state.error = None
        if self.error is not None:
            log.error("%s", self.error)
            self._release_lock()
            return False
        if self.spill_path.exists() and self._holding.outage is None:
            # An earlier run stopped with events in the spill file: they are journaled now, late.
            self._holding.outage = Outage(iso_utc(self.clock.wall()), self.clock.monotonic(),
                                          "events spilled before the last stop")
            self._loop.call_soon(self._drain)
        return True

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._take_lock()
        conn = connect(self.path)
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            upgraded = 0 < version < 3  # events from before state operations were chained
            if version != SCHEMA_VERSION:
                conn.close()
                migrate(self.path)
                conn = connect(self.path)
            row = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            if row is not None:
                last = Event.from_row(row)
                if chain_hash(last.prev, last.record()) != last.hash:
                    raise JournalError(f"last event (seq {last.seq}) fails its hash check")
                self._state.last_seq, self._state.last_hash = last.seq, last.hash
            writer = Writer(conn, self._state, self._queue, loop, self.clock, self.boot,
                            WriterHooks(self._published, self._failed, self._committed))
            if upgraded and self.last_seq > 0:
                writer.write_snapshot(baseline=True)  # the tables as they stand are the base from here on
            else:
                self._check_state_tables(writer)
            # Prove we can write before claiming to be healthy (read-only
            # file, full disk): an empty transaction that touches the file.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE outbox SET delivered = delivered WHERE id = 1")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        conn.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run when the writer is idle (journal_wal)
        self._reader = connect(self.path)
        writer.snapshots = Snapshotter(self.path, self._queue.put)
        writer.wal = WalCheckpointer(self.path, writer.checkpointed)
        self._thread = threading.Thread(target=writer.run, name="journal-writer", daemon=True)
        self._thread.start()

    def _check_state_tables(self, writer: Writer) -> None:
        """At open: the state tables against the chain; a difference is repaired and raised as an alarm."""
        found = projection.check(writer.conn)
        if not found.differences:
            self._state.snapshot_seq = found.snapshot_seq
            return
        log.error("journal: ALARM: the state tables differ from the journal: %s", "; ".join(found.differences[:5]))
        alarm = Pending("alarm.journal_tampered", self._fields(
            data={"differences": found.differences[:50], "count": len(found.differences),
                  "snapshot_seq": found.snapshot_seq, "replayed": found.replayed,
                  "repaired": bool(found.repair)}), tuple(found.repair), None)
        writer.commit_alone(alarm)
        writer.write_snapshot()

    def _fields(self, **kw: Any) -> dict[str, Any]:
        return new_fields(self.clock, self.boot, **kw)

    def _take_lock(self) -> None:
        # One writer per journal: a second daemon (or an offline import while
        # the daemon runs) would fork the hash chain.
        if self._lockfile is not None:
            return
        fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise JournalError(f"{self.path} is in use by another lockerd process") from None
        self._lockfile = fd

    def _release_lock(self) -> None:
        if self._lockfile is not None:
            os.close(self._lockfile)
            self._lockfile = None

    def close(self) -> None:
        """Write what is queued (and held, if the journal takes it now), then stop the writer."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        self._drain()
        held = self._holding.items
        if held:
            kept = sum(self._holding.spill(it) for it in held)
            log.error("journal: closing with %d events that could not be written; %d kept in %s for the next start",
                      len(held), kept, self.spill_path)
        if self._thread is not None:
            self._hand_over()
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._release_lock()

    def subscribe(self, listener: Callable[[list[Event]], None]) -> None:
        """Call ``listener(events)`` on the loop after each commit."""
        self._listeners.append(listener)

    def on_outage(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` on the loop when events start being held, and when they have been journaled."""
        self._outage_listeners.append(listener)

    def _outage_changed(self) -> None:
        for listener in list(self._outage_listeners):
            try:
                listener()
            except Exception:
                log.exception("journal outage listener failed")

    # -- writing -----------------------------------------------------------------

    def append(
        self,
        kind: str,
        *,
        compartment: str | None = None,
        dossier: str | None = None,
        people: Iterable[str] = (),
        state: Iterable[StateOp] = (),
        keep: bool = True,
        **data: Any,
    ) -> asyncio.Future[Event]:
        """Queue an event; the returned future resolves once it is durable.

        An event that gates nothing (``keep``, the default) is never lost to
        a journal that cannot be written: it is held in memory and journaled
        late, in order, once writing works again (its future resolves then).
        Where the caller must act on the outcome now (a grant before the lock
        moves, a command's acceptance), use :meth:`append_durable` or
        ``keep=False``: a failure to write then resolves the future with
        JournalError.
        """
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[Event] = loop.create_future()
        fut.add_done_callback(_log_unretrieved)
        self._appended += 1
        fields = {
            "id": uuid.uuid4().hex,
            "ts": iso_utc(self.clock.wall()),
            "mono": round(self.clock.monotonic(), 6),
            "boot": self.boot,
            "compartment": compartment,
            "dossier": dossier,
            "people": list(people),
            "data": data,
        }
        item = Pending(kind, fields, tuple(state), fut, keep=keep, order=self._appended)
        if keep and (self.error is not None or self._holding.items):
            self._hold([item])  # behind those held before it
            return fut
        if not keep and self.error is not None and not self._retry_open():
            fut.set_exception(JournalError(self.error))
            return fut
        self._gather(loop, item)
        return fut

    async def append_durable(self, kind: str, **kw: Any) -> Event:
        """Append ``kind`` and resolve only once the event is committed and fsynced.

        The grant before a lock moves must use it. Nothing is held: when the
        journal cannot be written this raises JournalError at once, and the
        lock stays shut.
        """
        fut = self.append(kind, keep=False, **kw)
        # Its caller waits for it next, so nothing later can share its
        # commit: hand it to the writer now, not behind what the loop has
        # queued already (the command's MQTT ack, another task's step), which
        # then runs while the writer commits.
        self._hand_over()
        return await fut

    # -- an outage: events held in memory ------------------------------------------

    @property
    def held(self) -> int:
        """Events waiting in memory for the journal to be writable."""
        return len(self._holding.items)

    def _hold(self, items: list[Pending], reason: str | None = None) -> None:
        """Keep events the journal cannot take now, in the order they happened (loop thread).

        ``reason``: the writer's, for the rows of a batch that failed (by the time this runs on the loop, a
        statement of a later batch may have gone through and cleared ``error``).
        """
        if self._holding.start_outage(items, reason or self.error or "journal unusable") and self._loop is not None:
            self._loop.call_soon(self._outage_changed)
        self._holding.add(items)
        if self._drain_timer is None and self._loop is not None:
            self._drain_timer = self._loop.call_later(HELD_RETRY_S, self._drain)

    def _drain(self) -> None:
        """Try to journal the held events, late and in order, closed by a journal.outage event."""
        self._drain_timer = None
        holding = self._holding
        if not (holding.items or holding.spill_path.exists()) or holding.outage is None:
            return
        if self._thread is None and not self._retry_open():
            self._drain_timer = self._loop.call_later(HELD_RETRY_S, self._drain) if self._loop else None
            return
        spilled = holding.unspill()
        items, holding.items = [*spilled, *holding.items], []
        now, outage = self.clock.monotonic(), holding.outage
        wall = self.clock.wall()
        for it in items:
            # Spilled by an earlier run, its monotonic time is another boot's: measure on the wall clock then.
            late = now - it.fields["mono"] if it.fields["boot"] == self.boot else wall - parse_time(it.fields["ts"])
            it.fields["data"] = {**it.fields["data"], "journaled_late_s": round(late, 3)}
        marker = Pending("journal.outage", self._fields(
            data={"since": outage.since_ts, "lasted_s": round(now - outage.since_mono, 3), "reason": outage.reason,
                  "held": len(items), "spilled": len(spilled), "dropped": dict(outage.dropped)}), (), None)
        marker.future = self._loop.create_future() if self._loop else None
        if marker.future is not None:
            marker.future.add_done_callback(lambda f: self._outage_written(f, outage))
        # Ahead of whatever this pass gathered: the held events happened first.
        self._queue.put([*items, marker])

    def _outage_written(self, fut: asyncio.Future[Event], outage: Outage) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the held events are held again; the next drain writes a new marker
        if self._holding.outage is outage:
            self._holding.outage = None
            log.warning("journal: writing again; %d events journaled late", fut.result().data["held"])
            self._outage_changed()

    def _retry_open(self) -> bool:
        now = self.clock.monotonic()
        if self._thread is not None:
            # Open, but the last commit failed (disk full, database locked).
            # Nothing else would ever show that the cause has gone, so one
            # write a second goes through as the probe; the rest are refused
            # at once instead of each waiting out a failing commit.
            if now - self._last_attempt < 1.0:
                return False
            self._last_attempt = now
            return True
        if now - self._last_attempt < 5.0:
            return False
        return self.open()

    def execute(self, sql: str, *params: Any, durable: bool = True) -> asyncio.Future[None]:
        """Run a non-event statement on the writer (outbox cursor and the like).

        ``durable=False`` is for what may be undone by a power cut because it
        is redone (the outbox cursor): committed alone, it costs no flush.
        """
        loop = self._loop or asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        fut.add_done_callback(_log_unretrieved)
        if self._thread is None:
            fut.set_exception(JournalError(self.error or "journal closed"))
        else:
            self._gather(loop, Control(sql, params, fut, durable))
        return fut

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (the writer takes requests in order).

        Raises JournalError when the journal is unusable, at once.
        """
        await self.execute("SELECT 1")

    def _gather(self, loop: asyncio.AbstractEventLoop, item: Pending | Control) -> None:
        # Handing each request over on its own let the writer wake for the
        # first one and commit it alone while the step that appended it went
        # on to append its grant: two fsyncs in a row before the lock moved
        # (one remote open in five here). The hand-over waits for the step to
        # yield instead; a durable append (the grant) hands over at once, as
        # its step awaits it next (see append_durable).
        self._gathered.append(item)
        if len(self._gathered) == 1:
            loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        items, self._gathered = self._gathered, []
        if items:
            self._queue.put(items)

    # -- what the writer thread calls (on its thread) ------------------------------

    def _published(self, events: list[Event]) -> None:
        if self._listeners and self._loop is not None:
            # One hop more on the loop: the tasks this commit wakes (a grant's,
            # its lock waiting) run before the observers publish and count it.
            self._loop.call_soon_threadsafe(self._loop.call_soon, self._notify, events)

    def _failed(self, kept: list[Pending], reason: str) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._hold, kept, reason)

    def _committed(self) -> None:
        if self._holding.items and self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain_soon)

    def _drain_soon(self) -> None:
        # A commit went through: held events need not wait for their timer.
        if self._holding.items and self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
            self._drain()

    def _notify(self, events: list[Event]) -> None:
        for listener in list(self._listeners):
            try:
                listener(events)
            except Exception:  # an observer never breaks the journal
                log.exception("journal listener failed")

    # -- reading -------------------------------------------------------------------

    def read(self, after_seq: int = 0, limit: int = 1000) -> list[Event]:
        """Events with seq > after_seq, oldest first."""
        if self._reader is None:
            raise JournalError(self.error or "journal closed")
        rows = self._reader.execute(
            f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)
        ).fetchall()
        return [Event.from_row(r) for r in rows]

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        if self._reader is None:
            raise JournalError(self.error or "journal closed")
        rows: list[tuple[Any, ...]] = self._reader.execute(sql, params).fetchall()
        return rows


def _log_unretrieved(fut: asyncio.Future[Any]) -> None:
    # Mark the exception retrieved: every failure is logged by the writer
    # once, and callers that must act on it await the future themselves.
    if not fut.cancelled():
        fut.exception()
