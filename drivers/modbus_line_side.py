"""The poll path of an RS-485 bus: what the RTU client's line thread tells the bus that owns it.

Door polls are the line's steady load: 16 boards at 10 Hz is 160 polls a
second, every hour of the day. The RTU client's line thread sends them on each
board's schedule and wakes the loop only for a poll with news: data unlike the
last, no answer, a wrong or refused reply. Those are judged here as the task
judges its own requests, with the same bounded attempts; the board's slot is
then resumed with its next due time, and with the reply data as "quiet" when
the board needs nothing more for the same data again. The thread starts no
poll while a command is queued or being performed (line_held), and beats for
the bus while it cycles.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from lockerd.drivers.modbus_frame import RtuReply
from lockerd.drivers.modbus_line import PollSlot
from lockerd.drivers.modbus_request import Judge, Polled, Request
from lockerd.drivers.modbus_rtu import RtuClient
from lockerd.drivers.wakeup import Wakeup

from lockerd.errors import DriverError

log = logging.getLogger(__name__)


class RtuLineSide:
    """The part of :class:`~lockerd.drivers.modbus_bus.ModbusBus` the line thread calls (its
    :class:`~lockerd.drivers.modbus_rtu.LineOwner` side). It works on the bus's own state, declared here."""

    name: str
    _client: Any
    _closing: bool
    _judge: Judge
    _missed: dict[Polled, float]
    _held: set[Polled]
    boards: list[Polled]
    _loop: asyncio.AbstractEventLoop | None
    _wakeup: Wakeup

    if TYPE_CHECKING:  # the bus's own methods (and the driver's heartbeat), for the type checker only:
        # defined here at run time they would come before the bus's in the method order.
        def beat(self) -> None: ...

        def _wake(self) -> None: ...

        def _succeeded(self, req: Request, value: Any) -> None: ...

        def _failed(self, req: Request, error: DriverError, silent: bool) -> None: ...

        def _poll_held(self, board: Polled, now: float) -> bool: ...

        def _hold_polls(self) -> None: ...

    def _line_connected(self, client: RtuClient, now: float) -> None:
        """A new line: every board's poll falls due now, and the thread takes the schedule."""
        slots = [b.poll_slot() for b in self.boards if not b.misconfigured]
        for slot in slots:
            slot.due, slot.quiet_reply, slot.parked = now, None, not slot.owner.polling
        self._held.clear()
        client.set_polls(slots)
        self._hold_polls()

    async def _wait_for_command(self) -> None:
        """Wait for a command, close or a lost line; the line thread beats meanwhile."""
        await self._wakeup.wait()

    def line_beat(self, client: RtuClient) -> None:
        if client is self._client:
            self.beat()

    def line_lost(self, client: RtuClient, detail: str) -> None:
        if client is self._client:
            log.debug("%s: %s", self.name, detail)
            self._wake()  # the task sees the line gone and reconnects

    def line_polled(self, client: RtuClient, slot: PollSlot, reply: RtuReply | None, exc: Exception | None) -> None:
        """A poll with news from the line thread; the slot stays parked until resumed here."""
        board = slot.owner
        if client is not self._client or self._closing or not board.polling:
            return  # from a line since replaced, or a board that stopped polling
        board.due = slot.due
        req = board.poll_request()
        quiet_reply: bytes | None = None
        try:
            value, error, retry, silent = self._judge(req, reply, exc)
            if error is not None and silent:
                self._missed[board] = self._loop.time()  # type: ignore[union-attr]
            if error is None:
                board.poll_attempt = 0
                self._succeeded(req, value)
                if board.quiet() and (board.inputs > 0 or not any(value)) and reply is not None:
                    quiet_reply = reply.frame  # the same again needs nothing from here
            else:
                board.poll_attempt += 1
                if retry and board.poll_attempt < req.attempts:
                    # Again after the gap, or after the commands queued: a poll never delays one.
                    board.due = self._loop.time()  # type: ignore[union-attr]
                else:
                    board.poll_attempt = 0
                    self._failed(req, error, silent)
        except Exception:  # whatever happens, the board's polls must go on: resumed below
            log.exception("%s: unexpected error handling a poll reply", self.name)
        if client is self._client and board.polling:
            if self._poll_held(board, self._loop.time()):  # type: ignore[union-attr]
                self._held.add(board)  # parked until the off-write is done (see _release_polls)
            else:
                client.resume(slot, board.due, quiet_reply)
