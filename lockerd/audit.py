"""Audit reports read straight from the journal: chain of custody, occupancy, exports.

Everything here opens the journal read-only (as ``lockerd history`` does),
so it runs beside the daemon without touching its single writer.

An export carries the hash chain: for each event its ``seq``, ``prev``,
``hash`` and the exact canonical ``payload`` the hash is computed over
(``sha256(prev + "\\n" + payload)``, see :mod:`lockerd.journal`), plus a few
readable columns that must agree with the payload. An export is the
contiguous run of seqs from the first event at or after ``since`` to the
last event at or before ``until``: when the wall clock jumped, a few events
outside the range ride along rather than leaving holes in the chain.
:func:`verify_export` checks an export on its own (each row's hash, each
link, the header's count and ends) and, given the journal, row by row
against it, naming the first bad row.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from lockerd.clock import iso_utc
from lockerd.config import Config
from lockerd.journal import EVENT_COLUMNS, GENESIS, Event, canonical, chain_hash, connect
from lockerd.photos import sha256_of

FORMAT = "lockerd-export"
VERSION = 1
# The columns of an exported row; people is ";"-joined in CSV, a list in JSON.
ROW_FIELDS = ("seq", "ts", "kind", "compartment", "dossier", "people", "prev", "hash", "payload")
READABLE = ("seq", "ts", "kind", "compartment", "dossier", "people")  # copies of what the payload says
CSV_MARK = "#" + FORMAT + " "


def open_journal(path: Path) -> sqlite3.Connection:
    """The journal, read-only, rows addressable by column name."""
    conn = connect(Path(path), readonly=True)
    conn.row_factory = sqlite3.Row
    return conn


def _events(conn: sqlite3.Connection, where: str, params: Iterable[Any]) -> list[Event]:
    rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq", tuple(params))
    return [Event.from_row(tuple(r)) for r in rows]


def _chunks(values: list[int], size: int = 500) -> Iterator[list[int]]:
    for i in range(0, len(values), size):
        yield values[i:i + size]


# -- chain of custody ---------------------------------------------------------------


@dataclass
class Custody:
    """One item's record and every event of its custody, oldest first."""

    code: str
    item: dict[str, Any] | None
    events: list[Event]
    names: dict[str, str] = field(default_factory=dict)  # person id -> name


