"""The journal: an append-only, hash-chained SQLite event log, and the state tables.

One thread owns the writing connection and is fed by a queue. The loop hands
it what was appended during one pass of the event loop as one list, so the
rows a step appends (a station command's acceptance, then its grant) always
share a commit. The writer takes every list waiting, writes them in one
transaction and commits once (WAL with ``synchronous=FULL``: one fsync), then
resolves each request's future on the event loop. So a grant is durable when
its future resolves, and a burst of events that need not wait (door changes,
pulses sent) shares one fsync.

Each event row has a gapless sequence number, a unique id, UTC wall time,
monotonic time with the boot it belongs to, a canonical JSON payload and a
hash over the previous row's hash and its own content, so an edit or a
deletion anywhere is found by :func:`verify`. State changes (dossier in or
out, people, badges, compartment faults) are written in the same transaction
as the event that caused them, so state and journal never disagree.

The hot path uses the stdlib sqlite3 module; sqlite-utils creates and
migrates the schema (imported only when a migration runs) and serves reads.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import queue
import sqlite3
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lockerd import projection
from lockerd.clock import Clock, iso_utc, parse_time
from lockerd.errors import JournalError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4
GENESIS = "0" * 64
MAX_BATCH = 1000
# Events that gate no lock (door changes, alarms, faults, refusals) are held in
# memory while the journal cannot be written, and journaled late once it can.
# At a few hundred bytes each this is a few MB; past it the oldest are dropped
# and counted in the journal.outage event (a door burst of one event a second
# takes nearly three hours to fill it).
HELD_MAX = 10_000
HELD_RETRY_S = 1.0
# Past HELD_MAX, the oldest held events go to a spill file outside the
# journal's file system (the service's runtime directory, a tmpfs): a full
# disk under the journal leaves it room. Only when that cannot be written
# either are events dropped (and counted).


def spill_path_for(journal_path: Path) -> Path:
    """Where a journal's overflow goes: $RUNTIME_DIRECTORY (systemd's /run/lockerd), else the temp folder."""
    folder = (os.environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or tempfile.gettempdir()
    digest = hashlib.sha256(str(Path(journal_path).resolve()).encode()).hexdigest()[:16]
    return Path(folder) / f"lockerd-journal-{digest}.spill"
# Checkpoints (copying the WAL back into the database, with fsyncs of their
# own) run while the writer is idle. SQLite's automatic one lands inside
# whichever commit crosses its threshold, and that commit may be a grant with
# a lock waiting on it (milliseconds here, far more on an SD card).
CHECKPOINT_AFTER_COMMITS = 50  # a few hundred pages: a short checkpoint
CHECKPOINT_IDLE_S = 0.02  # this long without a request counts as idle
# Never idle that long (a steady stream of scans): checkpoint anyway, before
# the WAL grows past what SQLite itself would have let it (a checkpoint of
# 2000 commits took 1.1 s here).
CHECKPOINT_FORCED_COMMITS = 250

# Primary keys of the state tables, for upserts.
STATE_TABLES = {
    "items": "code",
    "people": "id",
    "badges": "code",
    "compartments": "id",
    "deadlines": "id",
}


# One encoder for every call: json.dumps with options builds a new one each time.
canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(obj: Any) -> str:
    """The one JSON spelling that is hashed: sorted keys, no spaces, UTF-8."""
    return canonical_encoder.encode(obj)


def chain_hash(prev: str, record: dict[str, Any]) -> str:
    return hashlib.sha256((prev + "\n" + canonical(record)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    id: str
    ts: str
    mono: float
    boot: str
    kind: str
    compartment: str | None
    dossier: str | None
    people: tuple[str, ...]
    data: dict[str, Any]
    prev: str
    hash: str
    # The state-table operations this event made, as [action, table, row]
    # lists: part of the hashed record, so the tables are a projection of the
    # chain (lockerd/projection.py). Absent from records that made none.
    state: tuple[list[Any], ...] = ()

    def record(self) -> dict[str, Any]:
        """The hashed content of the row (everything but prev and hash)."""
        rec = {
            "seq": self.seq,
            "id": self.id,
            "ts": self.ts,
            "mono": self.mono,
            "boot": self.boot,
            "kind": self.kind,
            "compartment": self.compartment,
            "dossier": self.dossier,
            "people": list(self.people),
            "data": self.data,
        }
        if self.state:
            rec["state"] = list(self.state)
        return rec

    def as_dict(self) -> dict[str, Any]:
        return self.record() | {"prev": self.prev, "hash": self.hash}

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> Event:
        seq, id_, ts, mono, boot, kind, comp, dossier, people, data, prev, h, state = row
        return cls(seq, id_, ts, mono, boot, kind, comp, dossier, tuple(json.loads(people)),
                   json.loads(data), prev, h, tuple(json.loads(state)) if state else ())


EVENT_COLUMNS = "seq, id, ts, mono, boot, kind, compartment, dossier, people, data, prev, hash, state"

StateOp = tuple[str, str, dict[str, Any]]  # ("upsert" | "delete" | "clear", table, row or key or {})


@dataclass
class _Pending:
    """One event waiting for the writer, with its future."""

    kind: str
    fields: dict[str, Any]
    state: tuple[StateOp, ...]
    future: asyncio.Future | None
    event: Event | None = None
    # Held through an outage instead of failed: see Journal.append.
    keep: bool = False
    order: int = 0


@dataclass
class _Outage:
    """Since when the journal cannot be written, and what was kept or dropped meanwhile."""

    since_ts: str
    since_mono: float
    reason: str
    dropped: dict[str, int] = field(default_factory=dict)
    spilled: int = 0


@dataclass
class _Control:
    """A non-event request for the writer thread (e.g. moving the outbox cursor)."""

    sql: str
    params: tuple
    future: asyncio.Future | None = None


@dataclass
class VerifyResult:
    ok: bool
    count: int
    first_bad: int | None = None
    reason: str = ""
    problems: list[str] = field(default_factory=list)


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        _create_private(path)
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    # synchronous is per connection: without FULL a power cut can lose the
    # last commits even in WAL mode.
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _create_private(path: Path) -> None:
    """Create the journal readable by its owner and group only, whatever the umask: it names people
    and what they took. SQLite gives its -wal and -shm files the same mode as the database file."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640))


