"""The control socket: how the lockerd CLI talks to a running daemon.

A Unix socket, one JSON object per line each way. It carries status, the
technician's commands and the person-side actions on simulated hardware
(scan, pull, close, force, jam, ...). Actions on simulated hardware are
refused for real drivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from lockerd import importer, peer
from lockerd.controller import Controller, Outcome
from lockerd.drivers.base import Scan
from lockerd.drivers.sim import SimBoard, SimScanner
from lockerd.errors import CommandError, LockerdError

log = logging.getLogger(__name__)

MAX_LINE = 4 * 1024 * 1024  # an import file travels in one line


class ControlServer:
    def __init__(self, path: Path, controller: Controller):
        self.path = path
        self.c = controller
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a crash; the journal lock guards against two daemons
        # Its mode is set before it listens: no client connects while the socket has the umask's mode.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self.path))
            os.chmod(self.path, 0o660)
        except OSError:
            sock.close()
            raise
        self._server = await asyncio.start_unix_server(self._client, sock=sock, limit=MAX_LINE)

    async def stop(self) -> None:
        if self._server:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        who = peer.of(writer.get_extra_info("socket"))
        try:
            while line := await reader.readline():
                try:
                    req = json.loads(line)
                    if not isinstance(req, dict) or not isinstance(req.get("op"), str):
                        raise CommandError('expected {"op": "...", ...}')
                    reply = {"ok": True} | await self.dispatch(req, who)
                except (LockerdError, ValueError, KeyError, TypeError) as e:
                    reply = {"ok": False, "error": str(e)}
                writer.write(json.dumps(reply).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()

    async def dispatch(self, req: dict[str, Any], who: peer.Peer) -> dict[str, Any]:
        op = req["op"]
        c = self.c
        via = who.fields()
        if op == "status":
            return {
                "site": c.config.site, "node": c.config.node,
                "journal": {"healthy": c.journal.healthy, "error": c.journal.error, "last_seq": c.journal.last_seq},
                "drivers": {n: {"online": d.online, "detail": d.detail} for n, d in c.hw.drivers.items()},
                "scanners": {n: {"online": d.online, "detail": d.detail} for n, d in c.hw.scanners.items()},
                "compartments": c.states(),
                "alarms": c.unacknowledged(),
            }
        if op == "scan":
            return await self._scan(req)
        if op == "import":
            self._admin_only(op, who)
            data = importer.parse(req["text"], bool(req.get("csv")), req.get("name", "import"))
            return {"imported": await importer.apply(c, data, str(req.get("by", "cli")), **via)}
        if op == "acknowledge-alarm":
            return await c.acknowledge_alarm(str(req.get("compartment")), str(req.get("person")),
                                             str(req.get("note") or ""), via)
        if op == "clear-fault":
            return {"cleared": c.clear_faults(req["compartment"], req.get("person", "technician"), via)}
        if op == "emergency-open":
            return await c.overrides.emergency_open(
                req.get("people") or [], req.get("reason", ""), compartment=req.get("compartment"),
                all_compartments=req.get("all") is True, cabinet=req.get("cabinet"), via=via)
        if op == "maintenance":
            action, person = req.get("action"), req.get("person")
            if action == "on":
                return await c.overrides.maintenance_on(person, req.get("reason", ""), via)
            if action == "off":
                return await c.overrides.maintenance_off(person, req.get("reason") or "", via)
            if action == "open":
                return await c.overrides.maintenance_open(req.get("compartment"), person, via,
                                                          witness=req.get("witness"))
            raise CommandError(f"maintenance: unknown action {action!r} (expected on, off or open)")
        if op in ("pull", "close", "force", "jam", "unjam", "stick", "unstick", "bounce"):
            board, channel = self._sim_door(req["compartment"])
            if op == "pull":
                return {"opened": board.pull(channel, float(req.get("wait_s", 0)))}
            action = {
                "close": lambda: board.close_door(channel),
                "force": lambda: board.force(channel),
                "jam": lambda: board.jam(channel, True),
                "unjam": lambda: board.jam(channel, False),
                "stick": lambda: board.stick(channel, True),
                "unstick": lambda: board.stick(channel, False),
                "bounce": lambda: board.bounce(channel, int(req.get("times", 3))),
            }[op]
            action()
            return {}
        if op in ("vanish", "reappear"):
            board = c.hw.drivers.get(req["driver"])
            if not isinstance(board, SimBoard):
                raise CommandError(f"{req['driver']!r} is not a simulated driver")
            board.vanish() if op == "vanish" else board.reappear()
            return {}
        raise CommandError(f"unknown op {op!r}")

    def _admin_only(self, op: str, who: peer.Peer) -> None:
        """Changing who may open what is for administrators, not for everyone who may use the socket."""
        group = self.c.config.admin_group
        if who.is_admin(group):
            return
        error = (f"{op} changes people, badges and assignments: only root, the daemon's user"
                 + (f" or members of group {group}" if group else "") + f" may; {who.user} may not")
        self.c.journal.append("control.refused", op=op, error=error, **who.fields())
        log.warning("control: %s by %s (uid %d) refused", op, who.user, who.uid)
        raise CommandError(error)

    def _sim_door(self, compartment: str) -> tuple[SimBoard, int]:
        slot = self.c.slots.get(compartment)  # a pass-through compartment's rear door too
        if slot is None:
            raise CommandError(f"unknown compartment {compartment!r}")
        cfg = slot.cfg
        board = self.c.hw.drivers[cfg.lock_driver]
        if not isinstance(board, SimBoard):
            raise CommandError(f"compartment {compartment} is on real hardware ({board.type_name}); go there in person")
        return board, cfg.lock

    async def _scan(self, req: dict[str, Any]) -> dict[str, Any]:
        scanners = self.c.hw.scanners
        name = req.get("scanner") or next((n for n, s in scanners.items() if isinstance(s, SimScanner)), None)
        scanner = scanners.get(name) if name else None
        if not isinstance(scanner, SimScanner):
            raise CommandError(f"no simulated scanner {name!r}" if name else "no simulated scanner configured")
        data = req["code"]
        raw = bytes.fromhex(req["hex"]) if req.get("hex") else data
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Outcome] = loop.create_future()

        def watch(scan: Scan, outcome: Outcome) -> None:
            if scan.scanner == name and not done.done():
                done.set_result(outcome)

        self.c.on_outcome(watch)
        try:
            if not scanner.inject(raw):
                return {"accepted": False, "message": "same code again within the debounce window: ignored"}
            outcome = await asyncio.wait_for(done, 10)
        finally:
            self.c.off_outcome(watch)
        reply: dict[str, Any] = {"accepted": outcome.accepted, "message": outcome.message,
                                 "compartment": outcome.compartment, "pulsed": outcome.pulsed}
        if req.get("pull") and outcome.pulsed and outcome.compartment:
            board, channel = self._sim_door(outcome.compartment)
            reply["opened"] = board.pull(channel, 2.0)
        return reply