def custody(conn: sqlite3.Connection, code: str) -> Custody:
    """Every event of one dossier or evidence item: its own, and the door, lock and photo events of its openings.

    An item's own events name it (``dossier`` column, or the ``items`` of a
    grant that joined an opening already under way). The steps of each
    opening (pulse, door opened/closed, a still) name the grant instead, by
    ``grant_seq``; stills and camera failures name the step by ``for_seq``.
    """
    # A cheap text pre-filter before JSON parsing, when the code is spelt verbatim in the JSON.
    verbatim = '"' not in code and "\\" not in code and code.isprintable()
    item_clause = ("EXISTS (SELECT 1 FROM json_each(events.data, '$.items') WHERE key = ?)"
                   if not verbatim else
                   "(instr(data, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(events.data, '$.items') WHERE key = ?))")
    own = _events(conn, f"dossier = ? OR {item_clause}", (code, code) if not verbatim else (code, code, code))
    by_seq = {e.seq: e for e in own}
    if own:
        first = own[0].seq
        links = sorted({e.seq for e in own} | {e.data["grant_seq"] for e in own
                                                if isinstance(e.data.get("grant_seq"), int)})
        for part in _chunks(links):
            marks = ",".join("?" * len(part))
            # The opening's own steps, not the item events of other items that went through it.
            for e in _events(conn, f"seq >= ? AND dossier IS NULL AND json_extract(data, '$.grant_seq') IN ({marks})",
                             (first, *part)):
                by_seq.setdefault(e.seq, e)
        steps = sorted(set(links) | {e.seq for e in by_seq.values() if e.kind == "door.closed"})
        for part in _chunks(steps):
            marks = ",".join("?" * len(part))
            for e in _events(conn, f"seq >= ? AND kind IN ('photo.taken', 'camera.failed') "
                                   f"AND json_extract(data, '$.for_seq') IN ({marks})", (first, *part)):
                by_seq.setdefault(e.seq, e)
    row = conn.execute("SELECT * FROM items WHERE code = ?", (code,)).fetchone()
    item = dict(row) if row is not None else None
    events = [by_seq[s] for s in sorted(by_seq)]
    people = {p for e in events for p in e.people}
    if item is not None:
        people |= {item[k] for k in ("officer", "holder", "depositor") if item.get(k)}
    names = {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM people")} if people else {}
    return Custody(code, item, events,
                   {p: names[p] for p in people if p in names})


def format_custody(c: Custody) -> str:
    """The chain of custody as a person reads it."""
    out = []
    it = c.item
    if it is None:
        out.append(f"{c.code}: not registered now" + ("" if c.events else ", and never seen in the journal"))
    else:
        who = _person(c, it["officer"]) if it.get("officer") else "-"
        where = it.get("compartment") or "no compartment"
        state = it.get("state") or "?"
        line = f"{c.code}: {it.get('kind')} \"{it.get('case_name') or ''}\" ({it.get('category') or '-'}), " \
               f"officer {who}, compartment {where}: {state}"
        if it.get("holder") and state == "out":
            line += f" with {_person(c, it['holder'])}"
        if it.get("since"):
            line += f" since {it['since']}"
        out.append(line)
    out.append(f"{len(c.events)} event(s):")
    for e in c.events:
        who = ", ".join(_person(c, p) for p in e.people) or "-"
        details = " ".join(f"{k}={_short(v)}" for k, v in e.data.items()
                           if v not in (None, "", [], {}) and k != "state")
        out.append(f"{e.seq:>7} {e.ts} {e.kind:<22} {e.compartment or '-':<8} {who:<28} {details}".rstrip())
    return "\n".join(out)


def _person(c: Custody, pid: str) -> str:
    return f"{pid} ({c.names[pid]})" if pid in c.names else pid


def _short(v: Any) -> str:
    return v if isinstance(v, str) else canonical(v)


def custody_json(c: Custody) -> dict[str, Any]:
    return {"code": c.code, "item": c.item, "people": c.names, "events": [e.as_dict() for e in c.events]}


# -- occupancy ------------------------------------------------------------------------


def occupancy(conn: sqlite3.Connection, config: Config, cabinet: str | None = None) -> dict[str, Any]:
    """Which compartment holds which items, with door, fault and alarm state as last journaled."""
    comps = {r["id"]: r for r in conn.execute("SELECT * FROM compartments")}
    items: dict[str, list[dict[str, Any]]] = {}
    for r in conn.execute("SELECT * FROM items WHERE compartment IS NOT NULL ORDER BY code"):
        items.setdefault(r["compartment"], []).append(dict(r))
    last = conn.execute("SELECT seq, ts FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    cabinets = []
    for cab in config.cabinets.values():
        if cabinet is not None and cab.id != cabinet:
            continue
        rows = []
        for cid in cab.compartments:
            doors = [cid]
            rear = getattr(config.compartments[cid], "rear_id", None)
            if rear is not None:
                doors.append(rear)
            held = items.get(cid, [])
            entry: dict[str, Any] = {
                "id": cid,
                "door": _door(comps.get(cid)),
                "faults": _faults(comps.get(cid)),
                "alarms": _alarms(comps.get(cid)),
                "in": [_held(i) for i in held if i["state"] == "in"],
                "out": [_held(i) for i in held if i["state"] == "out"],
                "awaiting": [i["code"] for i in held if i["state"] == "new"],
            }
            if rear is not None:
                entry["rear"] = {"id": rear, "door": _door(comps.get(rear)), "faults": _faults(comps.get(rear)),
                                 "alarms": _alarms(comps.get(rear))}
            rows.append(entry)
        cabinets.append({"id": cab.id, "kind": cab.kind, "camera": cab.camera or None, "compartments": rows})
    return {"as_of_seq": last["seq"] if last else 0, "as_of_ts": last["ts"] if last else None,
            "cabinets": cabinets}


def _door(row: sqlite3.Row | None) -> str:
    return (row["door"] if row is not None and row["door"] else None) or "unknown"


def _faults(row: sqlite3.Row | None) -> dict[str, str]:
    return json.loads(row["faults"] or "{}") if row is not None else {}


def _alarms(row: sqlite3.Row | None) -> list[str]:
    return json.loads(row["alarm"] or "[]") if row is not None else []


def _held(item: dict[str, Any]) -> dict[str, Any]:
    keep = ("code", "kind", "case_name", "officer", "holder", "depositor", "since")
    return {k: item.get(k) for k in keep if item.get(k) not in (None, "")}


def format_occupancy(occ: dict[str, Any]) -> str:
    out = [f"as of seq {occ['as_of_seq']} ({occ['as_of_ts'] or 'empty journal'})"]
    for cab in occ["cabinets"]:
        n_in = sum(len(c["in"]) for c in cab["compartments"])
        n_out = sum(len(c["out"]) for c in cab["compartments"])
        out.append(f"cabinet {cab['id']} ({cab['kind']}, {len(cab['compartments'])} compartments"
                   + (f", camera {cab['camera']}" if cab["camera"] else "") + f"): {n_in} in, {n_out} out")
        for c in cab["compartments"]:
            parts = [f"  {c['id']:<8} door {c['door']:<7}"]
            if "rear" in c:
                parts.append(f"rear {c['rear']['door']:<7}")
            faults = {**c["faults"], **(c.get("rear") or {}).get("faults", {})}
            alarms = [*c["alarms"], *(c.get("rear") or {}).get("alarms", [])]
            if faults:
                parts.append("FAULT " + "; ".join(f"{k}: {v}" for k, v in faults.items()))
            if alarms:
                parts.append("ALARM " + ",".join(alarms))
            if c["in"]:
                parts.append("in: " + ", ".join(f"{i['code']} (since {i.get('since') or '?'})" for i in c["in"]))
            if c["out"]:
                parts.append("out: " + ", ".join(
                    f"{i['code']} (" + (f"with {i['holder']} " if i.get("holder") else "")
                    + f"since {i.get('since') or '?'})" for i in c["out"]))
            if c["awaiting"]:
                parts.append("awaiting deposit: " + ", ".join(c["awaiting"]))
            if len(parts) == 1:
                parts.append("empty")
            out.append(" ".join(parts).rstrip())
    return "\n".join(out)


# -- export ---------------------------------------------------------------------------


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
            w.writerow(_csv_cells(r))
    else:
        raise ValueError(f"export format {fmt!r}: expected 'csv' or 'json'")
    return meta


def _csv_cells(r: dict[str, Any]) -> list[str]:
    return ["" if r[k] is None else ";".join(r[k]) if k == "people" else str(r[k]) for k in ROW_FIELDS]


# -- reading and verifying an export ----------------------------------------------------


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
        return ExportCheck(False, 0, 0, None, f"{path}: {e}")
    prev_hash: str | None = None
    prev_seq: int | None = None
    later = {_seq_of(r): r.number for r in reversed(rows)}  # seq -> first row holding it
    rows_of_journal = _JournalRows(journal) if journal is not None else None
    for row in rows:
        problem, seq = _check_row(row, fmt, prev_seq, prev_hash, rows_of_journal)
        if problem.endswith("(rows deleted)") and prev_seq is not None and later.get(prev_seq + 1, 0) > row.number:
            problem = f"seq {prev_seq + 1} should come next but is in row {later[prev_seq + 1]} (rows reordered)"
        if problem:
            return ExportCheck(False, len(rows), row.number, seq, f"{row.where}"
                               + (f", seq {seq}" if seq is not None else "") + f": {problem}", journal is not None)
        if row.number == 1:
            start = _first_row_problem(meta, seq, row.cells["prev"], journal)
            if start:
                return ExportCheck(False, len(rows), 1, seq, f"{row.where}, seq {seq}: {start}", journal is not None)
        prev_seq, prev_hash = seq, row.cells["hash"]
    end = _end_problem(meta, rows, prev_seq, prev_hash, journal)
    if end:
        n = len(rows)
        return ExportCheck(False, n, n + 1 if rows else 0, None, end, journal is not None)
    return ExportCheck(True, len(rows), against_journal=journal is not None)


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
            self._rows = {e.seq: e for e in _events(self.conn, "seq >= ? AND seq < ?", (seq, seq + self.BLOCK))}
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
    if journal is not None:
        je = journal.get(seq)
        if je is None:
            return "the journal has no such seq (row inserted)", seq
        for name, mine, theirs in (("payload", payload, canonical(je.record())), ("prev", c["prev"], je.prev),
                                   ("hash", c["hash"], je.hash)):
            if mine != theirs:
                return f"its {name} differs from the journal's event of that seq (edited or inserted)", seq
    expected = {k: record.get(k) for k in READABLE}
    # The readable columns as the export spells them, derived from the hashed payload.
    want = (dict(zip(ROW_FIELDS, _csv_cells(expected | {"prev": None, "hash": None, "payload": None}), strict=True))
            if fmt == "csv" else expected)
    for k in READABLE:
        got, w = (seq, expected["seq"]) if k == "seq" else (c[k], want[k])
        if got != w:
            return f"column {k} says {c[k]!r} but the hashed payload says {expected[k]!r} (edited)", seq
    if not isinstance(c["prev"], str) or not isinstance(c["hash"], str):
        return "prev and hash must be text", seq
    if chain_hash(c["prev"], record) != c["hash"]:
        return "its hash is not sha256(prev + payload): the row was changed after it was exported", seq
    if prev_seq is not None:
        if seq <= prev_seq:
            return f"seq goes back from {prev_seq} to {seq} (rows reordered or inserted)", seq
        if seq > prev_seq + 1:
            missing = f"{prev_seq + 1}" if seq == prev_seq + 2 else f"{prev_seq + 1}..{seq - 1}"
            return f"seq {missing} missing before it (rows deleted)", seq
        if c["prev"] != prev_hash:
            return f"its prev does not link to the hash of the row before (seq {prev_seq}): inserted or changed", seq
    return "", seq


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


# -- stills ---------------------------------------------------------------------------


@dataclass
class PhotoCheck:
    """Each journaled still against the file beside the journal."""

    checked: int = 0
    missing: list[tuple[int, str]] = field(default_factory=list)  # (seq of photo.taken, file)
    altered: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.altered


def verify_photos(conn: sqlite3.Connection, folder: Path) -> PhotoCheck:
    """Hash every still a ``photo.taken`` names and compare with the journaled SHA-256."""
    r = PhotoCheck()
    for e in _events(conn, "kind = 'photo.taken'", ()):
        name = str(e.data.get("file", ""))
        path = folder / Path(name).name  # a name only: never a path out of the folder
        r.checked += 1
        try:
            with open(path, "rb") as f:
                digest, _ = sha256_of(f)
        except FileNotFoundError:
            r.missing.append((e.seq, name))
            continue
        if digest != e.data.get("sha256"):
            r.altered.append((e.seq, name))
    return r
