"""Holding doubtful boards ahead of an off-write: a pulse's length is the hardware's, not the line's.

A pulse lasts from its on-write to its off-write at the board. A request to a
board that does not answer holds the line for its timeout (and its late
answer, on a half-duplex line, would collide with the next frame): started
just before an off-write falls due, it stretches another board's pulse by that
much. So a board tells the bus when its off-write falls due, and from the
worst case of a request before that moment until the off-write has gone, no
request starts to a board that may not answer promptly: one reported offline,
or one that left an attempt unanswered in the last ``doubt_s``. Answering
boards keep their polls and commands (one transaction is what the off-write
may wait behind), and a pulse-on waits only when its board is offline: a scan
is not kept waiting for a board that missed one reply a while ago. On an RTU
line the bus parks a held board's poll slot, which the line thread then skips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from lockerd.drivers.modbus_request import Polled, Request
from lockerd.drivers.modbus_rtu import RtuClient

log = logging.getLogger(__name__)


class DoubtfulHolds:
    """The part of :class:`~lockerd.drivers.modbus_bus.ModbusBus` that holds requests to doubtful boards while
    an off-write falls due. It works on the bus's own state, declared here."""

    doubt_s = 60.0
    hold_margin_s = 0.05
    off_expire_s = 1.0

    name: str
    timeout_s: float
    gap_s: float
    boards: list[Polled]
    _client: Any
    _loop: asyncio.AbstractEventLoop | None
    _closing: bool
    _offs: dict[Hashable, tuple[float, list[asyncio.TimerHandle]]]
    _held: set[Polled]
    _missed: dict[Polled, float]

    if TYPE_CHECKING:  # the bus's own method, for the type checker only (at run time the bus's is found)
        def _wake(self) -> None: ...

    def expect_off(self, key: Hashable, at: float) -> None:
        """An off-write under ``key`` falls due at loop time ``at``: hold doubtful boards until it has gone."""
        loop = self._loop
        if loop is None or self._closing:
            return
        self._forget_off(key)
        timers = [loop.call_at(at + max(self.off_expire_s, self._poll_worst_s()), self._off_expired, key, at)]
        hold_at = at - self._poll_worst_s()
        if isinstance(self._client, RtuClient) and hold_at > loop.time():
            timers.append(loop.call_at(hold_at, self._hold_polls))
        self._offs[key] = (at, timers)
        if hold_at <= loop.time():
            self._hold_polls()  # now, not on the loop's next turn: the line thread may start a poll meanwhile

    def _poll_worst_s(self) -> float:
        """How long before an off-write a poll of a doubtful board must not start: one attempt
        (its retries wait for the off-write) and its late answer, plus the slack."""
        return 2 * (self.timeout_s + self.gap_s) + self.hold_margin_s

    def _doubtful(self, board: Polled, now: float) -> bool:
        return not board.online or now - self._missed.get(board, -self.doubt_s) < self.doubt_s

    def _off_within(self, seconds: float, now: float, besides: Hashable | None = None) -> bool:
        return any(at < now + seconds for key, (at, _t) in self._offs.items() if key != besides)

    def _poll_held(self, board: Polled, now: float) -> bool:
        return bool(self._offs) and self._doubtful(board, now) and self._off_within(self._poll_worst_s(), now)

    def _command_held(self, req: Request, now: float) -> bool:
        """A command to a doubtful board waits while an off-write falls due within its worst case."""
        if not self._offs or (req.board.online if req.pulse else not self._doubtful(req.board, now)):
            return False
        worst = (req.attempts + 1) * (self.timeout_s + self.gap_s) + self.hold_margin_s
        return self._off_within(worst, now, besides=req.off)

    def _hold_polls(self) -> None:
        """RTU: park the poll slots of doubtful boards now that an off-write is near."""
        client = self._client
        if not isinstance(client, RtuClient) or self._loop is None:
            return
        now = self._loop.time()
        for b in self.boards:
            if b.polling and not b.misconfigured and b not in self._held and self._poll_held(b, now):
                client.park(b.poll_slot())
                self._held.add(b)

    def _release_polls(self) -> None:
        """Resume what waited for off-writes that have gone (or never came)."""
        client = self._client
        if isinstance(client, RtuClient) and self._loop is not None:
            now = self._loop.time()
            for b in list(self._held):
                if not self._poll_held(b, now):
                    self._held.discard(b)
                    if b.polling:
                        client.resume(b.poll_slot(), b.due, None)
        self._wake()  # held commands, and a TCP bus's held polls

    def _forget_off(self, key: Hashable) -> bool:
        entry = self._offs.pop(key, None)
        if entry is None:
            return False
        for t in entry[1]:
            t.cancel()
        return True

    def _off_sent(self, key: Hashable) -> None:
        if self._forget_off(key):
            self._release_polls()

    def _off_expired(self, key: Hashable, at: float) -> None:
        entry = self._offs.get(key)
        if entry is not None and entry[0] == at:
            log.debug("%s: the off-write %s expected at %.3f never came", self.name, key, at)
            self._off_sent(key)
