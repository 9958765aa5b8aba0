"""Configuration: TOML, validated strictly at load.

Every mistake is collected (not just the first) and each message names the
file, the key path, the value found and what was expected. Unknown keys are
errors: a misspelt option silently ignored is how a lock ends up on the
wrong channel. Relative paths are resolved against the config file's folder.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from lockerd.calendar import DAY_NAMES, Calendar, Shift, parse_clock, parse_day
from lockerd.custody_rules import DEADLINE_KINDS, DEFAULT_LADDERS, RECIPIENTS, RELEASE_ROLES, Ladder, Rules, Step
from lockerd.domain import Role
from lockerd.errors import ConfigError
from lockerd.station.signing import KEY_ID_RE, Authority, Signer

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
ID_EXPECT = "an id of 1-32 characters from a-z, 0-9 and '-' (used in MQTT topics)"

_MISSING = object()


@dataclass(frozen=True)
class Opt:
    """One option: its type, bounds and default."""

    kind: str  # str, int, float, bool, path, id, list-str, list-int, list-id, table
    default: Any = _MISSING
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is _MISSING


class _Checker:
    def __init__(self, file: Path):
        self.file = file
        self.problems: list[str] = []

    def problem(self, path: str, value: Any, expected: str) -> None:
        shown = "(missing)" if value is _MISSING else repr(value)
        self.problems.append(f"{self.file}: {path} = {shown}: expected {expected}")

    def expect(self, opt: Opt) -> str:
        if opt.choices is not None:
            return "one of " + ", ".join(repr(c) for c in opt.choices)
        base = {
            "str": "a string",
            "path": "a file path (string)",
            "id": ID_EXPECT,
            "int": "an integer",
            "float": "a number",
            "bool": "true or false",
            "list-str": "a list of strings",
            "list-int": "a list of integers",
            "list-id": f"a list of ids ({ID_EXPECT})",
            "table": "a table",
        }[opt.kind]
        if opt.min is not None and opt.max is not None:
            base += f" from {opt.min:g} to {opt.max:g}"
        elif opt.min is not None:
            base += f" of at least {opt.min:g}"
        elif opt.max is not None:
            base += f" of at most {opt.max:g}"
        return base

    def value(self, path: str, raw: Any, opt: Opt) -> Any:
        """Check one value; returns it (converted) or _MISSING after noting a problem."""
        ok = True
        k = opt.kind
        if k in ("str", "path"):
            ok = isinstance(raw, str) and raw != ""
        elif k == "id":
            ok = isinstance(raw, str) and bool(ID_RE.match(raw))
        elif k == "int":
            ok = isinstance(raw, int) and not isinstance(raw, bool)
        elif k == "float":
            ok = isinstance(raw, int | float) and not isinstance(raw, bool)
            if ok:
                raw = float(raw)
        elif k == "bool":
            ok = isinstance(raw, bool)
        elif k == "list-str":
            ok = isinstance(raw, list) and all(isinstance(x, str) for x in raw)
        elif k == "list-int":
            ok = isinstance(raw, list) and all(
                isinstance(x, int) and not isinstance(x, bool) for x in raw
            )
        elif k == "list-id":
            ok = isinstance(raw, list) and all(isinstance(x, str) and ID_RE.match(x) for x in raw)
        elif k == "table":
            ok = isinstance(raw, dict)
        if ok and opt.choices is not None:
            ok = raw in opt.choices
        if ok and k in ("int", "float"):
            ok = (opt.min is None or raw >= opt.min) and (opt.max is None or raw <= opt.max)
        if ok and k == "list-int":
            ok = all(
                (opt.min is None or x >= opt.min) and (opt.max is None or x <= opt.max) for x in raw
            )
        if not ok:
            self.problem(path, raw, self.expect(opt))
            return _MISSING
        if k == "path":
            p = Path(raw).expanduser()
            return p if p.is_absolute() else (self.file.parent / p).resolve()
        if k.startswith("list-"):
            return tuple(raw)
        return raw

    def table(self, path: str, raw: Any, spec: dict[str, Opt]) -> dict[str, Any]:
        """Check a table against a spec; unknown keys and missing required ones are problems."""
        out: dict[str, Any] = {}
        if not isinstance(raw, dict):
            self.problem(path, raw, "a table")
            raw = {}
        for key in raw:
            if key not in spec:
                known = ", ".join(sorted(spec)) or "none"
                self.problems.append(
                    f"{self.file}: {_join(path, key)}: unknown option (known here: {known})"
                )
        for key, opt in spec.items():
            if key in raw:
                out[key] = self.value(_join(path, key), raw[key], opt)
            elif opt.required:
                self.problem(_join(path, key), _MISSING, self.expect(opt))
                out[key] = _MISSING
            else:
                out[key] = opt.default
        return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# ---------------------------------------------------------------------------
# The schema. Each section's options, with defaults and bounds.

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

STATION = {
    "enabled": Opt("bool", True),
    "brokers": Opt("list-str", doc='"host:port" entries, tried in turn'),
    "prefix": Opt("str", "lockerd", doc="topic prefix (levels of a-z, 0-9, '-', separated by '/')"),
    "client_id": Opt("str", "", doc="MQTT client id; default lockerd-<site>-<node>"),
    "protocol": Opt("str", "5", choices=("5", "3.1.1")),
    "keepalive_s": Opt("int", 30, min=5, max=3600),
    "username": Opt("str", ""),
    "password_file": Opt("path", "", doc="file holding the broker password"),
    "tls": Opt("bool", False),
    "ca_file": Opt("path", ""),
    "cert_file": Opt("path", ""),
    "key_file": Opt("path", ""),
    "command_max_age_s": Opt("float", 60.0, min=1, max=86400),
    "batch_size": Opt("int", 200, min=1, max=5000, doc="events in flight at once while draining"),
    "reconnect_max_s": Opt("float", 30.0, min=1, max=600),
    "session_expiry_s": Opt("int", 86400, min=0, max=4294967295,
                            doc="how long the broker keeps our session (queued commands) while we are away"),
    "signers": Opt("table", {}, doc="station users whose signed commands this controller obeys: "
                   "[station.signers.<key id>] public_key = hex Ed25519 key, roles = [...]"),
    "allow_unsigned": Opt("bool", False, doc="LAB ONLY: obey unsigned commands; journaled and logged at every start"),
    "allow_plaintext": Opt("bool", False, doc="LAB ONLY: obey lock-moving commands over a link without TLS "
                           "and credentials; journaled and logged at every start"),
}

# Driver types: the options each accepts besides "type".
DRIVER_TYPES: dict[str, dict[str, Opt]] = {
    "sim": {
        "channels": Opt("int", 32, min=1, max=256, doc="lock and sensor channels of the simulated board"),
        "crossed": Opt("list-int", (), doc="two channels whose door sensors are swapped (bench fault)"),
        "state_file": Opt("path", "", doc="keeps the simulated doors across restarts, as real doors are"),
        "spring": Opt("bool", False, doc="doors pop open when released, with nobody pulling"),
    },
    "modbus": {
        "bus": Opt("id", doc="the [buses.*] section this board hangs on"),
        "unit": Opt("int", min=0, max=247, doc="Modbus unit (device) id"),
        "profile": Opt("str", "generic", choices=("generic", "waveshare")),
        "coils": Opt("int", 16, min=1, max=256),
        "first_coil": Opt("int", 0, min=0, max=65535),
        "inputs": Opt("int", 16, min=0, max=256),
        "first_input": Opt("int", 0, min=0, max=65535),
        "input_kind": Opt("str", "discrete", choices=("discrete", "input-register")),
        "open_level": Opt("int", 1, min=0, max=1, doc="input value that means the door is open"),
        "poll_hz": Opt("float", 10.0, min=0.1, max=100),
    },
    "gpio": {
        "pin_factory": Opt("str", "", choices=("", "lgpio", "rpigpio", "pigpio", "native", "mock")),
        "locks": Opt("list-int", (), min=0, max=53, doc="BCM pins driving lock relays"),
        "sensors": Opt("list-int", (), min=0, max=53, doc="BCM pins reading door switches"),
        "active_high": Opt("bool", True, doc="relay energised when the pin is high"),
        "pull_up": Opt("bool", True),
        "bounce_ms": Opt("int", 20, min=0, max=1000),
        "open_level": Opt("int", 1, min=0, max=1, doc="pin level that means the door is open"),
    },
}

BUS_TYPES: dict[str, dict[str, Opt]] = {
    "rtu": {
        "device": Opt("path", doc="serial device, e.g. /dev/serial/by-id/..."),
        "baudrate": Opt("int", 9600, choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
        "parity": Opt("str", "N", choices=("N", "E", "O")),
        "stopbits": Opt("int", 1, choices=(1, 2)),
        "bytesize": Opt("int", 8, choices=(7, 8)),
        "timeout_ms": Opt("int", 200, min=10, max=10000),
        "retries": Opt("int", 1, min=0, max=5),
        "frame_gap_ms": Opt("float", None, min=0, max=1000,
                            doc="silence between frames; by default 3.5 characters (1.75 ms above 19200 baud)"),
    },
    "tcp": {
        "host": Opt("str"),
        "port": Opt("int", 502, min=1, max=65535),
        "timeout_ms": Opt("int", 500, min=10, max=10000),
        "retries": Opt("int", 1, min=0, max=5),
        "frame_gap_ms": Opt("float", 0.0, min=0, max=1000),
    },
}

SCANNER_COMMON = {
    "cabinets": Opt("list-id", doc="cabinets this scanner serves"),
    "feedback": Opt("str", "", doc="[feedback.*] section; default: log to the console"),
    "debounce_ms": Opt("int", 1500, min=0, max=60000, doc="same code again within this is one scan"),
    "side": Opt("str", "both", choices=("both", "front", "rear"),
                doc="at pass-through compartments: a front scanner takes deposits only, a rear one "
                    "retrievals and releases only (each opens the door on its own side)"),
}

SCANNER_TYPES: dict[str, dict[str, Opt]] = {
    "sim": {},
    "serial": {
        "port": Opt("path", doc="e.g. /dev/serial/by-id/usb-...-if00"),
        "baudrate": Opt("int", 9600, choices=(1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)),
        "terminators": Opt("list-str", ("\r", "\n"), doc="bytes that end a scan; CR, LF and CRLF alike"),
        "idle_timeout_ms": Opt("int", 200, min=5, max=10000,
                               doc="bytes that wait this long without a terminator are an incomplete scan"),
        "idle_ends_scan": Opt("bool", False, doc="only for a scanner that sends no terminator at all: a pause of "
                              "idle_timeout_ms ends a scan. Risky: a scanner that pauses inside a scan splits it, "
                              "and a part of a code may be a code"),
        "max_length": Opt("int", 256, min=1, max=4096),
        "aim": Opt("bool", False, doc="scans start with an AIM symbology identifier like ]C1"),
        "symbologies": Opt(
            "list-str", (),
            doc='AIM identifiers allowed ("C1" exactly, "Q" any QR modifier); empty allows all; '
            "a non-empty list requires AIM identifiers on every scan",
        ),
    },
}

FEEDBACK_TYPES: dict[str, dict[str, Opt]] = {
    "console": {},
    "gpio": {
        "pin_factory": Opt("str", "", choices=("", "lgpio", "rpigpio", "pigpio", "native", "mock")),
        "accept_pin": Opt("int", -1, min=-1, max=53, doc="green LED (-1: none)"),
        "refuse_pin": Opt("int", -1, min=-1, max=53, doc="red LED (-1: none)"),
        "buzzer_pin": Opt("int", -1, min=-1, max=53, doc="buzzer (-1: none)"),
    },
}

# Cameras: a still on every grant and every door close (see drivers/camera.py).
CAMERA_TYPES: dict[str, dict[str, Opt]] = {
    "command": {
        "command": Opt("list-str", doc='argv with {path} where the still goes, e.g. ["rpicam-still", "-n", '
                                       '"-o", "{path}"]; also {compartment}, {cabinet}, {step}, {seq}'),
        "timeout_s": Opt("float", 10.0, min=0.1, max=300, doc="kill the capture after this long"),
        "extension": Opt("str", "jpg", doc="file name extension of the stills"),
    },
    "sim": {},
}

CABINET = {
    "kind": Opt("str", choices=("dossier", "evidence")),
    "camera": Opt("id", "", doc="[cameras.*] section photographing this cabinet's grants and door closes"),
    "lock_driver": Opt("id", doc="default driver for the locks"),
    "sensor_driver": Opt("id", "", doc="default driver for the door sensors; default lock_driver"),
    "count": Opt("int", 0, min=0, max=512, doc="generate this many compartments"),
    "first_lock": Opt("int", 0, min=0, max=65535),
    "first_sensor": Opt("int", 0, min=0, max=65535),
    "prefix": Opt("str", "", doc="id prefix of generated compartments; default the cabinet id"),
    # Pass-through evidence cabinets: a rear door per compartment for the property room.
    "rear_lock_driver": Opt("id", "", doc="default driver for the rear locks; default lock_driver"),
    "rear_sensor_driver": Opt("id", "", doc="default driver for the rear door sensors; default rear_lock_driver"),
    "first_rear_lock": Opt("int", -1, min=-1, max=65535, doc="with count: rear locks from this channel on (-1: none)"),
    "first_rear_sensor": Opt("int", -1, min=-1, max=65535, doc="with count: rear sensors from this channel on"),
    # plus "compartments": an array of tables checked against COMPARTMENT
}

COMPARTMENT = {
    "id": Opt("id"),
    "lock": Opt("int", min=0, max=65535),
    "sensor": Opt("int", min=0, max=65535),
    "lock_driver": Opt("id", ""),
    "sensor_driver": Opt("id", ""),
    "rear_lock": Opt("int", -1, min=-1, max=65535, doc="pass-through: the rear door's lock (-1: no rear door)"),
    "rear_sensor": Opt("int", -1, min=-1, max=65535, doc="pass-through: the rear door's sensor"),
    "rear_lock_driver": Opt("id", ""),
    "rear_sensor_driver": Opt("id", ""),
}

EVIDENCE = {
    "depositor_may_retrieve": Opt("bool", True, doc="the officer who deposited an item may be the officer "
                                  "co-signing its retrieval or release (never alone: a case manager is always needed)"),
    "reasons": Opt("table", {}, doc="reason cards for a retrieval: barcode = reason text"),
    "release_reasons": Opt("table", {}, doc="reason cards for a release (the item leaves for good): barcode = text"),
    "due_back_h": Opt("float", 24.0, min=0.1, max=8760, doc="evidence taken out is due back after this, unless "
                      "its reason card has its own time in [evidence.due_back]"),
    "due_back": Opt("table", {}, doc="reason card barcode = hours until evidence taken out with it is due back"),
    "badge_burst_ms": Opt("int", 300, min=0, max=5000, doc="two people's badges read closer than this at one "
                          "scanner are one burst (one printed code carrying two): neither counts"),
}

TOP = {
    "controller", "journal", "timing", "power", "station", "drivers", "buses",
    "scanners", "feedback", "cabinets", "cameras", "evidence", "calendar", "custody",
}


# ---------------------------------------------------------------------------
# The result.


@dataclass(frozen=True)
class Section:
    """A named driver, bus, scanner or feedback section: its type and checked options."""

    name: str
    type: str
    options: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.options[key]


@dataclass(frozen=True)
class Compartment:
    id: str
    cabinet: str
    kind: str  # dossier | evidence
    lock_driver: str
    lock: int
    sensor_driver: str
    sensor: int
    # A pass-through compartment's rear door (property room side); None without one.
    rear_lock_driver: str = ""
    rear_lock: int | None = None
    rear_sensor_driver: str = ""
    rear_sensor: int | None = None

    @property
    def rear_id(self) -> str | None:
        """The id the rear door is supervised under, when there is one."""
        return f"{self.id}{REAR_SUFFIX}" if self.rear_lock is not None else None


REAR_SUFFIX = "-rear"


@dataclass(frozen=True)
class EvidenceRules:
    """How evidence is handled: reason cards and who may retrieve."""

    depositor_may_retrieve: bool = True
    reasons: dict[str, str] = field(default_factory=dict)  # card barcode -> text (retrieval)
    release_reasons: dict[str, str] = field(default_factory=dict)  # card barcode -> text (release for good)
    badge_burst_ms: int = 300
    due_back_h: float = 24.0
    due_back: dict[str, float] = field(default_factory=dict)  # reason card -> hours

    def due_back_h_for(self, card: str | None) -> float:
        """Hours until evidence taken out with reason ``card`` (None: a station authorisation) is due back."""
        return self.due_back.get(card, self.due_back_h) if card else self.due_back_h

    def reason_card(self, code: str) -> tuple[str, bool] | None:
        """(text, is_release) for a reason card's barcode, else None."""
        if code in self.reasons:
            return self.reasons[code], False
        if code in self.release_reasons:
            return self.release_reasons[code], True
        return None


