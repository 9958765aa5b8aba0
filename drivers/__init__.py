"""Hardware drivers, one interface per kind (see base.py), chosen by config.

``build_hardware`` turns the config's [drivers], [buses], [scanners] and
[feedback] sections into driver objects. Each implementation module is
imported only when a config names its type, so the simulator and the core
never load pymodbus, pyserial or gpiozero.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lockerd.drivers.base import (
    DoorSensors,
    Driver,
    Feedback,
    LockBank,
    PowerBudget,
    Scanner,
)

from lockerd.clock import Clock
from lockerd.config import Config


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
                import logging

                logging.getLogger(__name__).exception("closing %s failed", d.name)


def build_hardware(config: Config, clock: Clock) -> Hardware:
    hw = Hardware(PowerBudget(config.max_energised, config.power_wait_s))
    buses: dict[str, Driver] = {}
    for name, sec in config.buses.items():
        from lockerd.drivers.modbus import create_bus

        buses[name] = create_bus(sec, clock)
        hw.extras.append(buses[name])
    for name, sec in config.drivers.items():
        if sec.type == "sim":
            from lockerd.drivers.sim import SimBoard

            hw.drivers[name] = SimBoard(name, clock, hw.budget, sec.options)
        elif sec.type == "modbus":
            from lockerd.drivers.modbus import ModbusBoard

            hw.drivers[name] = ModbusBoard(name, clock, hw.budget, sec.options, buses[sec["bus"]])
        elif sec.type == "gpio":
            from lockerd.drivers.gpio import GpioBoard

            hw.drivers[name] = GpioBoard(name, clock, hw.budget, sec.options)
        else:  # config validation makes this unreachable
            raise ValueError(f"unknown driver type {sec.type!r}")
    for name, sec in config.feedback.items():
        if sec.type == "console":
            from lockerd.drivers.sim import ConsoleFeedback

            hw.feedback[name] = ConsoleFeedback(name, clock)
        elif sec.type == "gpio":
            from lockerd.drivers.gpio import GpioFeedback

            hw.feedback[name] = GpioFeedback(name, clock, sec.options)
    for name, sec in config.scanners.items():
        if sec.type == "sim":
            from lockerd.drivers.sim import SimScanner

            hw.scanners[name] = SimScanner(name, clock, debounce_ms=sec["debounce_ms"])
        elif sec.type == "serial":
            from lockerd.drivers.serial_scanner import SerialScanner

            hw.scanners[name] = SerialScanner(name, clock, sec.options)
    return hw