def migrate(path: Path) -> None:
    """Create or upgrade the schema to SCHEMA_VERSION."""
    import sqlite_utils

    db = sqlite_utils.Database(connect(path))
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise JournalError(f"{path}: journal schema {version} is newer than this lockerd ({SCHEMA_VERSION})")
    if version < 1:
        with db.conn:
            db["events"].create(
                {"seq": int, "id": str, "ts": str, "mono": float, "boot": str, "kind": str,
                 "compartment": str, "dossier": str, "people": str, "data": str,
                 "prev": str, "hash": str},
                pk="seq", not_null={"id", "ts", "kind", "people", "data", "prev", "hash"},
            )
            db["events"].create_index(["id"], unique=True)
            for col in ("kind", "compartment", "dossier", "ts"):
                db["events"].create_index([col])
            # Append-only: the database itself refuses edits and deletions.
            db.execute("CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
                       "BEGIN SELECT RAISE(ABORT, 'journal events are append-only'); END")
            db.execute("CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
                       "BEGIN SELECT RAISE(ABORT, 'journal events are append-only'); END")
            db["items"].create(
                {"code": str, "kind": str, "case_name": str, "category": str, "officer": str,
                 "compartment": str, "state": str, "holder": str, "depositor": str,
                 "since": str, "updated_seq": int},
                pk="code",
            )
            db["items"].create_index(["compartment"])
            db["people"].create({"id": str, "name": str, "role": str, "active": int}, pk="id")
            db["badges"].create({"code": str, "person": str, "active": int}, pk="code")
            db["compartments"].create(
                {"id": str, "door": str, "faults": str, "alarm": str, "not_opened": int}, pk="id"
            )
            db["outbox"].create({"id": int, "delivered": int}, pk="id")
            db["outbox"].insert({"id": 1, "delivered": 0})
            db.execute("PRAGMA user_version=1")
    if version < 2:
        with db.conn:
            # Custody deadlines and how far each one's reminders have escalated
            # (lockerd/custody.py): written with the event that sets, escalates
            # or clears them, so a restart neither loses nor repeats a reminder.
            db["deadlines"].create(
                {"id": str, "code": str, "kind": str, "due": str, "due_ts": float, "since": str,
                 "officer": str, "holder": str, "supervisor": str, "level": int, "sent_ts": float,
                 "sent_mono": float, "sent_boot": str, "ack_ts": float, "ack_mono": float, "ack_boot": str,
                 "ack_by": str, "updated_seq": int},
                pk="id", not_null={"code", "kind", "due", "due_ts"},
            )
            db["deadlines"].create_index(["code"])
            db.execute("PRAGMA user_version=2")
    if version < 3:
        with db.conn:
            # Each event's state operations join its hashed record, and the
            # tables are snapshotted in the chain (lockerd/projection.py). A
            # journal from before keeps its rows; its first snapshot, taken
            # at the next open, is the baseline the checks start from.
            if "state" not in db["events"].columns_dict:
                db.execute("ALTER TABLE events ADD COLUMN state TEXT")
            if not db["snapshots"].exists():
                db["snapshots"].create({"seq": int, "digest": str, "body": str}, pk="seq")
            db.execute("PRAGMA user_version=3")
    if version < 4:
        with db.conn:
            # A deadline computed while the wall clock was not synchronised keeps
            # the monotonic time and OS boot of its start, to be corrected later.
            cols = db["deadlines"].columns_dict
            for col, kind in (("since_mono", "REAL"), ("since_boot", "TEXT"), ("provisional", "INTEGER")):
                if col not in cols:
                    db.execute(f"ALTER TABLE deadlines ADD COLUMN {col} {kind}")
            db.execute("PRAGMA user_version=4")
    db.conn.close()


