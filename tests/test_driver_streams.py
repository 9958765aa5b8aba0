"""A driver's event streams: a subscriber gets everything published from the moment it subscribes."""

from __future__ import annotations

import asyncio

import pytest
from lockerd.drivers.base import DoorState, PowerBudget
from lockerd.drivers.sim import SimBoard, SimScanner

from lockerd.clock import Clock


@pytest.mark.asyncio
async def test_a_door_change_between_subscribing_and_the_first_read_is_kept() -> None:
    board = SimBoard("b", Clock(), PowerBudget(2), {"channels": 2})
    await board.start()
    changes = board.door_changes()
    board.force(1)  # published before the subscriber's first read
    change = await asyncio.wait_for(anext(changes), 1.0)
    assert (change.channel, change.state) == (1, DoorState.OPEN)
    await board.close()


@pytest.mark.asyncio
async def test_a_scan_between_subscribing_and_the_first_read_is_kept() -> None:
    scanner = SimScanner("s", Clock())
    scans = scanner.scans()
    scanner.inject("D-0001")
    assert (await asyncio.wait_for(anext(scans), 1.0)).code == "D-0001"


@pytest.mark.asyncio
async def test_a_closed_or_dropped_subscription_is_fed_no_more() -> None:
    scanner = SimScanner("s", Clock())
    kept, closed = scanner.scans(), scanner.scans()
    dropped = scanner.scans()
    assert len(scanner._scan_fanout._queues) == 3
    await closed.aclose()
    del dropped
    assert len(scanner._scan_fanout._queues) == 1
    scanner.inject("D-0002")
    assert (await asyncio.wait_for(anext(kept), 1.0)).code == "D-0002"
    with pytest.raises(StopAsyncIteration):
        await anext(closed)
