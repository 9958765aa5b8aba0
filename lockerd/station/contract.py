"""The station contract as data: every topic, payload schema and command.

``docs/asyncapi.yaml`` is rendered from this module by
:mod:`lockerd.station.asyncapi` (``python -m lockerd.station.asyncapi >
docs/asyncapi.yaml``) and a test checks the two agree, so the document the station side reads and the schemas the link
enforces cannot drift apart. The link validates incoming commands against
these schemas with :mod:`lockerd.station.validate` (no runtime dependency on
jsonschema); the tests validate what the daemon publishes with jsonschema.
"""

from __future__ import annotations

import json
from typing import Any

from lockerd.custody_rules import DEADLINE_KINDS, RECIPIENTS
from lockerd.station.signing import Authority

# Biggest command payload the link will parse; larger ones are refused unread.
MAX_COMMAND_BYTES = 16 * 1024
# Most events one replay command re-publishes; the station asks again for more.
REPLAY_MAX = 10_000

ID_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
COMMAND_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"
HEX64 = r"^[0-9a-f]{64}$"


def _s(max_len: int, min_len: int = 1, **kw: Any) -> dict[str, Any]:
    return {"type": "string", "minLength": min_len, "maxLength": max_len, **kw}


TS = {"type": "string", "format": "date-time", "maxLength": 40,
      "description": "UTC wall time, ISO 8601 with milliseconds and a Z"}
PERSON_ID = _s(64, description="a person id from the station's registry")
ITEM_CODE = _s(128, description="the item's (dossier's or seized item's) barcode")
COMPARTMENT_ID = {"type": "string", "pattern": ID_PATTERN, "description": "a compartment id of this controller"}


