"""The hash chain: the one JSON spelling that is hashed, the event row, and the checks that find a break.

Each event row has a gapless sequence number, a unique id, UTC wall time,
monotonic time with the boot it belongs to, a canonical JSON payload and a
hash over the previous row's hash and its own content, so an edit or a
deletion anywhere is found by :func:`verify`.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockerd.journal_schema import connect

GENESIS = "0" * 64

# One encoder for every call: json.dumps with options builds a new one each time.
canonical_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical(obj: Any) -> str:
    """The one JSON spelling that is hashed: sorted keys, no spaces, UTF-8."""
    return canonical_encoder.encode(obj)


def chain_hash(prev: str, record: dict[str, Any]) -> str:
    """The hash of a row: over the previous row's hash and this row's canonical record."""
    return hashlib.sha256((prev + "\n" + canonical(record)).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Event:
    """One journaled event, as its row holds it."""

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


@dataclass
class VerifyResult:
    ok: bool
    count: int
    first_bad: int | None = None
    reason: str = ""
    problems: list[str] = field(default_factory=list)


def first_break(rows: Iterable[Sequence[Any]], prev: str, expected: int) -> tuple[int, int | None, str]:
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


def chain_problem(conn: sqlite3.Connection, after: int) -> str | None:
    """The chain from seq ``after`` (whose hash it starts from) to the end: None when intact."""
    row = conn.execute("SELECT hash FROM events WHERE seq = ?", (after,)).fetchone() if after > 0 else (GENESIS,)
    if row is None:
        return f"seq {after} is missing"
    rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE seq > ? ORDER BY seq", (after,))
    _, bad, why = first_break(rows, row[0], after + 1)
    return None if bad is None else why


def verify(path: Path) -> VerifyResult:
    """Check the whole chain: gapless seqs, each row's hash, each link."""
    try:
        conn = connect(Path(path), readonly=True)
        cur = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq")
    except sqlite3.Error as e:
        return VerifyResult(ok=False, count=0, reason=f"cannot read the journal: {e}")
    try:
        count, bad, why = first_break(cur, GENESIS, 1)
    except (sqlite3.Error, ValueError) as e:
        return VerifyResult(ok=False, count=0, reason=f"unreadable row: {e}")
    finally:
        conn.close()
    if bad is None:
        return VerifyResult(ok=True, count=count)
    return VerifyResult(ok=False, count=count, first_bad=bad, reason=why)
