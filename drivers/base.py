"""The driver interfaces: what the controller needs from each kind of hardware.

Every driver, simulated or real, implements these. The controller never
imports a hardware library; a driver imports its own only when a config
uses it. A single driver object may serve several roles (a Modbus relay
board is both a lock bank and a door-sensor bank): the role classes are
cooperative, so ``class Board(LockBank, DoorSensors)`` works, with keyword
arguments passed along the chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Generic, TypeVar

from lockerd.drivers.options import Opt, Spec

from lockerd.clock import Clock
from lockerd.errors import DriverError, DriverTimeout

log = logging.getLogger(__name__)

T = TypeVar("T")


class DoorState(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Scan:
    """One scan as it left the scanner.

    ``code`` is the decoded text, or None when the driver refused the input,
    in which case ``error`` says why (the controller journals the refusal).
    """

    scanner: str
    raw: bytes
    code: str | None
    at: float  # monotonic time the scan was complete
    symbology: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DoorChange:
    driver: str
    channel: int
    state: DoorState
    at: float  # monotonic time the change was seen


@dataclass(frozen=True, slots=True)
class DriverStatus:
    driver: str
    online: bool
    detail: str = ""


GS1_SEPARATOR = "\x1d"


def decode_scan(raw: bytes, max_length: int = 256) -> tuple[str | None, str | None]:
    """Turn a scan's bytes into text, or say why they are not a usable code.

    Returns ``(code, None)`` or ``(None, reason)``. GS1 group separators are
    the one control character kept: they are part of GS1 codes.
    """
    if not raw.strip():
        return None, "empty scan"
    if len(raw) > max_length:
        return None, f"scan too long ({len(raw)} bytes, at most {max_length})"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "scan is not valid UTF-8 text"
    text = text.strip(" ")
    for ch in text:
        if ch == GS1_SEPARATOR:
            continue
        if not ch.isprintable():
            return None, f"scan contains a control character (0x{ord(ch):02x})"
    return text, None


class Driver:
    """What every driver shares: a name, a start/close life and an online status."""

    type_name = "abstract"
    # A driver that runs its own task (a port reader, a bus owner) beats at
    # least this often while the task cycles; None: it has no task to watch.
    heartbeat_s: float | None = None

    def __init__(self, name: str, clock: Clock):
        super().__init__()
        self.name = name
        self.clock = clock
        self.online = True
        self.detail = ""
        self._status_listeners: list[Callable[[DriverStatus], None]] = []
        self._heartbeat: Callable[[str], None] | None = None

    def on_heartbeat(self, beat: Callable[[str], None]) -> None:
        """Have ``beat(name)`` called whenever the driver's own task completes a cycle (the service watchdog)."""
        self._heartbeat = beat

    def beat(self) -> None:
        """The driver's task is alive and cycling."""
        if self._heartbeat is not None:
            self._heartbeat(self.name)

    async def start(self) -> None:
        """Open the device. Must not raise for a device that is merely absent:
        report it offline and keep retrying instead."""

    async def close(self) -> None:
        """Release the device, leaving every output safe (de-energised)."""

    def on_status(self, listener: Callable[[DriverStatus], None]) -> None:
        self._status_listeners.append(listener)

    def report_status(self, *, online: bool, detail: str = "") -> None:
        """Tell listeners the device went offline or came back; silent when nothing changed."""
        if online == self.online and detail == self.detail:
            return
        was_online = self.online
        self.online, self.detail = online, detail
        if online != was_online:
            if online:
                log.warning("%s: recovered", self.name)
            else:
                log.error("%s: offline: %s", self.name, detail)
        status = DriverStatus(self.name, online, detail)
        for listener in list(self._status_listeners):
            try:
                listener(status)
            except Exception:  # an observer must never break a driver
                log.exception("status listener failed for %s", self.name)


class Subscription(Generic[T]):
    """One subscriber's stream of published items.

    It is registered when it is made, not when it is first read: an item
    published between subscribing and the first ``anext`` is kept for it. It
    ends being fed when closed, or when it is dropped (a cancelled reader).
    """

    def __init__(self, fanout: Fanout[T]) -> None:
        self._fanout: Fanout[T] | None = fanout
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        fanout.add(self._queue)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        if self._fanout is None:
            raise StopAsyncIteration
        return await self._queue.get()

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        """No more items for this subscriber."""
        fanout, self._fanout = self._fanout, None
        if fanout is not None:
            fanout.discard(self._queue)

    def __del__(self) -> None:
        self.close()


