"""The local daemon's journal, read-only: new events by seq, and the state tables as they stand.

A read-only SQLite connection on a WAL database never blocks the daemon's
writer and can never write: the display could not change a record even by
mistake. Asking for the newest seq is one indexed lookup, so polling it
every 50 ms costs next to nothing and keeps a scan on the screen well
within 200 ms of its commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from lockerd.journal import EVENT_COLUMNS, Event, connect

log = logging.getLogger(__name__)

Batch = Callable[[list[Event]], Awaitable[None] | None]


class JournalSource:
    """Follows the journal from a seq onwards, reading only."""

    def __init__(self, path: Path, poll_s: float = 0.05):
        self.path = Path(path)
        self.poll_s = poll_s
        self.conn: sqlite3.Connection | None = None
        self.seq = 0

    def open(self) -> bool:
        if self.conn is None:
            if not self.path.exists():
                return False
            try:
                self.conn = connect(self.path, readonly=True)
            except sqlite3.Error as e:
                log.warning("cannot open the journal %s yet: %s", self.path, e)
                return False
        return True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def newer(self, limit: int = 2000) -> list[Event]:
        """The events after the last one read, oldest first."""
        if not self.open():
            return []
        assert self.conn is not None
        rows = self.conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                                 (self.seq, limit)).fetchall()
        events = [Event.from_row(tuple(r)) for r in rows]
        if events:
            self.seq = events[-1].seq
        return events

    def since(self, ts_iso: str, limit: int = 5000) -> list[Event]:
        """Events from a wall time on (ISO UTC, as journaled), oldest first: today's activity at start."""
        if not self.open():
            return []
        assert self.conn is not None
        rows = self.conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE ts >= ? ORDER BY seq DESC LIMIT ?",
                                 (ts_iso, limit)).fetchall()
        return [Event.from_row(tuple(r)) for r in reversed(rows)]

    def last_seq(self) -> int:
        if not self.open():
            return 0
        assert self.conn is not None
        return int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    def table(self, name: str) -> list[dict[str, Any]]:
        """A state table's rows as dicts (JSON columns decoded)."""
        if not self.open():
            return []
        assert self.conn is not None
        try:
            cur = self.conn.execute(f"SELECT * FROM {name}")  # names are ours, never a browser's
        except sqlite3.OperationalError:
            return []  # a journal older than the table
        cols = [d[0] for d in cur.description]
        out = []
        for row in cur.fetchall():
            d = dict(zip(cols, row, strict=True))
            for k in ("faults", "alarm"):
                if isinstance(d.get(k), str):
                    with contextlib.suppress(ValueError):
                        d[k] = json.loads(d[k])
            out.append(d)
        return out

    async def follow(self, on_batch: Batch, stop: asyncio.Event) -> None:
        """Hand every batch of new events to ``on_batch`` until ``stop`` is set."""
        while not stop.is_set():
            try:
                events = self.newer()
            except sqlite3.Error as e:
                log.warning("journal read failed, reopening: %s", e)
                self.close()
                events = []
            if events:
                result = on_batch(events)
                if result is not None:
                    await result
            if len(events) < 2000:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.poll_s)
