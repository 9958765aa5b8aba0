"""The lockerd command line: run the daemon, check a config, read the journal, act on the sim."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from lockerd import __version__
from lockerd.errors import ConfigError

DEFAULT_CONFIG = os.environ.get("LOCKERD_CONFIG", "/etc/lockerd/lockerd.toml")


def _load(path: str):
    from lockerd import config

    try:
        return config.load(path)
    except ConfigError as e:
        print(f"lockerd: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def _load_runnable(path: str):
    """A config whose every needed module imports: the daemon never passes its check and then dies on import."""
    from lockerd.needs import missing

    cfg = _load(path)
    problems = missing(cfg)
    for p in problems:
        print(f"lockerd: {p}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    return cfg


def cmd_run(a: argparse.Namespace) -> int:
    cfg = _load_runnable(a.config)
    from lockerd.daemon import run

    return run(cfg)


def cmd_check_config(a: argparse.Namespace) -> int:
    cfg = _load_runnable(a.file)
    kinds = {}
    for c in cfg.compartments.values():
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    print(f"{cfg.path}: OK: site {cfg.site}, node {cfg.node}, {len(cfg.cabinets)} cabinet(s), "
          + ", ".join(f"{n} {k} compartments" for k, n in sorted(kinds.items()))
          + f", {len(cfg.scanners)} scanner(s), drivers: "
          + ", ".join(f"{n} ({d.type})" for n, d in cfg.drivers.items())
          + "".join(f", camera {n} ({c.type}) on cabinet(s) "
                    + (", ".join(cab.id for cab in cfg.cabinets.values() if cab.camera == n) or "none")
                    for n, c in cfg.cameras.items()))
    return 0


def _journal_path(a: argparse.Namespace, cfg: Any = None) -> Path:
    if getattr(a, "journal", None):
        return Path(a.journal)
    return (cfg or _load(a.config)).journal_path


def existing_journal(a: argparse.Namespace, cfg: Any = None) -> Path | None:
    """The journal ``--journal`` or the config names (``cfg`` if loaded already); None, said, if it is not there."""
    path = _journal_path(a, cfg)
    if not path.exists():
        print(f"lockerd: {path}: no journal there", file=sys.stderr)
        return None
    return path


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


def cmd_history(a: argparse.Namespace) -> int:
    import sqlite_utils

    from lockerd.clock import iso_utc, parse_time
    from lockerd.journal import connect

    path = existing_journal(a)
    if path is None:
        return 2
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
            params.append(iso_utc(parse_time(a.since)))
        if a.until:
            where.append("ts <= ?")
            params.append(iso_utc(parse_time(a.until)))
    except ValueError as e:
        print(f"lockerd: bad time: {e} (use ISO 8601, e.g. 2026-11-22T08:00)", file=sys.stderr)
        return 2
    db = sqlite_utils.Database(connect(path, readonly=True))
    rows = list(db["events"].rows_where(" AND ".join(where) or None, params, order_by="seq desc",
                                        limit=a.limit))
    rows.reverse()
    for r in rows:
        r["people"] = json.loads(r["people"])
        r["data"] = json.loads(r["data"])
        if a.json:
            print(json.dumps(r, ensure_ascii=False))
            continue
        who = ",".join(r["people"])
        details = " ".join(f"{k}={v}" for k, v in r["data"].items() if v not in (None, "", [], {}))
        print(f"{r['seq']:>7} {r['ts']} {r['kind']:<24} {r['compartment'] or '-':<6} "
              f"{r['dossier'] or '-':<16} {who or '-':<14} {details}")
    return 0


def _request(config_path: str, req: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    cfg = _load(config_path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(cfg.control_socket))
    except OSError as e:
        print(f"lockerd: no daemon answering on {cfg.control_socket} ({e.strerror}); "
              f"start it with: lockerd run --config {cfg.path}", file=sys.stderr)
        raise SystemExit(3) from None
    with s, s.makefile("rwb") as f:
        f.write(json.dumps(req).encode() + b"\n")
        f.flush()
        line = f.readline()
    if not line:
        print("lockerd: the daemon closed the connection", file=sys.stderr)
        raise SystemExit(3)
    return json.loads(line)


def _show(reply: dict[str, Any]) -> int:
    if not reply.get("ok"):
        print(f"lockerd: {reply.get('error')}", file=sys.stderr)
        return 1
    reply.pop("ok")
    if "message" in reply:
        print(("OPEN  " if reply.get("pulsed") else "OK    " if reply.get("accepted") else "NO    ")
              + reply["message"] + (" (door pulled open)" if reply.get("opened") else ""))
    elif reply:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    reply = _request(a.config, {"op": "status"})
    if not reply.get("ok") or a.json:
        return _show(reply)
    j = reply["journal"]
    print(f"site {reply['site']} node {reply['node']}: journal "
          + ("OK" if j["healthy"] else f"FAULT: {j['error']}") + f", last seq {j['last_seq']}")
    for n, d in {**reply["drivers"], **reply["scanners"]}.items():
        print(f"  {n}: {'online' if d['online'] else 'OFFLINE ' + d['detail']}")
    for cid, st in reply["compartments"].items():
        extra = " ".join(x for x in (
            ("items: " + ",".join(st["items"])) if st["items"] else "",
            ("ALARM " + st["alarm"]) if st["alarm"] else "",
            ("FAULT " + "; ".join(st["faults"])) if st["faults"] else "") if x)
        print(f"  {cid:<6} door {st['door']:<7} {st['lock']:<8} {extra}")
    for a in reply.get("alarms", []):
        print(f"UNACKNOWLEDGED ALARM: {a['compartment']} {', '.join(a['alarms'])} (door {a['door']}): "
              f"lockerd acknowledge-alarm {a['compartment']} --person ID")
    return 0


def cmd_import(a: argparse.Namespace) -> int:
    path = Path(a.file)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        print(f"lockerd: {path}: cannot read: {e}", file=sys.stderr)
        return 2
    req = {"op": "import", "text": text, "csv": path.suffix.lower() == ".csv", "name": str(path),
           "by": a.by}
    reply = _request(a.config, req, timeout=120)
    if reply.get("ok"):
        n = reply["imported"]
        print(f"imported {n['people']} people, {n['badges']} badges, {n['items']} items")
        return 0
    return _show(reply)


def cmd_clear_fault(a: argparse.Namespace) -> int:
    return _show(_request(a.config, {"op": "clear-fault", "compartment": a.compartment, "person": a.person}))


def cmd_all_off(a: argparse.Namespace) -> int:
    """Switch every lock relay off, for the service manager after the daemon died (ExecStopPost=)."""
    import asyncio

    from lockerd.hwlock import HardwareBusy, HardwareLock, hardware_lock_path

    cfg = _load_runnable(a.config)
    lock = HardwareLock(hardware_lock_path(cfg), "lockerd all-off")
    try:
        lock.acquire()
    except HardwareBusy as e:
        print(f"lockerd: {e}; whoever holds the hardware switches its relays off itself", file=sys.stderr)
        return 3
    try:
        return asyncio.run(_all_off(cfg))
    finally:
        lock.release()


async def _all_off(cfg: Any) -> int:
    from lockerd.clock import Clock
    from lockerd.drivers.base import LockBank
    from lockerd.hardware import build_hardware

    hw = build_hardware(cfg, Clock())
    failed = 0
    try:
        for bus in hw.extras:
            await bus.start()
        for name, d in hw.drivers.items():
            if not isinstance(d, LockBank):
                continue
            try:
                await d.all_off()
                print(f"{name}: every relay off")
            except Exception as e:  # report every bank, whatever one of them does
                print(f"lockerd: {name}: could not switch its relays off: {e}", file=sys.stderr)
                failed += 1
    finally:
        for d in reversed([*hw.extras, *hw.drivers.values()]):
            with contextlib.suppress(Exception):
                await d.close()
    return 1 if failed else 0


def cmd_acknowledge_alarm(a: argparse.Namespace) -> int:
    req = {"op": "acknowledge-alarm", "compartment": a.compartment, "person": a.person, "note": a.note}
    return _show(_request(a.config, req))


def cmd_emergency_open(a: argparse.Namespace) -> int:
    req = {"op": "emergency-open", "compartment": a.compartment, "all": a.all, "cabinet": a.cabinet,
           "people": a.person, "reason": a.reason}
    return _show(_request(a.config, req))


def cmd_maintenance(a: argparse.Namespace) -> int:
    if a.action == "open" and not a.compartment:
        print("lockerd: maintenance open needs a COMPARTMENT", file=sys.stderr)
        return 2
    req = {"op": "maintenance", "action": a.action, "person": a.person, "reason": a.reason,
           "compartment": a.compartment, "witness": a.witness}
    return _show(_request(a.config, req))


def cmd_sim(a: argparse.Namespace) -> int:
    if a.action == "scan":
        req = {"op": "scan", "code": a.target, "scanner": a.scanner, "pull": a.pull}
    elif a.action in ("vanish", "reappear"):
        req = {"op": a.action, "driver": a.target}
    else:
        req = {"op": a.action, "compartment": a.target, "wait_s": a.wait, "times": a.times}
    reply = _request(a.config, req)
    if a.action == "pull" and reply.get("ok"):
        print("door opened" if reply["opened"] else
              "door stays shut: the lock is engaged" + (f" (still pulling for {a.wait:g} s)" if a.wait else ""))
        return 0
    return _show(reply)


def _custody_db(a: argparse.Namespace):
    from lockerd.journal import connect

    cfg = _load(a.config)
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
    from lockerd.custody import custody_rows

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
    return 0


def cmd_overdue(a: argparse.Namespace) -> int:
    import time

    from lockerd.calendar import iso_local
    from lockerd.clock import parse_time
    from lockerd.custody import load_deadlines, overdue_rows

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


def cmd_demo(a: argparse.Namespace) -> int:
    from lockerd.demo import main as demo_main

    return demo_main(a.config, keep=a.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lockerd", description="Controller daemon for smart dossier and evidence lockers.")
    p.add_argument("--version", action="version", version=f"lockerd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
        return sp

    sp = with_config(sub.add_parser("run", help="run the daemon"))
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("check-config", help="check a config file; exit 2 if invalid")
    sp.add_argument("file")
    sp.set_defaults(func=cmd_check_config)

    sp = with_config(sub.add_parser("verify", help="check the journal's hash chain (against the station's anchors)"))
    sp.add_argument("--journal", help="journal file (default: from the config)")
    sp.add_argument("--anchor", action="append", metavar="SEQ:HASH", help="an event hash the station holds")
    sp.add_argument("--anchors", action="append", metavar="FILE",
                    help="the station's checkpoints (JSON, one a line, as published) or SEQ:HASH lines")
    sp.add_argument("--key", help="the controller's public key (hex): check each checkpoint's signature")
    sp.set_defaults(func=cmd_verify)

    sp = with_config(sub.add_parser("history", help="list journal events"))
    sp.add_argument("--journal", help="journal file (default: from the config)")
    sp.add_argument("--dossier", help="item barcode (dossier or evidence)")
    sp.add_argument("--compartment")
    sp.add_argument("--person", help="person id")
    sp.add_argument("--kind", help="event kind, or a family such as 'door' or 'alarm'")
    sp.add_argument("--since", help="ISO 8601 time (UTC unless an offset is given)")
    sp.add_argument("--until")
    sp.add_argument("--limit", type=int, default=200, help="newest N events (default 200)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_history)

    sp = with_config(sub.add_parser("custody", help="who has which item, since when, due when"))
    sp.add_argument("--journal", help="journal file (default: from the config)")
    sp.add_argument("--out", action="store_true", help="only items taken out")
    sp.add_argument("--person", help="responsible officer or holder (person id)")
    sp.add_argument("--dossier", help="one item barcode")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_custody)

    sp = with_config(sub.add_parser("overdue", help="what is overdue now, at which escalation level"))
    sp.add_argument("--journal", help="journal file (default: from the config)")
    sp.add_argument("--at", help="overdue at this ISO 8601 time instead of now, with the level reached by then "
                                 "(without an offset: the station's local time)")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_overdue)

    sp = with_config(sub.add_parser("status", help="the running daemon's view of every compartment"))
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_status)

    sp = with_config(sub.add_parser("import", help="import people, badges and items (JSON or CSV)"))
    sp.add_argument("file")
    sp.add_argument("--by", default="cli", help="who is importing (journaled)")
    sp.set_defaults(func=cmd_import)

    sp = with_config(sub.add_parser("clear-fault", help="clear a compartment's lock faults after a repair"))
    sp.add_argument("compartment")
    sp.add_argument("--person", required=True, help="technician's person id (journaled)")
    sp.set_defaults(func=cmd_clear_fault)

    sp = with_config(sub.add_parser(
        "all-off", help="switch every lock relay off (the service runs it after the daemon stops or dies)"))
    sp.set_defaults(func=cmd_all_off)

    sp = with_config(sub.add_parser(
        "acknowledge-alarm", help="a supervisor or case manager acknowledges a forced door, once it is shut"))
    sp.add_argument("compartment")
    sp.add_argument("--person", required=True, help="who acknowledges (a supervisor or case manager)")
    sp.add_argument("--note", default="", help="what was found")
    sp.set_defaults(func=cmd_acknowledge_alarm)

    sp = with_config(sub.add_parser(
        "emergency-open", help="open one compartment, or all in turn, on two people's authority (raises an alarm); "
                               "evidence opens only after both badge at the cabinet"))
    sp.add_argument("compartment", nargs="?", help="the compartment (or a rear door, e.g. e01-rear)")
    sp.add_argument("--all", action="store_true", help="every compartment in turn, one pulse at a time")
    sp.add_argument("--cabinet", help="with --all: only this cabinet's compartments")
    sp.add_argument("--person", action="append", default=[], required=True,
                    help="person id; twice: a supervisor, and a second supervisor or a case manager")
    sp.add_argument("--reason", required=True, help="why (journaled with the alarm)")
    sp.set_defaults(func=cmd_emergency_open)

    sp = with_config(sub.add_parser(
        "maintenance", help="a technician's maintenance mode: pulse compartments without moving any item"))
    sp.add_argument("action", choices=["on", "off", "open"])
    sp.add_argument("compartment", nargs="?", help="with open: the compartment (or rear door) to pulse")
    sp.add_argument("--person", required=True, help="technician's person id (journaled)")
    sp.add_argument("--reason", default="", help="with on: what is being tested or repaired")
    sp.add_argument("--witness", help="with open of an evidence compartment: the case manager or supervisor who "
                                      "witnesses it (both badge at the cabinet before it opens)")
    sp.set_defaults(func=cmd_maintenance)

    sp = with_config(sub.add_parser("sim", help="act as a person on simulated hardware"))
    sp.add_argument("action", choices=["scan", "pull", "close", "force", "jam", "unjam", "stick", "unstick",
                                       "bounce", "vanish", "reappear"])
    sp.add_argument("target", help="the code to scan, a compartment id, or (vanish/reappear) a driver")
    sp.add_argument("--scanner", help="simulated scanner (default: the first)")
    sp.add_argument("--pull", action="store_true", help="with scan: pull the door as the lock releases")
    sp.add_argument("--wait", type=float, default=0.0, help="with pull: keep pulling this many seconds")
    sp.add_argument("--times", type=int, default=3, help="with bounce: how many times the sensor chatters")
    sp.set_defaults(func=cmd_sim)

    from lockerd.audit_cli import add_commands

    add_commands(sub, with_config)

    sp = sub.add_parser("demo", help="run the demo station and play a short shift")
    sp.add_argument("-c", "--config", default=str(Path(__file__).resolve().parent.parent / "config" / "demo.toml"))
    sp.add_argument("--keep", action="store_true", help="keep the previous demo journal")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`lockerd history | head`): stop quietly, as Unix tools do on SIGPIPE. The
        # interpreter's own flush at exit would hit the closed pipe again, so stdout now points nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
