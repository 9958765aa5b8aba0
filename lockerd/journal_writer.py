"""The journal's writer thread: one thread owns the writing connection and commits what the loop hands it.

The loop hands it what was appended during one pass of the event loop as one
list, so the rows a step appends (a station command's acceptance, then its
grant) always share a commit. The writer takes every list waiting, writes
them in one transaction and commits once (WAL with ``synchronous=FULL``: one
fsync), then resolves each request's future on the event loop. So a grant is
durable when its future resolves, and a burst of events that need not wait
(door changes, pulses sent) shares one fsync.

State changes (dossier in or out, people, badges, compartment faults) are
written in the same transaction as the event that caused them, so state and
journal never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from lockerd import projection
from lockerd.clock import Clock, iso_utc
from lockerd.errors import JournalError
from lockerd.journal_chain import EVENT_COLUMNS, GENESIS, Event, canonical, chain_hash
from lockerd.journal_snapshot import SnapshotTaken, Snapshotter, encode_tables
from lockerd.journal_wal import WalCheckpointer, checkpoint
from lockerd.projection import StateOp, apply_state

log = logging.getLogger(__name__)

MAX_BATCH = 1000
# Checkpoints (copying the WAL back into the database, with fsyncs of their
# own) are asked for while the writer is idle, and run beside it (see
# journal_wal). SQLite's automatic one lands inside whichever commit crosses
# its threshold, and that commit may be a grant with a lock waiting on it
# (milliseconds here, far more on an SD card).
CHECKPOINT_AFTER_COMMITS = 50  # a few hundred pages: a short checkpoint
CHECKPOINT_IDLE_S = 0.02  # this long without a request counts as idle
# Never idle that long (a steady stream of scans): checkpoint anyway, before
# the WAL grows past what SQLite itself would have let it (a checkpoint of
# 2000 commits took 1.1 s here).
CHECKPOINT_FORCED_COMMITS = 250


@dataclass
class Pending:
    """One event waiting for the writer, with its future."""

    kind: str
    fields: dict[str, Any]
    state: tuple[StateOp, ...]
    future: asyncio.Future[Event] | None
    event: Event | None = None
    # Held through an outage instead of failed: see Journal.append.
    keep: bool = False
    order: int = 0


@dataclass
class Control:
    """A non-event request for the writer thread (e.g. moving the outbox cursor)."""

    sql: str
    params: tuple[Any, ...]
    future: asyncio.Future[None] | None = None
    # False: a power cut may undo it, because it can be redone (see Writer._write_batch).
    durable: bool = True


# What the loop hands the writer at once; a snapshot the snapshot thread took; None: stop.
Batch = list[Pending | Control]
Requests = queue.SimpleQueue[Batch | SnapshotTaken | None]


def new_fields(clock: Clock, boot: str, **kw: Any) -> dict[str, Any]:
    """The fields of an event the journal makes itself (alarm, snapshot, outage), now."""
    base = {"id": uuid.uuid4().hex, "ts": iso_utc(clock.wall()), "mono": round(clock.monotonic(), 6),
            "boot": boot, "compartment": None, "dossier": None, "people": [], "data": {}}
    return base | kw


@dataclass
class WriterState:
    """What the writer thread and the journal's face share: the chain's head, the health and the counters."""

    last_seq: int = 0
    last_hash: str = GENESIS
    snapshot_seq: int = 0  # the seq of the newest journal.snapshot event
    error: str | None = "not opened"
    commits: int = 0
    checkpoints: int = 0


@dataclass(frozen=True)
class WriterHooks:
    """How the writer reaches the journal's side on the loop. Each is called on the writer thread."""

    published: Callable[[list[Event]], None]  # these events are committed
    failed: Callable[[list[Pending], str], None]  # a batch failed; these events are to be held, not failed
    committed: Callable[[], None]  # a batch went through