class Fanout(Generic[T]):
    """Hands every item to each subscriber's queue; drivers call ``publish``."""

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[T]] = []

    def publish(self, item: T) -> None:
        for q in self._queues:
            q.put_nowait(item)

    def subscribe(self) -> Subscription[T]:
        return Subscription(self)

    def add(self, queue: asyncio.Queue[T]) -> None:
        self._queues.append(queue)

    def discard(self, queue: asyncio.Queue[T]) -> None:
        with contextlib.suppress(ValueError):
            self._queues.remove(queue)


class PowerBudget:
    """Caps how many solenoids are energised at once across every lock bank.

    The power supply can drive only a few solenoids together; a pulse that
    would exceed the budget waits for a slot, up to ``max_wait`` seconds.
    """

    def __init__(self, max_energised: int, max_wait: float = 5.0):
        self.limit = max_energised
        self.max_wait = max_wait
        self._sem = asyncio.Semaphore(max_energised)
        self.in_use = 0
        self.peak = 0

    async def acquire(self) -> None:
        if self._sem.locked():
            await self._wait_for_slot()
        else:
            # A free slot is taken without yielding to the loop: wait_for would
            # wrap the acquire in a task and let observers run before the pulse.
            await self._sem.acquire()
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)

    async def _wait_for_slot(self) -> None:
        try:
            await asyncio.wait_for(self._sem.acquire(), self.max_wait)
        except TimeoutError:
            raise DriverTimeout(
                f"power budget: {self.limit} solenoid(s) already energised for {self.max_wait} s"
            ) from None

    def release(self) -> None:
        self.in_use -= 1
        self._sem.release()


@dataclass(frozen=True)
class Parts:
    """What the core hands a driver type when it builds one: the clock, the power budget, the buses built."""

    clock: Clock
    budget: PowerBudget
    buses: Mapping[str, Driver] = field(default_factory=dict)


class LockBank(Driver):
    """Solenoid locks on numbered channels, pulsed and never held.

    Subclasses implement ``_energise`` (switch on, or start a hardware-timed
    pulse) and ``_deenergise`` (switch off; a no-op for hardware-timed
    pulses) and ``_all_off``. The budget slot is held for the whole pulse.
    """

    hardware_timed = False

    def __init__(self, name: str, clock: Clock, budget: PowerBudget, **kw: Any):
        super().__init__(name, clock, **kw)
        self.budget = budget
        self._pulses: set[asyncio.Task[None]] = set()
        self.energised: set[int] = set()
        self._fault_listeners: list[Callable[[int, str | None], None]] = []

    def on_lock_fault(self, listener: Callable[[int, str | None], None]) -> None:
        """``listener(channel, detail)``: detail is None when the fault cleared."""
        self._fault_listeners.append(listener)

    def report_lock_fault(self, channel: int, detail: str | None) -> None:
        for listener in list(self._fault_listeners):
            try:
                listener(channel, detail)
            except Exception:
                log.exception("lock fault listener failed for %s", self.name)

    def lock_channels(self) -> frozenset[int] | None:
        """The channels this bank drives, or None when it cannot say."""
        return None

    async def pulse(self, channel: int, ms: int) -> None:
        """Energise ``channel`` now and de-energise it after ``ms``.

        Returns once the lock is energised (or the hardware pulse started);
        the switch-off runs in the background and is retried until it lands.
        """
        await self.budget.acquire()
        try:
            await self._energise(channel, ms)
        except BaseException:
            self.budget.release()
            with contextlib.suppress(Exception):
                await self._deenergise(channel)
            raise
        self.energised.add(channel)
        task = asyncio.create_task(self._finish_pulse(channel, ms), name=f"{self.name}-off-{channel}")
        self._pulses.add(task)
        task.add_done_callback(self._pulses.discard)
        # Released by the task's end, however it ends: a task cancelled before
        # its first step never runs its finally, and the slot would be lost.
        task.add_done_callback(lambda _t: self.budget.release())

    async def _finish_pulse(self, channel: int, ms: int) -> None:
        try:
            await self.clock.sleep(ms / 1000)
            delay = 0.05
            failed = False
            while True:
                try:
                    await self._deenergise(channel)
                    break
                except DriverError as e:
                    # A relay left energised burns the solenoid: keep trying,
                    # and say so once so the compartment goes into fault.
                    if not failed:
                        # One line, no traceback: a board offline or refusing is expected, and e says which.
                        log.error("%s: switching channel %s off failed (%s); retrying", self.name, channel, e)  # noqa: TRY400
                        self.report_lock_fault(channel, f"relay did not switch off: {e}")
                        failed = True
                    await self.clock.sleep(delay)
                    delay = min(delay * 2, 2.0)
            if failed:
                log.warning("%s: channel %s switched off at last", self.name, channel)
                self.report_lock_fault(channel, None)
        finally:
            self.energised.discard(channel)

    async def all_off(self) -> None:
        await self._all_off()
        self.energised.clear()

    async def wait_pulses(self) -> None:
        """Wait until every running pulse has been switched off."""
        while self._pulses:
            await asyncio.gather(*list(self._pulses), return_exceptions=True)

    async def _energise(self, channel: int, ms: int) -> None:
        raise NotImplementedError

    async def _deenergise(self, channel: int) -> None:
        raise NotImplementedError

    async def _all_off(self) -> None:
        raise NotImplementedError


