"""WAL checkpoints on a thread and a connection of their own, so that no grant waits behind one.

A checkpoint copies the WAL's frames back into the database file and
flushes that file: 1-3 ms here, far more on an SD card. SQLite's automatic
checkpoint runs inside whichever commit crosses its threshold, so the
journal turns it off and the writer asks for one once it has been idle a
while (see journal_writer). The writer used to run it itself, and a grant
that arrived during it waited for the rest: 2 or 3 grants in 300 station
opens waited 1.2-3.2 ms that way, which made the open's p99.

In WAL mode a checkpoint needs no write lock. A PASSIVE one "checkpoints as
many frames as possible without waiting for any database readers or
writers to finish" (https://sqlite.org/c3ref/wal_checkpoint_v2.html), and
SQLite's own WAL page names running checkpoints "in a separate thread or
process" as the way to keep them out of the writers' way
(https://sqlite.org/wal.html, "Application-Initiated Checkpoints"). Here
the writer goes on committing while this thread copies the frames that were
committed when it began.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from lockerd.journal_schema import connect

log = logging.getLogger(__name__)


def checkpoint(conn: sqlite3.Connection) -> bool:
    """One PASSIVE checkpoint on ``conn``; False when it failed (said in the log)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as e:
        # Nothing is lost: the WAL keeps the rows, and the next idle spell asks again.
        log.warning("journal: checkpoint failed: %s", e)
        return False
    return True


class WalCheckpointer:
    """The thread that checkpoints the WAL when the writer asks; one checkpoint at a time."""

    def __init__(self, path: Path, done: Callable[[], None]):
        self.path = path
        self.done = done  # called on this thread after each checkpoint that went through
        self._busy = False  # asked and not yet finished: a second ask is dropped
        self._wake: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # "checkpoint", or None: stop
        self._thread: threading.Thread | None = None
        self._no_thread_said = False  # the fallback is said once, not at every idle spell

    def request(self) -> bool:
        """Checkpoint soon, on this thread (called from the writer's). False: no thread, checkpoint yourself."""
        if self._busy:
            return True
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="journal-wal", daemon=True)
            try:
                thread.start()
            except RuntimeError as e:
                # Tried again at the next idle spell: the process may be at its thread limit only for now.
                if not self._no_thread_said:
                    log.warning("journal: no checkpoint thread, the writer checkpoints itself: %s", e)
                    self._no_thread_said = True
                return False
            self._thread = thread
        self._busy = True
        self._wake.put("checkpoint")
        return True

    def stop(self) -> None:
        """Let a checkpoint under way finish, then close this connection (the writer closes its own after)."""
        if self._thread is not None:
            self._wake.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        conn: sqlite3.Connection | None = None
        try:
            while self._wake.get() is not None:
                try:
                    conn = self._once(conn)
                except Exception:
                    # A surprise must not end the thread with the flag set: every later ask would
                    # be dropped, and the WAL would grow without bound.
                    log.exception("journal: checkpoint failed unexpectedly (asked again when idle)")
                finally:
                    self._busy = False
        finally:
            if conn is not None:
                conn.close()

    def _once(self, conn: sqlite3.Connection | None) -> sqlite3.Connection | None:
        """One checkpoint; the connection to keep for the next (made now when there is none)."""
        try:
            conn = conn or connect(self.path)
        except (sqlite3.Error, OSError) as e:
            log.warning("journal: no connection to checkpoint on (asked again when idle): %s", e)
            return None
        if checkpoint(conn):
            self.done()
        return conn
