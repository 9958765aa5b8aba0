"""Relay boards wired to doors, for the bench harness tests: a pymodbus server whose inputs follow its coils.

``DoorPeer`` is a :class:`modbus_peer.RelayPeer` with a spring-loaded door
behind every relay: a coil switched on releases the latch and the door pops
open, its discrete input reads 1; a door closer shuts it ``close_after_s``
after the coil goes off again. The faults a technician meets on a new
cabinet are knobs: a crossed pair (each door's sensor wired to the other's
input), a dead lock (the relay clicks, the door stays shut), a dead sensor
(the door opens, its input stays 0); a board that drops out is the
peer's ``dead`` set. ``opened`` counts real door openings, which is what a
person standing at the cabinet sees.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from lockerd.hil.technician import Technician
from modbus_peer import RelayPeer
from pymodbus.constants import ExcCodes

from lockerd.config import Compartment


class DoorPeer(RelayPeer):
    """Relay boards with a spring-loaded door on every coil (see the module doc)."""

    def __init__(self, units: list[int], *, close_after_s: float = 0.25, **kw: Any):
        super().__init__(units, **kw)
        self.close_after_s = close_after_s
        self.crossed: dict[int, tuple[int, int]] = {}  # unit -> the two channels whose sensors are swapped
        self.dead_locks: set[tuple[int, int]] = set()  # (unit, channel)
        self.dead_sensors: set[tuple[int, int]] = set()
        self.opened: Counter[tuple[int, int]] = Counter()
        self.door_open: set[tuple[int, int]] = set()
        self._closers: dict[tuple[int, int], asyncio.TimerHandle] = {}

    def sensor_of(self, unit: int, door: int) -> int:
        a, b = self.crossed.get(unit, (-1, -1))
        return b if door == a else a if door == b else door

    async def _action(self, unit: int, fc: int, start: int, address: int, count: int, regs: list[int],
                      values: Any) -> ExcCodes | None:
        result = await super()._action(unit, fc, start, address, count, regs, values)
        if result is None and fc in (5, 15) and values is not None:
            # Called before the write lands: act on the values being written.
            for i, on in enumerate(values if fc == 15 else values[:1]):
                self._coil(unit, address + i, bool(on))
        return result

    def _coil(self, unit: int, ch: int, on: bool) -> None:
        key = (unit, ch)
        closer = self._closers.pop(key, None)
        if closer is not None:
            closer.cancel()
        if on:
            if key in self.dead_locks or key in self.door_open:
                return
            self.door_open.add(key)
            self.opened[key] += 1
            self._sensor(unit, ch, level=True)
        elif key in self.door_open:
            self._closers[key] = asyncio.get_running_loop().call_later(self.close_after_s, self._close, unit, ch)

    def _close(self, unit: int, ch: int) -> None:
        self._closers.pop((unit, ch), None)
        self.door_open.discard((unit, ch))
        self._sensor(unit, ch, level=False)

    def _sensor(self, unit: int, door: int, level: bool) -> None:
        if (unit, door) in self.dead_sensors:
            return
        task = asyncio.get_running_loop().create_task(self.set_input(unit, self.sensor_of(unit, door), level))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for h in self._closers.values():
            h.cancel()
        self._closers.clear()
        await super().stop()


class DoorWatcher(Technician):
    """The person at a cabinet of :class:`DoorPeer` boards: asked whether a door opened, says what they saw."""

    def __init__(self, peers: dict[str, tuple[DoorPeer, int]]):
        self.peers = peers  # driver name -> (peer, unit)
        self.interactive = True
        self.lines: list[str] = []
        self._before: dict[str, int] = {}

    def say(self, text: str) -> None:
        self.lines.append(text)

    async def before_pulse(self, comp: Compartment, _manual: bool) -> None:
        peer, unit = self.peers[comp.lock_driver]
        self._before[comp.id] = peer.opened[(unit, comp.lock)]

    async def saw_open(self, comp: Compartment) -> bool | None:
        peer, unit = self.peers[comp.lock_driver]
        return peer.opened[(unit, comp.lock)] > self._before[comp.id]
