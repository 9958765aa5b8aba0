"""Injected time: wall time for records, monotonic time for durations.

Everything that waits (pulse length, door-open deadlines, held-open alarms,
debounce) sleeps through a Clock so that tests can drive time by hand with
:class:`ManualClock` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import heapq
import itertools
import time
import uuid
from datetime import UTC, datetime, tzinfo

TIME_ERROR = 5  # adjtimex(2): the kernel's clock is not synchronised


class Clock:
    """Real time."""

    def monotonic(self) -> float:
        return time.monotonic()

    def boot_id(self) -> str:
        """This OS boot: within one, monotonic times compare across processes (daemon restarts)."""
        return _kernel_boot_id()

    def synchronised(self) -> bool:
        """Whether the kernel says the wall clock is synchronised (NTP, or an RTC set from it)."""
        return _adjtimex_state() != TIME_ERROR

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@functools.cache
def _kernel_boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "process-" + uuid.uuid4().hex[:12]  # no /proc: durations then count within this process only


@functools.cache
def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def _adjtimex_state() -> int:
    libc = _libc()
    adjtimex = getattr(libc, "adjtimex", None)
    if adjtimex is None:
        return 0  # cannot tell: trust the clock, as before
    timex = ctypes.create_string_buffer(512)  # a struct timex (under 256 bytes) with modes = 0: read only
    return int(adjtimex(timex))


class ManualClock(Clock):
    """A clock that moves only when a test calls :meth:`advance`."""

    def __init__(self, wall: float = 1_790_000_000.0, monotonic: float = 1000.0):
        self._wall = wall
        self._mono = monotonic
        self.boot = uuid.uuid4().hex[:12]  # a test's "reboot" gives it a new one
        self.synced = True
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self._mono

    def wall(self) -> float:
        return self._wall

    def boot_id(self) -> str:
        return self.boot

    def synchronised(self) -> bool:
        return self.synced

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


def parse_time(text: str, naive: tzinfo = UTC) -> float:
    """Parse an ISO 8601 time into epoch seconds; one without an offset is in ``naive`` (UTC unless said)."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=naive)
    return dt.timestamp()
