"""Benchmark: last scanner byte in -> first Modbus request byte out, through the whole daemon core.

The controller runs as in the daemon, on real drivers: a serial scanner on
one socat pty pair, an RS-485 line on another with three relay boards
(pymodbus's server in another process, tests/modbus_peer.py) whose 48 door
inputs are polled at 10 Hz while the scans come, and the journal durable
(WAL, synchronous=FULL: the grant is fsynced before the lock moves).

Each scan is written to the scanner's pty as a scanner sends it (AIM prefix,
CRLF) in one write; its time is taken when the write returns, i.e. the last
byte is in the tty. Two ends are measured:
- "out": the on-write's request frame written into the line's tty by the
  RTU client (in this process);
- "at board": the request decoded by the board process (CLOCK_MONOTONIC is
  shared by every process; this includes the board's own read and decode).
The doors are spring-loaded in the board model: a door opens when its coil
goes on and shuts 150 ms after it goes off (longer than a poll period, so
the controller sees it open), so every compartment is closed again before
it is scanned again, and every scan pulses.

Transactions per open are counted at the board, from its log of every request:
on-writes per pulsed scan, and everything that is neither a poll (function 2)
nor an on/off write, which would be a retry or a read-back.

A pty ignores the baud rate: on a real 115200 line add about 0.7 ms for the
8-byte request on the wire (9600 baud: 8.3 ms).

Run: .venv/bin/python bench/scan_to_modbus.py [--scans 1000] [--spacing-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchstats import pct, start_controller

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from modbus_peer import PtyPair  # noqa: E402
from ptys import SocatPair  # noqa: E402

BOARDS, CHANNELS = 3, 16

TOML = """
[controller]
site = "bench"
node = "bench-1"
[journal]
path = "journal.db"
[timing]
pulse_ms = 20
open_timeout_s = 5
debounce_ms = 0
[power]
max_energised = 2
[buses.line]
type = "rtu"
device = "{line}"
baudrate = 115200
timeout_ms = 200
retries = 1
frame_gap_ms = 1
{boards}
[cabinets.d]
kind = "dossier"
lock_driver = "b1"
{compartments}
[scanners.front]
type = "serial"
port = "{scanner}"
aim = true
cabinets = ["d"]
debounce_ms = 0
"""


def config_text(line: str, scanner: str) -> str:
    boards = "".join(f'[drivers.b{u}]\ntype = "modbus"\nbus = "line"\nunit = {u}\ncoils = {CHANNELS}\n'
                     f"inputs = {CHANNELS}\npoll_hz = 10\n" for u in range(1, BOARDS + 1))
    comps = "".join(f'[[cabinets.d.compartments]]\nid = "d{u}-{ch:02d}"\nlock = {ch}\nsensor = {ch}\n'
                    f'lock_driver = "b{u}"\nsensor_driver = "b{u}"\n'
                    for u in range(1, BOARDS + 1) for ch in range(CHANNELS))
    return TOML.format(line=line, scanner=scanner, boards=boards, compartments=comps)


def data() -> dict:
    items = [{"code": f"D-{u}{ch:02d}", "kind": "dossier", "case_name": "bench", "category": "bench",
              "officer": "berg", "compartment": f"d{u}-{ch:02d}"}
             for u in range(1, BOARDS + 1) for ch in range(CHANNELS)]
    return {"people": [{"id": "berg", "name": "Anna Berg", "role": "officer"}], "badges": [], "items": items}


async def run(folder: Path, line: str, scanner: SocatPair, scans: int, spacing_s: float) -> dict:
    path = folder / "lockerd.toml"
    path.write_text(config_text(line, str(scanner.device)))
    c, journal, hw = await start_controller(path, data())
    bus = hw.extras[0]
    # Time each on-write's frame as it leaves for the line (function 5, value 0xFF00).
    sent: list[int] = []

    def timed(request: bytes) -> None:
        if request[1] == 5 and request[4:6] == b"\xff\x00":
            sent.append(time.monotonic_ns())

    bus.client.on_sent(timed)
    outcomes: asyncio.Queue = asyncio.Queue()
    c.on_outcome(lambda _scan, outcome: outcomes.put_nowait(outcome))
    written: list[int] = []
    pulsed: list[bool] = []
    codes = [item["code"] for item in data()["items"]]
    fd = scanner.peer_fd()
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for i in range(scans):
        frame = b"]C1" + codes[i % len(codes)].encode() + b"\r\n"
        os.write(fd, frame)  # 12 bytes: one write, well under the pty's buffer
        written.append(time.monotonic_ns())
        outcome = await asyncio.wait_for(outcomes.get(), 5)
        pulsed.append(outcome.pulsed)
        next_at += spacing_s
        await asyncio.sleep(max(0.0, next_at - loop.time()))
    await asyncio.sleep(0.5)  # the last pulses' off-writes
    await c.stop()
    journal.close()
    return {"written": written, "sent": sent, "pulsed": pulsed}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scans", type=int, default=1000)
    p.add_argument("--spacing-ms", type=float, default=20.0, help="time between scans")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        line = PtyPair(folder).start()
        scanner = SocatPair(folder, "scanner").start()
        log = folder / "board.json"
        peer = subprocess.Popen([sys.executable, str(ROOT / "tests" / "modbus_peer.py"), "--units", f"1-{BOARDS}",
                                 "--coils", str(CHANNELS), "--inputs", str(CHANNELS), "--rtu", line.b,
                                 "--spring-close-ms", "150", "--log", str(log)], stdout=subprocess.PIPE, text=True)
        try:
            json.loads(peer.stdout.readline())
            with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the console feedback
                r = asyncio.run(run(folder, line.a, scanner, a.scans, a.spacing_ms / 1000))
        finally:
            peer.terminate()
            peer.wait(10)
            scanner.stop()
            line.stop()
        board = json.loads(log.read_text())
    written, sent, pulsed = r["written"], r["sent"], r["pulsed"]
    t0 = written[0]
    ons = [e for e in board if e[2] == 5 and e[4] == 0xFF00 and e[0] >= t0]
    offs = [e for e in board if e[2] == 5 and e[4] == 0 and e[0] >= t0]
    polls_at_board = [e for e in board if e[2] == 2 and e[0] >= t0]
    all_off = [e for e in board if e[2] == 15 and e[0] >= t0]  # every relay off, per board, at stop
    other = [e for e in board if e[2] not in (2, 5, 15) and e[0] >= t0]
    n = sum(pulsed)
    print(f"{len(written)} scans, {n} pulsed, one every {a.spacing_ms:g} ms, 48 doors polled at 10 Hz meanwhile; "
          f"journal as the daemon opens it (WAL, synchronous=FULL, the grant fsynced before the pulse)")
    if n != len(written) or len(ons) != n or len(sent) != n:
        print(f"cannot pair: {len(ons)} on-writes at the board, {len(sent)} sent, {n} pulsed scans")
        return
    out_ms = [(s - w) / 1e6 for s, w in zip(sent, written, strict=True)]
    board_ms = [(e[0] - w) / 1e6 for e, w in zip(ons, written, strict=True)]
    for name, ms in (("out (request written to the line)", out_ms), ("at board (request decoded)", board_ms)):
        print(f"last scanner byte in -> {name}: p50 {pct(ms, 50):.3f} ms, p99 {pct(ms, 99):.3f} ms, "
              f"max {max(ms):.3f} ms, mean {statistics.fmean(ms):.3f} ms")
    print(f"Modbus transactions per open: {len(ons) / n:.2f} before the door can open (counted at the board: "
          f"{len(ons)} on-writes for {n} pulsed scans, {len(offs)} off-writes after the pulses, {len(other)} "
          f"other requests besides {len(polls_at_board)} door polls and {len(all_off)} all-off writes at stop)")
    print(f"(machine: {os.cpu_count()} cores, shared with other test runs; boards and socat are other processes; "
          f"a pty ignores the baud rate)")


if __name__ == "__main__":
    main()
