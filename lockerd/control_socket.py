"""The control socket: how the lockerd CLI talks to a running daemon.

A Unix socket, one JSON object per line each way: {"op": NAME, ...args}
for each command of lockerd.commands that the CLI may carry (status, the
technician's and the supervisors' commands, acting on simulated hardware).
Every request is journaled with the local user who sent it (SO_PEERCRED).
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

from lockerd import peer
from lockerd.commands import CLI, COMMANDS, Context
from lockerd.controller import Controller
from lockerd.errors import CommandError, LockerdError
from lockerd.station.validate import errors

log = logging.getLogger(__name__)

MAX_LINE = 4 * 1024 * 1024  # an import file travels in one line


class ControlServer:
    def __init__(self, path: Path, controller: Controller):
        self.path = path
        self.controller = controller
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
        """Run one request of the CLI: a command of the registry that the CLI may carry."""
        op = req["op"]
        cmd = COMMANDS.get(op)
        if cmd is None or CLI not in cmd.transports:
            raise CommandError(f"unknown op {op!r}")
        if cmd.admin:
            self._admin_only(op, who)
        args = {k: v for k, v in req.items() if k != "op"}
        if problems := errors(args, cmd.args[CLI]):
            raise CommandError(f"{op}: {'; '.join(problems[:5])}")
        via = who.fields()
        return await cmd.run(self.controller, args, Context(CLI, by=via, via=via, peer=who))

    def _admin_only(self, op: str, who: peer.Peer) -> None:
        """Changing who may open what is for administrators, not for everyone who may use the socket."""
        group = self.controller.config.admin_group
        if who.is_admin(group):
            return
        error = (f"{op} changes people, badges and assignments: only root, the daemon's user"
                 + (f" or members of group {group}" if group else "") + f" may; {who.user} may not")
        self.controller.journal.append("control.refused", op=op, error=error, **who.fields())
        log.warning("control: %s by %s (uid %d) refused", op, who.user, who.uid)
        raise CommandError(error)
