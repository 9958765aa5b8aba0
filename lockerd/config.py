"""Configuration: TOML, validated strictly at load.

Every mistake is collected (not just the first) and each message names the
file, the key path, the value found and what was expected. Unknown keys are
errors: a misspelt option silently ignored is how a lock ends up on the
wrong channel. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockerd import config_display, config_hardware, config_rules
from lockerd.calendar import Calendar
from lockerd.config_check import ID_EXPECT, ID_RE, Checker, names
from lockerd.config_display import Display
from lockerd.config_hardware import (
    CABINET,
    COMPARTMENT,
    REAR_SUFFIX,
    SCANNER_COMMON,
    Cabinet,
    Compartment,
    check_references,
    typed_sections,
)
from lockerd.config_rules import EvidenceRules
from lockerd.config_station import STATION, check_station
from lockerd.custody_rules import Rules
from lockerd.drivers import registry
from lockerd.drivers.options import Opt, Section
from lockerd.errors import ConfigError

# Names other modules take from here; the checks themselves live in the config_* modules.
__all__ = [
    "CABINET", "COMPARTMENT", "DRIVER_TYPES", "FEEDBACK_TYPES", "ID_EXPECT", "ID_RE", "REAR_SUFFIX",
    "SCANNER_COMMON", "SCANNER_TYPES", "Cabinet", "Compartment", "Config", "EvidenceRules", "Opt", "Section",
    "Timing", "load", "parse",
]

# ---------------------------------------------------------------------------
# The core's own sections. Hardware sections take their options from the
# driver types (lockerd.drivers.registry); the rest from the config_* modules.

CONTROLLER = {
    "site": Opt("id", doc="station id"),
    "node": Opt("id", doc="this controller's id within the station"),
    "control_socket": Opt("path", "lockerd.sock", doc="Unix socket for the lockerd CLI"),
    "log_level": Opt("str", "info", choices=("debug", "info", "warning", "error")),
    "admin_group": Opt("str", "", doc="OS group whose members may change people, badges and assignments through "
                       "the control socket (root and the daemon's own user always may)"),
}

JOURNAL = {
    "path": Opt("path", doc="the SQLite journal file"),
    "checkpoint_key": Opt("path", "", doc="the controller's Ed25519 signing key (default: checkpoint.key beside "
                                          "the journal; made at first start, readable by the service only)"),
    "badge_key": Opt("path", "", doc="the secret that badge fingerprints are keyed with (default: badge.key beside "
                                     "the journal; made at first start, readable by the service only)"),
    "checkpoint_every": Opt("int", 1000, min=10, max=1_000_000, doc="events between signed checkpoints"),
    "checkpoint_interval_s": Opt("float", 300.0, min=1, max=86400,
                                 doc="a checkpoint at least this often while events come"),
}

TIMING = {
    "pulse_ms": Opt("int", 500, min=20, max=5000, doc="how long a lock solenoid is energised"),
    "open_timeout_s": Opt("float", 10.0, min=0.1, max=300, doc="how long a door may take to open after its pulse"),
    "max_open_s": Opt("float", 120.0, min=1, max=86400, doc="how long a door may stay open before an alarm"),
    "alarm_repeat_s": Opt("float", 60.0, min=1, max=86400, doc="how often a held-open alarm repeats"),
    "debounce_ms": Opt("int", 20, min=0, max=2000, doc="a door reading counts once stable this long"),
    "evidence_window_s": Opt("float", 60.0, min=5, max=600, doc="how long badges and item scans stay together"),
    "jam_after": Opt("int", 3, min=1, max=100, doc="consecutive not-opened pulses that put a compartment in fault"),
}

POWER = {
    "max_energised": Opt("int", 2, min=1, max=64, doc="solenoids the supply can drive at once"),
    "max_wait_s": Opt("float", 5.0, min=0.1, max=60, doc="how long a pulse may wait for the budget"),
}

# Each driver type's options besides "type", as declared beside its driver class.
DRIVER_TYPES: dict[str, Any] = {t: d.options for t, d in registry.BOARDS.items()}
BUS_TYPES: dict[str, Any] = {t: d.options for t, d in registry.BUSES.items()}
SCANNER_TYPES: dict[str, Any] = {t: d.options for t, d in registry.SCANNERS.items()}
FEEDBACK_TYPES: dict[str, Any] = {t: d.options for t, d in registry.FEEDBACK.items()}
CAMERA_TYPES: dict[str, Any] = {t: d.options for t, d in registry.CAMERAS.items()}

TOP = {
    "controller", "journal", "timing", "power", "station", "drivers", "buses",
    "scanners", "feedback", "cabinets", "cameras", "evidence", "calendar", "custody", "display",
}


# ---------------------------------------------------------------------------
# The result.


@dataclass(frozen=True)
class Timing:
    pulse_ms: int
    open_timeout_s: float
    max_open_s: float
    alarm_repeat_s: float
    debounce_ms: int
    evidence_window_s: float
    jam_after: int


@dataclass(frozen=True)
class Config:
    path: Path
    digest: str  # sha256 of the file, reported to the station
    site: str
    node: str
    control_socket: Path
    admin_group: str
    log_level: str
    journal_path: Path
    timing: Timing
    max_energised: int
    power_wait_s: float
    station: dict[str, Any] | None
    drivers: dict[str, Section]
    buses: dict[str, Section]
    scanners: dict[str, Section]
    feedback: dict[str, Section]
    cabinets: dict[str, Cabinet]
    compartments: dict[str, Compartment] = field(default_factory=dict)
    cameras: dict[str, Section] = field(default_factory=dict)
    checkpoint_key: Path | None = None
    badge_key: Path = Path("badge.key")
    checkpoint_every: int = 1000
    checkpoint_interval_s: float = 300.0
    evidence: EvidenceRules = field(default_factory=EvidenceRules)
    calendar: Calendar = field(default_factory=Calendar)
    custody: Rules = field(default_factory=Rules)
    display: Display = field(default_factory=Display)

    def compartment(self, cid: str) -> Compartment:
        return self.compartments[cid]


def load(path: str | Path) -> Config:
    """Read and check a config file; raise ConfigError listing every problem."""
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ConfigError([f"{file}: cannot read: {e.strerror or e}"]) from None
    return parse(data, file)


def parse(data: bytes, file: Path) -> Config:
    file = file.resolve()
    try:
        text = data.decode("utf-8")
        doc = tomllib.loads(text)
    except UnicodeDecodeError as e:
        raise ConfigError([f"{file}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: not valid TOML: {e}"]) from None
    c = Checker(file, text)

    for key in doc:
        if key not in TOP:
            c.problems.append(
                f"{c.where(key)}: {key}: unknown section (known: {', '.join(sorted(TOP))})"
            )
    for key in ("controller", "journal", "cabinets"):
        if key not in doc:
            c.problems.append(f"{file}: [{key}]: missing section")

    ctl = c.table("controller", doc.get("controller", {}), CONTROLLER)
    jnl = c.table("journal", doc.get("journal", {}), JOURNAL)
    tim = c.table("timing", doc.get("timing", {}), TIMING)
    pwr = c.table("power", doc.get("power", {}), POWER)
    evidence = config_rules.evidence(c, doc.get("evidence", {}))
    calendar = config_rules.calendar(c, doc.get("calendar", {}))
    custody = config_rules.custody(c, doc.get("custody", {}))
    station = None
    if "station" in doc:
        station = c.table("station", doc["station"], STATION)
        check_station(c, station)

    buses = typed_sections(c, "buses", doc.get("buses", {}), registry.BUSES)
    drivers = typed_sections(c, "drivers", doc.get("drivers", {}), registry.BOARDS)
    feedback = typed_sections(c, "feedback", doc.get("feedback", {}), registry.FEEDBACK)
    scanners = typed_sections(c, "scanners", doc.get("scanners", {}), registry.SCANNERS, SCANNER_COMMON)
    cameras = typed_sections(c, "cameras", doc.get("cameras", {}), registry.CAMERAS)
    check_references(c, drivers, "drivers", "bus", buses, "buses")
    config_hardware.check_lines(c, buses, drivers, registry.BUSES)

    cabinets, compartments = config_hardware.cabinets(c, doc.get("cabinets", {}), drivers)
    for cab in cabinets.values():
        if cab.camera and cab.camera not in cameras:
            c.problem(f"cabinets.{cab.id}.camera", cab.camera, f"one of the [cameras] sections ({names(cameras)})")

    for name, s in scanners.items():
        for cab in s.options.get("cabinets") or ():
            if cab not in cabinets:
                c.problem(f"scanners.{name}.cabinets", list(s["cabinets"]),
                          f"cabinet ids from [cabinets] ({names(cabinets)})")
                break
    check_references(c, scanners, "scanners", "feedback", feedback, "feedback")
    shown = config_display.display(c, doc.get("display", {}), {*scanners, *cabinets, "wall"})

    if c.problems:
        raise ConfigError(list(dict.fromkeys(c.problems)))  # one line per distinct mistake

    return Config(
        path=file,
        digest=hashlib.sha256(data).hexdigest(),
        site=ctl["site"],
        node=ctl["node"],
        control_socket=ctl["control_socket"],
        admin_group=ctl["admin_group"],
        log_level=ctl["log_level"],
        journal_path=jnl["path"],
        checkpoint_key=jnl["checkpoint_key"] or jnl["path"].with_name("checkpoint.key"),
        badge_key=jnl["badge_key"] or jnl["path"].with_name("badge.key"),
        checkpoint_every=jnl["checkpoint_every"],
        checkpoint_interval_s=jnl["checkpoint_interval_s"],
        timing=Timing(**tim),
        max_energised=pwr["max_energised"],
        power_wait_s=pwr["max_wait_s"],
        station=station,
        drivers=drivers,
        buses=buses,
        scanners=scanners,
        feedback=feedback,
        cabinets=cabinets,
        compartments=compartments,
        cameras=cameras,
        evidence=evidence,
        calendar=calendar,
        custody=custody,
        display=shown,
    )
