"""Benchmark of the daemon as systemd runs it (sd_notify socket and watchdog), demo station, sim hardware.

Prints:
- process start -> READY=1 received on the notify socket (interpreter included), N starts;
- SIGHUP -> READY=1 of an applied reload (in-process restart of controller, drivers,
  control socket), N reloads alternating two pulse lengths, and how long scans are
  refused during each swap (from the daemon's own log of the reload);
- CPU of the idle daemon with the watchdog on (WatchdogSec=10 as in the unit: every
  task beats each second, the controller through the journal writer).

Run: .venv/bin/python bench/service.py [--starts 5] [--reloads 10] [--idle 30]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchstats import compile_like_an_install, pct

ROOT = Path(__file__).resolve().parent.parent


class Notify:
    """systemd's end of the notify protocol."""

    def __init__(self) -> None:
        self.address = f"@lockerd-bench-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.address[1:].encode())

    def wait(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            self.sock.settimeout(max(0.001, deadline - time.monotonic()))
            msg = dict(x.split("=", 1) for x in self.sock.recv(4096).decode().split("\n") if x)
            if key in msg:
                return msg


def start(cfg: Path, notify: Notify, log: Path) -> subprocess.Popen:
    env = dict(os.environ, NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="10000000")
    return subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("w"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--starts", type=int, default=5)
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30.0)
    a = ap.parse_args()
    compile_like_an_install()
    with tempfile.TemporaryDirectory() as tmp:
        demo = (ROOT / "config" / "demo.toml").read_text().replace("../var/demo/", "")
        cfg = Path(tmp) / "demo.toml"
        cfg.write_text(demo)
        log = Path(tmp) / "stderr.log"
        notify = Notify()
        starts = []
        for i in range(a.starts):
            t0 = time.perf_counter()
            proc = start(cfg, notify, log)
            notify.wait("READY")
            starts.append((time.perf_counter() - t0) * 1000)
            if i < a.starts - 1:
                proc.send_signal(signal.SIGTERM)
                proc.wait()
        print(f"process start -> READY=1 on the notify socket (demo station, {len(starts)} starts): "
              f"median {statistics.median(starts):.0f} ms, max {max(starts):.0f} ms")

        pulse = re.search(r"pulse_ms = (\d+)", demo)
        base = int(pulse.group(1)) if pulse else 500
        reloads = []
        for i in range(a.reloads):
            ms = base + 100 if i % 2 == 0 else base
            text = re.sub(r"pulse_ms = \d+", f"pulse_ms = {ms}", demo) if pulse else \
                demo.replace("[timing]", f"[timing]\npulse_ms = {ms}")
            cfg.write_text(text)
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGHUP)
            msg = notify.wait("READY")
            reloads.append((time.perf_counter() - t0) * 1000)
            assert "reloaded" in msg.get("STATUS", ""), msg
        print(f"SIGHUP -> READY=1, config applied by an in-process restart ({len(reloads)} reloads): "
              f"median {statistics.median(reloads):.1f} ms, p90 {pct(reloads, 90):.1f} ms, "
              f"max {max(reloads):.1f} ms (scans are refused for at most this long)")

        stat0 = Path(f"/proc/{proc.pid}/stat").read_text().split()
        pings = 0
        deadline = time.monotonic() + a.idle
        while (left := deadline - time.monotonic()) > 0:
            notify.sock.settimeout(left)
            try:
                if b"WATCHDOG=1" in notify.sock.recv(4096):
                    pings += 1
            except TimeoutError:
                break
        stat1 = Path(f"/proc/{proc.pid}/stat").read_text().split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(stat1[13]) + int(stat1[14]) - int(stat0[13]) - int(stat0[14])) / ticks
        print(f"CPU while idle for {a.idle:.0f} s with the watchdog on (heartbeats every 1 s, "
              f"{pings} pings): {cpu:.2f} s = {100 * cpu / a.idle:.2f} % of one core")
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait()
        print(f"SIGTERM -> exit code {rc}")


if __name__ == "__main__":
    main()
