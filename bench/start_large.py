"""Start -> ready of the daemon on a long journal (the demo station, sim hardware).

Builds a journal of N events through the real writer (every other event a
compartment change with its state operation, as door events are), then
starts `lockerd run` on it five times and prints process start -> 'ready'
logged (interpreter included) and the daemon's own figure. At start the
daemon checks the state tables against the last snapshot plus the events
after it (lockerd/projection.py), so this is what a long journal costs.

Run: .venv/bin/python bench/start_large.py [--events 1000000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchstats import compile_like_an_install

from lockerd.clock import Clock
from lockerd.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


async def build(path: Path, n: int) -> float:
    t0 = time.perf_counter()
    j = Journal(path, Clock())
    assert j.open(), j.error
    done = j.last_seq
    while done < n:
        batch = min(1000, n - done)
        for i in range(batch):
            if i % 2:
                j.append("door.opened", compartment="d01", granted=False,
                         state=[("upsert", "compartments", {"id": "d01", "door": "closed", "faults": {},
                                                            "alarm": [], "not_opened": 0})])
            else:
                j.append("bench.tick", n=done + i)
        await j.flush()
        done = j.last_seq
    j.close()
    return time.perf_counter() - t0


def starts(cfg: Path, count: int = 5) -> tuple[list[float], list[float]]:
    outside, inside = [], []
    for _ in range(count):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)], stderr=subprocess.PIPE,
                                text=True)
        assert proc.stderr is not None
        line = ""
        while "ready in" not in line:
            line = proc.stderr.readline()
            if not line:
                raise SystemExit("daemon died")
        outside.append((time.perf_counter() - t0) * 1000)
        inside.append(float(re.search(r"ready in (\d+) ms", line).group(1)))  # type: ignore[union-attr]
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    return outside, inside


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keep", help="build (or reuse) the journal in this folder")
    a = ap.parse_args()
    compile_like_an_install()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.keep or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        cfg = folder / "demo.toml"
        cfg.write_text((ROOT / "config" / "demo.toml").read_text().replace("../var/demo/", ""))
        journal = folder / "journal.db"
        took = asyncio.run(build(journal, a.events))
        size = journal.stat().st_size / 1e6
        print(f"journal of {a.events} events (built or topped up in {took:.1f} s), {size:.0f} MB")
        outside, inside = starts(cfg)
        print(f"process start -> 'ready' logged, {a.events} events, 5 starts: "
              f"median {statistics.median(outside):.0f} ms, max {max(outside):.0f} ms; "
              f"the daemon's own figure: median {statistics.median(inside):.0f} ms")


if __name__ == "__main__":
    main()
