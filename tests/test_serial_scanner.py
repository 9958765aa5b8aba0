"""The serial scanner driver against real ptys joined by socat.

The test plays the scanner by writing bytes the way scanners send them to
one end; the driver opens the other end with pyserial, as it would open a
``/dev/ttyACM0``. Killing socat is the scanner being pulled out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hwconfig import load
from lockerd.drivers.base import DriverStatus, Scan
from lockerd.drivers.serial_scanner import SerialScanner
from ptys import SocatPair

from lockerd.clock import Clock
from lockerd.hardware import build_hardware

WAIT = 3.0  # generous bound for a condition on a busy 2-core machine


def options(port: Path, **over: Any) -> dict[str, Any]:
    """A scanner section's options; the driver fills in its own defaults for the rest."""
    return {"cabinets": ("cab-a",), "port": port, "debounce_ms": 0} | over


class Probe:
    """Collects a scanner's scans and status reports; tests wait on conditions over them."""

    def __init__(self, scanner: SerialScanner):
        self.scanner = scanner
        self.scans: list[tuple[float, Scan]] = []  # (time.monotonic() at arrival, scan)
        self.statuses: list[DriverStatus] = []
        self._changed = asyncio.Event()
        self._taken = 0
        scanner.on_status(self._on_status)
        self._task = asyncio.create_task(self._consume(scanner.scans()))

    async def _consume(self, scans: AsyncIterator[Scan]) -> None:
        async for scan in scans:
            self.scans.append((time.monotonic(), scan))
            self._changed.set()

    def _on_status(self, status: DriverStatus) -> None:
        self.statuses.append(status)
        self._changed.set()

    async def until(self, cond: Callable[[], bool], what: str, timeout_s: float = WAIT) -> None:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not cond():
            self._changed.clear()
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; scans={self.scans} statuses={self.statuses}")
            # Byte-level progress (the framer) does not signal: re-check at least every 20 ms.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.02))

    async def next(self, timeout_s: float = WAIT) -> Scan:
        """The next scan not yet taken by the test."""
        await self.until(lambda: len(self.scans) > self._taken, "a scan", timeout_s)
        self._taken += 1
        return self.scans[self._taken - 1][1]

    def arrival(self, scan: Scan) -> float:
        return next(t for t, s in self.scans if s is scan)

    async def online(self, want: bool = True) -> None:
        await self.until(lambda: self.scanner.online == want, f"online={want}")

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@pytest_asyncio.fixture
async def rig(tmp_path: Path):
    """Start socat pairs and scanners on demand; tear everything down after the test."""
    pairs: list[SocatPair] = []
    scanners: list[tuple[SerialScanner, Probe]] = []

    async def make(name: str = "s1", start_pair: bool = True, **over: Any) -> tuple[SocatPair, SerialScanner, Probe]:
        pair = SocatPair(tmp_path, name)
        pairs.append(pair)
        if start_pair:
            pair.start()
        scanner = SerialScanner(name, Clock(), options(pair.device, **over))
        scanner.retry_max = 0.4  # keep reconnect tests quick; the doubling is the same
        probe = Probe(scanner)
        await scanner.start()
        scanners.append((scanner, probe))
        if start_pair:
            await probe.online()
        return pair, scanner, probe

    yield make
    for scanner, probe in scanners:
        await scanner.close()
        await probe.close()
    for pair in pairs:
        pair.stop()


# -- framing -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_crlf_cr_and_lf_each_end_one_scan(rig) -> None:
    pair, _, probe = await rig()
    pair.write_now(b"D-0001\r\nD-0002\rD-0003\nEND\r\n")
    assert [(await probe.next()).code for _ in range(4)] == ["D-0001", "D-0002", "D-0003", "END"]
    await asyncio.sleep(0)
    assert len(probe.scans) == 4  # no empty scan from the LF of a CRLF


@pytest.mark.asyncio
async def test_scan_split_across_reads_and_crlf_split_in_two(rig) -> None:
    pair, scanner, probe = await rig(idle_timeout_ms=2000)
    pair.write_now(b"DOS-")
    await probe.until(lambda: scanner.framer.pending_bytes == 4, "the first part read")
    pair.write_now(b"2026-")
    await probe.until(lambda: scanner.framer.pending_bytes == 9, "the second part read")
    pair.write_now(b"0042\r")
    first = await probe.next()
    assert (first.code, first.raw) == ("DOS-2026-0042", b"DOS-2026-0042")
    pair.write_now(b"\n")  # the LF of the CRLF, in a read of its own
    pair.write_now(b"NEXT\n")
    assert (await probe.next()).code == "NEXT"
    assert len(probe.scans) == 2


