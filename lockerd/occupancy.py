"""Each cabinet's occupancy as last journaled: which compartment holds which items, doors, faults, alarms.

Read from the journal's state tables (see :mod:`lockerd.journal_reader`), so
it answers with the daemon up or down.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from lockerd.config import Config


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
    """The occupancy as a person reads it: one line per compartment."""
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
