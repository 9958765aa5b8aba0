"""Home Assistant MQTT discovery and the retained overdue view, against the real daemon and Mosquitto.

The discovery configs are checked against Home Assistant's documented configuration variables of the MQTT
binary_sensor and sensor platforms (home-assistant.io/integrations/binary_sensor.mqtt, sensor.mqtt): every key a
documented one, no command topic anywhere, every entity reading a topic the controller publishes.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jsonschema
import pytest
from broker import Mosquitto, Recorder, wait_for
from test_station_commands import BASE, reply_for
from test_station_daemon import station_daemon

from lockerd.station import contract

# The configuration variables Home Assistant documents for the two platforms (the subset a read-only entity
# may use: every command_* variable belongs to platforms that act, and none is allowed here).
_COMMON = {"availability_topic", "availability_template", "payload_available", "payload_not_available",
           "device", "enabled_by_default", "encoding", "entity_category", "expire_after", "force_update", "icon",
           "json_attributes_template", "json_attributes_topic", "name", "qos", "state_topic", "unique_id",
           "value_template", "device_class"}
DOCUMENTED = {
    "binary_sensor": _COMMON | {"off_delay", "payload_on", "payload_off"},
    "sensor": _COMMON | {"state_class", "unit_of_measurement", "suggested_display_precision",
                         "last_reset_value_template"},
}
BINARY_SENSOR_CLASSES = {"battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
                         "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving", "occupancy",
                         "opening", "plug", "power", "presence", "problem", "running", "safety", "smoke", "sound",
                         "tamper", "update", "vibration", "window"}
DEVICE = {"type": "object", "properties": {"identifiers": {"type": "array", "items": {"type": "string"}},
                                           "name": {"type": "string"}, "manufacturer": {"type": "string"},
                                           "model": {"type": "string"}, "sw_version": {"type": "string"}},
          "required": ["identifiers", "name"], "additionalProperties": False}


def schema(component: str) -> dict:
    props = {k: {"type": "string"} for k in DOCUMENTED[component]}
    props |= {"qos": {"enum": [0, 1, 2]}, "device": DEVICE, "entity_category": {"enum": ["config", "diagnostic"]}}
    if component == "binary_sensor":
        props["device_class"] = {"enum": sorted(BINARY_SENSOR_CLASSES)}
    else:
        props["state_class"] = {"enum": ["measurement", "total", "total_increasing"]}
    return {"type": "object", "properties": props, "required": ["state_topic", "unique_id"],
            "additionalProperties": False}


@pytest.mark.asyncio
async def test_discovery_configs_are_read_only_sensors_in_home_assistants_documented_form(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders, homeassistant_discovery=True) as (daemon, _s, _r):
        compartments = sorted(daemon.controller.states())
        first = Recorder(mosquitto.port, ["homeassistant/#"], client_id="home-assistant")
        recorders.append(first)
        await wait_for(first, lambda r: len(r.messages) >= 2 + 3 * len(compartments))
        # Home Assistant starting after the controller: the configs are there for it, retained.
        ha = Recorder(mosquitto.port, ["homeassistant/#"], client_id="home-assistant-later")
        recorders.append(ha)
        await wait_for(ha, lambda r: len(r.messages) >= 2 + 3 * len(compartments))
        configs = {topic: (json.loads(payload), retained) for topic, payload, retained in ha.messages}
    node = "lockerd-test-site-node-1"
    assert len(configs) == 2 + 3 * len(compartments)
    published = {f"{BASE}/presence", f"{BASE}/overdue", *(f"{BASE}/state/{c}" for c in compartments)}
    for topic, (config, retained) in configs.items():
        prefix, component, node_id, _object_id, last = topic.split("/")
        assert (prefix, node_id, last) == ("homeassistant", node, "config") and retained
        assert component in ("binary_sensor", "sensor")
        jsonschema.validate(config, schema(component))
        assert not any(key.startswith("command") for key in config)  # nothing Home Assistant could act with
        assert config["state_topic"] in published
        assert config.get("availability_topic", f"{BASE}/presence") == f"{BASE}/presence"
    doors = [c for t, (c, _) in configs.items() if t.endswith("_door/config")]
    assert sorted(c["device_class"] for c in doors) == ["door"] * len(compartments)


@pytest.mark.asyncio
async def test_the_overdue_items_are_a_retained_view_that_follows_the_reminders(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (_daemon, station, rec):
        await wait_for(rec, lambda r: bool(r.on("/overdue")))
        assert rec.on("/overdue")[-1]["count"] == 0
        person = station.send("register-person", {"id": "p1", "name": "Officer One", "role": "officer"})
        await wait_for(rec, lambda r: bool(reply_for(r, person)))
        taken_in = (datetime.now(UTC) - timedelta(hours=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
        late = station.send("assign", {"code": "DOS-LATE", "compartment": "d01", "officer": "p1",
                                       "taken_in": taken_in})  # its deposit deadline ran out 6 h ago
        await wait_for(rec, lambda r: bool(r.on("/overdue")) and r.on("/overdue")[-1]["count"] == 1)
        view = rec.on("/overdue")[-1]
        jsonschema.validate(view, contract.OVERDUE)
        assert [i["code"] for i in view["items"]] == ["DOS-LATE"] and view["items"][0]["deadline"] == "deposit"
        assert reply_for(rec, late)[0]["ok"]
        # Retained: a dashboard that subscribes now has the view at once.
        later = Recorder(mosquitto.port, [f"{BASE}/overdue"], client_id="dashboard")
        recorders.append(later)
        await wait_for(later, lambda r: bool(r.messages))
        topic, payload, retained = later.messages[0]
        assert retained and json.loads(payload)["count"] == 1
