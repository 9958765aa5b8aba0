"""Every type a config may name, section by section: ``{type: DriverType}``.

A driver type is its class's option table, how to build it, and for lock and
sensor boards which channels its options give. :mod:`lockerd.config` checks
each section against these tables and :mod:`lockerd.hardware` builds from
them. A new driver is a class beside the others (its ``OPTIONS``, ``build``
and, for a board, ``offered``; ``problems`` for checks across its options)
and one line here.

Every module named here imports its hardware library only when a driver
starts (or, for Modbus TCP, when a bus is built), so reading these tables
loads none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from lockerd.drivers import modbus_capacity
from lockerd.drivers.base import Parts
from lockerd.drivers.camera import CAMERA_TYPES
from lockerd.drivers.gpio import GpioBoard, GpioFeedback
from lockerd.drivers.modbus_board import ModbusBoard
from lockerd.drivers.modbus_bus import RTU_OPTIONS, TCP_OPTIONS, ModbusBus
from lockerd.drivers.options import Channels, Problem, Section, Spec
from lockerd.drivers.serial_scanner import SerialScanner
from lockerd.drivers.sim import ConsoleFeedback, SimBoard, SimScanner


@dataclass(frozen=True)
class DriverType:
    """One type of one kind of section: what it accepts and how it is built."""

    options: Spec
    build: Callable[[str, Mapping[str, Any], Parts], object]
    # Boards: the channels a role ("lock", "sensor") may use, from checked options.
    offered: Callable[[Mapping[str, Any], str], Channels | None] | None = None
    # Mistakes across options (each option's own type and bounds are checked before).
    problems: Callable[[Mapping[str, Any]], list[Problem]] | None = None
    # Buses: mistakes of a bus with the boards on it (its name, its section, every board section).
    line_problems: Callable[[str, Section, list[Section]], list[Problem]] | None = None

    @classmethod
    def of(cls, driver: Any) -> DriverType:
        """The type a driver class declares through its OPTIONS, build, offered and problems."""
        return cls(driver.OPTIONS, driver.build, getattr(driver, "offered", None), getattr(driver, "problems", None))


# [drivers.*]: lock and door-sensor boards.
BOARDS: dict[str, DriverType] = {
    "sim": DriverType.of(SimBoard),
    "modbus": DriverType.of(ModbusBoard),
    "gpio": DriverType.of(GpioBoard),
}

# [buses.*]: what Modbus boards hang on.
BUSES: dict[str, DriverType] = {
    "rtu": DriverType(RTU_OPTIONS, partial(ModbusBus.build, "rtu"), line_problems=modbus_capacity.problems),
    "tcp": DriverType(TCP_OPTIONS, partial(ModbusBus.build, "tcp")),
}

SCANNERS: dict[str, DriverType] = {
    "sim": DriverType.of(SimScanner),
    "serial": DriverType.of(SerialScanner),
}

FEEDBACK: dict[str, DriverType] = {
    "console": DriverType.of(ConsoleFeedback),
    "gpio": DriverType.of(GpioFeedback),
}

# Cameras: a still on every grant and every door close (see camera.py).
CAMERAS: dict[str, DriverType] = {name: DriverType.of(camera) for name, camera in CAMERA_TYPES.items()}
