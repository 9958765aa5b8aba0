"""Home Assistant MQTT discovery: read-only entities for the doors, alarms, overdue items and presence.

With ``[station] homeassistant_discovery = true`` the link publishes, at
every connect, one retained config message per entity under
``{homeassistant_prefix}/{component}/{node id}/{object id}/config``, as
Home Assistant's MQTT discovery reads them (its documented configuration
variables for the binary_sensor and sensor platforms). Every entity reads a
topic the link publishes anyway (``state/{compartment}``, ``overdue``,
``presence``), with presence as each entity's availability.

Only sensors: never a switch, lock, button or anything else with a
``command_topic``. An opening stays authorised by the people at the
cabinet or by a signed station command, never by a home-automation click.
"""

from __future__ import annotations

import json
from typing import Any

from lockerd import __version__
from lockerd.station.topics import Topics

COMPONENTS = ("binary_sensor", "sensor")  # read-only platforms only


def messages(topics: Topics, compartments: list[str], prefix: str = "homeassistant") -> list[tuple[str, bytes]]:
    """Every discovery config message of one controller: (topic, retained JSON payload)."""
    node = f"lockerd-{topics.site}-{topics.node}"
    device = {"identifiers": [node], "name": f"lockerd {topics.site} {topics.node}", "manufacturer": "lockerd",
              "model": "locker controller", "sw_version": __version__}
    available = {"availability_topic": topics.presence,
                 "availability_template": "{{ value_json.state }}",
                 "payload_available": "online", "payload_not_available": "offline"}
    entities: list[tuple[str, str, dict[str, Any]]] = [
        ("binary_sensor", "presence", {
            "name": "Presence", "state_topic": topics.presence, "device_class": "connectivity",
            "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}", "entity_category": "diagnostic",
        }),
        ("sensor", "overdue", {
            "name": "Overdue items", "state_topic": topics.overdue, "value_template": "{{ value_json.count }}",
            "state_class": "measurement", "unit_of_measurement": "items", "icon": "mdi:clock-alert",
            "json_attributes_topic": topics.overdue,
            "json_attributes_template": "{{ {'items': value_json.items} | tojson }}",
            **available,
        }),
    ]
    for cid in compartments:
        state = topics.state(cid)
        entities += [
            ("binary_sensor", f"{cid}_door", {
                "name": f"Compartment {cid} door", "state_topic": state, "device_class": "door",
                "value_template": "{{ 'ON' if value_json.door == 'open' else 'OFF' }}", **available,
            }),
            ("binary_sensor", f"{cid}_alarm", {
                "name": f"Compartment {cid} alarm", "state_topic": state, "device_class": "safety",
                "value_template": "{{ 'ON' if value_json.alarm else 'OFF' }}",
                "json_attributes_topic": state,
                "json_attributes_template": "{{ {'alarm': value_json.alarm} | tojson }}",
                **available,
            }),
            ("binary_sensor", f"{cid}_fault", {
                "name": f"Compartment {cid} fault", "state_topic": state, "device_class": "problem",
                "value_template": "{{ 'ON' if value_json.faults else 'OFF' }}", "entity_category": "diagnostic",
                **available,
            }),
        ]
    out = []
    for component, object_id, body in entities:
        config = {"unique_id": f"{node}-{object_id}", "device": device, "qos": 1} | body
        out.append((f"{prefix}/{component}/{node}/{object_id}/config",
                    json.dumps(config, separators=(",", ":")).encode()))
    return out
