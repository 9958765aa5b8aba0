"""[drivers], [buses], [scanners], [feedback], [cameras] and [cabinets]: the hardware and what is wired where.

A hardware section's options are those its type declares beside its driver
class (:mod:`lockerd.drivers.registry`); the checks across sections (a board
on a bus that exists, a compartment on a channel its driver has and no other
compartment uses) are here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockerd.config_check import ID_EXPECT, ID_RE, Checker, names
from lockerd.drivers.base import Scanner
from lockerd.drivers.options import MISSING, Channels, Opt, Section, Spec
from lockerd.drivers.registry import BOARDS, DriverType

# The options of every scanner section whatever its type: those the core reads, and those
# every scanner driver shares (Scanner.OPTIONS, also part of each type's own table).
SCANNER_COMMON = {
    "cabinets": Opt("list-id", doc="cabinets this scanner serves"),
    "feedback": Opt("str", "", doc="[feedback.*] section; default: log to the console"),
    **Scanner.OPTIONS,
    "side": Opt("str", "both", choices=("both", "front", "rear"),
                doc="at pass-through compartments: a front scanner takes deposits only, a rear one "
                    "retrievals and releases only (each opens the door on its own side)"),
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
class Cabinet:
    id: str
    kind: str
    compartments: tuple[str, ...]
    camera: str = ""


def typed_sections(c: Checker, top: str, raw: Any, types: Mapping[str, DriverType],
                   common: Spec | None = None) -> dict[str, Section]:
    """Named sections whose ``type`` picks the options they accept (``common`` to every type besides)."""
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
        kind = body.get("type", MISSING)
        if kind not in types:
            c.problem(f"{path}.type", kind, "one of " + ", ".join(repr(t) for t in types))
            continue
        opts = c.table(path, body, {"type": Opt("str")} | dict(common or {}) | dict(types[kind].options))
        opts.pop("type")
        check = types[kind].problems
        for key, value, expected in check(opts) if check is not None else ():
            c.problem(f"{path}.{key}", value, expected)
        out[name] = Section(name, kind, opts)
    return out


def check_references(c: Checker, sections: Mapping[str, Section], top: str, key: str,
                     targets: Mapping[str, Any], target: str) -> None:
    """Each section's ``key``, when set, names one of the ``[target]`` sections."""
    for name, s in sections.items():
        ref = s.options.get(key)
        if isinstance(ref, str) and ref and ref not in targets:
            c.problem(f"{top}.{name}.{key}", ref, f"one of the [{target}] sections ({names(targets)})")


def check_lines(c: Checker, buses: Mapping[str, Section], drivers: Mapping[str, Section],
                types: Mapping[str, DriverType]) -> None:
    """Each bus with the boards on it: can its line carry what they ask of it (see modbus_capacity)?"""
    for name, bus in buses.items():
        check = types[bus.type].line_problems if bus.type in types else None
        for key, value, expected in check(name, bus, list(drivers.values())) if check is not None else ():
            c.problem(f"buses.{name}.{key}", value, expected)


def cabinets(c: Checker, raw: Any, drivers: dict[str, Section]) -> tuple[dict[str, Cabinet], dict[str, Compartment]]:
    """[cabinets.*] and their compartments, each on channels its drivers have and nobody else uses."""
    check = _Cabinets(c, drivers)
    if not isinstance(raw, dict):
        c.problem("cabinets", raw, "a table of cabinets")
        return check.cabinets, check.comps
    if not raw:
        c.problems.append(f"{c.file}: cabinets: no cabinet defined")
    for cab_id, body in raw.items():
        check.cabinet(cab_id, body)
    for comp in list(check.comps.values()):
        if comp.rear_id in check.comps:
            c.problem(f"cabinets.{comp.cabinet}", comp.rear_id,
                      f"no compartment id {comp.rear_id!r}: that is the id of {comp.id}'s rear door")
    return check.cabinets, check.comps


