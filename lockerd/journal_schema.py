"""The journal's file: opening a connection, and the versioned schema with its migrations.

sqlite-utils creates and migrates the schema (imported only when a migration
runs); the hot path uses the stdlib sqlite3 module.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

from lockerd.errors import JournalError

SCHEMA_VERSION = 4
# SQLite's page cache per connection, in KiB (its default is 2,000). A
# daemon runs for months on a board with little memory, and its connections
# write at the right edge of the B-trees and read recent events: the OS keeps
# the rest of the file cached anyway. Left at the default, each connection's
# cache filled up in use and the idle daemon grew by about 2 MB per connection.
CACHE_KIB = 512


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
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
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
            events = db.table("events")
            events.create(
                {"seq": int, "id": str, "ts": str, "mono": float, "boot": str, "kind": str,
                 "compartment": str, "dossier": str, "people": str, "data": str,
                 "prev": str, "hash": str},
                pk="seq", not_null={"id", "ts", "kind", "people", "data", "prev", "hash"},
            )
            events.create_index(["id"], unique=True)
            for col in ("kind", "compartment", "dossier", "ts"):
                events.create_index([col])
            # Append-only: the database itself refuses edits and deletions.
            db.execute("CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
                       "BEGIN SELECT RAISE(ABORT, 'journal events are append-only'); END")
            db.execute("CREATE TRIGGER events_no_delete BEFORE DELETE ON events "
                       "BEGIN SELECT RAISE(ABORT, 'journal events are append-only'); END")
            items = db.table("items")
            items.create(
                {"code": str, "kind": str, "case_name": str, "category": str, "officer": str,
                 "compartment": str, "state": str, "holder": str, "depositor": str,
                 "since": str, "updated_seq": int},
                pk="code",
            )
            items.create_index(["compartment"])
            db.table("people").create({"id": str, "name": str, "role": str, "active": int}, pk="id")
            db.table("badges").create({"code": str, "person": str, "active": int}, pk="code")
            db.table("compartments").create(
                {"id": str, "door": str, "faults": str, "alarm": str, "not_opened": int}, pk="id"
            )
            outbox = db.table("outbox")
            outbox.create({"id": int, "delivered": int}, pk="id")
            outbox.insert({"id": 1, "delivered": 0})
            db.execute("PRAGMA user_version=1")
    if version < 2:
        with db.conn:
            # Custody deadlines and how far each one's reminders have escalated
            # (lockerd/custody.py): written with the event that sets, escalates
            # or clears them, so a restart neither loses nor repeats a reminder.
            deadlines = db.table("deadlines")
            deadlines.create(
                {"id": str, "code": str, "kind": str, "due": str, "due_ts": float, "since": str,
                 "officer": str, "holder": str, "supervisor": str, "level": int, "sent_ts": float,
                 "sent_mono": float, "sent_boot": str, "ack_ts": float, "ack_mono": float, "ack_boot": str,
                 "ack_by": str, "updated_seq": int},
                pk="id", not_null={"code", "kind", "due", "due_ts"},
            )
            deadlines.create_index(["code"])
            db.execute("PRAGMA user_version=2")
    if version < 3:
        with db.conn:
            # Each event's state operations join its hashed record, and the
            # tables are snapshotted in the chain (lockerd/projection.py). A
            # journal from before keeps its rows; its first snapshot, taken
            # at the next open, is the baseline the checks start from.
            if "state" not in db.table("events").columns_dict:
                db.execute("ALTER TABLE events ADD COLUMN state TEXT")
            snapshots = db.table("snapshots")
            if not snapshots.exists():
                snapshots.create({"seq": int, "digest": str, "body": str}, pk="seq")
            db.execute("PRAGMA user_version=3")
    if version < 4:
        with db.conn:
            # A deadline computed while the wall clock was not synchronised keeps
            # the monotonic time and OS boot of its start, to be corrected later.
            cols = db.table("deadlines").columns_dict
            for col, kind in (("since_mono", "REAL"), ("since_boot", "TEXT"), ("provisional", "INTEGER")):
                if col not in cols:
                    db.execute(f"ALTER TABLE deadlines ADD COLUMN {col} {kind}")
            db.execute("PRAGMA user_version=4")
    db.conn.close()
