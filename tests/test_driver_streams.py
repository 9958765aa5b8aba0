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


@pytest.mark.asyncio
async def test_pulse_listeners_hear_each_pulse_once_it_landed_and_cannot_break_it() -> None:
    board = SimBoard("b", Clock(), PowerBudget(2), {"channels": 2})
    await board.start()
    heard: list[tuple[int, int, bool]] = []
    board.on_pulse(lambda ch, ms: heard.append((ch, ms, board.released(ch))))

    def broken(_channel: int, _ms: int) -> None:
        raise RuntimeError("a bug in an observer")

    board.on_pulse(broken)
    board.jam(1)
    await board.pulse(0, 50)
    await board.pulse(1, 50)
    # Heard after the latch moved (or, jammed, did not); the broken listener failed neither pulse.
    assert heard == [(0, 50, True), (1, 50, False)]
    assert [ch for ch, _, _ in board.pulse_log] == [0, 1]
    await board.wait_pulses()
    await board.close()
