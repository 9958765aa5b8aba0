"""The AsyncAPI document of the station contract, rendered as YAML for the station's developers.

``docs/asyncapi.yaml`` is rendered from :mod:`lockerd.station.contract`
(``python -m lockerd.station.asyncapi > docs/asyncapi.yaml``) and a test
checks the two agree, so the document the station side reads and the
schemas the link enforces cannot drift apart.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from lockerd import __version__
from lockerd.station.contract import (
    CHECKPOINT,
    COMMAND_ARGS,
    EVENT,
    ID_PATTERN,
    INFO,
    MAX_COMMAND_BYTES,
    OVERDUE,
    PING_RESULT,
    PRESENCE,
    REMINDER,
    REPLAY_RESULT,
    REPLY,
    SNAPSHOT,
    STATE,
    command_schema,
)

_COMMAND_DOCS = {
    "assign": ("Register an item (dossier or seized item) and the compartment it belongs in. Re-registering "
               "keeps every field it does not name; the kind never changes; a released item's record is closed."),
    "unassign": "Remove an item's registration.",
    "register-person": "Add or update a person (officer, case manager, supervisor, technician).",
    "revoke-person": "Withdraw a person: their badges and dossiers no longer open anything.",
    "register-badge": "Give a person a badge barcode.",
    "revoke-badge": "Withdraw a badge.",
    "open": "Remote open of one compartment by the requester (requested_by) with a reason; pulses at most once.",
    "authorize-retrieval": ("Authorise the retrieval (or release) of one deposited evidence item with a reason "
                            "from the case record; the officer and the case manager still scan their badges at "
                            "the cabinet, no reason card needed. Used once; journaled as retrieval.authorised."),
    "emergency-open": ("Two-person emergency open of one compartment (compartment) or of all in turn (all, "
                       "optionally one cabinet); raises alarm.emergency_open. Refused unless people names a "
                       "supervisor and a second supervisor or case manager, and reason is not blank."),
    "acknowledge": ("Acknowledge the reminder of an overdue item: escalation to the next level pauses for "
                    "the deadline's ack_pause_s (journaled as reminder.acknowledged)."),
    "acknowledge-alarm": ("Acknowledge a forced door once it is shut again: the alarm stays open until a supervisor "
                          "or case manager acknowledges it (also lockerd acknowledge-alarm at the board)."),
    "release": ("Release a dossier for good: if it is in its compartment the compartment opens for the person and "
                "dossier.released is journaled when the door closes; otherwise at once. Ends its deadlines."),
    "ping": "Answered by the link: last journaled seq and delivered cursor.",
    "snapshot": ("Read-only: the controller's whole current state (result: a snapshot), what retained messages "
                 "would hold and more; rebuild from it after a restart, on any broker. Also published on "
                 "{prefix}/{site}/{node}/snapshot at every connect."),
    "replay": "Answered by the link: re-publish journal events from_seq..to_seq on the replay topic.",
}


def asyncapi() -> dict[str, Any]:
    """The AsyncAPI 2.6 document of the whole station contract."""
    base = "{prefix}/{site}/{node}"
    parameters = {
        "prefix": {"description": "station.prefix (default lockerd); may hold several levels",
                   "schema": {"type": "string"}},
        "site": {"description": "controller.site", "schema": {"type": "string", "pattern": ID_PATTERN}},
        "node": {"description": "controller.node", "schema": {"type": "string", "pattern": ID_PATTERN}},
        "compartment": {"description": "a compartment id", "schema": {"type": "string", "pattern": ID_PATTERN}},
    }
    params = {k: {"$ref": f"#/components/parameters/{k}"} for k in ("prefix", "site", "node")}

    def sub(summary: str, qos: int, retain: bool, name: str) -> dict[str, Any]:
        message = {"name": name, "contentType": "application/json",
                   "payload": {"$ref": f"#/components/schemas/{name}"}}
        return {"summary": summary, "bindings": {"mqtt": {"qos": qos, "retain": retain}}, "message": message}

    channels: dict[str, Any] = {
        f"{base}/presence": {"parameters": params, "subscribe": sub(
            "online on connect; offline (clean) on stop; offline (last will, clean false) when the link dies",
            1, retain=True, name="presence")},
        f"{base}/info": {"parameters": params, "subscribe": sub(
            "version, config hash, start time; published on every connect", 1, retain=True, name="info")},
        f"{base}/checkpoint": {"parameters": params, "subscribe": sub(
            "the newest signed checkpoint of the journal (also an event, journal.checkpoint)", 1, retain=True,
            name="checkpoint")},
        f"{base}/events": {"parameters": params, "subscribe": sub(
            "the journal, every event in seq order, from the durable outbox; redeliveries keep id and seq",
            1, retain=False, name="event")},
        f"{base}/snapshot": {"parameters": params, "subscribe": sub(
            "the whole current state, at every connect (also the result of the snapshot command); never retained",
            1, retain=False, name="snapshot")},
        f"{base}/overdue": {"parameters": params, "subscribe": sub(
            "the items overdue now; on every connect, when a reminder fires and when a deadline ends", 1,
            retain=True, name="overdue")},
        f"{base}/replay": {"parameters": params, "subscribe": sub(
            "events re-published on a replay command (same payload as events)", 1, retain=False, name="event")},
        f"{base}/state/{{compartment}}": {
            "parameters": params | {"compartment": {"$ref": "#/components/parameters/compartment"}},
            "subscribe": sub("one compartment's state, on change and on every connect", 1, retain=True, name="state")},
        f"{base}/reply": {"parameters": params, "subscribe": sub(
            "the answer to each command, with its id", 1, retain=False, name="reply")},
    }
    for name in COMMAND_ARGS:
        channels[f"{base}/cmd/{name}"] = {
            "parameters": params,
            "publish": {
                "summary": _COMMAND_DOCS[name],
                "bindings": {"mqtt": {"qos": 1, "retain": False}},
                "message": {"name": f"cmd-{name}", "contentType": "application/json",
                            "payload": {"$ref": f"#/components/schemas/cmd-{name}"}},
            },
        }
    schemas: dict[str, Any] = {"presence": PRESENCE, "info": INFO, "checkpoint": CHECKPOINT, "event": EVENT,
                               "state": STATE, "reply": REPLY, "snapshot": SNAPSHOT,
                               "reminder": REMINDER, "overdue": OVERDUE,
                               "ping-result": PING_RESULT, "replay-result": REPLAY_RESULT}
    for name in COMMAND_ARGS:
        schemas[f"cmd-{name}"] = command_schema(name)
    return {
        "asyncapi": "2.6.0",
        "info": {
            "title": "lockerd station link",
            "version": __version__,
            "description": (
                "MQTT contract between a locker controller (lockerd) and the station server. "
                "Topic levels are [a-z0-9-]; payloads are JSON objects with ts. "
                f"Commands larger than {MAX_COMMAND_BYTES} bytes, retained, older than command_max_age_s, "
                "for another site or node, or not matching their schema are refused with a reply. "
                "See docs/station-server.md."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"parameters": parameters, "schemas": schemas},
    }


# -- a small YAML emitter: block style, every string double-quoted (valid YAML 1.2) --

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$-]*$")


def _scalar(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return json.dumps(v)
    return json.dumps(str(v), ensure_ascii=False)


def _key(k: str) -> str:
    return k if _PLAIN_KEY.match(k) and k not in ("true", "false", "null", "yes", "no", "on", "off") else json.dumps(k)


def to_yaml(obj: Any, indent: int = 0) -> str:
    """Render dicts, lists and scalars as block YAML."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, dict | list) and v:
                lines.append(f"{pad}{_key(k)}:")
                lines.append(to_yaml(v, indent + 1))
            else:
                lines.append(f"{pad}{_key(k)}: {_empty(v) if isinstance(v, dict | list) else _scalar(v)}")
    elif isinstance(obj, list):
        for v in obj:
            if isinstance(v, dict | list) and v:
                inner = to_yaml(v, indent + 1).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_empty(v) if isinstance(v, dict | list) else _scalar(v)}")
    else:
        lines.append(pad + _scalar(obj))
    return "\n".join(lines)


def _empty(v: dict | list) -> str:
    return "{}" if isinstance(v, dict) else "[]"


HEADER = "# Generated from lockerd/station/contract.py: python -m lockerd.station.asyncapi > docs/asyncapi.yaml\n"


def render() -> str:
    return HEADER + to_yaml(asyncapi()) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
