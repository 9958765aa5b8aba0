"""Injected time: wall time for records, monotonic time for durations.

Everything that waits (pulse length, door-open deadlines, held-open alarms,
debounce) sleeps through a Clock so that tests can drive time by hand with
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime


class Clock:
    """Real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock(Clock):
    """A clock that moves only when a test calls :meth:`advance`."""

    def __init__(self, wall: float = 1_790_000_000.0, monotonic: float = 1000.0):
        self._wall = wall
        self._mono = monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def jump_wall(self, seconds: float) -> None:
        """Step the wall clock alone, as NTP or a missing RTC does."""
        self._wall += seconds

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._mono + seconds, next(self._order), fut))
        await fut

    async def settle(self) -> None:
        """Let every runnable task run until the loop has nothing left to do now."""
        for _ in range(50):
            await asyncio.sleep(0)

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in deadline order."""
        target = self._mono + seconds
        await self.settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, fut = heapq.heappop(self._sleepers)
            self._wall += deadline - self._mono
            self._mono = deadline
            if not fut.done():
                fut.set_result(None)
            await self.settle()
        self._wall += target - self._mono
        self._mono = target
        await self.settle()


def iso_utc(ts: float) -> str:
    """UTC wall time as ISO 8601 with milliseconds and a Z."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_time(text: str) -> float:
    """Parse an ISO 8601 time (naive means UTC) into epoch seconds."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()
