"""An item's chain of custody, read from the journal: every event of it and of its openings.

Not to be confused with :mod:`lockerd.custody`, the rules (deadlines,
reminders) the daemon applies while an item is out: this is the record an
auditor reads afterwards.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from lockerd.journal import Event, canonical
from lockerd.journal_reader import events_where


@dataclass
class CustodyReport:
    """One item's record and every event of its custody, oldest first."""

    code: str
    item: dict[str, Any] | None
    events: list[Event]
    names: dict[str, str] = field(default_factory=dict)  # person id -> name


def _chunks(values: list[int], size: int = 500) -> Iterator[list[int]]:
    # Well under SQLite's limit on bound parameters per statement.
    for i in range(0, len(values), size):
        yield values[i:i + size]


def custody_report(conn: sqlite3.Connection, code: str) -> CustodyReport:
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
    own = events_where(conn, f"dossier = ? OR {item_clause}", (code, code) if not verbatim else (code, code, code))
    by_seq = {e.seq: e for e in own}
    if own:
        first = own[0].seq
        links = sorted({e.seq for e in own} | {e.data["grant_seq"] for e in own
                                                if isinstance(e.data.get("grant_seq"), int)})
        for part in _chunks(links):
            marks = ",".join("?" * len(part))
            # The opening's own steps, not the item events of other items that went through it.
            for e in events_where(conn, f"seq >= ? AND dossier IS NULL AND json_extract(data, '$.grant_seq') "
                                        f"IN ({marks})", (first, *part)):
                by_seq.setdefault(e.seq, e)
        steps = sorted(set(links) | {e.seq for e in by_seq.values() if e.kind == "door.closed"})
        for part in _chunks(steps):
            marks = ",".join("?" * len(part))
            for e in events_where(conn, f"seq >= ? AND kind IN ('photo.taken', 'camera.failed') "
                                        f"AND json_extract(data, '$.for_seq') IN ({marks})", (first, *part)):
                by_seq.setdefault(e.seq, e)
    row = conn.execute("SELECT * FROM items WHERE code = ?", (code,)).fetchone()
    item = dict(row) if row is not None else None
    events = [by_seq[s] for s in sorted(by_seq)]
    people = {p for e in events for p in e.people}
    if item is not None:
        people |= {item[k] for k in ("officer", "holder", "depositor") if item.get(k)}
    names = {r["id"]: r["name"] for r in conn.execute("SELECT id, name FROM people")} if people else {}
    return CustodyReport(code, item, events,
                         {p: names[p] for p in people if p in names})


def format_custody_report(c: CustodyReport) -> str:
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


def _person(c: CustodyReport, pid: str) -> str:
    return f"{pid} ({c.names[pid]})" if pid in c.names else pid


def _short(v: Any) -> str:
    return v if isinstance(v, str) else canonical(v)


def custody_report_json(c: CustodyReport) -> dict[str, Any]:
    """The chain of custody as JSON: the item's record, the names of its people, its events."""
    return {"code": c.code, "item": c.item, "people": c.names, "events": [e.as_dict() for e in c.events]}
