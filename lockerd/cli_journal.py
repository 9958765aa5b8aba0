"""The commands that read the journal file directly: verify, history, custody, overdue.

They open it read-only, so they work with the daemon running or stopped and
never go through its writer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from lockerd.cli_support import existing_journal, load_config, station_zone, with_config, with_journal


def cmd_verify(a: argparse.Namespace) -> int:
    from lockerd.journal import verify

    path = existing_journal(a)
    if path is None:
        return 2
    r = verify(path)
    if not r.ok:
        print(f"{path}: BROKEN at seq {r.first_bad}: {r.reason} ({r.count} events before it are intact)")
        return 1
    if not (a.anchor or a.anchors):
        print(f"{path}: OK: {r.count} events, hash chain intact (no anchor given: a truncated or re-hashed "
              f"journal passes this; give the station's checkpoints with --anchors)")
        return 0
    from lockerd.checkpoints import check_anchors, read_anchors

    anchors = read_anchors(a.anchor or [], [Path(f) for f in a.anchors or []])
    problems = check_anchors(path, anchors, a.key)
    for p in problems:
        print(f"{path}: {p}")
    if problems:
        return 1
    signed = " (signatures checked)" if a.key else ""
    print(f"{path}: OK: {r.count} events, hash chain intact and matching {len(anchors)} anchor(s) up to seq "
          f"{anchors[-1]['seq'] if anchors else 0}{signed}")
    return 0


# The history table: a value longer than this is cut, with a marker saying so.
CELL_MAX = 60


def cmd_history(a: argparse.Namespace) -> int:
    import sqlite_utils

    from lockerd.clock import iso_utc, parse_time
    from lockerd.journal import connect

    path = existing_journal(a)
    if path is None:
        return 2
    tz = station_zone(a)
    where, params = [], []
    if a.dossier:
        where.append("dossier = ?")
        params.append(a.dossier)
    if a.compartment:
        where.append("compartment = ?")
        params.append(a.compartment)
    if a.person:
        where.append("EXISTS (SELECT 1 FROM json_each(events.people) WHERE value = ?)")
        params.append(a.person)
    if a.kind:
        where.append("(kind = ? OR kind LIKE ?)")
        params += [a.kind, a.kind + ".%"]
    try:
        if a.since:
            where.append("ts >= ?")
            params.append(iso_utc(parse_time(a.since, tz)))
        if a.until:
            where.append("ts <= ?")
            params.append(iso_utc(parse_time(a.until, tz)))
    except ValueError as e:
        print(f"lockerd: bad time: {e} (use ISO 8601, e.g. 2026-11-22T08:00, the station's local time unless it "
              "has an offset)", file=sys.stderr)
        return 2
    db = sqlite_utils.Database(connect(path, readonly=True))
    condition = " AND ".join(where) or None
    rows = list(db["events"].rows_where(condition, params, order_by="seq desc", limit=a.limit))
    rows.reverse()
    for r in rows:
        r["people"] = json.loads(r["people"])
        r["data"] = json.loads(r["data"])
    if a.json:
        for r in rows:
            print(json.dumps(r, ensure_ascii=False))
        return 0
    older = db["events"].count_where(condition, params) - len(rows)
    print(history_table(rows, tz))
    if older:
        print(f"({older} older event{'s' if older != 1 else ''} not shown: raise --limit, or narrow with --since, "
              "--kind, --dossier, --compartment or --person)")
    elif not rows:
        print("no events match")
    return 0


def history_table(rows: list[dict[str, Any]], tz: tzinfo) -> str:
    """Events as an aligned table for people: local times, readable values, long ones cut with a marker."""
    from tabulate import tabulate

    from lockerd.clock import parse_time

    zone = datetime.now(tz).strftime("%Z") or str(tz)
    table = [[r["seq"], datetime.fromtimestamp(parse_time(r["ts"]), tz).strftime("%Y-%m-%d %H:%M:%S"), r["kind"],
              r["compartment"] or "-", r["dossier"] or "-", ", ".join(r["people"]) or "-", _details(r["data"])]
             for r in rows]
    return tabulate(table, headers=["seq", f"time ({zone})", "kind", "compartment", "item", "people", "details"],
                    tablefmt="simple", disable_numparse=True, colalign=("right",))


def _details(data: dict[str, Any]) -> str:
    """An event's data as "key: value" pairs, in plain words; what says nothing is left out."""
    parts = [f"{k.replace('_', ' ')}: {_readable(v)}" for k, v in data.items() if v not in (None, "", [], {})]
    return _cut("; ".join(parts), CELL_MAX * 2)


