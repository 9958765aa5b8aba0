"""Verifying an export: its own hash chain, and with the journal at hand every row against it.

:func:`verify_export` checks an export on its own (each row's hash, each
link, the header's count and ends) and, given the journal, row by row
against it, naming the first bad row.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lockerd.journal import GENESIS, Event, canonical, chain_hash
from lockerd.journal_export import (
    READABLE,
    ROW_FIELDS,
    ExportFormatError,
    ExportRow,
    csv_cells,
    export_range,
    read_export,
)
from lockerd.journal_reader import events_where


@dataclass
class ExportCheck:
    ok: bool
    rows: int  # rows read
    first_bad: int | None = None  # 1-based row number, 0 for the header
    seq: int | None = None
    reason: str = ""
    against_journal: bool = False

    def describe(self, name: str) -> str:
        if self.ok:
            what = "chain intact" + (", every row matches the journal" if self.against_journal
                                     else " (checked on its own, without the journal)")
            return f"{name}: OK: {self.rows} rows, {what}"
        return f"{name}: BAD: {self.reason}"


def verify_export(path: Path, journal: sqlite3.Connection | None = None) -> ExportCheck:
    """Check an export: its own chain, and with ``journal`` every row against the journal's row of that seq."""
    try:
        meta, fmt, rows = read_export(path)
    except (OSError, UnicodeDecodeError, ExportFormatError) as e:
        return ExportCheck(ok=False, rows=0, first_bad=0, reason=f"{path}: {e}")
    prev_hash: str | None = None
    prev_seq: int | None = None
    later = {_seq_of(r): r.number for r in reversed(rows)}  # seq -> first row holding it
    rows_of_journal = _JournalRows(journal) if journal is not None else None
    for row in rows:
        problem, seq = _check_row(row, fmt, prev_seq, prev_hash, rows_of_journal)
        if problem.endswith("(rows deleted)") and prev_seq is not None and later.get(prev_seq + 1, 0) > row.number:
            problem = f"seq {prev_seq + 1} should come next but is in row {later[prev_seq + 1]} (rows reordered)"
        if problem:
            return ExportCheck(ok=False, rows=len(rows), first_bad=row.number, seq=seq,
                               reason=f"{row.where}" + (f", seq {seq}" if seq is not None else "") + f": {problem}",
                               against_journal=journal is not None)
        if row.number == 1:
            start = _first_row_problem(meta, seq, row.cells["prev"], journal)
            if start:
                return ExportCheck(ok=False, rows=len(rows), first_bad=1, seq=seq,
                                   reason=f"{row.where}, seq {seq}: {start}", against_journal=journal is not None)
        prev_seq, prev_hash = seq, row.cells["hash"]
    end = _end_problem(meta, rows, prev_seq, prev_hash, journal)
    if end:
        n = len(rows)
        return ExportCheck(ok=False, rows=n, first_bad=n + 1 if rows else 0, reason=end,
                           against_journal=journal is not None)
    return ExportCheck(ok=True, rows=len(rows), against_journal=journal is not None)


def _seq_of(row: ExportRow) -> int | None:
    try:
        v = row.cells.get("seq")
        return int(v) if not isinstance(v, bool) else None
    except (TypeError, ValueError):
        return None


class _JournalRows:
    """The journal's events by seq, read a block at a time (an export is read in seq order)."""

    BLOCK = 2000

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self._rows: dict[int, Event] = {}

    def get(self, seq: int) -> Event | None:
        if seq not in self._rows:
            self._rows = {e.seq: e for e in events_where(self.conn, "seq >= ? AND seq < ?", (seq, seq + self.BLOCK))}
        return self._rows.get(seq)


def _check_row(row: ExportRow, fmt: str, prev_seq: int | None, prev_hash: str | None,
               journal: _JournalRows | None) -> tuple[str, int | None]:
    """What is wrong with one row (empty when nothing), and its seq as far as it can be read."""
    c = row.cells
    if set(c) != set(ROW_FIELDS):
        return f"expected the fields {', '.join(ROW_FIELDS)}", None
    payload = c["payload"]
    seq = _seq_of(row)
    if seq is None:
        return f"seq {c['seq']!r} is not a number", None
    try:
        record = json.loads(payload) if isinstance(payload, str) else None
    except json.JSONDecodeError:
        record = None
    if not isinstance(record, dict) or canonical(record) != payload:
        return "the payload is not the canonical JSON of an event (edited)", seq
    problem = (_journal_problem(c, seq, journal) if journal is not None else "") \
        or _readable_problem(c, seq, record, fmt) or _link_problem(c, seq, record, prev_seq, prev_hash)
    return problem, seq