@pytest.mark.asyncio
async def test_two_scans_in_one_write_come_out_in_order(rig) -> None:
    pair, _, probe = await rig()
    pair.write_now(b"A-1\rB-2\r")
    assert [(await probe.next()).code for _ in range(2)] == ["A-1", "B-2"]


@pytest.mark.asyncio
async def test_a_scan_paused_in_the_middle_is_refused_as_incomplete_never_taken_as_a_code(rig) -> None:
    pair, scanner, probe = await rig(idle_timeout_ms=150)
    written = time.monotonic()
    pair.write_now(b"DOS-77")  # the scanner pauses inside DOS-778 ...
    part = await probe.next()
    assert (part.code, part.raw) == (None, b"DOS-77")
    assert part.error == "incomplete scan: no terminator within 150 ms"
    assert probe.arrival(part) - written >= 0.14  # it waited for the line to go quiet
    pair.write_now(b"8\r")  # ... and the rest comes: a scan of its own, never DOS-77 or DOS-778 guessed
    assert (await probe.next()).code == "8"


@pytest.mark.asyncio
async def test_a_scanner_without_terminators_may_end_scans_at_a_pause(rig) -> None:
    pair, _, probe = await rig(idle_timeout_ms=150, idle_ends_scan=True)
    written = time.monotonic()
    pair.write_now(b"NO-TERMINATOR-7")
    scan = await probe.next()
    assert scan.code == "NO-TERMINATOR-7"
    assert probe.arrival(scan) - written >= 0.14  # it waited for the line to go quiet


@pytest.mark.asyncio
async def test_custom_terminator(rig) -> None:
    pair, _, probe = await rig(terminators=["\x03"])  # ETX-terminated scanner
    pair.write_now(b"ETX-1\x03ETX-2\x03")
    assert [(await probe.next()).code for _ in range(2)] == ["ETX-1", "ETX-2"]


@pytest.mark.asyncio
async def test_overlong_input_is_refused_unbuffered_and_next_scan_works(rig) -> None:
    pair, scanner, probe = await rig(max_length=32, idle_timeout_ms=3000)
    await pair.write(b"9" * 5000)  # from a thread, in chunks
    await probe.until(lambda: scanner.framer.pending_bytes == 5000, "all 5000 bytes read")
    assert scanner.framer.buffered <= 32 + 1  # counted and dropped, never held
    pair.write_now(b"\r\nGOOD-1\r\n")
    refused = await probe.next()
    assert refused.code is None
    assert refused.error == "scan too long (5000 bytes, at most 32)"
    assert refused.raw == b"9" * 32
    assert (await probe.next()).code == "GOOD-1"


@pytest.mark.asyncio
async def test_overlong_without_terminator_is_refused_at_idle(rig) -> None:
    pair, _, probe = await rig(max_length=16, idle_timeout_ms=100)
    pair.write_now(b"X" * 40)
    refused = await probe.next()
    assert (refused.code, refused.error) == (None, "scan too long (40 bytes, at most 16)")
    pair.write_now(b"OK-2\r")
    assert (await probe.next()).code == "OK-2"


# -- content ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_aim_identifier_is_parsed_and_gs1_separator_kept(rig) -> None:
    pair, _, probe = await rig(aim=True)
    pair.write_now(b"]C10104012345678901\x1d10LOT-7\r\n]Q1EV-0042\r\n]E05901234123457\r\n")
    gs1 = await probe.next()
    assert (gs1.symbology, gs1.code) == ("C1", "0104012345678901\x1d10LOT-7")
    assert gs1.raw == b"]C10104012345678901\x1d10LOT-7"
    qr = await probe.next()
    assert (qr.symbology, qr.code) == ("Q1", "EV-0042")
    ean = await probe.next()
    assert (ean.symbology, ean.code) == ("E0", "5901234123457")


