"""Benchmark: pulse() call -> the on-write's bytes at the board, over TCP and RTU on a pty.

The boards are pymodbus's server in another process (tests/modbus_peer.py);
it notes the monotonic time (CLOCK_MONOTONIC, shared by every process) at
which each request was decoded. This process notes when pulse() was called.
The bus is idle between pulses (each pulse's off has landed before the next
one starts; door polling runs at 0.1 Hz), which is the case the target
"open command -> Modbus write at the board p50 <= 1 ms" is about.

Also counts the Modbus transactions each pulse-on costs (must be 1).

A pty ignores the baud rate: the RTU figures prove framing and the software
path, not line time (at 9600 baud an 8-byte write takes 8.3 ms on the wire).

Run: .venv/bin/python bench/modbus_pulse.py [--pulses 1000] [--ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchstats import pct

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lockerd.drivers.base import PowerBudget  # noqa: E402
from lockerd.drivers.modbus import ModbusBoard, ModbusBus  # noqa: E402
from modbus_peer import PtyPair  # noqa: E402

from lockerd.clock import Clock  # noqa: E402


def start_peer(args: list[str], log: Path) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "modbus_peer.py"), *args, "--log", str(log)],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # the peer prints one JSON line once it serves
    if not line:
        raise RuntimeError("the peer did not start")
    return proc, json.loads(line)


def stop_peer(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait(10)


async def run(kind: str, opts: dict, pulses: int, ms: int) -> list[int]:
    """Pulse ``pulses`` times; returns the call times (ns)."""
    clock = Clock()
    bus = ModbusBus(f"bench-{kind}", clock, kind, opts)
    board = ModbusBoard("bench", clock, PowerBudget(2), {"unit": 1, "coils": 16, "inputs": 16, "poll_hz": 0.1}, bus)
    await bus.start()
    await board.start()
    calls: list[int] = []
    try:
        for i in range(pulses):
            calls.append(time.monotonic_ns())
            await board.pulse(i % 16, ms)
            await board.wait_pulses()
            # Let the off's reply settle so the next pulse finds the bus idle.
            await asyncio.sleep(0.002)
    finally:
        await board.close()
        await bus.close()
    return calls


def report(name: str, calls: list[int], log: Path) -> None:
    entries = json.loads(log.read_text())
    ons = [e[0] for e in entries if e[2] == 5 and e[4] == 0xFF00]
    reads_between = sum(1 for e in entries if e[2] == 1)
    if len(ons) != len(calls):
        print(f"{name}: {len(ons)} on-writes at the board for {len(calls)} pulses: cannot pair them")
        return
    lat_ms = [(rx - call) / 1e6 for rx, call in zip(ons, calls, strict=True)]
    print(f"{name}: pulse() -> on-write decoded at the board, n={len(lat_ms)}: "
          f"p50 {pct(lat_ms, 50):.3f} ms, p99 {pct(lat_ms, 99):.3f} ms, max {max(lat_ms):.3f} ms, "
          f"mean {statistics.fmean(lat_ms):.3f} ms")
    # Counted at the board: a retried on-write would show as a second one.
    print(f"{name}: Modbus transactions per pulse-on: {len(ons) / len(calls):.2f} on-writes per pulse at the "
          f"board (coil reads at the board during the run: {reads_between})")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pulses", type=int, default=1000)
    p.add_argument("--ms", type=int, default=20, help="pulse length")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        # TCP on loopback
        log = folder / "tcp.json"
        proc, info = start_peer(["--units", "1"], log)
        try:
            calls = asyncio.run(run("tcp", {"host": "127.0.0.1", "port": info["port"], "timeout_ms": 500,
                                                 "retries": 1, "frame_gap_ms": 0.0}, a.pulses, a.ms))
        finally:
            stop_peer(proc)
        report("TCP", calls, log)
        # RTU on a pty pair
        pty = PtyPair(folder).start()
        log = folder / "rtu.json"
        proc, _ = start_peer(["--units", "1", "--rtu", pty.b, "--baudrate", "115200"], log)
        try:
            calls = asyncio.run(run("rtu", {"device": pty.a, "baudrate": 115200, "timeout_ms": 200,
                                                 "retries": 1, "frame_gap_ms": 1.0}, a.pulses, a.ms))
        finally:
            stop_peer(proc)
            pty.stop()
        report("RTU/pty", calls, log)
    print(f"(machine: {os.cpu_count()} cores; the boards run in a separate process; a pty ignores the baud rate)")


if __name__ == "__main__":
    main()
