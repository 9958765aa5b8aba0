"""What a snapshot of the state tables costs the grants and the event loop around it.

Builds a journal holding ITEMS items through the real writer, then, for each
of ROUNDS snapshots: appends plain events up to just before the next
snapshot is due, and sends 40 durable grants (1 ms apart) across it, while a
ticker on the loop measures how late a 0.5 ms sleep wakes. Prints the grant
latency and the loop's lateness in those windows, and how many snapshots
landed (so a run that never crossed one says so).

Run: .venv/bin/python bench/snapshot_stall.py [--items 3000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from benchstats import pct

from lockerd import projection
from lockerd.clock import Clock
from lockerd.journal import Journal

TICK_S = 0.0005


def item(n: int) -> tuple[str, str, dict[str, object]]:
    return ("upsert", "items", {
        "code": f"DOS-{n:06d}", "kind": "dossier", "case_name": f"Case number {n} against somebody with a long name",
        "category": "fraud", "officer": f"officer{n % 40}", "compartment": f"d{n % 16:02d}", "state": "in",
        "holder": None, "depositor": None, "since": "2026-12-02T10:00:00.000000Z"})


async def run(folder: Path, items: int, rounds: int) -> None:
    j = Journal(folder / "journal.db", Clock())
    assert j.open(), j.error
    snapshots = 0

    def seen(events: list) -> None:
        nonlocal snapshots
        snapshots += sum(e.kind == projection.SNAPSHOT_KIND for e in events)

    j.subscribe(seen)
    for n in range(items):
        j.append("item.assigned", state=[item(n)])
        if n % 400 == 399:
            await j.flush()
    await j.flush()
    late: list[float] = []
    grants: list[float] = []
    windows: list[float] = []  # the loop's lateness while grants crossed a snapshot
    ticking = True

    async def ticker() -> None:
        while ticking:
            t = time.perf_counter()
            await asyncio.sleep(TICK_S)
            late.append((time.perf_counter() - t - TICK_S) * 1000)

    task = asyncio.create_task(ticker())
    before = snapshots
    for _ in range(rounds):
        while j.last_seq % projection.SNAPSHOT_EVERY != projection.SNAPSHOT_EVERY - 3:
            j.append("bench.tick")
            await j.flush()
        del late[:]
        for _ in range(40):
            t = time.perf_counter()
            await j.append_durable("access.granted", compartment="d01")
            grants.append((time.perf_counter() - t) * 1000)
            await asyncio.sleep(0.001)
        windows.extend(late)
        print(f"  round: grant max {max(grants[-40:]):.1f} ms; loop late max {max(late):.1f} ms")
    ticking = False
    await task
    j.close()
    print(f"{items} items, {snapshots - before} snapshots crossed by {len(grants)} grants:")
    print(f"grant durable: p50 {pct(grants, 50):.2f} ms, p99 {pct(grants, 99):.2f} ms, max {max(grants):.1f} ms")
    print(f"loop late (0.5 ms sleep): p50 {pct(windows, 50):.2f} ms, p99 {pct(windows, 99):.2f} ms, "
          f"max {max(windows):.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=6)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(Path(tmp), a.items, a.rounds))


if __name__ == "__main__":
    main()
