"""The commands that act through the running daemon's control socket, and all-off for when it has stopped.

status, import, clear-fault, acknowledge-alarm, emergency-open, maintenance
and sim each send one request and show the daemon's reply; all-off drives
the relays itself, only while no daemon holds the hardware.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
from pathlib import Path
from typing import Any

from lockerd.cli_support import load_config, load_runnable_config, with_config


def _request(config_path: str, req: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
    cfg = load_config(config_path)
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


def _show(reply: dict[str, Any], done: str = "") -> int:
    """Print a reply: an error on stderr (exit 1), an outcome's message, else ``done`` (one line saying what was
    done), else the reply's fields."""
    if not reply.get("ok"):
        print(f"lockerd: {reply.get('error')}", file=sys.stderr)
        return 1
    reply.pop("ok")
    if "message" in reply:
        print(("OPEN  " if reply.get("pulsed") else "OK    " if reply.get("accepted") else "NO    ")
              + reply["message"] + (" (door pulled open)" if reply.get("opened") else ""))
    elif done:
        print(done)
    elif reply:
        print(json.dumps(reply, indent=2, ensure_ascii=False))
    return 0


# What a simulated person did, said once it is done.
SIM_DONE = {
    "close": "closed the door of {target}",
    "force": "forced the door of {target} open",
    "jam": "jammed the lock of {target}: its pulses no longer open it",
    "unjam": "freed the lock of {target}",
    "stick": "welded the relay of {target}: it stays on",
    "unstick": "freed the relay of {target}",
    "bounce": "bounced the door sensor of {target}",
    "vanish": "board {target} is gone (not answering)",
    "reappear": "board {target} answers again",
}


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
    for alarm in reply.get("alarms", []):
        print(f"UNACKNOWLEDGED ALARM: {alarm['compartment']} {', '.join(alarm['alarms'])} (door {alarm['door']}): "
              f"lockerd acknowledge-alarm {alarm['compartment']} --person ID")
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
    reply = _request(a.config, {"op": "clear-fault", "compartment": a.compartment, "person": a.person})
    cleared = reply.get("cleared") or []
    return _show(reply, f"cleared the {', '.join(cleared)} fault{'s' if len(cleared) > 1 else ''} of {a.compartment}"
                 if cleared else f"{a.compartment} had no fault to clear")


def cmd_all_off(a: argparse.Namespace) -> int:
    """Switch every lock relay off, for the service manager after the daemon died (ExecStopPost=)."""
    import asyncio

    from lockerd.hwlock import HardwareBusy, HardwareLock, hardware_lock_path

    cfg = load_runnable_config(a.config)
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
            # Report every bank, whatever one of them does: one bank's failure,
            # of any kind, must not leave the next one's relays on.
            try:
                await d.all_off()
                print(f"{name}: every relay off")
            except Exception as e:  # noqa: BLE001
                print(f"lockerd: {name}: could not switch its relays off: {e}", file=sys.stderr)
                failed += 1
    finally:
        for d in reversed([*hw.extras, *hw.drivers.values()]):
            with contextlib.suppress(Exception):
                await d.close()
    return 1 if failed else 0


def cmd_acknowledge_alarm(a: argparse.Namespace) -> int:
    req = {"op": "acknowledge-alarm", "compartment": a.compartment, "person": a.person, "note": a.note}
    reply = _request(a.config, req)
    return _show(reply, f"acknowledged the {', '.join(reply.get('acknowledged') or ['?'])} alarm on {a.compartment} "
                        f"for {a.person} (journal seq {reply.get('seq')})")


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
    return _show(reply, SIM_DONE.get(a.action, "").format(target=a.target))


def add_commands(sub: Any) -> None:
    """Add the commands that go through the daemon to the lockerd parser."""
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
