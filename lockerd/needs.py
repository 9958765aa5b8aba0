"""The Python modules a config needs, checked before anything starts.

Hardware and station libraries are optional extras, imported only by the
module that drives them. A board installed without one must be told so by
``check-config`` (the unit's pre-start check) and by ``lockerd run`` before it
touches anything, never by a traceback once the daemon is half up.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from lockerd.config import Config


@dataclass(frozen=True)
class Need:
    module: str  # imported as is
    extra: str  # the pip extra that brings it ("" for the core)
    why: str  # the part of the config that asks for it


def needs(config: Config) -> list[Need]:
    """Every module the daemon will import for this config, our own included."""
    # sqlite-utils, a core dependency, is left out: it is imported only for a migration, and importing it at
    # every start would cost about 100 ms.
    out = [Need("lockerd.daemon", "", "the daemon")]
    if config.station is not None:
        out += [Need("paho.mqtt.client", "mqtt", "[station]"), Need("lockerd.station.link", "mqtt", "[station]")]
    for name, bus in config.buses.items():
        out.append(Need("lockerd.drivers.modbus", "modbus", f"[buses.{name}]"))
        if bus.type == "rtu":
            out.append(Need("serial", "modbus", f"[buses.{name}] (RTU)"))
    for kind, sections in (("drivers", config.drivers), ("feedback", config.feedback)):
        for name, sec in sections.items():
            where = f"[{kind}.{name}]"
            if sec.type == "modbus":
                out.append(Need("lockerd.drivers.modbus", "modbus", where))
            elif sec.type == "gpio":
                out += [Need("gpiozero", "gpio", where), Need("lockerd.drivers.gpio", "gpio", where)]
                if sec.options.get("pin_factory") == "lgpio":
                    out.append(Need("lgpio", "gpio", f"{where} pin_factory"))
    for name, sec in config.scanners.items():
        if sec.type == "serial":
            out += [Need("serial", "serial", f"[scanners.{name}]"),
                    Need("lockerd.drivers.serial_scanner", "serial", f"[scanners.{name}]")]
    if config.cameras:
        out.append(Need("lockerd.drivers.camera", "", "[cameras]"))
    return list(dict.fromkeys(out))


def missing(config: Config) -> list[str]:
    """One sentence per module this config needs that cannot be imported; empty when all are there."""
    problems: list[str] = []
    failed: set[str] = set()
    for need in needs(config):
        if need.module in failed:
            continue
        try:
            importlib.import_module(need.module)
        except ImportError as e:
            failed.add(need.module)
            fix = f"install lockerd[{need.extra}]" if need.extra else "reinstall lockerd"
            problems.append(f"{config.path}: {need.why} needs the Python module {need.module}, which cannot be "
                            f"imported ({e}): {fix}")
    return problems
