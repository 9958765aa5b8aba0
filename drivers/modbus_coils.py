"""Relays a Modbus board has on that nobody is pulsing: found by reading its coils, switched off until it
confirms.

A pulse lost to a crash, a stray write, or a board that did not end its own
hardware-timed pulse leaves a solenoid energised: it burns, and its door stays
unlocked. The board's door poll (or, for a board that times its pulses
itself, one coil read after the pulse should have ended) shows such a relay;
it is then reported as a lock fault and switched off again and again until
the board confirms, and the fault clears.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast

from lockerd.drivers.modbus_bus import ModbusBus
from lockerd.drivers.modbus_request import BadReply, ModbusClient, Polled

from lockerd.clock import Clock
from lockerd.errors import DriverError

log = logging.getLogger(__name__)


class StrayRelays:
    """The part of :class:`~lockerd.drivers.modbus_board.ModbusBoard` that finds and switches off relays left
    on. It works on the board's own state, declared here."""

    name: str
    unit: int
    coils: int
    first_coil: int
    polling: bool
    bus: ModbusBus
    clock: Clock
    energised: set[int]
    offline_retry_max_s: float
    flash_check_after_s: float
    _starting: int
    _off_tasks: dict[int, asyncio.Task[None]]
    _flash_ends: dict[int, float]
    _coil_check: asyncio.Task[None] | None
    _coil_check_at: float

    if TYPE_CHECKING:  # the board's own methods, for the type checker only (at run time the board's are found)
        def report_lock_fault(self, channel: int, detail: str | None) -> None: ...

        def _coil(self, channel: int) -> int: ...

        def _write_coil(self, address: int, *, on: bool, what: str, attempts: int | None = None
                        ) -> Awaitable[Any]: ...

    def _check_coils_at(self, at: float) -> None:
        """Read the coils once at loop time ``at`` or later (checks falling due together share one read)."""
        self._coil_check_at = max(self._coil_check_at, at)
        if self._coil_check is None or self._coil_check.done():
            self._coil_check = asyncio.get_running_loop().create_task(self._coil_check_loop(),
                                                                      name=f"{self.name}-coil-check")

    async def _coil_check_loop(self) -> None:
        delay = 0.1
        first, n, unit = self.first_coil, self.coils, self.unit

        def read(c: ModbusClient) -> Awaitable[Any]:
            return c.read_coils(first, count=n, device_id=unit)

        while self.polling:
            wait = self._coil_check_at - self.bus.now()
            if wait > 0:
                await asyncio.sleep(wait)  # bus time: the board's own timer runs on real time
                continue
            try:
                levels = await self.bus.call(cast("Polled", self), "read coils (after a hardware-timed pulse)", read,
                                             self._coil_levels, attempts=1)
            except DriverError as e:
                # Unknown until the board answers: asked again, less often, while it does not.
                log.debug("%s: coil check failed: %s", self.name, e)
                self._coil_check_at = self.bus.now() + delay
                delay = min(delay * 2, self.offline_retry_max_s)
                continue
            if self._starting:  # a pulse is starting: its relay is meant to be on; read again after it
                self._coil_check_at = self.bus.now() + self.flash_check_after_s
                continue
            if self.bus.now() < self._coil_check_at:
                continue  # another flash ends later than this read: read again after it
            self._check_coils(levels, "left on after its hardware-timed pulse")
            return

    def _coil_levels(self, r: Any) -> tuple[int, ...]:
        if r.function_code != 1 or len(r.bits) < self.coils:
            raise BadReply(f"expected {self.coils} coils (function 1), got {r}")
        return tuple(map(int, r.bits[:self.coils]))

    def _check_coils(self, levels: tuple[int, ...], why: str = "on without a pulse") -> None:
        """A relay on that we are not pulsing is switched off (a pulse lost to a crash, a stray write,
        a board that did not end its hardware-timed pulse)."""
        if self._starting:
            return
        now = self.bus.now()
        for ch, level in enumerate(levels):
            if level and ch not in self.energised and ch not in self._off_tasks \
                    and self._flash_ends.get(ch, 0.0) + self.flash_check_after_s <= now:
                log.error("%s: relay %s is %s: switching it off", self.name, ch, why)
                self._ensure_off(ch, f"found {why}")

    def _ensure_off(self, channel: int, reason: str) -> None:
        """Keep switching ``channel`` off in the background until the board confirms it."""
        if channel in self._off_tasks:
            return
        task = asyncio.create_task(self._off_until_confirmed(channel, reason), name=f"{self.name}-ensure-off-{channel}")
        self._off_tasks[channel] = task

        def forget(t: asyncio.Task[None]) -> None:
            if self._off_tasks.get(channel) is t:
                del self._off_tasks[channel]

        task.add_done_callback(forget)

    async def _off_until_confirmed(self, channel: int, reason: str) -> None:
        # Until the board confirms, nobody knows whether the solenoid is energised:
        # the lock is in fault from now, not only after a retry has failed.
        log.error("%s: lock %s may still be energised (%s); switching it off until the board confirms",
                  self.name, channel, reason)
        self.report_lock_fault(channel, f"relay may still be on: {reason}")
        delay = 0.05
        while True:
            try:
                await self._write_coil(self._coil(channel), on=False, what=f"lock {channel} off (safety)")
                break
            except DriverError as e:
                log.debug("%s: safety off of lock %s failed: %s", self.name, channel, e)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.warning("%s: lock %s confirmed off", self.name, channel)
        self.report_lock_fault(channel, None)
