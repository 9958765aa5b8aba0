"""Pulse length at the board when another board on the bus is dead or slow, and the hardware-timed pulse.

The boards are pymodbus's server (tests/modbus_peer.py) over RTU on a pty
pair and over TCP on loopback; the pulse is measured where it matters, at
the board: from the on-write's arrival to the first off-write's arrival.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from lockerd.drivers.base import PowerBudget
from lockerd.drivers.modbus import ModbusBoard, ModbusBus
from modbus_peer import PtyPair, RelayPeer, close_line

from lockerd.clock import Clock

pytestmark = pytest.mark.asyncio

LIVE, DEAD, SLOW, FLASH = 1, 2, 3, 4
PULSE_MS = 300
TIMEOUT_MS = 200  # the default request timeout; the slow board answers in 300 ms, as in issue 16
# One transaction at 115200 baud on a pty takes 1-3 ms, and run alone the pulses measure
# 301-318 ms. What else the bound allows is the event loop (board and driver share it)
# stalling under the full suite on a loaded two-core machine: up to about 100 ms seen.
# A poll of the dead board that the off-write waits behind costs up to the whole 200 ms
# timeout: before the bus held such boards back, these pulses lasted 466-504 ms (RTU,
# dead board) and 321-486 ms (TCP, slow board).
BOUND_MS = PULSE_MS + 120


class Line:
    """Four boards on one bus: a live generic board, a dead one, a slow one and a Waveshare board."""

    def __init__(self, peer: RelayPeer, bus: ModbusBus, boards: dict[int, ModbusBoard], pty: PtyPair | None):
        self.peer, self.bus, self.boards, self.pty = peer, bus, boards, pty

    async def close(self) -> None:
        await close_line(self.boards.values(), self.bus, self.peer, self.pty)


async def open_line(kind: str, folder: Path, **board_opts) -> Line:
    clock = Clock()
    peer = RelayPeer([LIVE, DEAD, SLOW, FLASH], waveshare=(FLASH,))
    pty = None
    if kind == "rtu":
        pty = PtyPair(folder).start()
        await peer.start_rtu(pty.b)
        opts = {"device": pty.a, "baudrate": 115200, "frame_gap_ms": 2.0}
    else:
        opts = {"host": "127.0.0.1", "port": await peer.start_tcp(), "frame_gap_ms": 0.0}
    bus = ModbusBus(f"{kind}-line", clock, kind, opts | {"timeout_ms": TIMEOUT_MS, "retries": 1})
    budget = PowerBudget(4, max_wait=1.0)
    boards = {}
    for u in (LIVE, DEAD, SLOW, FLASH):
        o = {"unit": u, "profile": "waveshare" if u == FLASH else "generic", "coils": 16, "inputs": 16,
             "poll_hz": 10.0} | board_opts
        b = ModbusBoard(f"board-{u}", clock, budget, o, bus)
        # A silent board is asked again soon after each timeout: its polls then hold the
        # line most of the time, so an off-write falling due finds one in flight.
        b.offline_retry_first_s = b.offline_retry_max_s = 0.05
        boards[u] = b
    line = Line(peer, bus, boards, pty)
    await bus.start()
    for b in boards.values():
        await b.start()
    return line


def pulses_at(peer: RelayPeer, unit: int, since_ns: int) -> list[tuple[int, int]]:
    """(on-write arrival, first off-write arrival) in ns, per pulse of ``unit``, from the board's log."""
    out: list[tuple[int, int]] = []
    on: dict[int, int] = {}
    for t, u, fc, address, value in peer.log:
        if t < since_ns or u != unit or fc != 5:
            continue
        if value == 0xFF00:
            on[address] = t
        elif address in on:
            out.append((on.pop(address), t))
    return out


def requests_between(peer: RelayPeer, start: int, end: int) -> list[str]:
    """What reached the boards during one pulse, to say what the off-write waited behind."""
    return [f"+{(t - start) / 1e6:.0f} ms unit {u} fc {fc}" for t, u, fc, _a, _v in peer.log if start <= t <= end]


