"""The vocabulary of an opening: a compartment's live door, one opening of it, a request to open, its outcome.

Shared by the controller (which opens) and the parts around it that ask for
openings or watch them: the evidence rule at the cabinet, door supervision,
the overrides and custody. ``Core`` names what those parts may ask of the
controller, so none of them imports it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from lockerd.clock import Clock
from lockerd.config import Compartment, Config
from lockerd.domain import Action, Registry
from lockerd.drivers.base import DoorState, Scan
from lockerd.journal import Journal, StateOp

# Alarms that stay after the door closes, until a person acknowledges them.
STAYING_ALARMS = frozenset({"forced"})


@dataclass
class Session:
    """One opening of a compartment: from the grant until the door closes."""

    grant_seq: int
    pulsed_at: float
    items: dict[str, Action] = field(default_factory=dict)  # code -> what happens to it at the close
    people: list[str] = field(default_factory=list)
    opened: bool = False
    opened_at: float | None = None
    note: dict[str, Any] = field(default_factory=dict)  # recorded with the items (an evidence reason)


@dataclass
class Slot:
    """The live state of one door: a compartment's, or the rear door of a pass-through compartment."""

    cfg: Compartment
    door: DoorState = DoorState.UNKNOWN
    raw: DoorState = DoorState.UNKNOWN  # last sensor reading, before debouncing
    raw_at: float = 0.0
    settling: bool = False
    session: Session | None = None
    faults: dict[str, str] = field(default_factory=dict)
    alarms: set[str] = field(default_factory=set)
    not_opened: int = 0
    held_task: asyncio.Task[None] | None = None
    open_task: asyncio.Task[None] | None = None
    pulsing: bool = False  # the lock's pulse is running: the lock is released
    parent: str | None = None  # set on a pass-through compartment's rear door: the compartment's id

    @property
    def compartment(self) -> str:
        """The compartment this door belongs to (itself, or the front of a rear door)."""
        return self.parent or self.cfg.id

    def view(self, items: list[str]) -> dict[str, Any]:
        """This door as the station and the CLI see it, with the items in its compartment."""
        c = self.cfg
        return {"compartment": c.id, "cabinet": c.cabinet, "kind": c.kind, "door": str(self.door),
                "lock": "released" if self.pulsing else "locked", "items": items,
                "faults": sorted(f"{k}: {v}" for k, v in self.faults.items()),
                "alarm": ",".join(sorted(self.alarms)) or None}

    def state_op(self) -> StateOp:
        """The compartments-table row of this door, journaled with each event that changes it."""
        return ("upsert", "compartments", {
            "id": self.cfg.id, "door": str(self.door), "faults": self.faults,
            "alarm": sorted(self.alarms), "not_opened": self.not_opened,
        })


@dataclass(frozen=True)
class OpenRequest:
    """One request to open a door: what changes hands, who is there, and who asked.

    A scan asks at the cabinet (``scan``); a command (station, CLI override,
    maintenance, custody's release) asks with ``source`` saying who and how.
    A refused scan is journaled with the scan and told to the person; a
    refused command raises CommandError to its sender.
    """

    items: dict[str, Action] = field(default_factory=dict)  # code -> action; empty: nothing changes hands
    people: tuple[str, ...] = ()
    scan: Scan | None = None
    scan_journaled: bool = False  # the scan that completed it (an evidence co-signer's badge) is journaled already
    source: dict[str, Any] = field(default_factory=dict)  # a command's origin, journaled with its grant
    note: dict[str, Any] = field(default_factory=dict)  # goes with the grant and the item events (a reason)
    grant_kind: str = "access.granted"  # a maintenance open is not an access
    allow_faults: frozenset[str] = frozenset()  # faults that do not stop this opening (a technician testing a jam)

    @property
    def dossier(self) -> str | None:
        return next(iter(self.items), None)

    def origin(self) -> dict[str, Any]:
        """Who asked, as journaled: the scan's fields, or the command's source."""
        return scan_fields(self.scan) if self.scan is not None else dict(self.source)


@dataclass(frozen=True)
class Outcome:
    """What became of one scan or command, as the person is told."""

    accepted: bool
    message: str
    compartment: str | None = None
    reason: str | None = None
    pulsed: bool = False


def scan_fields(scan: Scan) -> dict[str, Any]:
    """A scan as journaled: scanner and code, and the raw bytes of a code that did not decode."""
    shown = scan.code if scan.code is not None else scan.raw[:64].decode("utf-8", "replace")
    f: dict[str, Any] = {"scanner": scan.scanner, "code": shown}
    if scan.symbology:
        f["symbology"] = scan.symbology
    if scan.code is None:
        f["raw_hex"] = scan.raw[:64].hex()
    return f


class Core(Protocol):
    """What the parts around the controller may ask of it."""

    config: Config
    journal: Journal
    clock: Clock
    registry: Registry
    slots: dict[str, Slot]

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...

    def not_now(self) -> str | None: ...

    async def open(self, slot: Slot, request: OpenRequest) -> Outcome: ...

    def deny(self, scan: Scan, reason: str, message: str | None = None, *, compartment: str | None = None,
             dossier: str | None = None, people: tuple[str, ...] = (), journal_scan: bool = True) -> Outcome: ...

    async def show(self, scanner: str, accepted: bool, message: str) -> None: ...

    def alarm(self, slot: Slot, message: str) -> None: ...
