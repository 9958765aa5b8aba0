"""[station]: the link to the station (MQTT) and the signers whose commands this controller obeys."""

from __future__ import annotations

from typing import Any

from lockerd.config_check import ID_RE, Checker
from lockerd.drivers.options import Opt
from lockerd.station.signing import KEY_ID_RE, Authority, Signer

STATION = {
    "enabled": Opt("bool", default=True),
    "brokers": Opt("list-str", doc='"host:port" entries, tried in turn'),
    "prefix": Opt("str", "lockerd", doc="topic prefix (levels of a-z, 0-9, '-', separated by '/')"),
    "client_id": Opt("str", "", doc="MQTT client id; default lockerd-<site>-<node>"),
    "protocol": Opt("str", "5", choices=("5", "3.1.1")),
    "keepalive_s": Opt("int", 30, min=5, max=3600),
    "username": Opt("str", ""),
    "password_file": Opt("path", "", doc="file holding the broker password"),
    "tls": Opt("bool", default=False),
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
    "homeassistant_discovery": Opt("bool", default=False,
                                   doc="publish Home Assistant MQTT discovery configs: read-only sensors only"),
    "homeassistant_prefix": Opt("str", "homeassistant", doc="Home Assistant's discovery prefix"),
    "allow_unsigned": Opt("bool", default=False,
                          doc="LAB ONLY: obey unsigned commands; journaled and logged at every start"),
    "allow_plaintext": Opt("bool", default=False,
                           doc="LAB ONLY: obey lock-moving commands over a link without TLS "
                           "and credentials; journaled and logged at every start"),
}


def check_station(c: Checker, st: dict[str, Any]) -> None:
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


def _signers(c: Checker, raw: Any) -> dict[str, Signer]:
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