def _args(props: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


# Each command's "args" schema. Handled through the daemon's command registry (lockerd.commands)
# except ping and replay, which the link answers itself.
COMMAND_ARGS: dict[str, dict[str, Any]] = {
    "assign": _args({
        "code": ITEM_CODE,
        "kind": {"type": "string", "enum": ["dossier", "evidence"],
                 "description": "a new item's kind (default dossier); an item's kind never changes"},
        "compartment": {"type": ["string", "null"], "pattern": ID_PATTERN,
                        "description": "where the item belongs; null registers it without a compartment"},
        "case_name": _s(256, 0),
        "category": _s(128, 0),
        "officer": _s(64, 0, description="the responsible officer (person id)"),
        "supervisor": _s(64, description="the officer's supervisor (a person with role supervisor): "
                                         "named in escalated reminders"),
        "taken_in": TS | {"description": "when the item was taken in (default now); the deposit deadline "
                                         "defaults to this plus custody.deposit_within_h (24 h)"},
        "deposit_due": TS | {"description": "the deposit deadline; refused if already past"},
    }, ["code", "compartment"]),
    "unassign": _args({"code": ITEM_CODE}, ["code"]),
    "register-person": _args({
        "id": PERSON_ID,
        "name": _s(128),
        "role": {"type": "string", "enum": ["officer", "case_manager", "supervisor", "technician"]},
    }, ["id", "name", "role"]),
    "revoke-person": _args({"id": PERSON_ID}, ["id"]),
    "register-badge": _args({"code": _s(128), "person": PERSON_ID}, ["code", "person"]),
    "revoke-badge": _args({"code": _s(128)}, ["code"]),
    "open": _args({
        "compartment": COMPARTMENT_ID,
        "reason": _s(256, description="why the station opens it; journaled with the grant"),
    }, ["compartment", "reason"]),
    "authorize-retrieval": _args({
        "code": ITEM_CODE,
        "reason": _s(256, description="why the item leaves the locker; stands in for a reason card, once"),
        "release": {"type": "boolean", "description": "true: the item leaves for good (a release)"},
        "valid_s": {"type": "integer", "minimum": 60, "maximum": 604800,
                    "description": "how long the authorisation stands; default 28800 (one shift)"},
    }, ["code", "reason"]),
    "emergency-open": _args({
        "compartment": COMPARTMENT_ID,
        "all": {"type": "boolean", "description": "every compartment (of cabinet, if given) in turn"},
        "cabinet": {"type": "string", "pattern": ID_PATTERN, "description": "with all: only this cabinet"},
        "people": {"type": "array", "items": PERSON_ID,
                   "description": "the two who authorise it: a supervisor, and a second supervisor or a case manager"},
        "reason": _s(256, description="why; journaled with the alarm"),
    }, ["people", "reason"]),
    "acknowledge": _args({
        "code": ITEM_CODE,
        "deadline": {"type": "string", "enum": list(DEADLINE_KINDS),
                     "description": "which deadline, when the item has more than one with reminders"},
        "person": PERSON_ID | {"description": "who acknowledges (a registered person)"},
        "note": _s(256, 0),
    }, ["code", "person"]),
    "acknowledge-alarm": _args({
        "compartment": COMPARTMENT_ID,
        "person": PERSON_ID | {"description": "who acknowledges (a supervisor or case manager)"},
        "note": _s(256, 0),
    }, ["compartment", "person"]),
    "release": _args({
        "code": ITEM_CODE,
        "person": PERSON_ID | {"description": "who removes the dossier for good (custody.release_roles)"},
        "reason": _s(256, description="why; required, journaled with the release"),
    }, ["code", "person", "reason"]),
    "ping": _args({}, []),
    "snapshot": _args({}, []),
    "replay": _args({
        "from_seq": {"type": "integer", "minimum": 1},
        "to_seq": {"type": "integer", "minimum": 1,
                   "description": f"inclusive; default and cap: from_seq + {REPLAY_MAX - 1}"},
    }, ["from_seq"]),
}

LINK_COMMANDS = frozenset({"ping", "replay"})

# The authority a signature must carry for each command (None: read-only,
# may be unsigned). Changing a supervisor or a case manager (or their badge)
# needs AUTHORITY instead of PEOPLE: the handler raises it for those.
COMMAND_AUTHORITY: dict[str, Authority | None] = {
    "assign": Authority.CUSTODY,
    "unassign": Authority.CUSTODY,
    "acknowledge": Authority.CUSTODY,
    "acknowledge-alarm": Authority.OPEN,
    "release": Authority.CUSTODY,
    "register-person": Authority.PEOPLE,
    "revoke-person": Authority.PEOPLE,
    "register-badge": Authority.PEOPLE,
    "revoke-badge": Authority.PEOPLE,
    "open": Authority.OPEN,
    "authorize-retrieval": Authority.EVIDENCE,
    "emergency-open": Authority.EMERGENCY,
    "ping": None,
    "snapshot": None,
    "replay": None,
}
# Distinct signers a command needs; one unless named here.
SIGNERS_NEEDED = {"emergency-open": 2}

SIGNATURE = {
    "type": "object",
    "properties": {
        "key": {"type": "string", "maxLength": 64, "description": "the signer's key id ([station.signers.<id>])"},
        "sig": {"type": "string", "pattern": "^[0-9a-f]{128}$",
                "description": "Ed25519 signature (hex) of 'lockerd-command-v1:' + SHA-256 of the canonical "
                               "command (docs/station-server.md)"},
    },
    "required": ["key", "sig"],
    "additionalProperties": False,
}

COMMAND = {
    "type": "object",
    "description": "A command from the station. Topic: {prefix}/{site}/{node}/cmd/{name}; QoS 1; never retained.",
    "properties": {
        "id": {"type": "string", "pattern": COMMAND_ID_PATTERN,
               "description": "unique per command; a repeated id is answered, never applied twice"},
        "ts": TS,
        "requested_by": _s(64, description="who asked (person or station user id); journaled"),
        "site": {"type": "string", "pattern": ID_PATTERN,
                 "description": "refused if not this site; required in a signed command"},
        "node": {"type": "string", "pattern": ID_PATTERN,
                 "description": "refused if not this node; required in a signed command"},
        "args": {"type": "object", "description": "the command's arguments (see each command's schema)"},
        "signatures": {"type": "array", "items": SIGNATURE, "minItems": 1, "maxItems": 2,
                       "description": "required for every command but ping, snapshot and replay: one signature by a "
                                      "station signer holding the command's authority (two distinct signers "
                                      "for emergency-open)"},
    },
    "required": ["id", "ts", "requested_by", "args"],
    "additionalProperties": False,
}

REPLY = {
    "type": "object",
    "description": "The answer to one command, with the command's id.",
    "properties": {
        "id": {"type": ["string", "null"], "description": "the command's id; null when it could not be read"},
        "ts": TS,
        "command": {"type": ["string", "null"]},
        "ok": {"type": "boolean"},
        "result": {"type": "object", "description": "present when ok"},
        "error": {"type": "string", "description": "present when not ok: what was wrong, in one sentence"},
        "duplicate": {"type": "boolean",
                      "description": "true when this id was seen before: the first outcome stands, nothing ran again"},
    },
    "required": ["id", "ts", "command", "ok"],
    "additionalProperties": False,
}

EVENT = {
    "type": "object",
    "description": "One journal event, exactly as journaled (see docs/events.md for kinds and data).",
    "properties": {
        "seq": {"type": "integer", "minimum": 1, "description": "gapless per controller: a jump means a gap"},
        "id": {"type": "string", "pattern": "^[0-9a-f]{32}$", "description": "unique; a redelivery keeps it"},
        "ts": TS,
        "mono": {"type": "number", "description": "monotonic seconds within this boot"},
        "boot": _s(64),
        "kind": _s(64),
        "compartment": {"type": ["string", "null"]},
        "dossier": {"type": ["string", "null"], "description": "item barcode, when one is involved"},
        "people": {"type": "array", "items": {"type": "string"}},
        "data": {"type": "object"},
        "state": {"type": "array", "items": {"type": "array"},
                  "description": "the state-table changes this event made, as [action, table, row]; part of the "
                                 "hashed record; absent when it made none"},
        "prev": {"type": "string", "pattern": HEX64, "description": "hash of seq - 1 (64 zeros for seq 1)"},
        "hash": {"type": "string", "pattern": HEX64, "description": "sha256 over prev + canonical JSON of the rest"},
    },
    "required": ["seq", "id", "ts", "mono", "boot", "kind", "compartment", "dossier", "people", "data",
                 "prev", "hash"],
    "additionalProperties": False,
}

PRESENCE = {
    "type": "object",
    "properties": {
        "state": {"type": "string", "enum": ["online", "offline"]},
        "ts": TS,
        "boot": _s(64),
        "clean": {"type": "boolean",
                  "description": "offline only: true after a clean stop, false when it is the last will"},
    },
    "required": ["state", "ts", "boot"],
    "additionalProperties": False,
}

INFO = {
    "type": "object",
    "properties": {
        "ts": TS,
        "version": _s(32),
        "config": {"type": "string", "pattern": HEX64, "description": "sha256 of the config file"},
        "started_at": TS,
        "site": {"type": "string", "pattern": ID_PATTERN},
        "node": {"type": "string", "pattern": ID_PATTERN},
        "boot": _s(64),
        "client_id": _s(128),
        "last_seq": {"type": "integer", "minimum": 0},
        "journal": {
            "type": "object",
            "description": "whether the journal can be written; republished when that changes. While it cannot, "
                           "every grant is refused, and events are held in memory and arrive late (journal.outage)",
            "properties": {
                "writable": {"type": "boolean"},
                "error": {"type": ["string", "null"]},
                "held": {"type": "integer", "minimum": 0, "description": "events waiting in memory"},
            },
            "required": ["writable", "error", "held"],
            "additionalProperties": False,
        },
    },
    "required": ["ts", "version", "config", "started_at", "site", "node", "boot", "client_id", "last_seq"],
    "additionalProperties": False,
}

CHECKPOINT = {
    "type": "object",
    "description": "the controller's signature (Ed25519, key: its public key, hex) over the canonical JSON of site, "
                   "node, seq, hash, ts and key: the journal's newest event at that moment. Keep every one: "
                   "`lockerd verify --anchors FILE --key KEY` finds a journal truncated, rewritten or renumbered "
                   "since",
    "properties": {
        "site": {"type": "string", "pattern": ID_PATTERN},
        "node": {"type": "string", "pattern": ID_PATTERN},
        "seq": {"type": "integer", "minimum": 1},
        "hash": {"type": "string", "pattern": HEX64},
        "ts": TS,
        "key": {"type": "string", "pattern": HEX64},
        "sig": {"type": "string", "pattern": "^[0-9a-f]{128}$"},
        "reason": {"type": "string", "enum": ["start", "stop", "every", "interval"]},
    },
    "required": ["site", "node", "seq", "hash", "ts", "key", "sig", "reason"],
    "additionalProperties": False,
}

STATE = {
    "type": "object",
    "properties": {
        "ts": TS,
        "compartment": {"type": "string", "pattern": ID_PATTERN},
        "cabinet": {"type": "string", "pattern": ID_PATTERN},
        "kind": {"type": "string", "enum": ["dossier", "evidence"]},
        "door": {"type": "string", "enum": ["open", "closed", "unknown"]},
        "lock": {"type": "string", "enum": ["locked", "released"]},
        "items": {"type": "array", "items": {"type": "string"}},
        "faults": {"type": "array", "items": {"type": "string"}},
        "alarm": {"type": ["string", "null"]},
    },
    "required": ["ts", "compartment", "cabinet", "kind", "door", "lock", "items", "faults", "alarm"],
    "additionalProperties": False,
}

SNAPSHOT = {
    "type": "object",
    "description": "the controller's whole current state: the reply to a snapshot command (its result) and the "
                   "message on the snapshot topic at every connect. Rebuild from it rather than from retained "
                   "messages: events up to last_seq are in the journal (ask replay for any missing); the "
                   "compartments are as of last_seq or a little later",
    "properties": {
        "ts": TS,
        "site": {"type": "string", "pattern": ID_PATTERN},
        "node": {"type": "string", "pattern": ID_PATTERN},
        "boot": _s(64),
        "presence": PRESENCE,
        "last_seq": {"type": "integer", "minimum": 0, "description": "the journal's newest event"},
        "last_hash": {"type": "string", "pattern": HEX64, "description": "its hash"},
        "checkpoint": {
            "description": "the newest signed checkpoint (as on the checkpoint topic, without reason); null "
                           "before the first one",
            "oneOf": [{"type": "null"}, {
                "type": "object",
                "properties": {k: v for k, v in CHECKPOINT["properties"].items() if k != "reason"},
                "required": [k for k in CHECKPOINT["required"] if k != "reason"],
                "additionalProperties": False}],
        },
        "journal": INFO["properties"]["journal"],
        "compartments": {"type": "array", "items": STATE, "description": "every compartment, by id"},
    },
    "required": ["ts", "site", "node", "boot", "presence", "last_seq", "last_hash", "checkpoint", "journal",
                 "compartments"],
    "additionalProperties": False,
}

# The data of reminder.due and reminder.escalated events (see docs/events.md).
REMINDER = {
    "type": "object",
    "description": "data of a reminder.due (level 1) or reminder.escalated (level 2 on) event",
    "properties": {
        "deadline": {"type": "string", "enum": list(DEADLINE_KINDS)},
        "due": TS,
        "level": {"type": "integer", "minimum": 1},
        "levels": {"type": "integer", "minimum": 1, "description": "rungs of this deadline's ladder"},
        "to": {"type": "string", "enum": list(RECIPIENTS), "description": "who is to be told"},
        "recipient": {"type": ["string", "null"],
                      "description": "the person id, resolved when the rung fires from active people only: the "
                                     "holder, else the responsible officer; a named supervisor. Null: the station "
                                     "resolves it (legal; a supervisor not named)"},
        "officer": {"type": ["string", "null"]},
        "holder": {"type": ["string", "null"], "description": "who took the dossier out, when known"},
        "case_name": {"type": "string"},
        "overdue_s": {"type": "number"},
        "skipped": {"type": "array", "description": "rungs passed over because nobody there may be told",
                    "items": {"type": "object", "properties": {
                        "level": {"type": "integer"}, "to": {"type": "string"}, "why": {"type": "string"}},
                        "required": ["level", "to", "why"], "additionalProperties": False}},
        "unreachable": {"type": "string", "description": "the top rung, and still nobody active to tell: why"},
    },
    "required": ["deadline", "due", "level", "levels", "to", "recipient", "overdue_s"],
    "additionalProperties": False,
}

OVERDUE = {
    "type": "object",
    "description": "the items overdue now, most overdue first; republished when a reminder fires or a deadline "
                   "ends, and on every connect",
    "properties": {
        "ts": TS,
        "count": {"type": "integer", "minimum": 0},
        "items": {"type": "array", "items": {"type": "object", "properties": {
            "code": _s(128), "deadline": {"type": "string", "enum": list(DEADLINE_KINDS)}, "due": TS,
            "level": {"type": "integer", "minimum": 0}, "officer": {"type": ["string", "null"]},
            "holder": {"type": ["string", "null"]}},
            "required": ["code", "deadline", "due", "level"], "additionalProperties": False}},
    },
    "required": ["ts", "count", "items"],
    "additionalProperties": False,
}

# What the link answers with for its own commands (inside the reply's "result").
PING_RESULT = {"type": "object", "properties": {"last_seq": {"type": "integer"}, "delivered": {"type": "integer"}},
               "required": ["last_seq", "delivered"]}
REPLAY_RESULT = {
    "type": "object",
    "properties": {"from_seq": {"type": "integer"}, "to_seq": {"type": "integer"}, "count": {"type": "integer"},
                   "topic": {"type": "string"}},
    "required": ["from_seq", "to_seq", "count", "topic"],
}


def command_schema(name: str) -> dict[str, Any]:
    """The full schema of one command: the envelope with that command's args."""
    s = json.loads(json.dumps(COMMAND))
    s["properties"]["args"] = COMMAND_ARGS[name]
    return s
