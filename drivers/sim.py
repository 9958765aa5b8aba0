"""Simulated hardware that behaves like the real thing.

A door opens only after its lock was pulsed and a person pulls it while the
latch is released (or at once, for spring-loaded doors); a person can force
a door; a lock can jam (pulsed, but the latch stays shut); a relay can stick
(it will not switch off); a sensor can bounce; a whole board can vanish.
The person-side actions (pull, close, force, ...) are what the `lockerd sim`
commands and the tests call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from lockerd.drivers.base import (
    DoorSensors,
    DoorState,
    Feedback,
    LockBank,
    Parts,
    PowerBudget,
    Scan,
    Scanner,
    decode_scan,
)
from lockerd.drivers.options import Channels, Opt, Problem, Spec, count_channels, with_defaults

from lockerd.clock import Clock
from lockerd.errors import DriverError, DriverUnavailable

log = logging.getLogger(__name__)


@dataclass
class _Door:
    open: bool = False
    jammed: bool = False
    stuck: bool = False  # relay welded: will not switch off
    released_until: float = -1.0  # latch free until (monotonic)
    pulling_until: float = -1.0  # a person is pulling until (monotonic)


class SimBoard(LockBank, DoorSensors):
    """A relay board with locks and door sensors on the same channel numbers."""

    type_name = "sim"
    OPTIONS: ClassVar[Spec] = {
        "channels": Opt("int", 32, min=1, max=256, doc="lock and sensor channels of the simulated board"),
        "crossed": Opt("list-int", (), doc="two channels whose door sensors are swapped (bench fault)"),
        "state_file": Opt("path", "", doc="keeps the simulated doors across restarts, as real doors are"),
        "spring": Opt("bool", default=False, doc="doors pop open when released, with nobody pulling"),
    }

    def __init__(self, name: str, clock: Clock, budget: PowerBudget, options: Mapping[str, Any]):
        super().__init__(name, clock, budget=budget)
        self.options = with_defaults(self.OPTIONS, options)
        self.channels = int(self.options["channels"])
        crossed = tuple(self.options["crossed"] or ())
        self._sensor_of = {c: c for c in range(self.channels)}
        if len(crossed) == 2:
            a, b = crossed
            self._sensor_of[a], self._sensor_of[b] = b, a
        self.spring = bool(self.options["spring"])
        sf = self.options["state_file"] or ""
        self.state_file = Path(sf) if sf else None
        self.doors = [_Door() for _ in range(self.channels)]
        self.pulse_log: list[tuple[int, int, float]] = []  # (channel, ms, at)
        self._pulse_listeners: list[Callable[[int, int], None]] = []
        self._bouncing: set[asyncio.Task[None]] = set()

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], parts: Parts) -> SimBoard:
        return cls(name, parts.clock, parts.budget, options)

    @staticmethod
    def offered(options: Mapping[str, Any], _role: str) -> Channels | None:
        """Locks and sensors share the channel numbers 0 to channels-1, whatever the role."""
        return count_channels(options.get("channels"))

    @staticmethod
    def problems(options: Mapping[str, Any]) -> list[Problem]:
        crossed = options["crossed"]
        if isinstance(crossed, tuple) and crossed and len(crossed) != 2:
            return [("crossed", list(crossed), "exactly two channels")]
        return []

    # -- driver life -------------------------------------------------------

    def lock_channels(self) -> frozenset[int]:
        return frozenset(self.offered(self.options, "lock") or ())

    def on_pulse(self, listener: Callable[[int, int], None]) -> None:
        """Have ``listener(channel, ms)`` called as each pulse has landed, jammed latch or not.

        For benchmarks timing the scan path to the lock, and tests watching it.
        """
        self._pulse_listeners.append(listener)

    def sensor_channels(self) -> frozenset[int]:
        return frozenset(self.offered(self.options, "sensor") or ())

    async def start(self) -> None:
        self._load()
        self._save()
        await self.all_off()
        self._read_all()

    async def close(self) -> None:
        await self.all_off()
        for t in list(self._bouncing):
            t.cancel()

    def _load(self) -> None:
        if self.state_file and self.state_file.exists():
            try:
                saved = json.loads(self.state_file.read_text())
                for i, d in enumerate(saved.get("doors", [])[: self.channels]):
                    self.doors[i].open = bool(d.get("open"))
                    self.doors[i].jammed = bool(d.get("jammed"))
            except (OSError, ValueError) as e:
                log.warning("%s: ignoring unreadable sim state %s: %s", self.name, self.state_file, e)

    def _save(self) -> None:
        if not self.state_file:
            return
        doors = [{"open": d.open, "jammed": d.jammed} for d in self.doors]
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"doors": doors}))
        os.replace(tmp, self.state_file)

    def _read_all(self) -> None:
        for ch in range(self.channels):
            self._read(ch)

    def _read(self, door: int) -> None:
        """Read the sensor wired to ``door`` (crossed wiring reports it on another channel)."""
        if not self.online:
            return
        state = DoorState.OPEN if self.doors[door].open else DoorState.CLOSED
        self._set_door(self._sensor_of[door], state)

    # -- LockBank ------------------------------------------------------------

    def _check(self, channel: int) -> _Door:
        if not self.online:
            raise DriverUnavailable(f"{self.name}: board not answering")
        if not 0 <= channel < self.channels:
            raise DriverError(f"{self.name}: no channel {channel}")
        return self.doors[channel]

    async def _energise(self, channel: int, ms: int) -> None:
        door = self._check(channel)
        now = self.clock.monotonic()
        self.pulse_log.append((channel, ms, now))
        if not door.jammed:
            door.released_until = now + ms / 1000
            if self.spring or door.pulling_until >= now:
                door.pulling_until = -1.0
                self._open(channel)
        for listener in list(self._pulse_listeners):
            try:
                listener(channel, ms)
            except Exception:  # an observer must never break a pulse
                log.exception("pulse listener failed for %s", self.name)

    async def _deenergise(self, channel: int) -> None:
        door = self._check(channel)
        if door.stuck:
            raise DriverError(f"{self.name}: channel {channel} still energised after off")
        door.released_until = -1.0

    async def _all_off(self) -> None:
        if not self.online:
            raise DriverUnavailable(f"{self.name}: board not answering")
        for d in self.doors:
            if not d.stuck:
                d.released_until = -1.0

    # -- the physical world (people and faults) ------------------------------

    def _open(self, channel: int) -> None:
        if not self.doors[channel].open:
            self.doors[channel].open = True
            self._save()
            self._read(channel)

    def released(self, channel: int) -> bool:
        d = self.doors[channel]
        return d.stuck or d.released_until > self.clock.monotonic()

    def pull(self, channel: int, wait_s: float = 0.0) -> bool:
        """A person pulls the handle. Opens if the latch is free now; otherwise
        the person keeps pulling for ``wait_s`` and the door opens if the
        latch is released meanwhile. Returns True if it opened now."""
        door = self.doors[channel]
        if door.open:
            return True
        if self.released(channel) and not door.jammed:
            self._open(channel)
            return True
        if wait_s > 0:
            door.pulling_until = self.clock.monotonic() + wait_s
        return False

    def close_door(self, channel: int) -> None:
        door = self.doors[channel]
        door.pulling_until = -1.0
        if door.open:
            door.open = False
            self._save()
            self._read(channel)

    def force(self, channel: int) -> None:
        """Someone pries the door open without the lock being released."""
        self._open(channel)

    def jam(self, channel: int, jammed: bool = True) -> None:
        self.doors[channel].jammed = jammed
        self._save()

    def stick(self, channel: int, stuck: bool = True) -> None:
        self.doors[channel].stuck = stuck

    def vanish(self) -> None:
        """The board stops answering (power or cable lost)."""
        self.report_status(online=False, detail="board not answering")
        for ch in range(self.channels):
            self._set_door(ch, DoorState.UNKNOWN)

    def reappear(self) -> None:
        self.report_status(online=True)
        self._read_all()

    def bounce(self, channel: int, times: int = 3, interval_s: float = 0.003) -> None:
        """The sensor of ``channel`` chatters ``times`` times, then settles on the true state."""

        async def chatter() -> None:
            sensor = self._sensor_of[channel]
            true = DoorState.OPEN if self.doors[channel].open else DoorState.CLOSED
            other = DoorState.CLOSED if true is DoorState.OPEN else DoorState.OPEN
            for _ in range(times):
                self._set_door(sensor, other)
                await self.clock.sleep(interval_s)
                self._set_door(sensor, true)
                await self.clock.sleep(interval_s)

        task = asyncio.create_task(chatter())
        self._bouncing.add(task)
        task.add_done_callback(self._bouncing.discard)

    def snapshot(self) -> list[dict[str, Any]]:
        return [asdict(d) | {"channel": i} for i, d in enumerate(self.doors)]


class SimScanner(Scanner):
    """A scanner driven by ``inject``: the CLI and tests play the person scanning."""

    type_name = "sim"
    OPTIONS: ClassVar[Spec] = Scanner.OPTIONS

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], parts: Parts) -> SimScanner:
        return cls(name, parts.clock, debounce_ms=with_defaults(cls.OPTIONS, options)["debounce_ms"])

    def inject(self, data: str | bytes, symbology: str | None = None) -> bool:
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else bytes(data)
        code, error = decode_scan(raw)
        return self._emit(Scan(self.name, raw, code, self.clock.monotonic(), symbology, error))


class ConsoleFeedback(Feedback):
    """Prints what the person at the cabinet would see or hear."""

    type_name = "console"
    OPTIONS: ClassVar[Spec] = {}

    @classmethod
    def build(cls, name: str, _options: Mapping[str, Any], parts: Parts) -> ConsoleFeedback:
        return cls(name, parts.clock)

    def __init__(self, name: str, clock: Clock, **kw: Any):
        super().__init__(name, clock, **kw)
        self.shown: deque[tuple[str, bool, str]] = deque(maxlen=200)

    async def show(self, scanner: str, accepted: bool, message: str) -> None:
        self.shown.append((scanner, accepted, message))
        mark = "OK  " if accepted else "NO  "
        print(f"[{scanner}] {mark}{message}", flush=True)
