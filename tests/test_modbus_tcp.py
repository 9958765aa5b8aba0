"""The lean Modbus TCP client: replies matched by transaction id, late boards said once, broken streams dropped.

Against a hand-written peer on loopback: it answers as a relay board does,
late when told to, and sends what no correct server sends when told to. The
bus's other behaviour over TCP is tested against pymodbus's server in
test_modbus.py and test_modbus_pulse_bound.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import struct
import subprocess
import sys
from collections.abc import Callable

import pytest
from lockerd.drivers.base import PowerBudget
from lockerd.drivers.modbus_board import ModbusBoard
from lockerd.drivers.modbus_bus import ModbusBus
from lockerd.drivers.modbus_frame import BadFrame
from lockerd.drivers.modbus_line import LateReply, LineLost
from lockerd.drivers.modbus_tcp import TcpClient
from modbus_peer import close_line

from lockerd.clock import Clock


def test_the_modbus_drivers_load_without_pymodbus():
    # The daemon checks and loads its Modbus drivers at start: neither may import pymodbus (1.8 MB and
    # 13 ms of every start), which only the tests' relay boards use.
    code = ("import sys, lockerd.needs, lockerd.drivers.modbus; "
            "print(sorted(m for m in sys.modules if m.startswith('pymodbus')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.asyncio
async def test_a_slow_board_on_tcp_is_said_once_to_answer_late_and_the_other_keeps_working(caplog):
    # A peer that answers every request with its own transaction id, unit 1 after 300 ms. (pymodbus's
    # server cannot be this board: a request that arrives while another waits gets the other's reply,
    # stamped with its own transaction id. This client calls that a bad reply, as it is.)
    caplog.set_level(logging.INFO)
    peer = Peer(board_reply, delay={1: 0.3})
    bus = ModbusBus("tcp-1", Clock(), "tcp", {"host": "127.0.0.1", "port": await peer.start(), "timeout_ms": 200,
                                              "retries": 0})
    clock, budget = Clock(), PowerBudget(2)
    boards = [ModbusBoard(f"board-{u}", clock, budget, {"unit": u, "coils": 16, "inputs": 16, "poll_hz": 10.0}, bus)
              for u in (1, 2)]
    for b in boards:
        b.offline_retry_first_s, b.offline_retry_max_s = 0.4, 0.4
    try:
        await bus.start()
        for b in boards:
            await b.start()
        slow, fast = boards
        said = re.compile(r"board-1 \(unit 1 on tcp-1\) answers in about (3\d|4[0-4])0 ms, more than timeout_ms 200")
        async with asyncio.timeout(5):
            while slow.online or not said.match(slow.detail):
                await asyncio.sleep(0.05)
        polls, logged = fast.polls, len(caplog.records)
        await asyncio.sleep(1.5)
        assert fast.online and fast.polls >= polls + 5  # the slow board's late replies cost the other nothing
        assert not slow.online and said.match(slow.detail)
        lines = [r.getMessage() for r in caplog.records if "board-1" in r.getMessage()]
        assert len([m for m in lines if "offline" in m]) == 1, lines  # said once
        assert not [r.getMessage() for r in caplog.records[logged:] if r.levelno >= logging.INFO
                    and "board-1" in r.getMessage()]
        assert not any("bad reply" in m for m in lines), lines  # no late answer was taken for another's
        assert bus.client.late_s[(1, 2)] == pytest.approx(0.3, abs=0.15)
    finally:
        await close_line(boards, bus, peer)


def board_reply(tid: int, unit: int, pdu: bytes) -> bytes:
    """A relay board's answer: reads of all-off bits, writes echoed."""
    fc = pdu[0]
    if fc in (1, 2):
        count = struct.unpack(">H", pdu[3:5])[0]
        return mbap(tid, unit, bytes((fc, (count + 7) // 8)) + bytes((count + 7) // 8))
    return mbap(tid, unit, pdu[:5])  # 5 and 15: function, address and value or quantity


class Peer:
    """A TCP peer that answers each request with whatever ``answer`` makes of its header and PDU."""

    def __init__(self, answer: Callable[[int, int, bytes], bytes], delay: dict[int, float] | None = None):
        self.answer = answer
        self.delay = delay or {}  # unit -> seconds before its answer goes out (requests keep coming meanwhile)
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        loop = asyncio.get_running_loop()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                while True:
                    tid, _proto, length, unit = struct.unpack(">HHHB", await reader.readexactly(7))
                    reply = self.answer(tid, unit, await reader.readexactly(length - 1))
                    loop.call_later(self.delay.get(unit, 0.0), writer.write, reply)

        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def mbap(tid: int, unit: int, pdu: bytes) -> bytes:
    return struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu


async def client_of(answer: Callable[[int, int, bytes], bytes]) -> tuple[TcpClient, Peer]:
    peer = Peer(answer)
    client = TcpClient("127.0.0.1", await peer.start(), timeout_s=0.2, name="tcp-test")
    assert await client.connect()
    return client, peer


@pytest.mark.asyncio
async def test_replies_are_taken_only_for_their_transaction_and_unit():
    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        echo = mbap(tid, unit, pdu)  # a write-coil reply echoes the request
        if pdu[1:3] == b"\x00\x01":  # coil 1: first a stray reply with another transaction id, then the answer
            return mbap(tid ^ 0x5555, unit, pdu) + echo
        if pdu[1:3] == b"\x00\x02":  # coil 2: the answer comes from another unit
            return mbap(tid, unit + 1, pdu)
        if pdu[1:3] == b"\x00\x03":  # coil 3: the board refuses (exception 2, illegal address)
            return mbap(tid, unit, bytes((0x85, 2)))
        if pdu[1:3] == b"\x00\x04":  # coil 4: a reply one byte short
            return mbap(tid, unit, pdu[:-1])
        return echo

    client, peer = await client_of(answer)
    try:
        assert (await client.write_coil(1, value=True, device_id=7)).bits == [True]  # the stray reply was dropped
        with pytest.raises(BadFrame, match="reply from unit 8 to a request for unit 7"):
            await client.write_coil(2, value=True, device_id=7)
        refused = await client.write_coil(3, value=True, device_id=7)
        assert refused.isError() and refused.exception_code == 2
        with pytest.raises(BadFrame, match="4-byte reply of function 5 to function 5, expected 5 bytes"):
            await client.write_coil(4, value=True, device_id=7)
        assert (await client.write_coil(5, value=False, device_id=7)).bits == [False]  # the stream is still in step
    finally:
        client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_a_stream_that_stops_making_sense_is_dropped_and_says_why():
    client, peer = await client_of(lambda _tid, _unit, _pdu: b"\x00\x01\x00\x07\x00\x06\x01\x05\x00\x01\xff\x00")
    try:
        with pytest.raises(LineLost, match=r"garbled stream from 127\.0\.0\.1:\d+ \(00010007000601\)"):
            await client.write_coil(1, value=True, device_id=1)
        assert not client.connected  # the bus reconnects
        with pytest.raises(LineLost, match="not connected"):
            client.write_coil(1, value=True, device_id=1)
    finally:
        client.close()
        await peer.stop()


@pytest.mark.asyncio
async def test_a_board_that_answers_late_is_said_late_from_its_second_timeout():
    held: list[tuple[int, int, bytes]] = []

    def answer(tid: int, unit: int, pdu: bytes) -> bytes:
        held.append((tid, unit, pdu))  # answered by the test, later
        return b""

    client, peer = await client_of(answer)
    try:
        with pytest.raises(TimeoutError, match="unit 1: no reply within 200 ms") as first:
            await client.read_coils(0, count=8, device_id=1)
        assert not isinstance(first.value, LateReply)  # nothing known yet about how late it answers
        # Its reply comes 100 ms after the timeout: dropped, and remembered.
        await asyncio.sleep(0.1)
        tid, unit, _ = held[-1]
        client.received(mbap(tid, unit, b"\x01\x01\x00"))
        assert client.late_s[(1, 1)] == pytest.approx(0.3, abs=0.1)
        with pytest.raises(LateReply, match=r"unit 1 answers in about (3\d|4[0-4])0 ms, more than timeout_ms 200"):
            await client.read_coils(0, count=8, device_id=1)
        # Answered in time: no longer said late.
        fut = client.read_coils(0, count=8, device_id=1)
        await asyncio.sleep(0.02)
        tid, unit, _ = held[-1]
        client.received(mbap(tid, unit, b"\x01\x01\x05"))
        assert (await fut).bits[:3] == [True, False, True]
        assert (1, 1) not in client.late_s
    finally:
        client.close()
        await peer.stop()
