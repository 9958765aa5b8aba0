"""Benchmark of the scan-to-open core on simulated hardware.

Prints:
- scan -> lock pulse latency (grant durable, synchronous=FULL) over N scans, p50/p99;
- start -> ready of the daemon process and its resident memory with the demo station;
- CPU used by the idle daemon over a period.

Run: .venv/bin/python bench/core.py [--scans 1000] [--idle 60]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchstats import compile_like_an_install, pct, start_controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rig import DATA, TOML  # noqa: E402


async def scan_to_pulse(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lockerd.toml"
        # Real time; short pulses and no scanner debounce so 1000 scans run quickly.
        path.write_text(TOML.replace("pulse_ms = 500", "pulse_ms = 20"))
        c, journal, hw = await start_controller(path, DATA)
        board = hw.drivers["sim-d"]
        scanner = hw.scanners["front"]
        lat: list[float] = []
        pulsed = asyncio.Event()

        # Timed as the sim board has released the latch: where the scan path ends.
        def timed(_channel: int, _ms: int) -> None:
            lat.append(time.perf_counter() - t0)
            pulsed.set()

        board.on_pulse(timed)
        for _i in range(n):
            # Each scan opens d01 (deposit/checkout/return alternate); close it
            # again so the next scan pulses rather than joining an open door.
            pulsed.clear()
            t0 = time.perf_counter()
            scanner.inject("D-1")
            await asyncio.wait_for(pulsed.wait(), 5)
            board.pull(0)
            await asyncio.sleep(0.05)  # the door must read open past the 30 ms settle window
            board.close_door(0)
            await asyncio.sleep(0.05)
        await c.stop()
        journal.close()
    ms = [x * 1000 for x in lat]
    print(f"scan -> lock pulse, grant durable (WAL, synchronous=FULL), {len(ms)} scans: "
          f"p50 {pct(ms, 50):.3f} ms, p99 {pct(ms, 99):.3f} ms, max {max(ms):.3f} ms, "
          f"mean {statistics.mean(ms):.3f} ms")


def daemon_numbers(idle_s: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        demo = (ROOT / "config" / "demo.toml").read_text().replace("../var/demo/", "")
        cfg = Path(tmp) / "demo.toml"
        cfg.write_text(demo)
        starts, internal = [], []
        for _ in range(5):
            t0 = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)],
                                    stderr=subprocess.PIPE, text=True)
            line = ""
            while "ready in" not in line:
                line = proc.stderr.readline()
                if not line:
                    raise SystemExit("daemon died")
            starts.append((time.perf_counter() - t0) * 1000)
            internal.append(float(re.search(r"ready in (\d+) ms", line).group(1)))
            if len(starts) < 5:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        # The last one stays up for memory and idle CPU.
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(Path(tmp) / "lockerd.sock"))
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss = int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024
        stat0 = Path(f"/proc/{proc.pid}/stat").read_text().split()
        time.sleep(idle_s)
        stat1 = Path(f"/proc/{proc.pid}/stat").read_text().split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat1[13]) + int(stat1[14]) - int(stat0[13]) - int(stat0[14])) / ticks
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    print(f"process start -> 'ready' logged (interpreter and imports included, demo station, 5 starts): "
          f"median {statistics.median(starts):.0f} ms, max {max(starts):.0f} ms; "
          f"of which journal+drivers+controller: median {statistics.median(internal):.0f} ms")
    print(f"resident memory, idle, demo station: {rss:.1f} MB")
    print(f"CPU while idle for {idle_s:.0f} s: {cpu:.2f} s = {100 * cpu / idle_s:.2f} % of one core")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=60.0)
    a = ap.parse_args()
    compile_like_an_install()
    asyncio.run(scan_to_pulse(a.scans))
    daemon_numbers(a.idle)


if __name__ == "__main__":
    main()
