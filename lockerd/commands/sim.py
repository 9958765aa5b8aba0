"""Acting as a person on simulated hardware: scan at a scanner, pull, close or force a door, fail a board.

Refused for real drivers: on real hardware a person goes there.
"""

from __future__ import annotations

import asyncio
from typing import Any

from lockerd.commands.spec import Context
from lockerd.controller import Controller
from lockerd.drivers.base import Scan
from lockerd.drivers.sim import SimBoard, SimScanner
from lockerd.errors import CommandError
from lockerd.opening import Outcome

DOOR_ACTIONS = ("pull", "close", "force", "jam", "unjam", "stick", "unstick", "bounce")
BOARD_ACTIONS = ("vanish", "reappear")


def _sim_door(c: Controller, compartment: str) -> tuple[SimBoard, int]:
    slot = c.slots.get(compartment)  # a pass-through compartment's rear door too
    if slot is None:
        raise CommandError(f"unknown compartment {compartment!r}")
    cfg = slot.cfg
    board = c.hw.drivers[cfg.lock_driver]
    if not isinstance(board, SimBoard):
        raise CommandError(f"compartment {compartment} is on real hardware ({board.type_name}); go there in person")
    return board, cfg.lock


async def scan(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Scan a code at a simulated scanner and wait for its outcome; ``pull`` the door as the lock releases."""
    scanners = c.hw.scanners
    name = args.get("scanner") or next((n for n, s in scanners.items() if isinstance(s, SimScanner)), None)
    scanner = scanners.get(name) if name else None
    if not isinstance(scanner, SimScanner):
        raise CommandError(f"no simulated scanner {name!r}" if name else "no simulated scanner configured")
    data = args["code"]
    raw = bytes.fromhex(args["hex"]) if args.get("hex") else data
    done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

    def watch(scan: Scan, outcome: Outcome) -> None:
        if scan.scanner == name and not done.done():
            done.set_result(outcome)

    c.on_outcome(watch)
    try:
        if not scanner.inject(raw):
            return {"accepted": False, "message": "same code again within the debounce window: ignored"}
        outcome = await asyncio.wait_for(done, 10)
    finally:
        c.off_outcome(watch)
    reply: dict[str, Any] = {"accepted": outcome.accepted, "message": outcome.message,
                             "compartment": outcome.compartment, "pulsed": outcome.pulsed}
    if args.get("pull") and outcome.pulsed and outcome.compartment:
        board, channel = _sim_door(c, outcome.compartment)
        reply["opened"] = board.pull(channel, 2.0)
    return reply


def door_action(op: str) -> Any:
    async def act(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        board, channel = _sim_door(c, args["compartment"])
        if op == "pull":
            return {"opened": board.pull(channel, float(args.get("wait_s", 0)))}
        {
            "close": lambda: board.close_door(channel),
            "force": lambda: board.force(channel),
            "jam": lambda: board.jam(channel, jammed=True),
            "unjam": lambda: board.jam(channel, jammed=False),
            "stick": lambda: board.stick(channel, stuck=True),
            "unstick": lambda: board.stick(channel, stuck=False),
            "bounce": lambda: board.bounce(channel, int(args.get("times", 3))),
        }[op]()
        return {}
    return act


def board_action(op: str) -> Any:
    async def act(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
        board = c.hw.drivers.get(args["driver"])
        if not isinstance(board, SimBoard):
            raise CommandError(f"{args['driver']!r} is not a simulated driver")
        board.vanish() if op == "vanish" else board.reappear()
        return {}
    return act
