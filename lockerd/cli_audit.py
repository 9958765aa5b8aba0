"""The audit commands of the lockerd CLI: chain-of-custody, occupancy, export, verify-export, verify-photos.

They read the journal file directly, read-only, so they work with the daemon
running or stopped and never go through its writer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from lockerd.cli_support import existing_journal, load_config, with_config, with_journal


def cmd_chain_of_custody(a: argparse.Namespace) -> int:
    from lockerd.custody_report import custody_report, custody_report_json, format_custody_report
    from lockerd.journal_reader import open_journal

    path = existing_journal(a)
    if path is None:
        return 2
    with contextlib.closing(open_journal(path)) as conn:
        c = custody_report(conn, a.code)
    if a.json:
        print(json.dumps(custody_report_json(c), ensure_ascii=False, indent=2))
    else:
        print(format_custody_report(c))
    return 0 if c.item is not None or c.events else 1


def cmd_occupancy(a: argparse.Namespace) -> int:
    from lockerd.journal_reader import open_journal
    from lockerd.occupancy import format_occupancy, occupancy

    cfg = load_config(a.config)
    if a.cabinet is not None and a.cabinet not in cfg.cabinets:
        print(f"lockerd: no cabinet {a.cabinet!r} (known: {', '.join(cfg.cabinets)})", file=sys.stderr)
        return 2
    path = existing_journal(a, cfg)
    if path is None:
        return 2
    with contextlib.closing(open_journal(path)) as conn:
        occ = occupancy(conn, cfg, a.cabinet)
    print(json.dumps(occ, ensure_ascii=False, indent=2) if a.json else format_occupancy(occ))
    return 0


def _wall(text: str | None, what: str) -> str | None:
    from lockerd.clock import iso_utc, parse_time

    if text is None:
        return None
    try:
        return iso_utc(parse_time(text))
    except ValueError as e:
        print(f"lockerd: {what} {text!r}: {e} (use ISO 8601, e.g. 2026-11-22T08:00 or 2026-11-22T08:00+01:00)",
              file=sys.stderr)
        raise SystemExit(2) from None


def cmd_export(a: argparse.Namespace) -> int:
    from lockerd.journal_export import export
    from lockerd.journal_reader import open_journal

    since, until = _wall(a.since, "--since"), _wall(a.until, "--until")
    fmt = a.format or ("json" if a.output and a.output.lower().endswith(".json") else "csv")
    site = node = ""
    cfg = None
    if not a.journal:
        cfg = load_config(a.config)
        site, node = cfg.site, cfg.node
    path = existing_journal(a, cfg)
    if path is None:
        return 2
    with contextlib.closing(open_journal(path)) as conn:
        if a.output:
            out = Path(a.output)
            tmp = out.with_name(out.name + ".part")
            # Written aside, then renamed: a half-written export never looks like a whole one.
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                meta = export(conn, f, fmt, since, until, site, node)
            tmp.replace(out)
        else:
            meta = export(conn, sys.stdout, fmt, since, until, site, node)
    if a.output:
        span = f"seq {meta['first_seq']}..{meta['last_seq']}" if meta["count"] else "no events in that range"
        print(f"{a.output}: {meta['count']} events ({span}), {fmt}", file=sys.stderr)
    return 0


def cmd_verify_export(a: argparse.Namespace) -> int:
    from lockerd.export_verify import verify_export
    from lockerd.journal_reader import open_journal

    conn = None
    if not a.standalone:
        path = existing_journal(a)
        if path is None:
            print("lockerd: (use --standalone to check the export's own chain without the journal)",
                  file=sys.stderr)
            return 2
        conn = open_journal(path)
    try:
        r = verify_export(Path(a.file), conn)
    finally:
        if conn is not None:
            conn.close()
    print(r.describe(a.file))
    if not r.ok or not (a.anchor or a.anchors):
        return 0 if r.ok else 1
    from lockerd.checkpoints import check_export_anchors, read_anchors

    problems = check_export_anchors(Path(a.file), read_anchors(a.anchor or [], [Path(f) for f in a.anchors]
                                                               if a.anchors else []), a.key)
    for p in problems:
        print(f"{a.file}: {p}")
    if not problems:
        print(f"{a.file}: the station's anchors within its range match")
    return 1 if problems else 0


def cmd_verify_photos(a: argparse.Namespace) -> int:
    from lockerd.journal_reader import open_journal
    from lockerd.photo_verify import verify_photos
    from lockerd.photos import photo_dir

    path = existing_journal(a)
    if path is None:
        return 2
    folder = photo_dir(path)
    with contextlib.closing(open_journal(path)) as conn:
        r = verify_photos(conn, folder)
    for seq, name in r.missing:
        print(f"MISSING  {name} (photo.taken seq {seq})")
    for seq, name in r.altered:
        print(f"ALTERED  {name} (photo.taken seq {seq}): its SHA-256 is not the journaled one")
    print(f"{folder}: {r.checked} stills journaled, {len(r.missing)} missing, {len(r.altered)} altered"
          + (": OK" if r.ok else ""))
    return 0 if r.ok else 1


def add_commands(sub: Any) -> None:
    """Add the audit commands to the lockerd parser."""
    sp = with_journal(with_config(sub.add_parser(
        "chain-of-custody", help="every event of one dossier or evidence item: what, who, when, which compartment")))
    sp.add_argument("code", help="the item's barcode")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_chain_of_custody)

    sp = with_journal(with_config(sub.add_parser(
        "occupancy", help="what each compartment holds, with door, fault and alarm state as journaled")))
    sp.add_argument("--cabinet", help="only this cabinet")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_occupancy)

    sp = with_journal(with_config(sub.add_parser(
        "export", help="export the events of a time range (CSV or JSON) with their hash chain")))
    sp.add_argument("--since", help="ISO 8601 wall time (UTC unless an offset is given); default: the start")
    sp.add_argument("--until", help="ISO 8601 wall time; default: now")
    sp.add_argument("--format", choices=["csv", "json"], help="default: from the output's suffix, else csv")
    sp.add_argument("-o", "--output", help="file to write (default: standard output)")
    sp.set_defaults(func=cmd_export)

    sp = with_journal(with_config(sub.add_parser(
        "verify-export", help="check an export's hash chain and each row against the journal")))
    sp.add_argument("file")
    sp.add_argument("--standalone", action="store_true", help="check the export on its own, without the journal")
    sp.add_argument("--anchor", action="append", metavar="SEQ:HASH", help="an event hash the station holds")
    sp.add_argument("--anchors", action="append", metavar="FILE",
                    help="the station's checkpoints (JSON, one a line, as published) or SEQ:HASH lines")
    sp.add_argument("--key", help="the controller's public key (hex): check each checkpoint's signature")
    sp.set_defaults(func=cmd_verify_export)

    sp = with_journal(with_config(sub.add_parser(
        "verify-photos", help="check every journaled still in photos/ against its recorded SHA-256")))
    sp.set_defaults(func=cmd_verify_photos)