def _journal_problem(c: dict[str, Any], seq: int, journal: _JournalRows) -> str:
    """How a row differs from the journal's event of its seq (empty when it does not)."""
    je = journal.get(seq)
    if je is None:
        return "the journal has no such seq (row inserted)"
    for name, mine, theirs in (("payload", c["payload"], canonical(je.record())), ("prev", c["prev"], je.prev),
                               ("hash", c["hash"], je.hash)):
        if mine != theirs:
            return f"its {name} differs from the journal's event of that seq (edited or inserted)"
    return ""


def _readable_problem(c: dict[str, Any], seq: int, record: dict[str, Any], fmt: str) -> str:
    """Which readable column disagrees with the hashed payload (empty when none)."""
    expected = {k: record.get(k) for k in READABLE}
    # The readable columns as the export spells them, derived from the hashed payload.
    want = (dict(zip(ROW_FIELDS, csv_cells(expected | {"prev": None, "hash": None, "payload": None}), strict=True))
            if fmt == "csv" else expected)
    for k in READABLE:
        got, w = (seq, expected["seq"]) if k == "seq" else (c[k], want[k])
        if got != w:
            return f"column {k} says {c[k]!r} but the hashed payload says {expected[k]!r} (edited)"
    return ""


def _link_problem(c: dict[str, Any], seq: int, record: dict[str, Any], prev_seq: int | None,
                  prev_hash: str | None) -> str:
    """What is wrong with a row's own hash and its link to the row before (empty when nothing)."""
    if not isinstance(c["prev"], str) or not isinstance(c["hash"], str):
        return "prev and hash must be text"
    if chain_hash(c["prev"], record) != c["hash"]:
        return "its hash is not sha256(prev + payload): the row was changed after it was exported"
    if prev_seq is not None:
        if seq <= prev_seq:
            return f"seq goes back from {prev_seq} to {seq} (rows reordered or inserted)"
        if seq > prev_seq + 1:
            missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
            return f"seq {missing} missing before it (rows deleted)"
        if c["prev"] != prev_hash:
            return f"its prev does not link to the hash of the row before (seq {prev_seq}): inserted or changed"
    return ""


def _first_row_problem(meta: dict[str, Any], seq: int, prev: str, journal: sqlite3.Connection | None) -> str:
    if seq == 1 and prev != GENESIS:
        return "seq 1 must link to the genesis hash (64 zeros)"
    if meta.get("first_seq") is not None and meta.get("first_seq") != seq:
        return f"the header says the export starts at seq {meta.get('first_seq')} (rows deleted or added at the start)"
    if meta.get("first_prev") is not None and meta.get("first_prev") != prev:
        return "its prev differs from the header's first_prev"
    if journal is not None:
        since = meta.get("since")
        first, _ = export_range(journal, since, None)
        if 0 < first < seq:
            return (f"the journal's first event at or after {since or 'the start'} is seq {first}: "
                    "rows missing at the start")
    return ""


def _end_problem(meta: dict[str, Any], rows: list[ExportRow], last_seq: int | None, last_hash: str | None,
                 journal: sqlite3.Connection | None) -> str:
    if meta.get("count") != len(rows):
        return (f"the header says {meta.get('count')} rows but the file holds {len(rows)} "
                + ("(rows deleted at the end)" if isinstance(meta.get("count"), int) and meta["count"] > len(rows)
                   else "(rows added)"))
    if rows and (meta.get("last_seq") != last_seq or meta.get("last_hash") != last_hash):
        return f"the last row (seq {last_seq}) is not the end the header names (seq {meta.get('last_seq')})"
    until, at = meta.get("until"), meta.get("exported_at")
    # Only for a range that had ended when it was exported: later events may carry earlier
    # times (queued before the export read, committed after), so "until now" is not re-checked.
    if journal is not None and until is not None and isinstance(at, str) and until < at:
        _, last = export_range(journal, meta.get("since"), until)
        if last_seq is not None and last > last_seq:
            return f"the journal's last event at or before {until} is seq {last}, after the export's last row " \
                   f"(seq {last_seq}): rows missing at the end"
    return ""
