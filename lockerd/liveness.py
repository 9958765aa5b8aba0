"""Liveness for the service watchdog: each long-running loop beats its name, even while nothing arrives."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import TypeVar

from lockerd.clock import Clock
from lockerd.errors import JournalError
from lockerd.journal import Journal

T = TypeVar("T")


class Heartbeat:
    """Beats ``beat(name)`` at least every ``every_s``; a no-op until the daemon sets ``beat`` (watch())."""

    def __init__(self) -> None:
        self.beat: Callable[[str], None] | None = None
        self.every_s = 1.0

    async def journal_round_trips(self, journal: Journal, clock: Clock) -> None:
        """Beat "controller" after each round trip through the journal writer: a writer hung in fsync leaves
        every grant waiting, and the watchdog must see that."""
        beat = self.beat
        assert beat is not None
        while True:
            # An unusable journal answers at once: that is fail-secure mode, logged elsewhere, not a hang.
            with contextlib.suppress(JournalError):
                await journal.flush()
            beat("controller")
            await clock.sleep(self.every_s)

    async def through(self, items: AsyncIterable[T], name: str) -> AsyncIterator[T]:
        """Yield from ``items``, beating ``name`` per item and every ``every_s`` while waiting for one.

        A loop whose body hangs, or that ended, stops beating. The wait for
        the next item runs as its own task so that a timeout never cancels
        (and so closes) the driver's stream.
        """
        beat = self.beat
        if beat is None:
            async for item in items:
                yield item
            return
        it = aiter(items)
        nxt: asyncio.Future[T] | None = None
        try:
            while True:
                beat(name)
                if nxt is None:
                    nxt = asyncio.ensure_future(anext(it))
                done, _ = await asyncio.wait({nxt}, timeout=self.every_s)
                if not done:
                    continue
                try:
                    item = nxt.result()
                except StopAsyncIteration:
                    return
                nxt = None
                yield item
        finally:
            if nxt is not None:
                nxt.cancel()