@dataclass(frozen=True)
class Cabinet:
    id: str
    kind: str
    compartments: tuple[str, ...]
    camera: str = ""


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
    c = _Checker(file)
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([f"{file}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{file}: not valid TOML: {e}"]) from None

    for key in doc:
        if key not in TOP:
            c.problems.append(
                f"{file}: {key}: unknown section (known: {', '.join(sorted(TOP))})"
            )
    for key in ("controller", "journal", "cabinets"):
        if key not in doc:
            c.problems.append(f"{file}: [{key}]: missing section")

    ctl = c.table("controller", doc.get("controller", {}), CONTROLLER)
    jnl = c.table("journal", doc.get("journal", {}), JOURNAL)
    tim = c.table("timing", doc.get("timing", {}), TIMING)
    pwr = c.table("power", doc.get("power", {}), POWER)
    evidence = _evidence(c, doc.get("evidence", {}))
    calendar = _calendar(c, doc.get("calendar", {}))
    custody = _custody(c, doc.get("custody", {}))
    station = None
    if "station" in doc:
        station = c.table("station", doc["station"], STATION)
        _check_station(c, station)

    buses = _typed_sections(c, "buses", doc.get("buses", {}), BUS_TYPES, {})
    drivers = _typed_sections(c, "drivers", doc.get("drivers", {}), DRIVER_TYPES, {})
    feedback = _typed_sections(c, "feedback", doc.get("feedback", {}), FEEDBACK_TYPES, {})
    scanners = _typed_sections(c, "scanners", doc.get("scanners", {}), SCANNER_TYPES, SCANNER_COMMON)
    cameras = _typed_sections(c, "cameras", doc.get("cameras", {}), CAMERA_TYPES, {})
    _check_cameras(c, cameras)

    for name, d in drivers.items():
        if d.type == "modbus" and d.options.get("bus") not in (_MISSING, None) and d["bus"] not in buses:
            c.problem(f"drivers.{name}.bus", d["bus"], f"one of the [buses] sections ({_names(buses)})")
        registers = d.type == "modbus" and d.options.get("input_kind") == "input-register"
        if registers and _int_over(d.options.get("inputs"), 125):
            # Modbus reads at most 125 registers in one request; a poll is one request.
            c.problem(f"drivers.{name}.inputs", d["inputs"], "at most 125 sensors read as input registers")
        if d.type == "sim" and d.options["crossed"] and len(d.options["crossed"]) != 2:
            c.problem(f"drivers.{name}.crossed", list(d["crossed"]), "exactly two channels")
        if d.type == "gpio":
            both = set(d["locks"] or ()) & set(d["sensors"] or ())
            if both:
                c.problem(f"drivers.{name}.sensors", list(d["sensors"]),
                          f"pins not also used as locks ({sorted(both)})")

    cabinets, compartments = _cabinets(c, doc.get("cabinets", {}), drivers)
    for cab in cabinets.values():
        if cab.camera and cab.camera not in cameras:
            c.problem(f"cabinets.{cab.id}.camera", cab.camera, f"one of the [cameras] sections ({_names(cameras)})")

    for name, s in scanners.items():
        for cab in s.options.get("cabinets") or ():
            if cab not in cabinets:
                c.problem(f"scanners.{name}.cabinets", list(s["cabinets"]),
                          f"cabinet ids from [cabinets] ({_names(cabinets)})")
                break
        fb = s.options.get("feedback")
        if fb and fb not in feedback:
            c.problem(f"scanners.{name}.feedback", fb, f"one of the [feedback] sections ({_names(feedback)})")

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
    )