class DoorSensors(Driver):
    """Door sensors on numbered channels: current state and a stream of changes.

    Subclasses call ``_set_door`` whenever they read a channel; it publishes
    only real changes. Debouncing is the controller's job (mock and polled
    inputs do not debounce), so drivers report what they read.
    """

    # Seconds between two reads of the inputs of a polled board; 0 where each
    # change is reported as it happens (GPIO edges, the sim).
    sample_period_s: float = 0.0

    def __init__(self, name: str, clock: Clock, **kw: Any):
        super().__init__(name, clock, **kw)
        self._doors: dict[int, DoorState] = {}
        self._door_fanout: Fanout[DoorChange] = Fanout()

    def sensor_channels(self) -> frozenset[int] | None:
        return None

    def door(self, channel: int) -> DoorState:
        return self._doors.get(channel, DoorState.UNKNOWN)

    def door_changes(self) -> Subscription[DoorChange]:
        """Every door change from now on (subscribed at this call, not at the first read)."""
        return self._door_fanout.subscribe()

    def _set_door(self, channel: int, state: DoorState) -> None:
        if self._doors.get(channel) == state:
            return
        self._doors[channel] = state
        self._door_fanout.publish(DoorChange(self.name, channel, state, self.clock.monotonic()))


class Scanner(Driver):
    """A barcode scanner: an async stream of scans tagged with its id.

    The same code again within ``debounce_ms`` is one scan (scanners repeat
    a code while it stays in view); a different code is never held back.
    """

    # Every scanner section has these, whatever its type.
    OPTIONS: ClassVar[Spec] = {
        "debounce_ms": Opt("int", 1500, min=0, max=60000, doc="same code again within this is one scan"),
    }

    def __init__(self, name: str, clock: Clock, debounce_ms: int = 0, **kw: Any):
        super().__init__(name, clock, **kw)
        self.debounce_s = debounce_ms / 1000
        self._last: tuple[bytes, float] | None = None
        self._scan_fanout: Fanout[Scan] = Fanout()

    def scans(self) -> Subscription[Scan]:
        """Every scan from now on (subscribed at this call, not at the first read)."""
        return self._scan_fanout.subscribe()

    def _emit(self, scan: Scan) -> bool:
        """Publish a scan unless it repeats the last one within the debounce window."""
        last = self._last
        if last is not None and last[0] == scan.raw and scan.at - last[1] < self.debounce_s:
            return False
        self._last = (scan.raw, scan.at)
        self._scan_fanout.publish(scan)
        return True


class Feedback(Driver):
    """Tells the person at the cabinet what happened: buzzer, LED or display."""

    async def show(self, scanner: str, accepted: bool, message: str) -> None:
        raise NotImplementedError
