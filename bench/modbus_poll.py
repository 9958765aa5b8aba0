"""Benchmark: door-sensor polling of 16 boards x 16 inputs on one RTU bus (pty, 115200 declared).

Prints:
- the poll cycle time when the bus is saturated (every board asks for 100 Hz):
  how long one pass over the 16 boards takes, i.e. the fastest door-change
  detection the software can give on this line;
- at 10 polls/s per board (160 requests/s on the bus) over ``--seconds``:
  the polls achieved and the CPU used by this (polling) process, in percent
  of one core; the boards (pymodbus server) and socat are other processes,
  reported apart;
- the floor for the same load: a bare thread writing the same 16 prepared
  request frames to the same pty on the same schedule (a train of 16 polls
  every 100 ms, a gap after each reply) and reading the replies, with no
  Modbus logic at all (no checks, no timeouts, no door states). What the bus
  costs above it is the driver's own share; the floor itself moves with the
  load that others put on a shared machine, so both are measured back to back.

The line is driven by the RTU client's line thread (drivers/modbus_rtu.py).
Earlier pollers on the same load: pymodbus's own client 6.98-8.2 %, the lean
client on the event loop 2.65 % (3.61 % on a slower day).

A pty ignores the baud rate: on a real line at 115200 baud a 16-input poll
(8-byte request, 7-byte reply, 3.5-character gaps) takes about 1.6 ms of wire
time, so 16 boards need about 26 ms per cycle there, whatever the software
does; at 9600 baud about 19 ms per board, 300 ms per cycle.

Run: .venv/bin/python bench/modbus_poll.py [--seconds 30] [--gap-ms 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lockerd.drivers.base import PowerBudget  # noqa: E402
from lockerd.drivers.modbus import ModbusBoard, ModbusBus  # noqa: E402
from lockerd.drivers.modbus_rtu import frame  # noqa: E402
from modbus_peer import PtyPair  # noqa: E402

from lockerd.clock import Clock  # noqa: E402

BOARDS = 16
INPUTS = 16


def cpu_seconds(pid: int) -> float:
    """User + system CPU of another process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(device: str, poll_hz: float, seconds: float, gap_ms: float) -> tuple[int, float, float, int]:
    """Poll for ``seconds``; returns (polls, wall s, CPU s of this process, transactions)."""
    clock = Clock()
    bus = ModbusBus("bench-rtu", clock, "rtu", {"device": device, "baudrate": 115200, "timeout_ms": 200,
                                                 "retries": 1, "frame_gap_ms": gap_ms})
    budget = PowerBudget(2)
    boards = [ModbusBoard(f"b{u}", clock, budget, {"unit": u, "coils": 16, "inputs": INPUTS, "poll_hz": poll_hz},
                          bus) for u in range(1, BOARDS + 1)]
    await bus.start()
    for b in boards:
        await b.start()
    try:
        await asyncio.sleep(1.0)  # settle: every board answered its first polls
        offline = [b.name for b in boards if not b.online]
        if offline:
            raise RuntimeError(f"boards offline: {offline}")
        polls0 = sum(b.polls for b in boards)
        tx0 = bus.transactions
        cpu0, wall0 = time.process_time(), time.monotonic()
        await asyncio.sleep(seconds)
        cpu, wall = time.process_time() - cpu0, time.monotonic() - wall0
        polls = sum(b.polls for b in boards) - polls0
        return polls, wall, cpu, bus.transactions - tx0
    finally:
        for b in boards:
            await b.close()
        await bus.close()


