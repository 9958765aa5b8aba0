"""Benchmark of the custody watcher (deadlines and reminders) on simulated hardware.

Prints:
- registering N dossiers with a deposit deadline through the station's assign handler (each durable);
- one look at N running deadlines (evaluate + next wait), median and p99, and the CPU share that
  costs at the default tick of 30 s;
- a wall clock stepped forward past all N deadlines: time until every first reminder is durable.

Run: .venv/bin/python bench/custody_watch.py [--dossiers 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchstats import pct

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from custody_rig import HOUR, custody_rig  # noqa: E402
from rig import close_rig  # noqa: E402

from lockerd.clock import iso_utc  # noqa: E402
from lockerd.station_handler import StationHandler  # noqa: E402


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rig = await custody_rig(Path(tmp))
        handler = StationHandler(rig.c)
        due = iso_utc(rig.clock.wall() + 24 * HOUR)
        t0 = time.perf_counter()
        for i in range(n):
            await handler.handle("assign", {"code": f"D-{i:05d}", "compartment": "d03", "officer": "berg",
                                            "supervisor": "chief", "deposit_due": due}, {"command_id": f"c{i}"})
        reg = time.perf_counter() - t0
        print(f"register {n} dossiers with deadlines (each durable): {reg * 1000:.0f} ms, "
              f"{reg / n * 1000:.2f} ms each")
        custody = rig.c.custody
        looks = []
        for _ in range(300):
            t = time.perf_counter()
            custody.evaluate()
            custody.next_wait()
            looks.append(time.perf_counter() - t)
        med = statistics.median(looks)
        print(f"one look at {len(custody.deadlines)} running deadlines: median {med * 1000:.3f} ms, "
              f"p99 {pct(looks, 99) * 1000:.3f} ms; CPU at tick_s 30: {med / 30 * 100:.4f} %")
        start = rig.journal.last_seq
        rig.clock.jump_wall(25 * HOUR)
        t = time.perf_counter()
        custody.poke()
        while True:
            await rig.flush()
            sent = rig.journal.query("SELECT COUNT(*) FROM events WHERE seq > ? AND kind = 'reminder.due'", start)
            if sent[0][0] >= n:
                break
        burst = time.perf_counter() - t
        print(f"wall clock stepped past {n} deadlines: {n} reminder.due durable in {burst * 1000:.0f} ms "
              f"({rig.journal.commits} commits in all)")
        await close_rig(rig)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dossiers", type=int, default=1000)
    asyncio.run(main(ap.parse_args().dossiers))
