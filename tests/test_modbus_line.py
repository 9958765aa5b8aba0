"""Real wire time: the RTU bus on a paced 9600-baud line, and a config whose polling the line cannot carry.

A pty ignores the baud rate; :mod:`paced_line` does not (10 bits a byte,
one talker at a time), so these tests see what a real RS-485 line costs.
The arithmetic they check against is :mod:`lockerd.drivers.modbus_capacity`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lockerd.drivers.base import PowerBudget
from lockerd.drivers.modbus_board import ModbusBoard
from lockerd.drivers.modbus_bus import ModbusBus
from lockerd.drivers.modbus_capacity import LineSettings, line_load, poll_bytes, write_coil_s
from modbus_peer import RelayPeer
from paced_line import PacedLine
from rig import TOML

from lockerd.clock import Clock

UNITS = (1, 2, 3, 4)


def test_the_wire_time_of_a_transaction_at_9600_baud():
    line = LineSettings(9600)
    gap = 3.5 * 11 / 9600  # the frame gap: 3.5 characters of 11 bits (Modbus over Serial Line, 2.5.1.1)
    assert poll_bytes({"inputs": 16}) == (8, 7)  # read 16 discrete inputs: 8 bytes out, 7 back
    assert line.transaction_s(8, 7) == pytest.approx(15 * 10 / 9600 + 2 * gap)  # 23.6 ms
    assert write_coil_s(line) == pytest.approx(16 * 10 / 9600 + 2 * gap)  # 24.7 ms: 8 bytes each way
    assert LineSettings(9600, parity="E").bytes_s(1) == pytest.approx(11 / 9600)
    load = line_load({"baudrate": 9600}, [{"inputs": 16, "poll_hz": 10.0}] * 4)
    assert load.need_s == pytest.approx(40 * line.transaction_s(8, 7))  # 0.95 s a second: it fits, just
    assert load.said("rs485-a") == ("bus rs485-a at 9600 baud: 4 boards polled at 10 Hz need 0.95 s of line time "
                                    "per second; the line carries 1 s")


def check_config(tmp_path: Path, boards: int, poll_hz: float, baudrate: int = 9600) -> subprocess.CompletedProcess:
    text = TOML + f'[buses.rs485-a]\ntype = "rtu"\ndevice = "/dev/ttyUSB0"\nbaudrate = {baudrate}\n'
    for u in range(1, boards + 1):
        text += f'[drivers.board-{u}]\ntype = "modbus"\nbus = "rs485-a"\nunit = {u}\npoll_hz = {poll_hz}\n'
    path = tmp_path / "lockerd.toml"
    path.write_text(text)
    return subprocess.run([sys.executable, "-m", "lockerd", "check-config", str(path)], capture_output=True,
                          text=True, timeout=60)


def test_check_config_refuses_a_bus_whose_polling_the_line_cannot_carry(tmp_path):
    r = check_config(tmp_path, boards=8, poll_hz=10)
    assert r.returncode == 2, r.stdout + r.stderr
    assert ("buses.rs485-a.baudrate = 9600: expected a line that carries its polling: bus rs485-a at 9600 baud: "
            "8 boards polled at 10 Hz need 1.89 s of line time per second; the line carries 1 s") in r.stderr
    # The same boards fit at 19200 baud, and four of them at 9600.
    assert check_config(tmp_path, boards=8, poll_hz=10, baudrate=19200).returncode == 0
    assert check_config(tmp_path, boards=4, poll_hz=10).returncode == 0


async def coil_on_delays(line: PacedLine, poll_hz: float, pulses: int) -> tuple[list[float], int]:
    """Pulse request to coil on at the board (seconds), ``pulses`` times; and the polls made meanwhile."""
    peer = RelayPeer(list(UNITS))
    await peer.start_rtu(line.boards, baudrate=line.baudrate)
    clock, budget = Clock(), PowerBudget(4)
    bus = ModbusBus("rs485-a", clock, "rtu", {"device": line.device, "baudrate": line.baudrate})
    boards = [ModbusBoard(f"board-{u}", clock, budget, {"unit": u, "poll_hz": poll_hz}, bus) for u in UNITS]
    rng = random.Random(16)
    delays: list[float] = []
    try:
        await bus.start()
        for b in boards:
            await b.start()
        await asyncio.sleep(0.3)  # the poll trains settle into their cycle
        polls = sum(b.polls for b in boards)
        for i in range(pulses):
            await asyncio.sleep(rng.uniform(0, 0.1))  # anywhere in the poll cycle
            board, ch = boards[i % 4], i % 16
            seen = len(peer.log)
            t0 = time.monotonic_ns()
            await board.pulse(ch, 10)
            on = next(e[0] for e in peer.log[seen:] if e[1:] == (board.unit, 5, ch, 0xFF00))
            delays.append((on - t0) / 1e9)
            await board.wait_pulses()
        polls = sum(b.polls for b in boards) - polls
        assert all(b.online for b in boards)
    finally:
        for b in boards:
            await b.close()
        await bus.close()
        await peer.stop()
    return delays, polls


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


@pytest.mark.asyncio
async def test_a_busy_9600_baud_line_delays_a_pulse_by_at_most_one_transaction(capsys):
    """Four boards polled at 10 Hz fill 95 % of a 9600-baud line; a pulse waits for at most the poll
    on the wire before its own write goes."""
    line = PacedLine(9600).start()
    try:
        idle, _ = await coil_on_delays(line, poll_hz=0.1, pulses=30)
        busy_s = line.busy_s
        t = time.monotonic()
        busy, polls = await coil_on_delays(line, poll_hz=10.0, pulses=30)
        used = (line.busy_s - busy_s) / (time.monotonic() - t)
    finally:
        line.stop()
    wire = write_coil_s(LineSettings(9600))
    # A 2-core machine running other tests wakes threads late: a few ms each for the line thread, the
    # relay and the peer.
    margin = 0.010
    figures = {name: (pct(v, 50), pct(v, 95)) for name, v in (("idle", idle), ("busy", busy))}
    with capsys.disabled():
        print(f"\n9600 baud, pulse request to coil on: idle p50 {figures['idle'][0] * 1000:.1f} ms p95 "
              f"{figures['idle'][1] * 1000:.1f} ms; 4 boards at 10 Hz p50 {figures['busy'][0] * 1000:.1f} ms "
              f"p95 {figures['busy'][1] * 1000:.1f} ms; one write transaction {wire * 1000:.1f} ms; "
              f"{polls} polls, line {used:.0%} busy with bytes")
    assert polls > 0 and used > 0.4  # the line was busy indeed
    assert figures["idle"][0] >= 8 * 10 / 9600  # and paced: the 8-byte write took its wire time to arrive
    assert figures["busy"][0] - figures["idle"][0] <= wire + margin
    assert figures["busy"][1] - figures["idle"][1] <= wire + margin