def _readable(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_readable(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(_readable(v) for v in value)
    return _cut(str(value), CELL_MAX)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _custody_db(a: argparse.Namespace):
    from lockerd.journal import connect

    cfg = load_config(a.config)
    path = existing_journal(a, cfg)
    if path is None:
        raise SystemExit(2)
    return cfg, connect(path, readonly=True)


def _late(seconds: float) -> str:
    h, m = divmod(int(seconds) // 60, 60)
    return f"{h}h{m:02d}"


def cmd_custody(a: argparse.Namespace) -> int:
    import time

    from lockerd.calendar import iso_local
    from lockerd.clock import parse_time
    from lockerd.deadlines import custody_rows

    cfg, conn = _custody_db(a)
    with contextlib.closing(conn):
        rows = custody_rows(conn, out_only=a.out, officer=a.person, code=a.dossier, now=time.time())
    tz = cfg.calendar.tz

    def local(ts: str | None) -> str:
        return iso_local(parse_time(ts), tz) if ts else "-"

    for r in rows:
        if a.json:
            print(json.dumps(r, ensure_ascii=False))
            continue
        line = (f"{r['code']:<16} {r['kind']:<8} {r['state']:<4} {r['compartment'] or '-':<6} "
                f"holder {r['holder'] or '-':<10} officer {r['officer'] or '-':<10} since {local(r['since'])}")
        if r["due"]:
            line += f", due {local(r['due'])}" + (f", {_late(r['late_s'])} late" if r["late_s"] else "")
        if r["reminded"]:
            line += "; reminded " + ", ".join(f"{x['recipient'] or x['to']} (level {x['level']}, {local(x['ts'])})"
                                              for x in r["reminded"])
        print(line)
    if not rows and not a.json:
        print("no item is out" if a.out else "no item matches")
    return 0


def cmd_overdue(a: argparse.Namespace) -> int:
    import time

    from lockerd.calendar import iso_local
    from lockerd.clock import parse_time
    from lockerd.deadlines import load_deadlines, overdue_rows

    cfg, conn = _custody_db(a)
    try:
        now = parse_time(a.at, cfg.calendar.tz) if a.at else time.time()  # typed by a person: local time
    except ValueError as e:
        print(f"lockerd: bad time: {e} (use ISO 8601, e.g. 2026-11-22T14:00, the station's local time "
              "unless it has an offset)", file=sys.stderr)
        return 2
    with contextlib.closing(conn):
        rows = overdue_rows(load_deadlines(conn), now, cfg.custody, conn if a.at else None)
    for r in rows:
        if a.json:
            print(json.dumps(r, ensure_ascii=False))
            continue
        level = f"level {r['level']}/{r['levels']} ({r['to']})" if r["level"] else "no reminder yet"
        ack = f", acknowledged by {r['acknowledged_by']}" if r["acknowledged_by"] else ""
        print(f"{r['code']:<16} {r['deadline']:<16} due {iso_local(parse_time(r['due']), cfg.calendar.tz)} "
              f"overdue {_late(r['overdue_s'])} {level}{ack}; officer {r['officer'] or '-'}"
              + (f", held by {r['holder']}" if r["holder"] else ""))
    if not rows and not a.json:
        print("nothing overdue")
    return 0


def add_commands(sub: Any) -> None:
    """Add the journal commands to the lockerd parser."""
    sp = with_journal(with_config(sub.add_parser(
        "verify", help="check the journal's hash chain (against the station's anchors)")))
    sp.add_argument("--anchor", action="append", metavar="SEQ:HASH", help="an event hash the station holds")
    sp.add_argument("--anchors", action="append", metavar="FILE",
                    help="the station's checkpoints (JSON, one a line, as published) or SEQ:HASH lines")
    sp.add_argument("--key", help="the controller's public key (hex): check each checkpoint's signature")
    sp.set_defaults(func=cmd_verify)

    sp = with_journal(with_config(sub.add_parser("history", help="list journal events")))
    sp.add_argument("--dossier", help="item barcode (dossier or evidence)")
    sp.add_argument("--compartment")
    sp.add_argument("--person", help="person id")
    sp.add_argument("--kind", help="event kind, or a family such as 'door' or 'alarm'")
    sp.add_argument("--since", help="ISO 8601 time, e.g. 2026-11-22T08:00 (the station's local time unless it "
                                    "has an offset)")
    sp.add_argument("--until", help="ISO 8601 time, as --since")
    sp.add_argument("--limit", type=int, default=200, help="newest N events (default 200; the last line says how "
                                                           "many older ones were left out)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_history)

    sp = with_journal(with_config(sub.add_parser("custody", help="who has which item, since when, due when")))
    sp.add_argument("--out", action="store_true", help="only items taken out")
    sp.add_argument("--person", help="responsible officer or holder (person id)")
    sp.add_argument("--dossier", help="one item barcode")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_custody)

    sp = with_journal(with_config(sub.add_parser("overdue", help="what is overdue now, at which escalation level")))
    sp.add_argument("--at", help="overdue at this ISO 8601 time instead of now, with the level reached by then "
                                 "(without an offset: the station's local time)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_overdue)