def floor(device: str, seconds: float, gap_s: float) -> tuple[int, float, float]:
    """The same request/reply traffic with nothing but a thread, epoll and the tty: (polls, wall s, CPU s).

    The same schedule as the bus: every 100 ms a train of the 16 polls, each
    sent a gap after the reply before it, each reply awaited with epoll.
    """
    import serial

    frames = [frame(u, bytes.fromhex("02") + (0).to_bytes(2, "big") + INPUTS.to_bytes(2, "big"))
              for u in range(1, BOARDS + 1)]
    ser = serial.Serial(device, 115200, timeout=0, exclusive=True)
    fd = ser.fileno()
    result: list[tuple[int, float, float]] = []

    def run() -> None:
        reply, idle = select.epoll(), select.epoll()  # idle: nothing registered, a plain timed sleep
        reply.register(fd, select.EPOLLIN)
        cycle = time.monotonic() + 0.5
        start = cycle + 1.0  # settled
        polls, first = 0, None
        while (now := time.monotonic()) < start + seconds:
            if first is None and now >= start:
                first = (polls, now, thread_cpu())
            if now < cycle:
                idle.poll(cycle - now)
                continue
            for f in frames:
                os.write(fd, f)
                reply.poll(1.0)
                os.read(fd, 512)  # a 7-byte reply arrives whole on a pty
                polls += 1
                idle.poll(gap_s)
            cycle += 0.1
        n0, wall0, cpu0 = first  # type: ignore[misc]
        result.append((polls - n0, time.monotonic() - wall0, thread_cpu() - cpu0))

    t = threading.Thread(target=run)
    t.start()
    t.join()
    ser.close()
    return result[0]


def thread_cpu() -> float:
    return time.clock_gettime(time.CLOCK_THREAD_CPUTIME_ID)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--gap-ms", type=float, default=1.0, help="frame gap (the daemon's default at 115200 baud: 1.75 ms)")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pty = PtyPair(Path(tmp)).start()
        peer = subprocess.Popen([sys.executable, str(ROOT / "tests" / "modbus_peer.py"), "--units", f"1-{BOARDS}",
                                 "--inputs", str(INPUTS), "--rtu", pty.b], stdout=subprocess.PIPE, text=True)
        try:
            json.loads(peer.stdout.readline())
            polls, wall, cpu, tx = asyncio.run(measure(pty.a, 100.0, 5.0, a.gap_ms))
            rate = polls / wall
            print(f"saturated (100 Hz asked per board, gap {a.gap_ms} ms): {rate:.0f} polls/s on the bus, "
                  f"cycle over {BOARDS} boards {BOARDS / rate * 1000:.1f} ms, CPU {cpu / wall * 100:.1f} % of a core")
            peer_cpu0, socat_cpu0 = cpu_seconds(peer.pid), cpu_seconds(pty.proc.pid)
            polls, wall, cpu, tx = asyncio.run(measure(pty.a, 10.0, a.seconds, a.gap_ms))
            peer_cpu, socat_cpu = cpu_seconds(peer.pid) - peer_cpu0, cpu_seconds(pty.proc.pid) - socat_cpu0
            print(f"10 polls/s x {BOARDS} boards x {INPUTS} inputs for {wall:.1f} s: {polls / wall:.1f} polls/s "
                  f"({tx} transactions), polling process CPU {cpu / wall * 100:.2f} % of one core "
                  f"({cpu / max(polls, 1) * 1e6:.0f} us per poll)")
            print(f"  (other processes, not ours in production: the simulated boards "
                  f"{peer_cpu / wall * 100:.1f} %, socat {socat_cpu / wall * 100:.1f} %)")
            polls, wall, cpu = floor(pty.a, a.seconds, a.gap_ms / 1000)
            print(f"floor, a bare thread with the same pty I/O and schedule, no Modbus logic, "
                  f"{polls / wall:.1f} polls/s: "
                  f"CPU {cpu / wall * 100:.2f} % of one core ({cpu / max(polls, 1) * 1e6:.0f} us per poll)")
        finally:
            peer.terminate()
            peer.wait(10)
            pty.stop()
    print(f"(machine: {os.cpu_count()} cores, shared; a pty ignores the baud rate)")


if __name__ == "__main__":
    main()