class Journal:
    """Writes events durably from one thread; reads from any."""

    def __init__(self, path: Path, clock: Clock | None = None, boot: str | None = None):
        self.path = Path(path)
        self.clock = clock or Clock()
        self.boot = boot or uuid.uuid4().hex[:12]
        self.error: str | None = "not opened"
        self.last_seq = 0
        self.last_hash = GENESIS
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        # Requests appended during the current pass of the loop, handed to the
        # writer together at the next pass (see _hand_over).
        self._gathered: list[_Pending | _Control] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listeners: list[Callable[[list[Event]], None]] = []
        self._lockfile: int | None = None
        self._reader: sqlite3.Connection | None = None
        self._last_attempt = -1e9
        self.commits = 0
        self.checkpoints = 0
        self._appended = 0  # order of appends, so held events are journaled in the order they happened
        self._held: list[_Pending] = []
        self._outage: _Outage | None = None
        self._drain_timer: asyncio.TimerHandle | None = None
        self.spill_path = spill_path_for(self.path)
        self._outage_listeners: list[Callable[[], None]] = []
        self._snapshot_seq = 0

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
            self._open()
        except (OSError, sqlite3.Error, JournalError) as e:
            self.error = f"journal {self.path} unusable: {e}"
            log.error("%s", self.error)
            self._release_lock()
            return False
        self.error = None
        if self.spill_path.exists() and self._outage is None:
            # An earlier run stopped with events in the spill file: they are journaled now, late.
            self._outage = _Outage(iso_utc(self.clock.wall()), self.clock.monotonic(),
                                   "events spilled before the last stop")
            self._loop.call_soon(self._drain)
        return True

    def _open(self) -> None:
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
                self.last_seq, self.last_hash = last.seq, last.hash
            if upgraded and self.last_seq > 0:
                self._write_snapshot(conn, baseline=True)  # the tables as they stand are the base from here on
            else:
                self._check_state_tables(conn)
            # Prove we can write before claiming to be healthy (read-only
            # file, full disk): an empty transaction that touches the file.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("UPDATE outbox SET delivered = delivered WHERE id = 1")
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        conn.execute("PRAGMA wal_autocheckpoint=0")  # the writer checkpoints when idle (see _writer)
        self._reader = connect(self.path)
        self._thread = threading.Thread(target=self._writer, args=(conn,), name="journal-writer", daemon=True)
        self._thread.start()

    def _check_state_tables(self, conn: sqlite3.Connection) -> None:
        """At open: the state tables against the chain; a difference is repaired and raised as an alarm."""
        found = projection.check(conn, STATE_TABLES, _apply_state,
                                 lambda after: _chain_problem(conn, after))
        if not found.differences:
            self._snapshot_seq = found.snapshot_seq
            return
        log.error("journal: ALARM: the state tables differ from the journal: %s", "; ".join(found.differences[:5]))
        alarm = _Pending("alarm.journal_tampered", self._fields(
            data={"differences": found.differences[:50], "count": len(found.differences),
                  "snapshot_seq": found.snapshot_seq, "replayed": found.replayed,
                  "repaired": bool(found.repair)}), tuple(found.repair), None)
        self._commit_alone(conn, alarm)
        self._write_snapshot(conn)

    def _fields(self, **kw: Any) -> dict[str, Any]:
        base = {"id": uuid.uuid4().hex, "ts": iso_utc(self.clock.wall()), "mono": round(self.clock.monotonic(), 6),
                "boot": self.boot, "compartment": None, "dossier": None, "people": [], "data": {}}
        return base | kw

    def _commit_alone(self, conn: sqlite3.Connection, item: _Pending) -> Event:
        """Write one event in a transaction of its own (the writer thread, or before it starts)."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            ev = self._write_row(conn, item, self.last_seq + 1, self.last_hash)
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
        self.last_seq, self.last_hash = ev.seq, ev.hash
        return ev

    def _write_snapshot(self, conn: sqlite3.Connection, baseline: bool = False) -> Event:
        """Snapshot the state tables into the chain (see lockerd/projection.py)."""
        tables = projection.dump(conn, STATE_TABLES)
        body = canonical(tables)
        data = {"digest": projection.digest_of(body), "rows": {t: len(r) for t, r in tables.items()}}
        if baseline:
            data["baseline"] = True
        item = _Pending(projection.SNAPSHOT_KIND, self._fields(data=data), (), None)
        item.fields["body"] = body  # stored beside the event, not in it: only its digest is chained
        ev = self._commit_alone(conn, item)
        self._snapshot_seq = ev.seq
        return ev

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
        if self._held:
            kept = sum(self._spill(it) for it in self._held)
            log.error("journal: closing with %d events that could not be written; %d kept in %s for the next start",
                      len(self._held), kept, self.spill_path)
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
        moves, a command's acceptance), use :meth:`record` or ``keep=False``:
        a failure to write then resolves the future with JournalError.
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
        item = _Pending(kind, fields, tuple(state), fut, keep=keep, order=self._appended)
        if keep and (self.error is not None or self._held):
            self._hold([item])  # behind those held before it
            return fut
        if not keep and self.error is not None and not self._retry_open():
            fut.set_exception(JournalError(self.error))
            return fut
        self._gather(loop, item)
        return fut

    async def append_durable(self, kind: str, **kw: Any) -> Event:
        """Append and wait until durable; JournalError at once when it cannot be written (nothing is held)."""
        return await self.append(kind, keep=False, **kw)

    record = append_durable

    # -- an outage: events held in memory ------------------------------------------

    @property
    def held(self) -> int:
        """Events waiting in memory for the journal to be writable."""
        return len(self._held)

    def _hold(self, items: list[_Pending], reason: str | None = None) -> None:
        """Keep events the journal cannot take now, in the order they happened (loop thread).

        ``reason``: the writer's, for the rows of a batch that failed (by the time this runs on the loop, a
        statement of a later batch may have gone through and cleared ``error``).
        """
        if self._outage is None:
            first = min(items, key=lambda i: i.order)
            self._outage = _Outage(first.fields["ts"], first.fields["mono"],
                                   reason or self.error or "journal unusable")
            log.error("journal: cannot write (%s); holding events in memory until it can", self._outage.reason)
            if self._loop is not None:
                self._loop.call_soon(self._outage_changed)
        for it in items:
            bisect.insort(self._held, it, key=lambda i: i.order)
        while len(self._held) > HELD_MAX:
            lost = self._held.pop(0)
            if self._spill(lost):
                self._outage.spilled += 1
                continue
            self._outage.dropped[lost.kind] = self._outage.dropped.get(lost.kind, 0) + 1
            if sum(self._outage.dropped.values()) == 1:
                log.error("journal: more than %d events held and no room in %s; dropping the oldest (counted in "
                          "journal.outage)", HELD_MAX, self.spill_path)
            if lost.future is not None and not lost.future.done():
                lost.future.set_exception(JournalError("dropped: too many events held while the journal was down"))
        if self._drain_timer is None and self._loop is not None:
            self._drain_timer = self._loop.call_later(HELD_RETRY_S, self._drain)

    def _spill(self, item: _Pending) -> bool:
        """Write one held event (the oldest) to the spill file; False when that fails too."""
        # Plain JSON, ASCII: the file is read back by json.loads only, whatever the strings hold.
        line = json.dumps({"kind": item.kind, "fields": item.fields, "state": [list(op) for op in item.state]},
                          default=repr)
        try:
            with self.spill_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except (OSError, ValueError):
            return False
        if self._outage is not None and self._outage.spilled == 0:
            log.error("journal: more than %d events held; the oldest go to %s", HELD_MAX, self.spill_path)
        return True

    def _unspill(self) -> list[_Pending]:
        """The spilled events, oldest first (the file is emptied: they are held in memory again)."""
        try:
            lines = self.spill_path.read_text(encoding="utf-8").splitlines()
            self.spill_path.unlink()
        except FileNotFoundError:
            return []
        except OSError as e:
            log.error("journal: cannot read the spill file %s: %s", self.spill_path, e)
            return []
        out = []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
                out.append(_Pending(rec["kind"], rec["fields"], tuple(tuple(op) for op in rec["state"]), None,
                                    keep=True, order=-len(lines) + i))
            except (ValueError, KeyError, TypeError):
                log.error("journal: an unreadable line in the spill file was left out: %r", line[:200])
        return out

    def _drain(self) -> None:
        """Try to journal the held events, late and in order, closed by a journal.outage event."""
        self._drain_timer = None
        if not (self._held or self.spill_path.exists()) or self._outage is None:
            return
        if self._thread is None and not self._retry_open():
            self._drain_timer = self._loop.call_later(HELD_RETRY_S, self._drain) if self._loop else None
            return
        spilled = self._unspill()
        items, self._held = [*spilled, *self._held], []
        now, outage = self.clock.monotonic(), self._outage
        wall = self.clock.wall()
        for it in items:
            # Spilled by an earlier run, its monotonic time is another boot's: measure on the wall clock then.
            late = now - it.fields["mono"] if it.fields["boot"] == self.boot else wall - parse_time(it.fields["ts"])
            it.fields["data"] = {**it.fields["data"], "journaled_late_s": round(late, 3)}
        marker = _Pending("journal.outage", self._fields(
            data={"since": outage.since_ts, "lasted_s": round(now - outage.since_mono, 3), "reason": outage.reason,
                  "held": len(items), "spilled": len(spilled), "dropped": dict(outage.dropped)}), (), None)
        marker.future = self._loop.create_future() if self._loop else None
        if marker.future is not None:
            marker.future.add_done_callback(lambda f: self._outage_written(f, outage))
        # Ahead of whatever this pass gathered: the held events happened first.
        self._queue.put([*items, marker])

    def _outage_written(self, fut: asyncio.Future, outage: _Outage) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return  # the held events are held again; the next drain writes a new marker
        if self._outage is outage:
            self._outage = None
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

    def execute(self, sql: str, *params: Any) -> asyncio.Future:
        """Run a non-event statement on the writer (outbox cursor and the like)."""
        loop = self._loop or asyncio.get_running_loop()
        fut = loop.create_future()
        fut.add_done_callback(_log_unretrieved)
        if self._thread is None:
            fut.set_exception(JournalError(self.error or "journal closed"))
        else:
            self._gather(loop, _Control(sql, params, fut))
        return fut

    async def flush(self) -> None:
        """Wait until everything appended so far is committed (the writer takes requests in order).

        Raises JournalError when the journal is unusable, at once.
        """
        await self.execute("SELECT 1")

    def _gather(self, loop: asyncio.AbstractEventLoop, item: _Pending | _Control) -> None:
        # Handing each request over on its own let the writer wake for the
        # first one and commit it alone while the step that appended it went
        # on to append its grant: two fsyncs in a row before the lock moved
        # (one remote open in five here). The hand-over waits for the step to
        # yield instead, which a grant does at once by awaiting its future.
        self._gathered.append(item)
        if len(self._gathered) == 1:
            loop.call_soon(self._hand_over)

    def _hand_over(self) -> None:
        items, self._gathered = self._gathered, []
        if items:
            self._queue.put(items)

    def _writer(self, conn: sqlite3.Connection) -> None:
        since = 0  # commits since the last checkpoint
        try:
            while True:
                try:
                    first = self._queue.get(timeout=CHECKPOINT_IDLE_S if since >= CHECKPOINT_AFTER_COMMITS else None)
                except queue.Empty:
                    self._checkpoint(conn)
                    since = 0
                    continue
                if first is None:
                    return
                batch = list(first)
                stop = False
                while len(batch) < MAX_BATCH:
                    try:
                        items = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if items is None:
                        stop = True
                        break
                    batch.extend(items)
                self._write_batch(conn, batch)
                since += 1
                if self.last_seq - self._snapshot_seq >= projection.SNAPSHOT_EVERY and self._queue.empty():
                    self._snapshot_now(conn)
                if since >= CHECKPOINT_FORCED_COMMITS:
                    self._checkpoint(conn)
                    since = 0
                if stop:
                    return
        finally:
            conn.close()

    def _write_batch(self, conn: sqlite3.Connection, batch: list[_Pending | _Control]) -> None:
        seq, prev = self.last_seq, self.last_hash
        done: list[Event] = []
        refused: list[tuple[_Pending, str]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in batch:
                if isinstance(item, _Control):
                    conn.execute(item.sql, item.params)
                    continue
                ev = self._write_row(conn, item, seq + 1, prev)
                if isinstance(ev, str):
                    # One bad row never costs the others: it is left out, and
                    # the journal says so in its place (the same seq).
                    refused.append((item, ev))
                    ev = self._write_row(conn, _refusal(item, ev), seq + 1, prev)
                    assert isinstance(ev, Event), ev
                else:
                    item.event = ev
                seq, prev = ev.seq, ev.hash
                done.append(ev)
            conn.execute("COMMIT")
        except (sqlite3.Error, OSError, ValueError, TypeError) as e:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            msg = f"journal write failed: {e}"
            if self.error != msg:
                log.error("%s", msg)
            self.error = msg
            err = JournalError(msg)
            kept = [item for item in batch if isinstance(item, _Pending) and item.keep]
            for item in batch:
                if not (isinstance(item, _Pending) and item.keep):
                    self._resolve(item.future, exc=err)
            if kept and self._loop is not None:
                self._loop.call_soon_threadsafe(self._hold, kept, msg)
            return
        if self.error is not None:
            log.warning("journal: writing again")
        self.error = None
        self.commits += 1
        self.last_seq, self.last_hash = seq, prev
        bad = {id(item): reason for item, reason in refused}
        for item in batch:
            if id(item) in bad:
                log.error("journal: refused a %s row: %s", getattr(item, "kind", "?"), bad[id(item)])
                self._resolve(item.future, exc=JournalError(f"journal refused the row: {bad[id(item)]}"))
            else:
                self._resolve(item.future, result=item.event if isinstance(item, _Pending) else None)
        if done and self._listeners and self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify, done)
        if self._held and self._loop is not None:
            self._loop.call_soon_threadsafe(self._drain_soon)

    def _drain_soon(self) -> None:
        # A commit went through: held events need not wait for their timer.
        if self._held and self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
            self._drain()

    @staticmethod
    def _write_row(conn: sqlite3.Connection, item: _Pending, seq: int, prev: str) -> Event | str:
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
                _apply_state(conn, op, seq)
        except (ValueError, TypeError, RecursionError, sqlite3.IntegrityError, sqlite3.InterfaceError,
                sqlite3.ProgrammingError) as e:
            conn.execute("ROLLBACK TO row")
            conn.execute("RELEASE row")
            return f"{type(e).__name__}: {e}"
        conn.execute("RELEASE row")
        return ev

    def _snapshot_now(self, conn: sqlite3.Connection) -> None:
        # While nothing waits: the dump is a few ms, and never inside a grant's commit.
        try:
            ev = self._write_snapshot(conn)
        except (sqlite3.Error, OSError, JournalError) as e:
            log.warning("journal: snapshot failed (tried again after the next commit): %s", e)
            return
        if self._listeners and self._loop is not None:
            self._loop.call_soon_threadsafe(self._notify, [ev])

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error as e:
            # Nothing is lost: the WAL keeps the rows, and the next idle spell tries again.
            log.warning("journal: checkpoint failed: %s", e)
            return
        self.checkpoints += 1

    def _resolve(self, fut: asyncio.Future | None, result: Any = None, exc: Exception | None = None) -> None:
        if fut is None or self._loop is None:
            return

        def settle() -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(result)

        self._loop.call_soon_threadsafe(settle)

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

    def query(self, sql: str, *params: Any) -> list[tuple]:
        if self._reader is None:
            raise JournalError(self.error or "journal closed")
        return self._reader.execute(sql, params).fetchall()


def _apply_state(conn: sqlite3.Connection, op: StateOp, seq: int) -> None:
    action, table, row = op
    pk = STATE_TABLES[table]
    if action == "delete":
        conn.execute(f"DELETE FROM {table} WHERE {pk} = ?", (row[pk],))
        return
    if action == "clear":
        conn.execute(f"DELETE FROM {table}")
        return
    row = dict(row)
    if table in ("items", "deadlines"):
        row["updated_seq"] = seq
    cols = list(row)
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c != pk)
    conn.execute(
        f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        f"ON CONFLICT({pk}) DO UPDATE SET {updates}",
        [canonical(v) if isinstance(v, list | dict) else v for v in row.values()],
    )


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


def _refusal(item: _Pending, reason: str) -> _Pending:
    """The row written in place of one the journal could not take: what it was, made printable, and why."""
    f = item.fields
    fields = {**f, "compartment": printable(f["compartment"]), "dossier": printable(f["dossier"]),
              "people": printable(list(f["people"])),
              "data": {"refused_kind": printable(item.kind), "error": printable(reason),
                       "content": printable(f["data"])}}
    return _Pending("journal.row_refused", fields, (), None)


def _log_unretrieved(fut: asyncio.Future) -> None:
    # Mark the exception retrieved: every failure is logged by the writer
    # once, and callers that must act on it await the future themselves.
    if not fut.cancelled():
        fut.exception()


def _first_break(rows: Iterable[Sequence[Any]], prev: str, expected: int) -> tuple[int, int | None, str]:
    """Walk rows in seq order from ``expected`` (linking to ``prev``): (rows intact, first bad seq, why)."""
    count = 0
    for row in rows:
        ev = Event.from_row(row)
        if ev.seq != expected:
            return count, expected, f"seq {expected} is missing (next row is seq {ev.seq}): rows deleted"
        if ev.prev != prev:
            return count, ev.seq, f"seq {ev.seq} does not link to the hash of seq {ev.seq - 1}"
        if chain_hash(prev, ev.record()) != ev.hash:
            return count, ev.seq, f"seq {ev.seq} was changed after it was written"
        prev, expected, count = ev.hash, expected + 1, count + 1
    return count, None, ""


def _chain_problem(conn: sqlite3.Connection, after: int) -> str | None:
    """The chain from seq ``after`` (whose hash it starts from) to the end: None when intact."""
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (after,)).fetchone() if after > 0 else (GENESIS,)
    if row is None:
        return f"seq {after} is missing"
    rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (after,))
    _, bad, why = _first_break(rows, row[0], after + 1)
    return None if bad is None else why


def verify(path: Path) -> VerifyResult:
    """Check the whole chain: gapless seqs, each row's hash, each link."""
    try:
        conn = connect(Path(path), readonly=True)
        cur = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq")
    except sqlite3.Error as e:
        return VerifyResult(False, 0, None, f"cannot read the journal: {e}")
    try:
        count, bad, why = _first_break(cur, GENESIS, 1)
    except (sqlite3.Error, ValueError) as e:
        return VerifyResult(False, 0, None, f"unreadable row: {e}")
    finally:
        conn.close()
    return VerifyResult(True, count) if bad is None else VerifyResult(False, count, bad, why)