class Writer:
    """Writes to the journal's one writing connection: from its thread, and before the thread starts."""

    def __init__(self, conn: sqlite3.Connection, state: WriterState, requests: Requests,
                 loop: asyncio.AbstractEventLoop, clock: Clock, boot: str, hooks: WriterHooks):
        self.conn = conn
        self.state = state
        self.requests = requests
        self.loop = loop
        self.clock = clock
        self.boot = boot
        self.hooks = hooks
        # Set by the journal once the thread may run: snapshots are taken and the WAL checkpointed beside it.
        self.snapshots: Snapshotter | None = None
        self.wal: WalCheckpointer | None = None
        self._taken: SnapshotTaken | None = None  # handed over, not yet committed

    def commit_alone(self, item: Pending) -> Event:
        """Write one event in a transaction of its own (the writer thread, or before it starts)."""
        conn, st = self.conn, self.state
        conn.execute("BEGIN IMMEDIATE")
        try:
            ev = write_row(conn, item, st.last_seq + 1, st.last_hash)
            if isinstance(ev, str):
                raise JournalError(f"cannot write {item.kind}: {ev}")
            if item.kind == projection.SNAPSHOT_KIND:
                conn.execute("INSERT INTO snapshots (seq, digest, body) VALUES (?, ?, ?)",
                             (ev.seq, ev.data["digest"], item.fields["body"]))
                # Only the newest two are kept (the events stay): a start needs the last.
                conn.execute("DELETE FROM snapshots WHERE seq < (SELECT seq FROM snapshots ORDER BY seq DESC "
                             "LIMIT 1 OFFSET 1)")
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        st.last_seq, st.last_hash = ev.seq, ev.hash
        return ev

    def write_snapshot(self, baseline: bool = False) -> Event:
        """Snapshot the state tables into the chain now, on this connection (at open, before the thread)."""
        body, rows = encode_tables(self.conn)
        return self._commit_snapshot(SnapshotTaken.of(self.state.last_seq, body, rows), baseline)

    def _commit_snapshot(self, taken: SnapshotTaken, baseline: bool = False) -> Event:
        data: dict[str, Any] = {"digest": taken.digest, "rows": taken.rows, "state_seq": taken.state_seq}
        if baseline:
            data["baseline"] = True
        item = Pending(projection.SNAPSHOT_KIND, new_fields(self.clock, self.boot, data=data), (), None)
        item.fields["body"] = taken.stored  # stored beside the event, not in it: only its digest is chained
        ev = self.commit_alone(item)
        self.state.snapshot_seq = ev.seq
        return ev

    def run(self) -> None:
        """The writer thread: batches from the queue until None; snapshots and checkpoints when idle."""
        st = self.state
        since = 0  # commits since the last checkpoint
        try:
            while True:
                try:
                    first = self.requests.get(timeout=CHECKPOINT_IDLE_S if since >= CHECKPOINT_AFTER_COMMITS else None)
                except queue.Empty:
                    self._checkpoint()
                    since = 0
                    continue
                batch, stop = self._collect(first)
                if batch:
                    self._write_batch(batch)
                    since += 1
                if self.requests.empty() and self._taken is not None:
                    # Its own commit, and only while nothing waits: a grant never shares it.
                    self._snapshot_now(self._taken)
                    self._taken = None
                    since += 1
                if (st.last_seq - st.snapshot_seq >= projection.SNAPSHOT_EVERY and self.snapshots is not None
                        and self._taken is None):
                    self.snapshots.request()
                if since >= CHECKPOINT_FORCED_COMMITS:
                    self._checkpoint()
                    since = 0
                if stop:
                    return
        finally:
            if self.snapshots is not None:
                self.snapshots.stop()
            if self.wal is not None:
                self.wal.stop()
            self.conn.close()

    def _collect(self, first: Batch | SnapshotTaken | None) -> tuple[Batch, bool]:
        """Every request waiting, as one batch (up to MAX_BATCH); True when told to stop."""
        batch: Batch = []
        item = first
        while True:
            if item is None:
                return batch, True
            if isinstance(item, SnapshotTaken):
                self._taken = item
            else:
                batch.extend(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self.requests.get_nowait()
            except queue.Empty:
                return batch, False

    def _write_batch(self, batch: Batch) -> None:
        # A batch of nothing but the outbox cursor's moves needs no flush of
        # its own: a power cut that undoes it makes the station get some
        # events twice, which it must take anyway. It reaches the disk with
        # the next commit that flushes (WAL: that flush covers every frame
        # before it), and a grant never waits behind its fdatasync.
        relaxed = all(isinstance(item, Control) and not item.durable for item in batch)
        if relaxed:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            self._write(batch)
        finally:
            if relaxed:
                self.conn.execute("PRAGMA synchronous=FULL")

    def _write(self, batch: Batch) -> None:
        conn, st = self.conn, self.state
        seq, prev = st.last_seq, st.last_hash
        done: list[Event] = []
        refused: list[tuple[Pending, str]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                if isinstance(item, Control):
                    conn.execute(item.sql, item.params)
                    continue
                ev = write_row(conn, item, seq + 1, prev)
                if isinstance(ev, str):
                    # One bad row never costs the others: it is left out, and
                    # the journal says so in its place (the same seq).
                    refused.append((item, ev))
                    ev = write_row(conn, refusal(item, ev), seq + 1, prev)
                    assert isinstance(ev, Event), ev
                else:
                    item.event = ev
                seq, prev = ev.seq, ev.hash
                done.append(ev)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError, ValueError, TypeError) as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._batch_failed(batch, f"journal write failed: {e}")
            return
        # Only a commit that wrote events shows that events can be written:
        # on a full disk an outbox cursor's move (an existing row) or an empty
        # flush still commits, and taking that for health made the journal
        # flap between "failed" and "writing again" with each PUBACK.
        if done:
            if st.error is not None:
                log.warning("journal: writing again")
            st.error = None
        st.commits += 1
        st.last_seq, st.last_hash = seq, prev
        bad = {id(item): reason for item, reason in refused}
        for item in batch:
            if id(item) in bad:
                log.error("journal: refused a %s row: %s", getattr(item, "kind", "?"), bad[id(item)])
                self._resolve(item.future, exc=JournalError(f"journal refused the row: {bad[id(item)]}"))
            else:
                self._resolve(item.future, result=item.event if isinstance(item, Pending) else None)
        if done:
            self.hooks.published(done)
        self.hooks.committed()

    def _batch_failed(self, batch: Batch, msg: str) -> None:
        """The batch was rolled back: what gates a lock fails now, what need not is held (see Journal.append)."""
        if self.state.error != msg:
            log.error("%s", msg)
        self.state.error = msg
        err = JournalError(msg)
        kept = [item for item in batch if isinstance(item, Pending) and item.keep]
        for item in batch:
            if not (isinstance(item, Pending) and item.keep):
                self._resolve(item.future, exc=err)
        if kept:
            self.hooks.failed(kept, msg)

    def _snapshot_now(self, taken: SnapshotTaken) -> None:
        try:
            ev = self._commit_snapshot(taken)
        except (sqlite3.Error, OSError, JournalError) as e:
            log.warning("journal: snapshot failed (asked again after the next commit): %s", e)
        else:
            self.hooks.published([ev])
        if self.snapshots is not None:
            self.snapshots.committed()

    def _checkpoint(self) -> None:
        if self.wal is not None and self.wal.request():
            return
        if checkpoint(self.conn):  # no thread to run it beside: here, then
            self.checkpointed()

    def checkpointed(self) -> None:
        """A checkpoint went through: the writer's own, or the WAL thread's (called on that thread)."""
        self.state.checkpoints += 1

    def _resolve(self, fut: asyncio.Future[Any] | None, result: Any = None, exc: Exception | None = None) -> None:
        if fut is None:
            return

        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        self.loop.call_soon_threadsafe(settle)


def write_row(conn: sqlite3.Connection, item: Pending, seq: int, prev: str) -> Event | str:
    """Insert one event and its state changes; on a fault of this row alone, undo it and say why.

    A savepoint per row keeps a row whose content cannot be encoded or
    whose state change the database refuses from rolling back the rows
    beside it. Faults of the file itself (disk full, I/O) still fail the
    whole transaction: they would fail every row.
    """
    f = item.fields
    conn.execute("SAVEPOINT row")
    try:
        ops = tuple([action, table, row] for action, table, row in item.state)
        ev = Event(seq, f["id"], f["ts"], f["mono"], f["boot"], item.kind, f["compartment"],
                   f["dossier"], tuple(f["people"]), f["data"], prev, "", ops)
        ev = replace(ev, hash=chain_hash(prev, ev.record()))
        conn.execute(
            f"INSERT INTO events ({EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (seq, ev.id, ev.ts, ev.mono, ev.boot, ev.kind, ev.compartment, ev.dossier,
             canonical(list(ev.people)), canonical(ev.data), prev, ev.hash,
             canonical(list(ops)) if ops else None),
        )
        for op in item.state:
            apply_state(conn, op, seq)
    except (ValueError, TypeError, RecursionError, sqlite3.IntegrityError, sqlite3.InterfaceError,
            sqlite3.ProgrammingError) as e:
        conn.execute("ROLLBACK TO row")
        conn.execute("RELEASE row")
        return f"{type(e).__name__}: {e}"
    conn.execute("RELEASE row")
    return ev


def printable(value: Any, depth: int = 0) -> Any:
    """``value`` as JSON that always encodes: lone surrogates escaped, other types by repr, deep nesting cut."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if value is None or isinstance(value, bool | int | float):
        return value if not isinstance(value, int) or abs(value) < 10**18 else repr(value)[:40] + "..."
    if depth > 8:
        return "..."
    if isinstance(value, dict):
        return {printable(str(k)): printable(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [printable(v, depth + 1) for v in value[:50]]
    return printable(repr(value)[:200])


def refusal(item: Pending, reason: str) -> Pending:
    """The row written in place of one the journal could not take: what it was, made printable, and why."""
    f = item.fields
    fields = {**f, "compartment": printable(f["compartment"]), "dossier": printable(f["dossier"]),
              "people": printable(list(f["people"])),
              "data": {"refused_kind": printable(item.kind), "error": printable(reason),
                       "content": printable(f["data"])}}
    return Pending("journal.row_refused", fields, (), None)