def _names(d: dict) -> str:
    return ", ".join(sorted(d)) or "none defined"


def _check_station(c: _Checker, st: dict[str, Any]) -> None:
    for i, b in enumerate(st.get("brokers") or ()):
        host, sep, port = b.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            c.problem(f"station.brokers[{i}]", b, '"host:port" with a port from 1 to 65535')
    if st.get("brokers") == ():
        c.problem("station.brokers", [], "at least one broker")
    prefix = st.get("prefix")
    if isinstance(prefix, str) and not all(ID_RE.match(level) for level in prefix.split("/")):
        c.problem("station.prefix", prefix, "topic levels of a-z, 0-9 and '-', separated by '/'")
    if st.get("tls") is True and not st.get("ca_file"):
        c.problem("station.ca_file", "", "a CA file when tls = true")
    if bool(st.get("cert_file")) != bool(st.get("key_file")):
        c.problem("station.key_file", str(st.get("key_file") or ""), "cert_file and key_file given together")
    st["signers"] = _signers(c, st.get("signers"))


def _signers(c: _Checker, raw: Any) -> dict[str, Signer]:
    """[station.signers.<key id>]: the public keys (and their roles) the controller obeys."""
    out: dict[str, Signer] = {}
    if not isinstance(raw, dict):
        return out
    roles_known = ", ".join(a.value for a in Authority)
    for kid, body in raw.items():
        where = f"station.signers.{kid}"
        if not KEY_ID_RE.match(kid):
            c.problem(where, kid, "a key id of 1-64 characters from a-z, 0-9, '_', '.' and '-'")
            continue
        if not isinstance(body, dict):
            c.problem(where, body, "a table with public_key and roles")
            continue
        for key in set(body) - {"public_key", "roles"}:
            c.problem(f"{where}.{key}", body[key], "only public_key and roles")
        pub = body.get("public_key")
        try:
            key = bytes.fromhex(pub) if isinstance(pub, str) else b""
        except ValueError:
            key = b""
        if len(key) != 32:
            c.problem(f"{where}.public_key", pub, "an Ed25519 public key: 64 hex characters")
        roles = body.get("roles")
        if not isinstance(roles, list) or not roles or not all(r in Authority._value2member_map_ for r in roles):
            c.problem(f"{where}.roles", roles, f"a non-empty list of: {roles_known}")
            continue
        out[kid] = Signer(kid, key, frozenset(Authority(r) for r in roles))
    keys = [s.public_key for s in out.values()]
    for kid, s in out.items():
        if keys.count(s.public_key) > 1:
            c.problem(f"station.signers.{kid}.public_key", s.public_key.hex(),
                      "a key of one signer only (two ids for one key would count as two people)")
    return out


