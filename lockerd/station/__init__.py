"""The station link: MQTT between a controller and the station server.

``StationLink(config, journal, clock, commands=handler, states=source)``;
``await link.start()`` (never raises for an absent broker) and
``await link.stop()``. See docs/station-server.md and docs/asyncapi.yaml.
"""

from __future__ import annotations

from typing import Any

__all__ = ["StationLink"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so the contract (and `python -m
    # lockerd.station.asyncapi`) does not need paho.
    if name == "StationLink":
        from lockerd.station.link import StationLink

        return StationLink
    raise AttributeError(name)
