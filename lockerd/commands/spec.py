"""What a command is: its name, arguments, who may carry it, the authority it needs, and its handler."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lockerd.controller import Controller
from lockerd.peer import Peer
from lockerd.station.signing import Authority

CLI, STATION = "cli", "station"


@dataclass(frozen=True)
class Context:
    """Who sent a command, and how; what the journal records of them goes with every change it makes."""

    transport: str
    by: dict[str, Any]  # journaled with the change: the CLI user, or the station's command id and signers
    via: dict[str, Any]  # journaled with an override: the same, as an override names its origin
    requested_by: str | None = None  # the person the station names
    peer: Peer | None = None  # the CLI's local user


Handler = Callable[[Controller, dict[str, Any], Context], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class Command:
    name: str
    run: Handler
    args: dict[str, dict[str, Any]]  # transport -> JSON schema of the arguments it carries
    authority: Authority | None = None  # the role a station signer needs (lockerd.station.signing)
    admin: bool = False  # on the control socket: root, the daemon's user or [controller] admin_group only

    @property
    def transports(self) -> frozenset[str]:
        return frozenset(self.args)


def cli_args(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The arguments of a control-socket request (the "op" beside them)."""
    return {"type": "object", "properties": props, "required": list(required)}


TEXT = {"type": ["string", "null"]}
