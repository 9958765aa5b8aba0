"""Benchmark of the serial scanner driver: bytes on the wire -> Scan published.

Over a socat pty pair (no baud-rate timing: a pty ignores it), a writer
thread plays the scanner and records when each terminated code was written;
the driver's subscriber records when the Scan arrived. Prints p50/p99/max
latency for single scans spaced out, for a burst written back to back, and
the time a replugged scanner takes to be back online.

Run: .venv/bin/python bench/scan_latency_serial.py [--scans 500]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchstats import pct

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from lockerd.drivers.serial_scanner import SerialScanner  # noqa: E402
from ptys import SocatPair  # noqa: E402

from lockerd.clock import Clock  # noqa: E402
from lockerd.config import SCANNER_COMMON, SCANNER_TYPES  # noqa: E402


def options(port: Path) -> dict[str, Any]:
    spec = SCANNER_COMMON | SCANNER_TYPES["serial"]
    opts = {k: o.default for k, o in spec.items() if not o.required}
    opts.update(cabinets=("cab-a",), port=port, debounce_ms=0)
    return opts


def report(name: str, lat_s: list[float]) -> None:
    ms = [x * 1000 for x in lat_s]
    print(
        f"{name}: n={len(ms)} p50={statistics.median(ms):.3f} ms "
        f"p99={pct(ms, 99):.3f} ms max={max(ms):.3f} ms"
    )


async def run(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pair = SocatPair(Path(tmp), "bench").start()
        scanner = SerialScanner("bench", Clock(), options(pair.device))
        arrived: dict[str, float] = {}
        got = asyncio.Event()
        want = 0

        async def consume() -> None:
            async for scan in scanner.scans():
                if scan.code is not None:
                    arrived[scan.code] = time.monotonic()
                    if len(arrived) >= want:
                        got.set()

        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        await scanner.start()
        assert scanner.online, scanner.detail

        # Spaced scans: one at a time, as a person scans.
        sent: dict[str, float] = {}
        for i in range(n):
            code = f"D-{i:06d}"
            want = len(arrived) + 1
            got.clear()
            sent[code] = time.monotonic()
            pair.write_now(code.encode() + b"\r\n")
            await asyncio.wait_for(got.wait(), 5)
        report("single scan, write -> Scan", [arrived[c] - sent[c] for c in sent])

        # A burst written back to back from another thread (shift change, or a scanner's buffer).
        burst: dict[str, float] = {}
        want = len(arrived) + n
        got.clear()

        def writer() -> None:
            for i in range(n):
                code = f"B-{i:06d}"
                burst[code] = time.monotonic()
                pair.write_now(code.encode() + b"\r\n")

        threading.Thread(target=writer).start()
        await asyncio.wait_for(got.wait(), 30)
        report("burst, write -> Scan", [arrived[c] - burst[c] for c in burst])
        span = max(arrived[c] for c in burst) - min(burst.values())
        print(f"burst throughput: {n} scans in {span * 1000:.1f} ms = {n / span:.0f} scans/s")

        # Replug: socat gone and back; time from the new device existing to online.
        back = asyncio.Event()
        scanner.on_status(lambda st: back.set() if st.online else None)
        pair.stop()
        while scanner.online:
            await asyncio.sleep(0.01)
        pair.start()
        t0 = time.monotonic()
        await asyncio.wait_for(back.wait(), 10)
        took = (time.monotonic() - t0) * 1000
        print(f"replug -> online: {took:.0f} ms (backoff starts at {scanner.retry_initial} s)")

        await scanner.close()
        task.cancel()
        pair.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scans", type=int, default=500)
    args = ap.parse_args()
    asyncio.run(run(args.scans))


if __name__ == "__main__":
    main()
