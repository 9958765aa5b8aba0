"""[display]: the settings of `lockerd-display`, the read-only screens beside the daemon.

The daemon itself never reads them; they live in the one config file so that
`lockerd check-config` catches a mistake before either service starts.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lockerd.config_check import ID_EXPECT, ID_RE, Checker
from lockerd.config_station import STATION
from lockerd.drivers.options import MISSING, Opt

LANGUAGES = ("en", "zh_Hans")

DISPLAY = {
    "bind": Opt("str", "127.0.0.1", doc="address the screens are served on; anything but loopback needs token_file"),
    "port": Opt("int", 8470, min=1, max=65535),
    "token_file": Opt("path", "", doc="a file holding the access token (a password) for every page off this board"),
    "tls_cert": Opt("path", "", doc="PEM certificate: serve HTTPS (with tls_key)"),
    "tls_key": Opt("path", "", doc="PEM private key of tls_cert"),
    "language": Opt("str", "", choices=("", *LANGUAGES), doc="every screen's language ('': the browser's)"),
    "idle_after_s": Opt("float", 8.0, min=1, max=600, doc="a cabinet screen goes back to idle this long after"),
    "poll_ms": Opt("int", 50, min=10, max=2000, doc="how often the journal is asked for new events"),
    # The wall board of a room with several controllers, from their station broker (subscribe only).
    "room_brokers": Opt("list-str", (), doc='"host:port" of the station broker(s): the wall board shows every '
                        "controller of room_site; empty: only the local journal's controller"),
    "room_prefix": Opt("str", "lockerd", doc="the controllers' topic prefix ([station] prefix)"),
    "room_site": Opt("str", "", doc="the site whose controllers the wall shows ('': [controller] site)"),
    "room_client_id": Opt("str", "", doc="MQTT client id of the display; default lockerd-display-<site>-<node>"),
    # How it reaches the broker: as the station link does ([station] protocol, username, tls, ...).
    **{f"room_{key}": STATION[key] for key in ("protocol", "username", "password_file", "tls", "ca_file",
                                                "cert_file", "key_file")},
    # plus "screens": named tables checked against SCREEN
}

SCREEN = {
    "language": Opt("str", "", choices=("", *LANGUAGES), doc="this screen's language ('': [display] language)"),
    "columns": Opt("int", 0, min=0, max=64, doc="compartments per row on the cabinet drawing (0: chosen)"),
}


@dataclass(frozen=True)
class Screen:
    language: str = ""
    columns: int = 0


@dataclass(frozen=True)
class Room:
    """Where the wall board hears a room's controllers: their station broker, read-only."""

    brokers: tuple[str, ...]
    prefix: str = "lockerd"
    site: str = ""
    client_id: str = ""
    protocol: str = "5"
    username: str = ""
    password_file: Path | None = None
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class Display:
    bind: str = "127.0.0.1"
    port: int = 8470
    token_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    language: str = ""
    idle_after_s: float = 8.0
    poll_ms: int = 50
    screens: dict[str, Screen] = field(default_factory=dict)
    room: Room | None = None  # None: the wall board shows the local journal's controller only

    @property
    def local_only(self) -> bool:
        return is_loopback(self.bind)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def display(c: Checker, raw: Any, names: set[str]) -> Display:
    """[display] and its [display.screens.<name>] tables; ``names`` are the scanners and cabinets a screen may
    be named after (and ``wall``)."""
    body = dict(raw) if isinstance(raw, dict) else raw
    screens_raw = body.pop("screens", {}) if isinstance(body, dict) else {}
    opts = c.table("display", body, DISPLAY)
    screens: dict[str, Screen] = {}
    if not isinstance(screens_raw, dict):
        c.problem("display.screens", screens_raw, "a table of named screens")
        screens_raw = {}
    for name, table in screens_raw.items():
        if not ID_RE.match(name) or name not in names:
            c.problem("display.screens", name, f"a scanner or cabinet id, or 'wall' ({ID_EXPECT})")
            continue
        s = c.table(f"display.screens.{name}", table, SCREEN)
        if MISSING not in s.values():
            screens[name] = Screen(**s)
    if opts["bind"] is not MISSING and not is_loopback(opts["bind"]) and not opts["token_file"]:
        c.problem("display.token_file", MISSING,
                  f"a token file: bind = {opts['bind']!r} serves the screens off this board, so they need a password")
    if bool(opts["tls_cert"]) != bool(opts["tls_key"]):
        c.problem("display.tls_key" if opts["tls_cert"] else "display.tls_cert", MISSING,
                  "tls_cert and tls_key together (or neither)")
    room = _room(c, opts)
    if MISSING in opts.values():
        return Display(screens=screens)
    return Display(bind=opts["bind"], port=opts["port"], token_file=opts["token_file"] or None,
                   tls_cert=opts["tls_cert"] or None, tls_key=opts["tls_key"] or None, language=opts["language"],
                   idle_after_s=opts["idle_after_s"], poll_ms=opts["poll_ms"], screens=screens, room=room)


def _room(c: Checker, opts: dict[str, Any]) -> Room | None:
    """The room_* options: None when no broker is named (then every other room_* option is a mistake)."""
    brokers = opts["room_brokers"]
    if brokers is MISSING:
        return None
    if not brokers:
        for key, opt in DISPLAY.items():
            if key.startswith("room_") and opts[key] not in (MISSING, opt.default):
                c.problem(f"display.{key}", opts[key], "room_brokers as well (no broker, no room)")
        return None
    for i, b in enumerate(brokers):
        host, sep, port = b.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            c.problem(f"display.room_brokers[{i}]", b, '"host:port" with a port from 1 to 65535')
    prefix = opts["room_prefix"]
    if isinstance(prefix, str) and not all(ID_RE.match(level) for level in prefix.split("/")):
        c.problem("display.room_prefix", prefix, "topic levels of a-z, 0-9 and '-', separated by '/'")
    site = opts["room_site"]
    if isinstance(site, str) and site and not ID_RE.match(site):
        c.problem("display.room_site", site, f"a site id ({ID_EXPECT})")
    if opts["room_tls"] is True and not opts["room_ca_file"]:
        c.problem("display.room_ca_file", "", "a CA file when room_tls = true")
    if bool(opts["room_cert_file"]) != bool(opts["room_key_file"]):
        c.problem("display.room_key_file", str(opts["room_key_file"] or ""),
                  "room_cert_file and room_key_file given together")
    if opts["room_password_file"] and not opts["room_username"]:
        c.problem("display.room_username", "", "a user name for room_password_file")
    if any(opts[k] is MISSING for k in DISPLAY if k.startswith("room_")):
        return None
    return Room(brokers=tuple(brokers), prefix=prefix, site=site, client_id=opts["room_client_id"],
                protocol=opts["room_protocol"], username=opts["room_username"],
                password_file=opts["room_password_file"] or None, tls=opts["room_tls"],
                ca_file=opts["room_ca_file"] or None, cert_file=opts["room_cert_file"] or None,
                key_file=opts["room_key_file"] or None)
