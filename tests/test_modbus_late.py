"""A board slower than the request timeout: its late replies are never taken for later requests' answers.

A bench run against a board answering in 300 ms with timeout_ms 200 saw
replies "in 102 ms": each late answer was read as the answer to the next
request. These tests make each reply say which request it answers (the
peer's ``stamp_reads``: the n-th coil read comes back as the number n in
coils 0-15) and check every reply the client hands over.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
from lockerd.drivers.base import PowerBudget
from lockerd.drivers.modbus_board import ModbusBoard
from lockerd.drivers.modbus_bus import ModbusBus
from lockerd.drivers.modbus_line import LateReply
from modbus_peer import PtyPair, RelayPeer, close_line

from lockerd.clock import Clock

pytestmark = pytest.mark.asyncio


def stamp(bits: list[bool]) -> int:
    """The number a stamped read carries (coil 0 the lowest bit)."""
    return sum(1 << i for i, on in enumerate(bits[:16]) if on)


class Line:
    """A pty with the peer's boards on one end and a bus (no boards of its own unless added) on the other."""

    def __init__(self, folder: Path, units: list[int]):
        self.pty = PtyPair(folder).start()
        self.peer = RelayPeer(units)
        self.bus: ModbusBus | None = None
        self.boards: dict[int, ModbusBoard] = {}

    async def start(self, boards: int = 0, **options: object) -> ModbusBus:
        """The peer and the bus, with boards at units 1 to ``boards`` (a bus polls the boards it has at start)."""
        await self.peer.start_rtu(self.pty.b)
        self.bus = ModbusBus("rtu-1", Clock(), "rtu", {"device": self.pty.a, "baudrate": 115200,
                                                       "timeout_ms": 200, "retries": 0} | options)
        clock, budget = Clock(), PowerBudget(2)
        for u in range(1, boards + 1):
            b = ModbusBoard(f"board-{u}", clock, budget, {"unit": u, "coils": 16, "inputs": 16, "poll_hz": 10.0},
                            self.bus)
            b.offline_retry_first_s, b.offline_retry_max_s = 0.2, 0.4
            self.boards[u] = b
        await self.bus.start()
        for b in self.boards.values():
            await b.start()
        return self.bus

    async def close(self) -> None:
        await close_line(self.boards.values(), self.bus, self.peer, self.pty)


async def until(predicate, timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` holds: the line thread works on its own clock."""
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_a_late_reply_is_dropped_not_taken_for_the_next_read(tmp_path):
    line = Line(tmp_path, [1, 2])
    try:
        bus = await line.start()
        peer, client = line.peer, bus.client
        peer.stamp_reads.add(1)
        answered: list[tuple[int, int]] = []  # (request number, the number its reply carries)
        late: list[int] = []
        n = 0
        for _ in range(4):
            # A read answered in 300 ms times out at 200 ms; the next one, answered in 150 ms, is still
            # waiting for its reply when the first one's comes in at 300 ms.
            for delay in (0.3, 0.15):
                peer.delay[(1, 1)] = delay
                n += 1
                try:
                    reply = await client.read_coils(0, count=16, device_id=1)
                except TimeoutError:
                    late.append(n)
                else:
                    answered.append((n, stamp(reply.bits)))
        assert late == [1, 3, 5, 7]
        assert answered == [(2, 2), (4, 4), (6, 6), (8, 8)]  # each reply is its own request's
        peer.delay[(1, 1)] = 0.3
        with pytest.raises(TimeoutError):
            await client.read_coils(0, count=16, device_id=1)
        await until(lambda: (1, 1) in client.late.late_s)  # its late reply comes in meanwhile
        assert 0.28 <= client.late.late_s[(1, 1)] <= 0.45  # how late it came (a loaded machine adds a little)
    finally:
        await line.close()


async def test_another_board_is_asked_while_a_late_reply_is_awaited(tmp_path):
    line = Line(tmp_path, [1, 2])
    try:
        bus = await line.start()
        peer, client = line.peer, bus.client
        peer.stamp_reads.update((1, 2))
        peer.delay[(1, 1)] = 0.3
        with pytest.raises(TimeoutError):
            await client.read_coils(0, count=16, device_id=1)
        # Unit 1 still owes its reply; unit 2 is asked at once and its reply is its own.
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reply = await client.read_coils(0, count=16, device_id=2)
        assert stamp(reply.bits) == 1 and reply.dev_id == 2
        assert loop.time() - t0 < 0.09  # it did not wait for unit 1's late reply (due 100 ms after the timeout)
        # Once unit 1's late reply is in, its next timeout says how late it answers.
        with pytest.raises(LateReply, match=r"unit 1 answers in about (3\d|4[0-4])0 ms, more than timeout_ms 200"):
            await client.read_coils(0, count=16, device_id=1)
        peer.delay.pop((1, 1))
        await until(lambda: not client.late.owed)  # its last late reply comes and goes
        reply = await client.read_coils(0, count=16, device_id=1)
        assert stamp(reply.bits) == 3  # the third read of unit 1: the two late ones were never taken
        assert (1, 1) not in client.late.late_s  # answered in time: no longer called late
    finally:
        await line.close()


async def test_a_slow_board_is_said_once_to_answer_late_and_the_other_board_keeps_working(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    line = Line(tmp_path, [1, 2])
    try:
        line.peer.delay[1] = 0.3  # every request to unit 1
        await line.start(boards=2, retries=1)
        slow, fast = line.boards[1], line.boards[2]
        # About 300 ms (to 10 ms; a loaded machine delivers the reply a little later).
        said = re.compile(r"board-1 \(unit 1 on rtu-1\) answers in about (3\d|4[0-4])0 ms, more than timeout_ms 200")
        async with asyncio.timeout(5):
            while slow.online or not said.match(slow.detail):
                await asyncio.sleep(0.05)
        assert said.match(slow.detail)  # what `lockerd status` shows for the board
        polls, logged = fast.polls, len(caplog.records)
        await asyncio.sleep(1.5)  # the slow board is asked again and again meanwhile
        # The other board keeps being polled; only the slow board's timeouts (200 ms of line each, one
        # every 0.4 s once offline) cost it line time, not its late replies.
        assert fast.online and fast.polls >= polls + 5
        assert not slow.online and said.match(slow.detail)
        lines = [r.getMessage() for r in caplog.records if "board-1" in r.getMessage()]
        offline = [m for m in lines if "offline" in m]
        assert len(offline) == 1 and said.match(offline[0].removeprefix("board-1: offline: ")), lines  # said once
        assert not [r.getMessage() for r in caplog.records[logged:] if r.levelno >= logging.INFO
                    and "board-1" in r.getMessage()]  # and not again for each request after
        assert not any("bad reply" in m for m in lines), lines  # no late answer was taken for a wrong one
    finally:
        await line.close()
