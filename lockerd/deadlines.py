"""Deadline rows, and the custody reports read from them: who has what, what is overdue, who was reminded.

The running daemon keeps its deadlines in memory (lockerd.custody); the CLI
reads the same rows from the journal's tables, read-only.
"""

from __future__ import annotations

import sqlite3
from dataclasses import asdict, dataclass, replace
from typing import Any

from lockerd.clock import iso_utc, parse_time
from lockerd.custody_rules import Rules
from lockerd.journal import StateOp


@dataclass
class Deadline:
    """One running deadline and how far its reminders have climbed (a deadlines row)."""

    id: str
    code: str
    kind: str
    due: str
    due_ts: float
    since: str | None = None
    officer: str | None = None
    holder: str | None = None
    supervisor: str | None = None
    level: int = 0
    sent_ts: float | None = None
    sent_mono: float | None = None
    sent_boot: str | None = None
    ack_ts: float | None = None
    ack_mono: float | None = None
    ack_boot: str | None = None
    ack_by: str | None = None
    since_mono: float | None = None  # when the clock was not synchronised at its start: that start, on the
    since_boot: str | None = None  # monotonic clock of that OS boot, to correct it once the clock is right
    provisional: int = 0

    def row(self) -> dict[str, Any]:
        return asdict(self)

    def op(self) -> StateOp:
        return ("upsert", "deadlines", self.row())


COLUMNS = tuple(Deadline.__dataclass_fields__)


def deadline_id(code: str, kind: str) -> str:
    return f"{code}:{kind}"


DEADLINES_SQL = f"SELECT {', '.join(COLUMNS)} FROM deadlines ORDER BY due_ts"


def load_deadlines(conn: sqlite3.Connection) -> list[Deadline]:
    return [Deadline(*r) for r in conn.execute(DEADLINES_SQL)]


def overdue_rows(deadlines: list[Deadline], now: float, rules: Rules,
                 conn: sqlite3.Connection | None = None) -> list[dict[str, Any]]:
    """Deadlines past due at ``now``, most overdue first, with the escalation level reached by then
    (from the journal's reminders when ``conn`` is given, else the level reached so far)."""
    out = []
    for d in sorted(deadlines, key=lambda d: d.due_ts):
        if d.due_ts > now:
            continue
        if conn is not None:
            d = replace(d, level=max((r["level"] for r in reminders_sent(conn, d, now)), default=0))
        steps = rules.ladders[d.kind].steps if d.kind in rules.ladders else ()
        out.append({
            "code": d.code, "deadline": d.kind, "due": d.due, "overdue_s": round(now - d.due_ts, 1),
            "level": d.level, "levels": len(steps),
            "to": steps[d.level - 1].to if 0 < d.level <= len(steps) else None,
            "next": steps[d.level].to if d.level < len(steps) else None,
            "officer": d.officer, "holder": d.holder, "supervisor": d.supervisor,
            "acknowledged_by": d.ack_by,
            "acknowledged_at": iso_utc(d.ack_ts) if d.ack_ts is not None else None,
        })
    return out


def reminders_sent(conn: sqlite3.Connection, d: Deadline, until: float | None = None) -> list[dict[str, Any]]:
    """The rungs of deadline ``d`` sent so far (or by ``until``): level, to, recipient and when, oldest first."""
    rows = conn.execute(
        "SELECT ts, json_extract(data, '$.level'), json_extract(data, '$.to'), json_extract(data, '$.recipient') "
        "FROM events WHERE kind IN ('reminder.due', 'reminder.escalated') AND dossier = ? "
        "AND json_extract(data, '$.deadline') = ? AND json_extract(data, '$.due') = ? ORDER BY seq",
        (d.code, d.kind, d.due)).fetchall()
    return [{"ts": ts, "level": level, "to": to, "recipient": recipient} for ts, level, to, recipient in rows
            if until is None or parse_time(ts) <= until]


def custody_rows(conn: sqlite3.Connection, *, out_only: bool = False, officer: str | None = None,
                 code: str | None = None, now: float | None = None) -> list[dict[str, Any]]:
    """Who has which item, since when, due when, how late, who was reminded: the journal's tables, read-only."""
    where, params = ["state != 'released'"], []
    if out_only:
        where.append("state = 'out'")
    if officer:
        where.append("(officer = ? OR holder = ?)")
        params += [officer, officer]
    if code:
        where.append("code = ?")
        params.append(code)
    items = conn.execute(
        "SELECT code, kind, case_name, officer, compartment, state, holder, since FROM items "
        f"WHERE {' AND '.join(where)} ORDER BY code", params).fetchall()
    dues: dict[str, list[Deadline]] = {}
    for d in load_deadlines(conn):
        dues.setdefault(d.code, []).append(d)
    rows = []
    for c, kind, case_name, off, comp, state, holder, since in items:
        running = dues.get(c, [])
        first = min(running, key=lambda d: d.due_ts) if running else None
        late = round(now - first.due_ts, 1) if first is not None and now is not None and now > first.due_ts else None
        rows.append({
            "code": c, "kind": kind, "case_name": case_name, "state": state, "compartment": comp,
            "officer": off or None, "holder": holder, "since": since,
            "due": first.due if first else None,
            "deadline": first.kind if first else None,
            "level": max((d.level for d in running), default=0),
            "late_s": late,
            "reminded": [r for d in running for r in reminders_sent(conn, d)],
        })
    return rows
