"""Benchmark: pulse length at the board with a dead or a slow board on the same bus, and writes per flash.

The boards are pymodbus's server in another process (tests/modbus_peer.py),
which notes the monotonic time (shared by every process) at which each
request was decoded. A pulse's length is measured where the solenoid sees
it: from the on-write's arrival to the first off-write's arrival at the
board. Beside the live board (unit 1) hang two healthy boards (3 and 4, a
Waveshare board) and one that is dead (answers nothing) or slow (answers
every request in 300 ms, beyond the 200 ms request timeout). Every board is
polled at 10 Hz; the silent board is asked again 130 ms after each timeout
(the driver's offline back-off shortened, as in the tests), so that its
requests hold the line most of the time, the case where a pulse can be
stretched at all (130 ms, not a round figure: a period that divides the
pulse length would keep its polls in step with the pulses). Openings come at random moments (a seeded random pause
before each), not in step with the silent board's polls.

Also counts the Modbus writes each opening costs on the Waveshare board
(its flash pulse is timed by the board itself: the target is 1).

A pty ignores the baud rate: the RTU figures prove the scheduling, not
line time.

Run: .venv/bin/python bench/modbus_pulse_stretch.py [--pulses 10] [--ms 500]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

from benchstats import pct

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lockerd.drivers.base import PowerBudget  # noqa: E402
from lockerd.drivers.modbus import ModbusBoard, ModbusBus  # noqa: E402
from modbus_peer import PtyPair  # noqa: E402

from lockerd.clock import Clock  # noqa: E402

LIVE, SILENT, OTHER, FLASH = 1, 2, 3, 4


def start_peer(args: list[str], log: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "modbus_peer.py"), "--units", "1-4",
                             "--waveshare", str(FLASH), *args, "--log", str(log)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""  # the peer prints one JSON line once it serves
    if not line:
        raise RuntimeError("the peer did not start")
    return proc, json.loads(line)


def stop_peer(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


async def run(kind: str, opts: dict, pulses: int, ms: int, fault: str) -> None:
    clock, budget = Clock(), PowerBudget(4)
    bus = ModbusBus(f"bench-{kind}", clock, kind, opts | {"timeout_ms": 200, "retries": 1})
    boards = {u: ModbusBoard(f"b{u}", clock, budget, {"unit": u, "coils": 16, "inputs": 16, "poll_hz": 10.0,
                                                      "profile": "waveshare" if u == FLASH else "generic"}, bus)
              for u in (LIVE, SILENT, OTHER, FLASH)}
    for b in boards.values():
        b.offline_retry_first_s = b.offline_retry_max_s = 0.13
    await bus.start()
    for b in boards.values():
        await b.start()
    try:
        await asyncio.sleep(1.5)  # the silent board found silent (offline when dead)
        pause = random.Random(16)
        for i in range(pulses):
            await asyncio.sleep(pause.uniform(0, 0.3))
            await boards[LIVE].pulse(i % 16, ms)
            await boards[LIVE].wait_pulses()
        if fault == "dead":  # the Waveshare openings once, on the first run
            for i in range(pulses):
                await boards[FLASH].pulse(i % 16, 200)
                await boards[FLASH].wait_pulses()
            await asyncio.sleep(0.6)  # past the last flash and the coil check after it
    finally:
        for b in boards.values():
            await b.close()
        await bus.close()


def report(name: str, log: Path, pulses: int, ms: int, fault: str) -> None:
    entries = json.loads(log.read_text())
    on: dict[int, int] = {}
    lengths: list[float] = []
    for t, unit, fc, address, value in entries:
        if unit != LIVE or fc != 5:
            continue
        if value == 0xFF00:
            on[address] = t
        elif address in on:
            lengths.append((t - on.pop(address)) / 1e6)
    lengths = lengths[-pulses:]  # the close's all-off is function 15: not counted
    print(f"{name}, {fault} board on the bus: {ms} ms pulses at the board, n={len(lengths)}: "
          f"min {min(lengths):.0f} ms, p50 {pct(lengths, 50):.0f} ms, max {max(lengths):.0f} ms "
          f"(stretch p50 {pct(lengths, 50) - ms:.0f} ms, max {max(lengths) - ms:.0f} ms)")
    if fault == "dead":
        flash_writes = sum(1 for e in entries if e[1] == FLASH and e[2] == 5)
        coil_reads = sum(1 for e in entries if e[1] == FLASH and e[2] == 1)
        print(f"{name}: Waveshare board: {flash_writes / pulses:.2f} writes per opening "
              f"({flash_writes} for {pulses}; coil reads after the flashes: {coil_reads})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pulses", type=int, default=20)
    p.add_argument("--ms", type=int, default=500, help="pulse length")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for fault in ("dead", "slow"):
            knob = ["--dead", str(SILENT)] if fault == "dead" else ["--slow", str(SILENT), "--slow-ms", "300"]
            log = folder / f"tcp-{fault}.json"
            proc, info = start_peer(knob, log)
            try:
                asyncio.run(run("tcp", {"host": "127.0.0.1", "port": info["port"], "frame_gap_ms": 0.0}, a.pulses,
                                a.ms, fault))
            finally:
                stop_peer(proc)
            report("TCP", log, a.pulses, a.ms, fault)
            pty = PtyPair(folder).start()
            log = folder / f"rtu-{fault}.json"
            proc, _ = start_peer([*knob, "--rtu", pty.b, "--baudrate", "115200"], log)
            try:
                asyncio.run(run("rtu", {"device": pty.a, "baudrate": 115200}, a.pulses, a.ms, fault))
            finally:
                stop_peer(proc)
                pty.stop()
            report("RTU/pty", log, a.pulses, a.ms, fault)
    print(f"(machine: {os.cpu_count()} cores; the boards run in a separate process; a pty ignores the baud rate)")


if __name__ == "__main__":
    main()
