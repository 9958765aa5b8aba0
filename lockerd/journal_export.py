"""Exports of the journal: the events of a time range as CSV or JSON, carrying their hash chain.

An export carries the hash chain: for each event its ``seq``, ``prev``,
``hash`` and the exact canonical ``payload`` the hash is computed over
(``sha256(prev + "\\n" + payload)``, see :mod:`lockerd.journal`), plus a few
readable columns that must agree with the payload. An export is the
contiguous run of seqs from the first event at or after ``since`` to the
last event at or before ``until``: when the wall clock jumped, a few events
outside the range ride along rather than leaving holes in the chain.

The file format is written and read here, in one place;
:mod:`lockerd.export_verify` checks what :func:`read_export` reads.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from lockerd.clock import iso_utc
from lockerd.journal import EVENT_COLUMNS, Event, canonical

FORMAT = "lockerd-export"
VERSION = 1
# The columns of an exported row; people is ";"-joined in CSV, a list in JSON.
ROW_FIELDS = ("seq", "ts", "kind", "compartment", "dossier", "people", "prev", "hash", "payload")
READABLE = ("seq", "ts", "kind", "compartment", "dossier", "people")  # copies of what the payload says
CSV_MARK = "#" + FORMAT + " "


def export_range(conn: sqlite3.Connection, since: str | None, until: str | None) -> tuple[int, int]:
    """The contiguous seqs from the first event at/after ``since`` to the last at/before ``until`` (ISO UTC)."""
    first = conn.execute("SELECT MIN(seq) FROM events" + (" WHERE ts >= ?" if since else ""),
                         (since,) if since else ()).fetchone()[0]
    last = conn.execute("SELECT MAX(seq) FROM events" + (" WHERE ts <= ?" if until else ""),
                        (until,) if until else ()).fetchone()[0]
    if first is None or last is None or first > last:
        return 0, -1
    return first, last


def row_of(e: Event) -> dict[str, Any]:
    """One exported row (JSON spelling: people is a list)."""
    return {"seq": e.seq, "ts": e.ts, "kind": e.kind, "compartment": e.compartment, "dossier": e.dossier,
            "people": list(e.people), "prev": e.prev, "hash": e.hash, "payload": canonical(e.record())}


def export(conn: sqlite3.Connection, out: TextIO, fmt: str, since: str | None, until: str | None,
           site: str = "", node: str = "", exported_at: str | None = None) -> dict[str, Any]:
    """Write the events of a time range as CSV or JSON; returns the header written."""
    first, last = export_range(conn, since, until)
    count = last - first + 1 if last >= first else 0
    ends = {r["seq"]: r for r in conn.execute("SELECT seq, prev, hash FROM events WHERE seq IN (?, ?)",
                                              (first, last))} if count else {}
    meta = {"format": FORMAT, "version": VERSION, "site": site, "node": node, "since": since, "until": until,
            "exported_at": exported_at or iso_utc(time.time()), "count": count,
            "first_seq": first if count else None, "last_seq": last if count else None,
            "first_prev": ends[first]["prev"] if count else None, "last_hash": ends[last]["hash"] if count else None}
    rows = (row_of(Event.from_row(tuple(r))) for r in conn.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq", (first, last)))
    if fmt == "json":
        head = json.dumps(meta, ensure_ascii=False)
        out.write(head[:-1] + ', "events": [')
        for i, r in enumerate(rows):
            out.write(("\n" if i == 0 else ",\n") + json.dumps(r, ensure_ascii=False))
        out.write("\n]}\n")
    elif fmt == "csv":
        out.write(CSV_MARK + canonical(meta) + "\n")
        w = csv.writer(out, lineterminator="\n")
        w.writerow(ROW_FIELDS)
        for r in rows:
            w.writerow(csv_cells(r))
    else:
        raise ValueError(f"export format {fmt!r}: expected 'csv' or 'json'")
    return meta


def csv_cells(r: dict[str, Any]) -> list[str]:
    """The cells of an exported row as CSV spells them."""
    return ["" if r[k] is None else ";".join(r[k]) if k == "people" else str(r[k]) for k in ROW_FIELDS]


# -- reading an export back ---------------------------------------------------------------


class ExportFormatError(ValueError):
    """The file is not a lockerd export at all (or its header is unreadable)."""


@dataclass
class ExportRow:
    """One row as read from a file: its position, and its cells as strings (CSV) or values (JSON)."""

    number: int  # 1-based among the rows
    where: str  # "row 3 (line 5)" or "events[2]"
    cells: dict[str, Any]


def read_export(path: Path) -> tuple[dict[str, Any], str, list[ExportRow]]:
    """(header, "csv" | "json", rows) of an export file."""
    text = Path(path).read_text(encoding="utf-8-sig")  # a spreadsheet may have saved it with a BOM
    if text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ExportFormatError(f"not valid JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("events"), list):
            raise ExportFormatError(f"not a {FORMAT} JSON file (format and events expected)")
        events = doc.pop("events")
        rows = [ExportRow(i + 1, f"row {i + 1} (events[{i}])", r if isinstance(r, dict) else {"?": r})
                for i, r in enumerate(events)]
        return doc, "json", rows
    first, _, rest = text.partition("\n")
    if not first.startswith(CSV_MARK):
        raise ExportFormatError(f"not a {FORMAT} file: the first line should start with {CSV_MARK.strip()!r}")
    try:
        meta = json.loads(first[len(CSV_MARK):])
    except json.JSONDecodeError as e:
        raise ExportFormatError(f"the header line is not valid JSON: {e}") from None
    reader = csv.reader(io.StringIO(rest, newline=""))
    header = next(reader, None)
    if header is None or tuple(header) != ROW_FIELDS:
        raise ExportFormatError(f"line 2: expected the columns {','.join(ROW_FIELDS)}")
    rows = []
    for n, cells in enumerate(reader, 1):
        where = f"row {n} (line {reader.line_num + 1})"
        rows.append(ExportRow(n, where, dict(zip(ROW_FIELDS, cells, strict=False)) if len(cells) == len(ROW_FIELDS)
                              else {"?": cells}))
    return meta, "csv", rows
