"""The state tables as a projection of the hash chain: how an operation applies, snapshots, the check at start.

People, badges, items, compartments and deadlines are changed only by the
state operations an event carries, and those operations are part of the
event's hashed record. So the tables are exactly the fold of the chain's
operations. Replaying all of a long journal at every start would cost
seconds; instead the writer snapshots the tables every ``SNAPSHOT_EVERY``
events, in a ``journal.snapshot`` event whose hashed data holds the digest of
the snapshot's body and the seq the tables stood at (``state_seq``: the
snapshot is read beside the writer, lockerd/journal_snapshot.py). At start,
the tables are checked against the last snapshot with the operations of
every event after its ``state_seq`` replayed (in temporary
tables, through the same SQL the writer uses, so SQLite's typing is the
same on both sides). Any difference, such as a row edited with sqlite3 under a
stopped daemon, is named, and the rebuilt rows win.

What this cannot see is a rewrite of the chain itself (events edited and
every later hash recomputed): that is what ``verify`` against the station's
anchors is for.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lockerd.journal_chain import canonical, chain_problem

SNAPSHOT_EVERY = 500
SNAPSHOT_KIND = "journal.snapshot"

# Primary keys of the state tables, for upserts.
STATE_TABLES = {
    "items": "code",
    "people": "id",
    "badges": "code",
    "compartments": "id",
    "deadlines": "id",
}

StateOp = tuple[str, str, dict[str, Any]]  # ("upsert" | "delete" | "clear", table, row or key or {})


def apply_state(conn: sqlite3.Connection, op: StateOp, seq: int) -> None:
    """Apply one state operation of the event ``seq`` (the writer's, and the replay's at start)."""
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


@dataclass
class Check:
    """What the start-time check found: differences (one sentence each) and the operations that repair them."""

    snapshot_seq: int
    replayed: int = 0
    differences: list[str] = field(default_factory=list)
    repair: list[StateOp] = field(default_factory=list)


def table_rows(conn: sqlite3.Connection, table: str, pk: str, schema: str = "main") -> Iterator[dict[str, Any]]:
    """The rows of one state table, in primary-key order, one at a time."""
    cur = conn.execute(f"SELECT * FROM {schema}.{table} ORDER BY {pk}")
    cols = [d[0] for d in cur.description]
    for row in cur:
        yield dict(zip(cols, row, strict=True))


def dump(conn: sqlite3.Connection, tables: dict[str, str] = STATE_TABLES,
         schema: str = "main") -> dict[str, list[dict[str, Any]]]:
    """Every row of every state table, in primary-key order."""
    return {table: list(table_rows(conn, table, pk, schema)) for table, pk in tables.items()}


def canonical_empty(tables: dict[str, str]) -> str:
    return json.dumps({t: [] for t in tables})


def digest_of(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


def pack(body: str) -> bytes:
    """A snapshot's body as stored: zlib at its fastest level.

    The rows repeat their column names and values: 20,000 items are 5.3 MB
    of text and 0.3 MB packed (18 ms, with the GIL released). Every snapshot
    is written twice, to the WAL and then by the checkpoint, so this is the
    SD card's wear and the length of the snapshot's own commit.
    """
    return zlib.compress(body.encode(), 1)


def unpack(stored: str | bytes) -> str:
    """The body of a stored snapshot; journals from before packing stored the text itself."""
    return zlib.decompress(stored).decode() if isinstance(stored, bytes) else stored


def check(conn: sqlite3.Connection, tables: dict[str, str] = STATE_TABLES) -> Check:
    """Compare the state tables with the last snapshot plus the operations journaled after it.

    The operations are replayed by :func:`apply_state`, the writer's own; the hash chain from the snapshot
    to the end is checked first (:func:`lockerd.journal_chain.chain_problem`).
    """
    snap = conn.execute("SELECT seq, digest, body FROM snapshots ORDER BY seq DESC LIMIT 1").fetchone()
    last_event = conn.execute("SELECT seq FROM events WHERE kind = ? ORDER BY seq DESC LIMIT 1",
                              (SNAPSHOT_KIND,)).fetchone()
    if snap is None:
        # A young journal: the base is the empty tables before seq 1.
        seq, digest, body = 0, "", canonical_empty(tables)
        result = Check(0)
        if last_event is not None:
            result.differences.append(f"the snapshot of seq {last_event[0]} is missing from the snapshots table")
    else:
        seq, digest, stored = snap
        result = Check(seq)
        try:
            body = unpack(stored)
        except (zlib.error, UnicodeDecodeError):
            body = ""  # damaged: fails the digest below, "changed after it was taken"
        row = conn.execute("SELECT kind, data FROM events WHERE seq = ?", (seq,)).fetchone()
        data = json.loads(row[1]) if row is not None and row[0] == SNAPSHOT_KIND else {}
        # The tables as of state_seq (taken beside the writer: lockerd/journal_snapshot.py);
        # a snapshot without it is older and was taken in line, as of its own seq.
        state_seq = data.get("state_seq", seq)
        if data.get("digest") != digest or not isinstance(state_seq, int) or not 0 <= state_seq <= seq:
            result.differences.append(f"the snapshot at seq {seq} is not the one its journal.snapshot event names")
        elif digest_of(body) != digest:
            result.differences.append(f"the snapshot at seq {seq} was changed after it was taken")
        elif last_event is not None and last_event[0] != seq:
            result.differences.append(f"the snapshot of seq {last_event[0]} is missing from the snapshots table")
        else:
            seq = state_seq
    problem = chain_problem(conn, max(seq - 1, 0))
    if problem:
        result.differences.append(problem)
    if result.differences:
        return result  # no trustworthy base to rebuild from: say so, change nothing
    created = _shadow_tables(conn, tables)
    try:
        for table, rows in json.loads(body).items():
            for r in rows:
                cols = list(r)
                conn.execute(f"INSERT INTO temp.{table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                             list(r.values()))
        for s, ops in conn.execute("SELECT seq, state FROM events WHERE seq > ? AND state IS NOT NULL ORDER BY seq",
                                   (seq,)).fetchall():
            result.replayed += 1
            for action, name, values in json.loads(ops):
                apply_state(conn, (action, name, values), s)  # unqualified names resolve to the temp tables first
        _compare(conn, tables, result)
    finally:
        for table in created:
            conn.execute(f"DROP TABLE IF EXISTS temp.{table}")
    return result


def _shadow_tables(conn: sqlite3.Connection, tables: dict[str, str]) -> list[str]:
    """Empty temporary tables shaped like the state tables (same columns, types and keys)."""
    created: list[str] = []
    for table in tables:
        (sql,) = conn.execute("SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?",
                              (table,)).fetchone()
        conn.execute(sql.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
        created.append(table)
    return created


def _compare(conn: sqlite3.Connection, tables: dict[str, str], result: Check) -> None:
    main, rebuilt = dump(conn, tables, "main"), dump(conn, tables, "temp")
    for table, pk in tables.items():
        have = {r[pk]: r for r in main[table]}
        want = {r[pk]: r for r in rebuilt[table]}
        for key in sorted(have.keys() | want.keys(), key=str):
            a, b = have.get(key), want.get(key)
            if a == b:
                continue
            if b is None:
                result.differences.append(f"{table} {key!r} is in the table but in no journaled event")
                result.repair.append(("delete", table, {pk: key}))
            else:
                if a is None:
                    result.differences.append(f"{table} {key!r} was deleted from the table")
                else:
                    changed = sorted(c for c in b if a.get(c) != b[c])
                    result.differences.append(f"{table} {key!r} differs from the journal in "
                                              + ", ".join(f"{c} ({a.get(c)!r}, journaled {b[c]!r})"
                                                          for c in changed))
                result.repair.append(("upsert", table, b))
