"""Snapshots of the state tables, read and encoded beside the writer so that no commit waits for one.

Why there are snapshots at all is in lockerd/projection.py. Reading and
encoding every row costs time in proportion to the tables: here 8 + 8 ms for
3,000 items, 70 + 60 ms for 20,000. The writer thread used to spend it
between two commits, so a grant that arrived then waited for it (24-56 ms
with 3,000 items), and the one large JSON encode held the GIL, which stalled
the event loop for 10-15 ms as well.

Now a thread of its own reads the tables inside one read transaction. In WAL
mode that transaction sees the tables exactly as of the last commit, whose
seq is the snapshot's ``state_seq``, while the writer goes on committing. The
thread encodes the rows one at a time and pauses briefly every half
millisecond of work, so the loop and the writer get the interpreter when
they need it. It then hashes and packs the body (both release the GIL) and
hands it to the writer, which commits it when nothing else is waiting. The
snapshot's event names ``state_seq``, and the check at start replays the
operations of every event after it.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lockerd import projection
from lockerd.journal_chain import canonical
from lockerd.journal_schema import connect
from lockerd.projection import STATE_TABLES

log = logging.getLogger(__name__)

# Work this long between pauses, then pause this long: the loop and the
# writer wait for the interpreter at most about one slice, and the snapshot
# takes a little longer in wall time, on a thread nobody waits for.
SLICE_S = 0.0005
PAUSE_S = 0.0002


class Abandoned(Exception):
    """The journal is closing: the snapshot under way is dropped, not finished (the next start needs none)."""


@dataclass(frozen=True)
class SnapshotTaken:
    """The state tables as of the event ``state_seq``, encoded and packed, for the writer to commit."""

    state_seq: int
    digest: str  # of the canonical text, which is what the chain names
    stored: bytes
    rows: dict[str, int]

    @classmethod
    def of(cls, state_seq: int, body: str, rows: dict[str, int]) -> SnapshotTaken:
        return cls(state_seq, projection.digest_of(body), projection.pack(body), rows)


def encode_tables(conn: sqlite3.Connection, pause: Callable[[], None] | None = None) -> tuple[str, dict[str, int]]:
    """Every row of every state table in primary-key order, as ``canonical`` spells the whole.

    The text is the one ``canonical(projection.dump(conn))`` gives, built a row
    at a time so that ``pause`` can be called between rows.
    """
    parts = ["{"]
    rows: dict[str, int] = {}
    for n, table in enumerate(sorted(STATE_TABLES)):
        parts.append(("," if n else "") + canonical(table) + ":[")
        count = 0
        for row in projection.table_rows(conn, table, STATE_TABLES[table]):
            if count:
                parts.append(",")
            parts.append(canonical(row))
            count += 1
            if pause is not None and not count % 32:
                pause()
        parts.append("]")
        rows[table] = count
    parts.append("}")
    return "".join(parts), rows


def take(conn: sqlite3.Connection, pause: Callable[[], None] | None = None) -> SnapshotTaken:
    """Read the state tables and the seq they stand at in one read transaction."""
    conn.execute("BEGIN")
    try:
        (state_seq,) = conn.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        body, rows = encode_tables(conn, pause)
    finally:
        conn.execute("ROLLBACK")
    return SnapshotTaken.of(state_seq, body, rows)  # hashing and packing release the GIL


class Snapshotter:
    """The thread that takes snapshots when the writer asks; one at a time."""

    def __init__(self, path: Path, hand_over: Callable[[SnapshotTaken], None]):
        self.path = path
        self.hand_over = hand_over  # called on this thread with each snapshot taken
        self.busy = False  # asked and not yet committed: the writer asks no second time
        self._wake: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # "take", or None: stop
        self._thread: threading.Thread | None = None
        self._slice_start = 0.0
        self._unstarted = False  # a thread could not be started: said once
        self._closing = False

    def request(self) -> None:
        """Take a snapshot now (the writer's thread). Ignored while one is under way."""
        if self.busy:
            return
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="journal-snapshot", daemon=True)
            try:
                thread.start()
            except RuntimeError as e:  # no thread to be had: the writer goes on regardless
                if not self._unstarted:
                    log.warning("journal: no snapshot thread (tried again after each commit): %s", e)
                self._unstarted = True
                return
            self._thread = thread
        self.busy = True
        self._wake.put("take")

    def committed(self) -> None:
        """The writer committed the snapshot handed over: the next one may be asked for."""
        self.busy = False

    def stop(self) -> None:
        if self._thread is not None:
            self._closing = True  # a snapshot under way stops at its next pause: a close never waits it out
            self._wake.put(None)
            self._thread.join()
            self._thread = None

    def _pause(self) -> None:
        if self._closing:
            raise Abandoned
        now = time.perf_counter()
        if now - self._slice_start >= SLICE_S:
            time.sleep(PAUSE_S)  # releases the GIL long enough for a waiting thread to take it
            self._slice_start = time.perf_counter()

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while self._wake.get() is not None:
                try:
                    conn = conn or connect(self.path, readonly=True)
                    self._slice_start = time.perf_counter()
                    taken = take(conn, self._pause)
                except Abandoned:
                    return
                except (sqlite3.Error, OSError, ValueError, TypeError) as e:
                    log.warning("journal: snapshot failed (asked again after the next commit): %s", e)
                    self.busy = False
                    continue
                self.hand_over(taken)
        finally:
            if conn is not None:
                conn.close()
