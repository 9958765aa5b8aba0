"""Read-only views of the controller for the station: nothing here changes state or moves a lock."""

from __future__ import annotations

from typing import Any

from lockerd.clock import iso_utc
from lockerd.commands.spec import Context
from lockerd.controller import Controller
from lockerd.station import snapshot as snapshots


async def snapshot(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """Every compartment, presence, the last seq and the newest signed checkpoint: what retained messages held."""
    return snapshots.build(c.journal, c.states(), c.config.site, c.config.node, iso_utc(c.clock.wall()))
