"""lockerd-display's numbers: scan -> the cabinet screen shows the outcome, measured in the browser; the display's
idle RSS; and the daemon's scan -> pulse with no screen and with two screens connected.

    .venv/bin/python bench/display_latency.py [--scans 40]

The demo station's config in a temporary folder, the real daemon, the real
display and headless Chromium (chromium-driver). The latency is the page's
Date.now() when the outcome was drawn minus the journaled ts of the event it
shows (both the same machine's wall clock).
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from lockerd.clock import parse_time

ROOT = Path(__file__).resolve().parent.parent


def lockerd(cfg: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "lockerd", *args, "-c", str(cfg)], capture_output=True, text=True,
                          timeout=30).stdout


def wait_port(port: int) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("display did not start")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def grants(cfg: Path, journal: Path, n: int) -> list[float]:
    """n dossier openings (deposit/checkout/return of one dossier); their journaled scan -> pulse, ms."""
    start = sqlite3.connect(f"file:{journal}?mode=ro", uri=True).execute("SELECT MAX(seq) FROM events").fetchone()[0]
    for _ in range(n):
        lockerd(cfg, "sim", "scan", "D-2026-0431", "--pull")
        lockerd(cfg, "sim", "close", "d02")
        time.sleep(1.6)  # past the scanner's repeat window
    rows = sqlite3.connect(f"file:{journal}?mode=ro", uri=True).execute(
        "SELECT data FROM events WHERE kind = 'lock.pulsed' AND seq > ?", (start,)).fetchall()
    return [json.loads(r[0])["latency_ms"] for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scans", type=int, default=40)
    ap.add_argument("--grants", type=int, default=8)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="display-bench-"))
    (folder / "config").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    text = (ROOT / "config" / "demo.toml").read_text() + f"\n[display]\nport = {port}\nidle_after_s = 2\n"
    cfg = folder / "config" / "demo.toml"
    cfg.write_text(text)
    daemon = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)], stderr=subprocess.DEVNULL)
    display = None
    driver = None
    try:
        time.sleep(2)
        lockerd(cfg, "import", str(ROOT / "config" / "demo-data.json"))
        journal = folder / "var" / "demo" / "journal.db"
        alone = grants(cfg, journal, args.grants)
        display = subprocess.Popen([sys.executable, "-m", "lockerd.display", "-c", str(cfg)], stderr=subprocess.DEVNULL)
        wait_port(port)
        time.sleep(1)
        idle_rss = rss_kib(display.pid)
        opts = webdriver.ChromeOptions()
        opts.binary_location = "/usr/bin/chromium"
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,800"):
            opts.add_argument(a)
        driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
        driver.get(f"http://127.0.0.1:{port}/wall")
        driver.switch_to.new_window("tab")
        driver.get(f"http://127.0.0.1:{port}/cabinet/front")
        time.sleep(1)
        latencies = []
        conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
        for i in range(args.scans):
            before = driver.execute_script("return window.lockerdShown.seq")
            lockerd(cfg, "sim", "scan", f"X-BENCH-{i}")
            for _ in range(400):
                shown = driver.execute_script("return window.lockerdShown")
                if shown["seq"] != before:
                    break
                time.sleep(0.01)
            ts = conn.execute("SELECT ts FROM events WHERE seq = ?", (shown["seq"],)).fetchone()[0]
            latencies.append(shown["at"] - parse_time(ts) * 1000)
        with_screens = grants(cfg, journal, args.grants)
        busy_rss = rss_kib(display.pid)
        print(f"scan -> cabinet screen shows it ({args.scans} refusals, page's clock vs journaled ts): "
              f"p50 {statistics.median(latencies):.0f} ms, p95 {pct(latencies, 95):.0f} ms, "
              f"max {max(latencies):.0f} ms")
        print(f"display RSS: idle {idle_rss / 1024:.1f} MiB, with two pages connected {busy_rss / 1024:.1f} MiB")
        print(f"daemon scan -> pulse (lock.pulsed latency_ms), no screen: p50 {statistics.median(alone):.1f} ms, "
              f"max {max(alone):.1f} ms; two screens: p50 {statistics.median(with_screens):.1f} ms, "
              f"max {max(with_screens):.1f} ms ({args.grants} grants each)")
    finally:
        if driver is not None:
            driver.quit()
        for p in (display, daemon):
            if p is not None:
                p.terminate()
                p.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