@pytest.mark.asyncio
async def test_scan_without_aim_identifier_is_refused_when_aim_expected(rig) -> None:
    pair, _, probe = await rig(aim=True)
    pair.write_now(b"PLAIN-CODE\r")
    scan = await probe.next()
    assert scan.code is None
    assert "no AIM symbology identifier" in scan.error
    assert scan.raw == b"PLAIN-CODE"


@pytest.mark.asyncio
async def test_symbology_outside_allow_list_is_refused(rig) -> None:
    pair, _, probe = await rig(aim=True, symbologies=["C1", "]Q"])
    pair.write_now(b"]E05901234123457\r]Q3EV-1\r]C1D-1\r]C0D-2\r")
    ean = await probe.next()
    assert (ean.code, ean.symbology) == (None, "E0")
    assert ean.error == "symbology ]E0 not accepted by this scanner (allowed: ]C1, ]Q)"
    qr = await probe.next()
    assert (qr.code, qr.symbology) == ("EV-1", "Q3")  # "Q" alone allows any QR modifier
    assert (await probe.next()).code == "D-1"
    c0 = await probe.next()
    assert (c0.code, c0.symbology) == (None, "C0")  # "C1" is exact


@pytest.mark.asyncio
async def test_allow_list_without_aim_still_requires_identifiers(rig) -> None:
    pair, scanner, probe = await rig(aim=False, symbologies=["C1"])
    assert scanner.aim is True  # an allow-list cannot be enforced on scans that do not say their symbology
    pair.write_now(b"PLAIN\r]C1D-9\r")
    plain = await probe.next()
    assert plain.code is None and "no AIM symbology identifier" in plain.error
    assert (await probe.next()).code == "D-9"


@pytest.mark.asyncio
async def test_noise_is_refused_and_good_scans_still_work(rig) -> None:
    pair, _, probe = await rig()
    pair.write_now(b"\x00\x07AB\r\xff\xfeCD\n\x1b[2J\rGOOD-3\r")
    ctrl = await probe.next()
    assert (ctrl.code, ctrl.raw) == (None, b"\x00\x07AB")
    assert "control character (0x00)" in ctrl.error
    bad_utf8 = await probe.next()
    assert (bad_utf8.code, bad_utf8.error) == (None, "scan is not valid UTF-8 text")
    escape = await probe.next()
    assert escape.code is None and "0x1b" in escape.error
    assert (await probe.next()).code == "GOOD-3"


@pytest.mark.asyncio
async def test_utf8_code_is_accepted(rig) -> None:
    pair, _, probe = await rig()
    pair.write_now("AKTE-Müller-5\r\n".encode())
    assert (await probe.next()).code == "AKTE-Müller-5"


@pytest.mark.asyncio
async def test_same_code_within_debounce_is_one_scan_and_another_code_is_not_held(rig) -> None:
    pair, _, probe = await rig(debounce_ms=1000)
    written = time.monotonic()
    pair.write_now(b"D-7\r\nD-7\r\nD-8\r\n")
    first = await probe.next()
    second = await probe.next()
    assert (first.code, second.code) == ("D-7", "D-8")
    assert probe.arrival(second) - written < 0.5  # not held back for the debounce window
    pair.write_now(b"END\r")
    assert (await probe.next()).code == "END"
    assert [s.code for _, s in probe.scans] == ["D-7", "D-8", "END"]  # the repeat of D-7 was dropped


# -- unplug, replug, absent ports ----------------------------------------------------


@pytest.mark.asyncio
async def test_unplug_reports_offline_and_replug_recovers(rig) -> None:
    pair, scanner, probe = await rig()
    pair.write_now(b"BEFORE\r")
    assert (await probe.next()).code == "BEFORE"
    pair.stop()
    await probe.online(want=False)
    assert scanner.detail  # says why
    pair.start()
    await probe.online(want=True)
    pair.write_now(b"AFTER\r")
    assert (await probe.next()).code == "AFTER"
    assert [s.online for s in probe.statuses if s.online] == [True]


@pytest.mark.asyncio
async def test_unplug_mid_scan_refuses_the_half_read_scan(rig) -> None:
    pair, scanner, probe = await rig(idle_timeout_ms=5000)
    pair.write_now(b"HALF-")
    await probe.until(lambda: scanner.framer.pending, "the partial scan read")
    pair.stop()
    scan = await probe.next()
    assert (scan.code, scan.raw) == (None, b"HALF-")
    assert scan.error == "scanner disconnected in the middle of a scan"
    await probe.online(want=False)