class _Cabinets:
    """Checks cabinet after cabinet, remembering the compartments and channels already taken."""

    def __init__(self, c: Checker, drivers: dict[str, Section]):
        self.checker = c
        self.drivers = drivers
        self.cabinets: dict[str, Cabinet] = {}
        self.comps: dict[str, Compartment] = {}
        self.used: dict[tuple[str, str, int], str] = {}  # (role, driver, channel) -> compartment
        # A cabinet's count past its driver's channels: (role, driver) -> the channels it needs, said once.
        self.beyond: dict[tuple[str, str], list[int]] = {}

    def cabinet(self, cab_id: str, body: Any) -> None:
        c, path = self.checker, f"cabinets.{cab_id}"
        if not ID_RE.match(cab_id):
            c.problem(path, cab_id, f"a cabinet id that is {ID_EXPECT}")
        body = dict(body) if isinstance(body, dict) else body
        explicit = body.pop("compartments", []) if isinstance(body, dict) else []
        opts = c.table(path, body, CABINET)
        entries = _generated(path, cab_id, opts)
        if not isinstance(explicit, list):
            c.problem(f"{path}.compartments", explicit, "an array of tables ([[cabinets.X.compartments]])")
            explicit = []
        for i, item in enumerate(explicit):
            entries.append((f"{path}.compartments[{i}]", c.table(f"{path}.compartments[{i}]", item, COMPARTMENT)))
        if not entries:
            c.problem(path, body, "count > 0 or at least one [[compartments]] entry")
        self.beyond = {}
        ids = [cid for where, e in entries if (cid := self.compartment(path, cab_id, opts, where, e))]
        if self.beyond:
            self._count_beyond(path, opts["count"])
        if opts["kind"] is not MISSING:
            self.cabinets[cab_id] = Cabinet(cab_id, opts["kind"], tuple(ids),
                                            opts["camera"] if isinstance(opts["camera"], str) else "")

    def compartment(self, path: str, cab_id: str, opts: dict[str, Any], where: str, e: dict[str, Any]) -> str:
        """Check one compartment entry and keep it when sound; its id, or "" when it was not kept."""
        c = self.checker
        if any(v is MISSING for v in e.values()):
            return ""
        cid = e["id"]
        if not ID_RE.match(cid):
            c.problem(f"{where}.id", cid, ID_EXPECT)
            return ""
        if cid in self.comps:
            c.problem(f"{where}.id", cid, f"an id not already used (also in cabinet {self.comps[cid].cabinet})")
            return ""
        ld = e["lock_driver"] or opts["lock_driver"]
        sd = e["sensor_driver"] or opts["sensor_driver"] or opts["lock_driver"]
        rld = e["rear_lock_driver"] or opts["rear_lock_driver"] or ld
        rsd = e["rear_sensor_driver"] or opts["rear_sensor_driver"] or rld
        checks = [("lock", "lock", ld, e["lock"]), ("sensor", "sensor", sd, e["sensor"])]
        rear = _check_rear(c, where, cid, opts["kind"], e)
        if rear:
            checks += [("lock", "rear_lock", rld, e["rear_lock"]), ("sensor", "rear_sensor", rsd, e["rear_sensor"])]
        ok = rear is not False
        for role, name, drv, ch in checks:
            # Every channel is checked, so that every mistake is told at once.
            ok = self.channel(path, where, cid, e, opts, role, name, drv, ch) and ok
        if not ok or opts["kind"] is MISSING:
            return ""
        rear_opts = {"rear_lock_driver": rld, "rear_lock": e["rear_lock"], "rear_sensor_driver": rsd,
                     "rear_sensor": e["rear_sensor"]} if rear else {}
        self.comps[cid] = Compartment(cid, cab_id, opts["kind"], ld, e["lock"], sd, e["sensor"], **rear_opts)
        return cid

    def channel(self, path: str, where: str, cid: str, e: dict[str, Any], opts: dict[str, Any], role: str,
                name: str, drv: Any, ch: int) -> bool:
        """One lock or sensor of a compartment: a driver that exists, a channel it has, not taken."""
        c = self.checker
        if drv is MISSING:
            return False
        if drv not in self.drivers:
            c.problem(_where_driver_set(path, where, e, opts, role, name), drv,
                      f"one of the [drivers] sections ({names(self.drivers)})")
            return False
        ok = True
        limit = channels_of(self.drivers[drv], role)
        if limit is not None and ch not in limit:
            if where.endswith(".count"):  # one mistake (the count), one line: see _count_beyond
                self.beyond.setdefault((name, drv), []).append(ch)
            else:
                c.problem(f"{where}.{name}", ch, f"a {role} channel of driver {drv!r} ({_fmt_channels(limit)})")
            ok = False
        key = (role, drv, ch)
        if key in self.used:
            c.problem(f"{where}.{name}", ch, f"a {role} channel not already used by compartment {self.used[key]}")
            ok = False
        self.used[key] = cid
        return ok


    def _count_beyond(self, path: str, count: int) -> None:
        """A cabinet's count needs channels its drivers do not have: one line for the count."""
        needs = []
        for (name, drv), chans in self.beyond.items():
            first = max(chans) - count + 1  # a count numbers its channels on from the first
            role = "sensor" if name.endswith("sensor") else "lock"
            limit = channels_of(self.drivers[drv], role)
            needs.append(f"{name.replace('_', ' ')} channels {first}-{max(chans)} of driver {drv!r}, which has "
                         f"{_fmt_channels(limit) if limit is not None else 'fewer'}")
        self.checker.problem(f"{path}.count", count, f"a count its drivers' channels hold: it needs {'; '.join(needs)}")


