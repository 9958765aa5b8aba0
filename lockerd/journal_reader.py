"""The journal as the audit reports read it: read-only, beside the running daemon.

Opening it read-only (as ``lockerd history`` does) never touches the
daemon's single writer, so every report runs with the daemon up or down.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lockerd.journal import EVENT_COLUMNS, Event, connect


def open_journal(path: Path) -> sqlite3.Connection:
    """The journal, read-only, rows addressable by column name."""
    conn = connect(Path(path), readonly=True)
    conn.row_factory = sqlite3.Row
    return conn


def events_where(conn: sqlite3.Connection, where: str, params: Iterable[Any]) -> list[Event]:
    """The events matching an SQL condition, oldest first."""
    rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq", tuple(params))
    return [Event.from_row(tuple(r)) for r in rows]
