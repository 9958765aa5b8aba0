"""A room's controllers as their station broker tells them: presence, every compartment, and live events.

The display only subscribes: it never publishes, so it can neither send a
command nor overwrite a controller's retained state or presence (it has no
last will either). It cannot rest on retained messages alone: a clustered
broker may keep them on one node, or lose them. Each controller publishes
its whole state on ``…/snapshot`` at every connect, so the board is whole
again once a controller reconnects even where retained messages went
missing; retained state and presence fill the board at once where the
broker keeps them; live state messages and events keep it current. A newer
``ts`` wins for each compartment and for presence, whichever topic brought
it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho

from lockerd.config_check import ID_RE
from lockerd.config_display import Room
from lockerd.journal import Event
from lockerd.station.mqtt import Connection, Settings

log = logging.getLogger(__name__)

# Larger payloads are not read: a snapshot of a few hundred compartments is well under this.
MAX_PAYLOAD = 1024 * 1024
TOPICS = ("presence", "snapshot", "events", "state/+")


@dataclass
class Controller:
    """What the broker said of one controller."""

    node: str
    presence: str = ""  # "online", "offline", or "" before any word
    since: str = ""  # the presence's ts (ISO UTC)
    compartments: dict[str, dict[str, Any]] = field(default_factory=dict)

    def seen(self, state: str, ts: str) -> bool:
        if ts < self.since:
            return False  # an older word (a retained will behind a snapshot) does not undo a newer one
        self.presence, self.since = state, ts
        return True

    def compartment(self, state: dict[str, Any]) -> bool:
        cid = state["compartment"]
        old = self.compartments.get(cid)
        if old is not None and str(old.get("ts") or "") > str(state.get("ts") or ""):
            return False
        self.compartments[cid] = state
        return True


def settings(room: Room, site: str, node: str) -> Settings:
    brokers = []
    for b in room.brokers:
        host, _, port = b.rpartition(":")
        brokers.append((host.strip("[]"), int(port)))
    password = None
    if room.password_file is not None:
        password = room.password_file.read_text().rstrip("\r\n")
    return Settings(brokers=tuple(brokers), client_id=room.client_id or f"lockerd-display-{site}-{node}",
                    protocol=room.protocol, username=room.username, password=password, tls=room.tls,
                    ca_file=str(room.ca_file or ""), cert_file=str(room.cert_file or ""),
                    key_file=str(room.key_file or ""),
                    session_expiry_s=0)  # nothing is to wait at the broker for a screen that is away


class RoomSource:
    """Follows every controller of one site on the station broker; ``changed`` is called after each change."""

    def __init__(self, room: Room, site: str, node: str, changed: Callable[[list[Event]], None]):
        self.room = room
        self.site = room.site or site
        self.base = f"{room.prefix}/{self.site}/"
        self.changed = changed
        self.controllers: dict[str, Controller] = {}
        self.conn = Connection(settings(room, self.site, node), on_connect=self._subscribe,
                               on_message=self._message)

    def start(self) -> None:
        self.conn.start()

    async def stop(self) -> None:
        await self.conn.stop()

    def _subscribe(self, _session_present: bool) -> None:
        for t in TOPICS:
            # QoS 0: a screen shows the present; the snapshot at each controller's connect makes it whole again.
            self.conn.subscribe(f"{self.base}+/{t}", qos=0)

    def _message(self, msg: paho.MQTTMessage) -> None:
        if not msg.topic.startswith(self.base):
            return
        node, _, rest = msg.topic[len(self.base):].partition("/")
        if not ID_RE.match(node):
            return
        if not msg.payload:  # a retained message cleared: that compartment is gone
            if rest.startswith("state/") and node in self.controllers:
                self.controllers[node].compartments.pop(rest[6:], None)
                self.changed([])
            return
        if len(msg.payload) > MAX_PAYLOAD:
            return
        try:
            body = json.loads(msg.payload)
        except (ValueError, RecursionError):
            log.debug("room: unreadable payload on %s", msg.topic)
            return
        if not isinstance(body, dict):
            return
        c = self.controllers.setdefault(node, Controller(node))
        try:
            events = self._apply(c, rest, body)
        except (KeyError, TypeError, ValueError):
            log.debug("room: unexpected payload on %s", msg.topic)
            return
        if events is not None:
            self.changed(events)

    def _apply(self, c: Controller, rest: str, body: dict[str, Any]) -> list[Event] | None:
        """Apply one message; the events it brought (None: nothing changed)."""
        if rest == "presence":
            return [] if c.seen(str(body["state"]), str(body["ts"])) else None
        if rest.startswith("state/"):
            return [] if _is_state(body) and c.compartment(body) else None
        if rest == "snapshot":
            c.seen("online", str(body["ts"]))
            listed = {s["compartment"] for s in body["compartments"] if _is_state(s)}
            for cid in set(c.compartments) - listed:
                del c.compartments[cid]  # the snapshot is the whole controller: a compartment not in it is gone
            for s in body["compartments"]:
                if _is_state(s):
                    c.compartment(s)
            return []
        if rest == "events":
            return [_event(c.node, body)]
        return None


def _is_state(s: Any) -> bool:
    return isinstance(s, dict) and isinstance(s.get("compartment"), str) and isinstance(s.get("ts"), str)


def _event(node: str, d: dict[str, Any]) -> Event:
    """An event from the broker as the wall reads it (not verified: the screen shows, it does not keep).

    Its ``boot`` carries the controller's node instead: on the wall, which controller said it is what matters.
    """
    return Event(seq=int(d["seq"]), id=str(d["id"]), ts=str(d["ts"]), mono=float(d.get("mono") or 0),
                 boot=node, kind=str(d["kind"]), compartment=d.get("compartment"), dossier=d.get("dossier"),
                 people=tuple(d.get("people") or ()), data=dict(d.get("data") or {}), prev="", hash="")
