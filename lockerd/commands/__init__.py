"""Every command lockerd takes, declared once, and served by both transports.

The control socket (lockerd.control_socket: the lockerd CLI, a local user
known by SO_PEERCRED) and the station link (lockerd.station_handler: MQTT,
signed by the station's keys) look commands up here. A command names the
transports that may carry it: what changes items, deadlines, people and
badges comes from the station's case system; what people do at the locker
(an acknowledgement, an emergency) may come from either; the technician's
work and acting on simulated hardware are for the CLI alone. A station
command's arguments and the authority its signers need are those of the
MQTT contract (lockerd.station.contract), which documents them for the
station; the CLI's arguments are declared here.

A new command: write its handler beside its kind (records, locker, views, sim),
add one line below, and for the station add its schema and authority to
the contract.
"""

from __future__ import annotations

from typing import Any

from lockerd.commands import locker, records, sim, views
from lockerd.commands.spec import CLI, STATION, TEXT, Command, Context, Handler, cli_args
from lockerd.station import contract

__all__ = ["CLI", "COMMANDS", "STATION", "Command", "Context"]

_PEOPLE = {"type": "array", "items": {"type": "string"}}
_DOOR = cli_args({"compartment": {"type": "string"}, "wait_s": {"type": ["number", "null"]},
                  "times": {"type": ["integer", "null"]}}, ("compartment",))
_BOARD = cli_args({"driver": {"type": "string"}}, ("driver",))

# What the CLI sends for each command it may carry.
_CLI_ARGS: dict[str, dict[str, Any]] = {
    "status": cli_args({}),
    "import": cli_args({"text": {"type": "string"}, "csv": {"type": "boolean"}, "name": {"type": "string"},
                        "by": TEXT}, ("text",)),
    "clear-fault": cli_args({"compartment": {"type": "string"}, "person": TEXT}, ("compartment",)),
    "acknowledge-alarm": cli_args({"compartment": {"type": "string"}, "person": {"type": "string"},
                                   "note": TEXT}, ("compartment", "person")),
    "emergency-open": cli_args({"compartment": TEXT, "all": {"type": "boolean"}, "cabinet": TEXT,
                                "people": _PEOPLE, "reason": TEXT}),
    "maintenance": cli_args({"action": {"type": "string"}, "person": TEXT, "reason": TEXT,
                             "compartment": TEXT, "witness": TEXT}, ("action",)),
    "scan": cli_args({"code": {"type": "string"}, "hex": TEXT, "scanner": TEXT, "pull": {"type": "boolean"}},
                     ("code",)),
} | {op: _DOOR for op in sim.DOOR_ACTIONS} | {op: _BOARD for op in sim.BOARD_ACTIONS}


def _command(name: str, run: Handler, *transports: str, admin: bool = False) -> Command:
    args = {t: contract.COMMAND_ARGS[name] if t == STATION else _CLI_ARGS[name] for t in transports}
    authority = contract.COMMAND_AUTHORITY[name] if STATION in transports else None
    return Command(name, run, args, authority, admin)


COMMANDS: dict[str, Command] = {cmd.name: cmd for cmd in (
    _command("assign", records.assign, STATION),
    _command("unassign", records.unassign, STATION),
    _command("acknowledge", records.acknowledge, STATION),
    _command("release", records.release, STATION),
    _command("register-person", records.register_person, STATION),
    _command("revoke-person", records.revoke_person, STATION),
    _command("register-badge", records.register_badge, STATION),
    _command("revoke-badge", records.revoke_badge, STATION),
    _command("authorize-retrieval", records.authorize_retrieval, STATION),
    _command("open", locker.remote_open, STATION),
    _command("acknowledge-alarm", locker.acknowledge_alarm, STATION, CLI),
    _command("emergency-open", locker.emergency_open, STATION, CLI),
    _command("snapshot", views.snapshot, STATION),
    _command("status", locker.status, CLI),
    _command("import", locker.import_file, CLI, admin=True),
    _command("clear-fault", locker.clear_fault, CLI),
    _command("maintenance", locker.maintenance, CLI),
    _command("scan", sim.scan, CLI),
    *(_command(op, sim.door_action(op), CLI) for op in sim.DOOR_ACTIONS),
    *(_command(op, sim.board_action(op), CLI) for op in sim.BOARD_ACTIONS),
)}