async def silence(line: Line, unit: int, how: str) -> None:
    if how == "slow":
        # It answers everything, late: whether the bus calls it offline depends on
        # late answers it may take for its own; give it a second of that first.
        line.peer.delay[unit] = 0.3
        await asyncio.sleep(1.0)
        return
    line.peer.dead.add(unit)
    board = line.boards[unit]
    async with asyncio.timeout(5):
        while board.online:
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", ["rtu", "tcp"])
@pytest.mark.parametrize("how", ["dead", "slow"])
async def test_a_dead_or_slow_board_does_not_stretch_another_boards_pulse(kind, how, tmp_path):
    line = await open_line(kind, tmp_path)
    try:
        unit = DEAD if how == "dead" else SLOW
        await silence(line, unit, how)
        live = line.boards[LIVE]
        since = time.monotonic_ns()
        for ch in range(8):
            await live.pulse(ch, PULSE_MS)
            await live.wait_pulses()
        pulses = pulses_at(line.peer, LIVE, since)
        assert len(pulses) == 8, pulses
        lengths = [(off - on) / 1e6 for on, off in pulses]
        print(f"{kind}, {how} board on the bus: pulse lengths at the board (ms):", [round(x) for x in lengths])
        longest = max(pulses, key=lambda p: p[1] - p[0])
        assert max(lengths) <= BOUND_MS, ([round(x) for x in lengths], requests_between(line.peer, *longest))
        assert await line.peer.coils_of(LIVE) == [False] * 16
    finally:
        await line.close()


# -- the hardware-timed pulse (Waveshare flash) -------------------------------------------------


@pytest.mark.parametrize("kind", ["rtu", "tcp"])
async def test_a_hardware_timed_opening_costs_one_write(kind, tmp_path):
    line = await open_line(kind, tmp_path)
    try:
        peer, b = line.peer, line.boards[FLASH]
        faults: list = []
        b.on_lock_fault(lambda ch, detail: faults.append((ch, detail)))
        writes = peer.count(FLASH, 5)
        for ch in range(3):
            await b.pulse(ch, 200)
            await b.wait_pulses()
        # Past the last flash's end by the board's timer and the coil check after it.
        await peer.wait_for(lambda: peer.count(FLASH, 1) >= 1, timeout_s=3.0)
        await asyncio.sleep(0.3)
        assert peer.count(FLASH, 5) == writes + 3  # the flash alone: no off-write behind it
        assert [f[:3] for f in peer.flashes] == [(FLASH, ch, 2) for ch in range(3)]
        assert await peer.coils_of(FLASH) == [False] * 16
        assert faults == []  # a relay its timer switched off is not a fault
    finally:
        await line.close()


@pytest.mark.parametrize("kind", ["rtu", "tcp"])
async def test_a_relay_the_board_left_on_is_found_by_the_next_coil_read_and_switched_off(kind, tmp_path, caplog):
    line = await open_line(kind, tmp_path)
    try:
        peer, b = line.peer, line.boards[FLASH]
        faults: list = []
        b.on_lock_fault(lambda ch, detail: faults.append((ch, detail)))
        peer._timer = lambda *_args: None  # this board takes the flash as a plain "on": its timer never ends it
        await b.pulse(5, 200)
        assert (await peer.coils_of(FLASH))[5] is True
        await b.wait_pulses()
        await peer.wait_for(lambda: _coil_off(peer, FLASH, 5), timeout_s=3.0)
        offs = [e for e in peer.log if e[1:4] == (FLASH, 5, 5) and e[4] == 0]
        reads = [e for e in peer.log if e[1:3] == (FLASH, 1)]
        assert offs and reads and reads[0][0] < offs[0][0]  # found by a coil read, then switched off
        async with asyncio.timeout(3):
            while not faults or faults[-1] != (5, None):
                await asyncio.sleep(0.02)
        assert faults[0][0] == 5 and "left on after its hardware-timed pulse" in faults[0][1]
        assert any("relay 5 is left on after its hardware-timed pulse" in r.getMessage() for r in caplog.records)
    finally:
        await line.close()


async def _coil_off(peer: RelayPeer, unit: int, coil: int) -> bool:
    return not (await peer.coils_of(unit))[coil]