def channels_of(d: Section, role: str) -> Channels | None:
    """The channels a driver section offers for a role ("lock", "sensor"), when its options say."""
    offered = BOARDS[d.type].offered
    return offered(d.options, role) if offered is not None else None


def _where_driver_set(path: str, where: str, e: dict[str, Any], opts: dict[str, Any], role: str, name: str) -> str:
    """The key that named a compartment's driver: its own entry, or the cabinet default it fell back to."""
    if e[f"{name}_driver"]:
        return f"{where}.{name}_driver"
    if name != role and (opts[f"{name}_driver"] or opts["rear_lock_driver"]):
        return f"{path}.{name if opts[f'{name}_driver'] else 'rear_lock'}_driver"
    if role == "sensor" and opts["sensor_driver"]:
        return f"{path}.sensor_driver"
    return f"{path}.lock_driver"


def _generated(path: str, cab_id: str, opts: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The compartments a cabinet's ``count`` makes, numbered from its first channels."""
    count = opts["count"]
    if count is MISSING or not count:
        return []
    prefix = opts["prefix"] or cab_id
    width = max(2, len(str(count)))
    return [(f"{path}.count", {
        "id": f"{prefix}{i + 1:0{width}d}",
        "lock": _nth(opts["first_lock"], i),
        "sensor": _nth(opts["first_sensor"], i),
        "lock_driver": "",
        "sensor_driver": "",
        "rear_lock": _first(opts["first_rear_lock"], i),
        "rear_sensor": _first(opts["first_rear_sensor"], i),
        "rear_lock_driver": "",
        "rear_sensor_driver": "",
    }) for i in range(count)]


def _nth(first: Any, i: int) -> Any:
    """The i-th channel from ``first``; missing when ``first`` was (its own check said why)."""
    return first + i if isinstance(first, int) else MISSING


def _first(first: Any, i: int) -> int:
    """The i-th generated channel from a first channel, -1 when there is none."""
    return first + i if isinstance(first, int) and first >= 0 else -1


def _check_rear(c: Checker, where: str, cid: str, kind: Any, e: dict[str, Any]) -> bool | None:
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


def _fmt_channels(limit: range | tuple[int, ...]) -> str:
    if isinstance(limit, range):
        return f"0 to {limit.stop - 1}" if limit.stop else "none"
    return ", ".join(map(str, limit)) or "none"