def _check_cameras(c: _Checker, cameras: dict[str, Section]) -> None:
    import string

    fields = {"path", "compartment", "cabinet", "step", "seq"}
    for name, cam in cameras.items():
        if cam.type != "command" or not isinstance(cam.options.get("command"), tuple):
            continue
        argv, where = cam["command"], f"cameras.{name}.command"
        try:
            used = {f for arg in argv for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
        except ValueError:
            c.problem(where, list(argv), "arguments whose braces are balanced ({path} and the like)")
            continue
        if not argv or not argv[0]:
            c.problem(where, list(argv), "a program and its arguments")
        elif used - fields:
            c.problem(where, list(argv), "placeholders among {" + "}, {".join(sorted(fields)) + "}")
        elif "path" not in used:
            c.problem(where, list(argv), "an argument with {path}, where the still is written")
        ext = cam["extension"]
        if isinstance(ext, str) and not re.fullmatch(r"[a-z0-9]{1,8}", ext):
            c.problem(f"cameras.{name}.extension", ext, "1-8 characters from a-z and 0-9")


def _typed_sections(
    c: _Checker, top: str, raw: Any, types: dict[str, dict[str, Opt]], common: dict[str, Opt]
) -> dict[str, Section]:
    out: dict[str, Section] = {}
    if not isinstance(raw, dict):
        c.problem(top, raw, "a table of named sections")
        return out
    for name, body in raw.items():
        path = f"{top}.{name}"
        if not ID_RE.match(name):
            c.problem(path, name, f"a section name that is {ID_EXPECT}")
        if not isinstance(body, dict):
            c.problem(path, body, "a table")
            continue
        kind = body.get("type", _MISSING)
        if kind not in types:
            c.problem(f"{path}.type", kind, "one of " + ", ".join(repr(t) for t in types))
            continue
        spec = {"type": Opt("str")} | common | types[kind]
        opts = c.table(path, body, spec)
        opts.pop("type")
        out[name] = Section(name, kind, opts)
    return out


def _cabinets(
    c: _Checker, raw: Any, drivers: dict[str, Section]
) -> tuple[dict[str, Cabinet], dict[str, Compartment]]:
    cabinets: dict[str, Cabinet] = {}
    comps: dict[str, Compartment] = {}
    used: dict[tuple[str, str, int], str] = {}  # (role, driver, channel) -> compartment
    if not isinstance(raw, dict):
        c.problem("cabinets", raw, "a table of cabinets")
        return cabinets, comps
    if not raw:
        c.problems.append(f"{c.file}: cabinets: no cabinet defined")
    for cab_id, body in raw.items():
        path = f"cabinets.{cab_id}"
        if not ID_RE.match(cab_id):
            c.problem(path, cab_id, f"a cabinet id that is {ID_EXPECT}")
        body = dict(body) if isinstance(body, dict) else body
        explicit = body.pop("compartments", []) if isinstance(body, dict) else []
        opts = c.table(path, body, CABINET)
        lock_drv = opts["lock_driver"]
        sensor_drv = opts["sensor_driver"] or lock_drv
        entries: list[tuple[str, dict[str, Any]]] = []
        count = opts["count"]
        if count is not _MISSING and count:
            prefix = opts["prefix"] or cab_id
            width = max(2, len(str(count)))
            for i in range(count):
                entries.append(
                    (
                        f"{path}.count",
                        {
                            "id": f"{prefix}{i + 1:0{width}d}",
                            "lock": opts["first_lock"] + i,
                            "sensor": opts["first_sensor"] + i,
                            "lock_driver": "",
                            "sensor_driver": "",
                            "rear_lock": _first(opts["first_rear_lock"], i),
                            "rear_sensor": _first(opts["first_rear_sensor"], i),
                            "rear_lock_driver": "",
                            "rear_sensor_driver": "",
                        },
                    )
                )
        if not isinstance(explicit, list):
            c.problem(f"{path}.compartments", explicit, "an array of tables ([[cabinets.X.compartments]])")
            explicit = []
        for i, item in enumerate(explicit):
            entries.append((f"{path}.compartments[{i}]", c.table(f"{path}.compartments[{i}]", item, COMPARTMENT)))
        if not entries:
            c.problem(path, body, "count > 0 or at least one [[compartments]] entry")
        ids = []
        for where, e in entries:
            if any(v is _MISSING for v in e.values()):
                continue
            cid = e["id"]
            if not ID_RE.match(cid):
                c.problem(f"{where}.id", cid, ID_EXPECT)
                continue
            if cid in comps:
                c.problem(f"{where}.id", cid, f"an id not already used (also in cabinet {comps[cid].cabinet})")
                continue
            ld = e["lock_driver"] or lock_drv
            sd = e["sensor_driver"] or sensor_drv
            rld = e["rear_lock_driver"] or opts["rear_lock_driver"] or ld
            rsd = e["rear_sensor_driver"] or opts["rear_sensor_driver"] or rld
            checks = [("lock", "lock", ld, e["lock"]), ("sensor", "sensor", sd, e["sensor"])]
            rear = _check_rear(c, where, cid, opts["kind"], e)
            ok = rear is not False
            if rear:
                checks += [("lock", "rear_lock", rld, e["rear_lock"]), ("sensor", "rear_sensor", rsd, e["rear_sensor"])]
            for role, name, drv, ch in checks:
                if drv is _MISSING:
                    ok = False
                    continue
                if drv not in drivers:
                    if e[f"{name}_driver"]:
                        where_set = f"{where}.{name}_driver"
                    elif name != role and (opts[f"{name}_driver"] or opts["rear_lock_driver"]):
                        where_set = f"{path}.{name if opts[f'{name}_driver'] else 'rear_lock'}_driver"
                    elif role == "sensor" and opts["sensor_driver"]:
                        where_set = f"{path}.sensor_driver"
                    else:
                        where_set = f"{path}.lock_driver"
                    c.problem(where_set, drv, f"one of the [drivers] sections ({_names(drivers)})")
                    ok = False
                    continue
                limit = _channel_limit(drivers[drv], role)
                if limit is not None and ch not in limit:
                    c.problem(f"{where}.{name}", ch, f"a {role} channel of driver {drv!r} ({_fmt_channels(limit)})")
                    ok = False
                key = (role, drv, ch)
                if key in used:
                    c.problem(f"{where}.{name}", ch, f"a {role} channel not already used by compartment {used[key]}")
                    ok = False
                used[key] = cid
            if not ok or opts["kind"] is _MISSING:
                continue
            rear_opts = {"rear_lock_driver": rld, "rear_lock": e["rear_lock"], "rear_sensor_driver": rsd,
                         "rear_sensor": e["rear_sensor"]} if rear else {}
            comps[cid] = Compartment(cid, cab_id, opts["kind"], ld, e["lock"], sd, e["sensor"], **rear_opts)
            ids.append(cid)
        if opts["kind"] is not _MISSING:
            cabinets[cab_id] = Cabinet(cab_id, opts["kind"], tuple(ids),
                                        opts["camera"] if isinstance(opts["camera"], str) else "")
    for comp in list(comps.values()):
        if comp.rear_id in comps:
            c.problem(f"cabinets.{comp.cabinet}", comp.rear_id,
                      f"no compartment id {comp.rear_id!r}: that is the id of {comp.id}'s rear door")
    return cabinets, comps


def _first(first: Any, i: int) -> int:
    """The i-th generated channel from a first channel, -1 when there is none."""
    return first + i if isinstance(first, int) and first >= 0 else -1


def _check_rear(c: _Checker, where: str, cid: str, kind: Any, e: dict[str, Any]) -> bool | None:
    """A compartment's rear door: None without one, True when sound, False after noting a problem."""
    lock, sensor = e["rear_lock"], e["rear_sensor"]
    if lock < 0 and sensor < 0:
        return None
    if lock < 0 or sensor < 0:
        missing = "rear_lock" if lock < 0 else "rear_sensor"
        c.problem(f"{where}.{missing}", -1, "a channel: a rear door needs both rear_lock and rear_sensor")
        return False
    if kind != "evidence":
        c.problem(f"{where}.rear_lock", lock, "no rear door: pass-through (front and rear) cabinets hold evidence")
        return False
    if not ID_RE.match(cid + REAR_SUFFIX):
        c.problem(f"{where}.id", cid, f"an id of at most {32 - len(REAR_SUFFIX)} characters (its rear door is "
                                      f"supervised as {cid + REAR_SUFFIX!r})")
        return False
    return True


def _evidence(c: _Checker, raw: Any) -> EvidenceRules:
    """[evidence]: reason cards (barcode = text) and the depositor rule."""
    opts = c.table("evidence", raw, EVIDENCE)
    tables: dict[str, dict[str, str]] = {}
    for key in ("reasons", "release_reasons"):
        table = opts[key] if isinstance(opts[key], dict) else {}
        for code, text in table.items():
            if not 1 <= len(code) <= 128:
                c.problem(f"evidence.{key}", code, "card barcodes of 1-128 characters")
            if not isinstance(text, str) or not text.strip() or len(text) > 256:
                c.problem(f"evidence.{key}.{code}", text, "the reason as a non-empty text of at most 256 characters")
        tables[key] = {k: v.strip() for k, v in table.items() if isinstance(v, str)}
    for code in sorted(set(tables["reasons"]) & set(tables["release_reasons"])):
        c.problem(f"evidence.release_reasons.{code}", tables["release_reasons"][code],
                  "a card barcode not also in evidence.reasons (one card, one meaning)")
    may = opts["depositor_may_retrieve"]
    burst = opts["badge_burst_ms"] if isinstance(opts["badge_burst_ms"], int) else 300
    due_back: dict[str, float] = {}
    for code, hours in (opts["due_back"] if isinstance(opts["due_back"], dict) else {}).items():
        if code not in tables["reasons"]:
            c.problem(f"evidence.due_back.{code}", hours, "a card barcode from [evidence.reasons]")
        elif isinstance(hours, bool) or not isinstance(hours, int | float) or not 0.1 <= hours <= 8760:
            c.problem(f"evidence.due_back.{code}", hours, "hours from 0.1 to 8760")
        else:
            due_back[code] = float(hours)
    default = opts["due_back_h"] if isinstance(opts["due_back_h"], int | float) else 24.0
    return EvidenceRules(may if isinstance(may, bool) else True, tables["reasons"], tables["release_reasons"], burst,
                         float(default), due_back)


def _int_over(value: Any, limit: int) -> bool:
    return isinstance(value, int) and value > limit


def _channel_limit(d: Section, role: str) -> range | tuple[int, ...] | None:
    """The channels a driver offers for a role, when the config says."""
    o = d.options
    if d.type == "sim":
        n = o.get("channels")
        return range(n) if isinstance(n, int) else None
    if d.type == "modbus":
        n = o.get("coils") if role == "lock" else o.get("inputs")
        return range(n) if isinstance(n, int) else None
    if d.type == "gpio":
        pins = o.get("locks") if role == "lock" else o.get("sensors")
        return pins if isinstance(pins, tuple) else None
    return None


def _fmt_channels(limit: range | tuple[int, ...]) -> str:
    if isinstance(limit, range):
        return f"0 to {limit.stop - 1}" if limit.stop else "none"
    return ", ".join(map(str, limit)) or "none"


# ---------------------------------------------------------------------------
# [calendar] and [custody]: the station's shifts and the custody deadlines (lockerd/custody.py).

CALENDAR = {
    "timezone": Opt("str", "UTC", doc="IANA zone of the station, e.g. Europe/Berlin"),
    "working_days": Opt("list-str", DAY_NAMES[:5], doc="days whose shifts are worked: mon .. sun"),
    # plus "holidays" (dates) and "shifts" (an array of tables), checked below
}

SHIFT_KEYS = ("name", "start", "end")

CUSTODY = {
    "deposit_within_h": Opt("float", 24.0, min=0.01, max=8760, doc="deposit deadline after intake, by default"),
    "return_without_shifts_h": Opt("float", 12.0, min=0.01, max=8760,
                                   doc="when the calendar has no shifts: a dossier taken out is due back after this"),
    "tick_s": Opt("float", 30.0, min=1, max=3600, doc="how often deadlines are checked against the wall clock"),
    "release_roles": Opt("list-str", RELEASE_ROLES, doc="roles that may release a dossier for good"),
    "dossier_badge": Opt("str", "optional", choices=("optional", "required"),
                         doc="a badge scanned just before a dossier names who takes it out or brings it; "
                             "required: a dossier without one is refused"),
    "badge_window_s": Opt("float", 30.0, min=1, max=600, doc="how long a badge waits for its dossier scan"),
    # plus one table per kind of deadline: deposit, return, evidence_deposit, evidence_return
}


def _ladder_spec(kind: str) -> dict[str, Opt]:
    d = DEFAULT_LADDERS[kind]
    return {
        "levels": Opt("list-str", tuple(s.to for s in d.steps), doc=f"who is told, in order: {', '.join(RECIPIENTS)}"),
        "after_s": Opt("list-int", tuple(int(s.after_s) for s in d.steps), min=0, max=31_536_000,
                       doc="per level: seconds after the deadline (first) or after the previous level"),
        "ack_pause_s": Opt("float", d.ack_pause_s, min=0, max=31_536_000,
                           doc="an acknowledgement holds the next level back this long"),
    }


def _calendar(c: _Checker, raw: Any) -> Calendar:
    if not isinstance(raw, dict):
        c.problem("calendar", raw, "a table")
        return Calendar()
    body = dict(raw)
    holidays_raw = body.pop("holidays", [])
    shifts_raw = body.pop("shifts", [])
    opts = c.table("calendar", body, CALENDAR)
    ok = True
    tz = opts["timezone"]
    if tz is not _MISSING:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            c.problem("calendar.timezone", tz, "an IANA time zone name such as 'Europe/Berlin' (zoneinfo)")
            ok = False
    days: set[int] = set()
    for i, name in enumerate(opts["working_days"] if opts["working_days"] is not _MISSING else ()):
        if name not in DAY_NAMES:
            c.problem(f"calendar.working_days[{i}]", name, f"one of {', '.join(DAY_NAMES)}")
            ok = False
        else:
            days.add(DAY_NAMES.index(name))
    holidays = set()
    if not isinstance(holidays_raw, list):
        c.problem("calendar.holidays", holidays_raw, "a list of dates (YYYY-MM-DD)")
        holidays_raw = []
    for i, h in enumerate(holidays_raw):
        day = parse_day(h)
        if day is None:
            c.problem(f"calendar.holidays[{i}]", h, "a date (YYYY-MM-DD)")
            ok = False
        else:
            holidays.add(day)
    shifts: list[Shift] = []
    if not isinstance(shifts_raw, list):
        c.problem("calendar.shifts", shifts_raw, "an array of tables ([[calendar.shifts]])")
        shifts_raw = []
    for i, s in enumerate(shifts_raw):
        path = f"calendar.shifts[{i}]"
        if not isinstance(s, dict):
            c.problem(path, s, "a table with name, start and end")
            ok = False
            continue
        for key in s:
            if key not in SHIFT_KEYS:
                c.problems.append(f"{c.file}: {path}.{key}: unknown option (known here: {', '.join(SHIFT_KEYS)})")
                ok = False
        name = s.get("name", _MISSING)
        if not isinstance(name, str) or not name:
            c.problem(f"{path}.name", name, "a non-empty string")
            ok = False
        times = {}
        for key in ("start", "end"):
            minutes = parse_clock(s.get(key))
            if minutes is None:
                c.problem(f"{path}.{key}", s.get(key, _MISSING), "a local time 'HH:MM' (24-hour clock)")
                ok = False
            times[key] = minutes
        if ok and None not in times.values():
            shift = Shift(name, times["start"], times["end"])
            for j, other in enumerate(shifts):
                if shift.overlaps(other):
                    c.problem(f"{path}", f"{name} {s['start']}-{s['end']}",
                              f"a shift not overlapping shifts[{j}] ({other.name})")
                    ok = False
            names = [x.name for x in shifts]
            if name in names:
                c.problem(f"{path}.name", name, f"a name not already used by shifts[{names.index(name)}]")
                ok = False
            shifts.append(shift)
    if shifts and not days:
        c.problem("calendar.working_days", [], "at least one working day when shifts are defined")
        ok = False
    if not ok:
        return Calendar()
    return Calendar(tz, tuple(shifts), frozenset(days), frozenset(holidays))


def _custody(c: _Checker, raw: Any) -> Rules:
    if not isinstance(raw, dict):
        c.problem("custody", raw, "a table")
        return Rules()
    body = dict(raw)
    ladders_raw = {k: body.pop(k) for k in DEADLINE_KINDS if k in body}
    opts = c.table("custody", body, CUSTODY | {k: Opt("table", {}) for k in DEADLINE_KINDS})
    roles = [r.value for r in Role]
    for i, r in enumerate(opts["release_roles"] if opts["release_roles"] is not _MISSING else ()):
        if r not in roles:
            c.problem(f"custody.release_roles[{i}]", r, f"one of {', '.join(roles)}")
    ladders = dict(DEFAULT_LADDERS)
    for kind in DEADLINE_KINDS:
        path = f"custody.{kind}"
        lo = c.table(path, ladders_raw.get(kind, {}), _ladder_spec(kind))
        levels, after = lo["levels"], lo["after_s"]
        if _MISSING in (levels, after, lo["ack_pause_s"]):
            continue
        bad = [(i, x) for i, x in enumerate(levels) if x not in RECIPIENTS]
        for i, x in bad:
            c.problem(f"{path}.levels[{i}]", x, f"one of {', '.join(RECIPIENTS)}")
        if not levels:
            c.problem(f"{path}.levels", [], "at least one level")
        elif len(after) != len(levels):
            c.problem(f"{path}.after_s", list(after), f"one delay per level ({len(levels)})")
        elif not bad:
            ladders[kind] = Ladder(tuple(Step(to, float(s)) for to, s in zip(levels, after, strict=True)),
                                   lo["ack_pause_s"])
    if c.problems:
        return Rules()
    return Rules(opts["deposit_within_h"], opts["return_without_shifts_h"], opts["tick_s"],
                 tuple(opts["release_roles"]), ladders, opts["dossier_badge"], opts["badge_window_s"])
