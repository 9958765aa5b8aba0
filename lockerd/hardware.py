"""The daemon's hardware: every driver its config names, built from the driver registry.

``build_hardware`` turns the config's [buses], [drivers], [feedback] and
[scanners] sections into driver objects, each by its type's entry in
:mod:`lockerd.drivers.registry`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lockerd.clock import Clock
from lockerd.config import Config
from lockerd.drivers import registry
from lockerd.drivers.base import DoorSensors, Driver, Feedback, LockBank, Parts, PowerBudget, Scanner

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Hardware:
    """Every driver object of one daemon, by config name."""

    budget: PowerBudget
    drivers: dict[str, Driver] = field(default_factory=dict)  # locks and sensors
    scanners: dict[str, Scanner] = field(default_factory=dict)
    feedback: dict[str, Feedback] = field(default_factory=dict)
    extras: list[Driver] = field(default_factory=list)  # shared buses

    def lock_bank(self, name: str) -> LockBank:
        d = self.drivers[name]
        if not isinstance(d, LockBank):
            raise TypeError(f"driver {name!r} ({d.type_name}) has no locks")
        return d

    def sensors(self, name: str) -> DoorSensors:
        d = self.drivers[name]
        if not isinstance(d, DoorSensors):
            raise TypeError(f"driver {name!r} ({d.type_name}) has no door sensors")
        return d

    def all(self) -> list[Driver]:
        return [*self.extras, *self.drivers.values(), *self.scanners.values(), *self.feedback.values()]

    async def start(self) -> None:
        # Buses first (boards use them); every lock bank de-energises its
        # outputs in start(), whatever state a crash left them in.
        for d in self.all():
            await d.start()

    async def close(self) -> None:
        for d in reversed(self.all()):
            try:
                await d.close()
            except Exception:  # closing one device must not leave the others open
                log.exception("closing %s failed", d.name)


def build_hardware(config: Config, clock: Clock) -> Hardware:
    hw = Hardware(PowerBudget(config.max_energised, config.power_wait_s))
    buses: dict[str, Driver] = {}
    for name, sec in config.buses.items():
        buses[name] = _built(registry.BUSES, sec.type, name, sec.options, Parts(clock, hw.budget), Driver)
        hw.extras.append(buses[name])
    parts = Parts(clock, hw.budget, buses)
    for name, sec in config.drivers.items():
        hw.drivers[name] = _built(registry.BOARDS, sec.type, name, sec.options, parts, Driver)
    for name, sec in config.feedback.items():
        hw.feedback[name] = _built(registry.FEEDBACK, sec.type, name, sec.options, parts, Feedback)
    for name, sec in config.scanners.items():
        hw.scanners[name] = _built(registry.SCANNERS, sec.type, name, sec.options, parts, Scanner)
    return hw


def _built(types: dict[str, registry.DriverType], kind: str, name: str, options: dict[str, Any], parts: Parts,
              want: type[T]) -> T:
    made = types[kind].build(name, options, parts)  # config validation makes an unknown type unreachable
    if not isinstance(made, want):
        raise TypeError(f"{name}: a {kind!r} section built a {type(made).__name__}, not a {want.__name__}")
    return made
