"""Benchmark: a camera never delays the lock.

Runs the same sequence of openings (scan, door pulled open, door shut) on
simulated hardware in real time three ways: no camera, the sim camera, and a
command camera whose capture tool takes ~60 ms and writes 200 kB per still
(two stills per opening, one at a time, so it runs behind during the burst).
Prints the scan -> lock pulse latency the controller journals in each
``lock.pulsed`` (p50/p99/max), and how many stills were taken or failed.

Run: .venv/bin/python bench/camera_latency.py [--scans 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

from benchstats import pct, start_controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from rig import DATA, TOML  # noqa: E402

from lockerd.opening import Outcome  # noqa: E402

TOOL = "#!/bin/sh\nsleep 0.06\nhead -c 200000 /dev/zero > \"$1\"\n"


async def run(label: str, camera: str, n: int, tmp: Path) -> None:
    path = tmp / "lockerd.toml"
    text = TOML.replace("pulse_ms = 500", "pulse_ms = 20")
    if camera:
        text = text.replace('[cabinets.d]\nkind = "dossier"', '[cabinets.d]\nkind = "dossier"\ncamera = "cam"') + camera
    path.write_text(text)
    c, journal, hw = await start_controller(path, DATA)
    board, scanner = hw.drivers["sim-d"], hw.scanners["front"]
    start = journal.last_seq
    for _ in range(n):
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def answer(_scan: object, outcome: Outcome, done: asyncio.Future[Outcome] = done) -> None:
            if not done.done():
                done.set_result(outcome)

        c.on_outcome(answer)
        scanner.inject("D-1")
        assert (await asyncio.wait_for(done, 5)).pulsed
        c.off_outcome(answer)
        board.pull(0)
        await asyncio.sleep(0.05)  # past the 30 ms settle window
        board.close_door(0)
        await asyncio.sleep(0.05)
    # Let the camera catch up before counting its stills.
    for _ in range(200):
        if not any(t.get_name().startswith("photo-") for t in c.tasks.running):
            break
        await asyncio.sleep(0.05)
    await c.stop()
    events = journal.read(start, 10**6)
    journal.close()
    ms = [e.data["latency_ms"] for e in events if e.kind == "lock.pulsed"]
    taken = sum(e.kind == "photo.taken" for e in events)
    failed = sum(e.kind == "camera.failed" for e in events)
    print(f"{label:<34} scan -> pulse over {len(ms)} openings: p50 {pct(ms, 50):.3f} ms, "
          f"p99 {pct(ms, 99):.3f} ms, max {max(ms):.3f} ms; stills taken {taken}, camera.failed {failed}")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=200)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as t:
        tool = Path(t) / "capture.sh"
        tool.write_text(TOOL)
        tool.chmod(0o755)
        cases = [("no camera", ""), ("sim camera", '[cameras.cam]\ntype = "sim"\n'),
                 ("command camera (60 ms, 200 kB)",
                  f'[cameras.cam]\ntype = "command"\ncommand = ["{tool}", "{{path}}"]\ntimeout_s = 5\n')]
        for i, (label, camera) in enumerate(cases):
            d = Path(t) / str(i)
            d.mkdir()
            await run(label, camera, a.scans, d)


if __name__ == "__main__":
    asyncio.run(main())