@pytest.mark.asyncio
async def test_path_relinked_to_another_device_is_followed(rig) -> None:
    """A by-id link that now names another tty (replugged as ttyACM1) makes the driver reopen."""
    pair, scanner, probe = await rig("front")
    other = SocatPair(pair.device.parent, "replugged").start()
    try:
        scanner.watch_s = 0.05
        tmp = pair.device.with_name("relink.tmp")
        tmp.symlink_to(os.readlink(other.device))
        os.replace(tmp, pair.device)  # atomically, as udev updates a link
        await probe.until(
            lambda: scanner.online and any("now names another device" in s.detail for s in probe.statuses),
            "reopened on the new device",
        )
        other.write_now(b"NEW-DEV-1\r")
        assert (await probe.next()).code == "NEW-DEV-1"
    finally:
        await scanner.close()
        other.stop()


@pytest.mark.asyncio
async def test_missing_port_at_start_is_offline_with_clear_log_then_comes_online(rig, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="lockerd.drivers.serial_scanner")
    pair, scanner, probe = await rig(start_pair=False)  # start() must not raise
    assert scanner.online is False
    assert "does not exist" in scanner.detail
    assert any(str(pair.device) in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)
    pair.start()  # plugged in later
    await probe.online(want=True)
    pair.write_now(b"LATE-1\r")
    assert (await probe.next()).code == "LATE-1"


@pytest.mark.asyncio
async def test_one_scanner_unplugged_while_another_keeps_delivering(rig) -> None:
    pair_a, scanner_a, probe_a = await rig("front")
    pair_b, _, probe_b = await rig("back")
    pair_a.stop()
    await probe_a.online(want=False)
    pair_b.write_now(b"B-1\r")
    assert (await probe_b.next()).code == "B-1"
    pair_b.write_now(b"B-2\r")
    assert (await probe_b.next()).code == "B-2"
    assert scanner_a.online is False
    pair_a.start()
    await probe_a.online(want=True)
    pair_a.write_now(b"A-1\r")
    pair_b.write_now(b"B-3\r")
    assert (await probe_a.next()).code == "A-1"
    assert (await probe_b.next()).code == "B-3"
    # Nothing crossed over between the two.
    assert all(s.scanner == "front" for _, s in probe_a.scans)
    assert all(s.scanner == "back" for _, s in probe_b.scans)


@pytest.mark.asyncio
async def test_close_stops_retrying_and_releases_the_port(rig) -> None:
    import serial

    pair, scanner, probe = await rig()
    await scanner.close()
    assert scanner._task is None
    # The exclusive lock is gone: another program may open the port now.
    other = serial.Serial(str(pair.device), timeout=0, exclusive=True)
    other.close()
    pair.stop()
    pair.start()
    await asyncio.sleep(0.5)  # longer than a retry: nothing may reopen the port after close
    assert scanner._serial is None
    assert len([s for s in probe.statuses if s.online]) == 0


@pytest.mark.asyncio
async def test_port_in_use_is_reported(rig) -> None:
    first_pair, first, _ = await rig("first")
    # A second driver on the same port cannot take the exclusive lock.
    second = SerialScanner("second", Clock(), options(first_pair.device))
    await second.start()
    try:
        assert second.online is False
        assert "in use" in second.detail
    finally:
        await second.close()
    assert first.online is True


# -- wiring ------------------------------------------------------------------------------


def test_build_hardware_makes_a_serial_scanner(tmp_path: Path) -> None:
    body = f"""
[drivers.board]
type = "sim"
channels = 4
[cabinets.cab-a]
kind = "dossier"
lock_driver = "board"
count = 2
[scanners.front]
type = "serial"
port = "{tmp_path / 'ttyACM9'}"
cabinets = ["cab-a"]
aim = true
symbologies = ["C1"]
terminators = ["\\r\\n"]
debounce_ms = 700
"""
    hw = build_hardware(load(tmp_path, body), Clock())
    scanner = hw.scanners["front"]
    assert isinstance(scanner, SerialScanner)
    assert scanner.port == str(tmp_path / "ttyACM9")
    assert scanner.framer.terminators == (b"\r\n",)
    assert (scanner.aim, scanner.allowed, scanner.debounce_s) == (True, ("C1",), 0.7)
