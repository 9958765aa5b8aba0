"""Benchmark: audit reads of a large journal.

Builds a journal of N events shaped like a busy station's (openings of a few
hundred dossiers: scan, grant, pulse, door opened/closed, item event), then
times: export of everything as CSV and as JSON, verify-export against the
journal and on its own, and the chain of custody of one dossier.

Run: .venv/bin/python bench/audit_export.py [--events 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from lockerd.custody_report import custody_report
from lockerd.export_verify import verify_export
from lockerd.journal import Journal
from lockerd.journal_export import export
from lockerd.journal_reader import open_journal

STEPS = ("scan", "access.granted", "lock.pulsed", "door.opened", "door.closed", "dossier.returned")


async def build(path: Path, n: int) -> None:
    j = Journal(path)
    assert j.open()
    pending = []
    grant = 0
    for i in range(n):
        k = STEPS[i % len(STEPS)]
        code = f"D-2026-{(i // len(STEPS)) % 300:04d}"
        comp = f"d{(i // len(STEPS)) % 96 + 1:02d}"
        if k == "access.granted":
            grant = i + 1  # the journal starts empty: event i gets seq i + 1
            pending.append(j.append(k, compartment=comp, dossier=code, items={code: "return"}, pulse=True))
        elif k == "scan":
            pending.append(j.append(k, compartment=comp, dossier=code, scanner="front", code=code))
        elif k == "dossier.returned":
            pending.append(j.append(k, compartment=comp, dossier=code, grant_seq=grant, officer="berg"))
        else:
            pending.append(j.append(k, compartment=comp, grant_seq=grant, ms=500, driver="sim-d", channel=3))
        if len(pending) >= 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    j.close()


def timed(label: str, fn) -> object:
    t0 = time.perf_counter()
    result = fn()
    print(f"{label}: {(time.perf_counter() - t0) * 1000:.0f} ms")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        db = Path(t) / "journal.db"
        t0 = time.perf_counter()
        asyncio.run(build(db, a.events))
        print(f"built a journal of {a.events} events in {time.perf_counter() - t0:.1f} s "
              f"({db.stat().st_size / 1e6:.1f} MB)")
        with contextlib.closing(open_journal(db)) as conn:
            for fmt in ("csv", "json"):
                out = Path(t) / f"all.{fmt}"
                with open(out, "w", encoding="utf-8", newline="") as f:
                    timed(f"export {a.events} events as {fmt}", lambda f=f, fmt=fmt: export(
                        conn, f, fmt, None, None))
                print(f"  {out.name}: {out.stat().st_size / 1e6:.1f} MB")
                r = timed(f"verify-export {fmt} against the journal", lambda out=out: verify_export(out, conn))
                assert r.ok, r.reason
                r = timed(f"verify-export {fmt} standalone", lambda out=out: verify_export(out))
                assert r.ok, r.reason
            c = timed("chain of custody of one dossier", lambda: custody_report(conn, "D-2026-0042"))
            print(f"  {len(c.events)} events in its chain")


if __name__ == "__main__":
    main()
