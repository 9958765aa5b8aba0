"""A wait that another part of the loop can cut short: how a bus task sleeps until there is work."""

from __future__ import annotations

import asyncio


class Wakeup:
    """One task waits; anyone on the loop may wake it. A wake with nobody waiting is not kept."""

    def __init__(self) -> None:
        self._waiter: asyncio.Future[bool] | None = None

    def wake(self) -> None:
        _settle(self._waiter, woken=True)

    async def wait(self, seconds: float | None = None, wakeable: bool = True) -> bool:
        """Wait ``seconds`` (None: until woken); True when woken before that.

        With ``wakeable`` False only the time ends the wait (a reconnect backoff
        that commands must not cut short).
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiter = fut if wakeable else None
        handle = None if seconds is None else loop.call_later(seconds, _time_up, fut)
        try:
            return await fut
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()


def _settle(fut: asyncio.Future[bool] | None, *, woken: bool) -> None:
    if fut is not None and not fut.done():
        fut.set_result(woken)


def _time_up(fut: asyncio.Future[bool]) -> None:
    """The wait's own time ran out (a timer callback: call_later passes no keywords)."""
    _settle(fut, woken=False)
