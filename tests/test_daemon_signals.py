"""The daemon under a service manager: sd_notify, the health-gated watchdog, SIGTERM and SIGHUP.

The daemon runs as a subprocess with ``$NOTIFY_SOCKET`` naming a datagram
socket this test binds, exactly as systemd would; the lock relays are a
pymodbus TCP server (tests/modbus_peer.py) whose coils are read after the
daemon has exited.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lockerd.drivers.serial_scanner import SerialScanner
from modbus_peer import RelayPeer
from ptys import SocatPair
from rig import DATA, TOML

from lockerd import config as config_mod
from lockerd import importer
from lockerd.clock import Clock
from lockerd.daemon import Daemon
from lockerd.journal import connect, verify
from lockerd.sdnotify import Notifier

Msg = dict[str, str]


class ServiceManager:
    """systemd's side of sd_notify: a bound abstract-namespace datagram socket that keeps every message."""

    def __init__(self) -> None:
        self.address = f"@lockerd-test-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(b"\0" + self.address[1:].encode())
        self.got: list[tuple[float, Msg]] = []  # (monotonic time received, message)

    def _recv(self, timeout: float) -> Msg | None:
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data = self.sock.recv(4096).decode()
        except TimeoutError:
            return None
        msg = dict(line.split("=", 1) for line in data.split("\n") if line)
        self.got.append((time.monotonic(), msg))
        return msg

    def wait_for(self, pred: Callable[[Msg], bool], timeout: float = 10.0) -> Msg:
        """The next message that matches ``pred`` (earlier ones are kept in ``got``)."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self._recv(left)
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"no matching notify message within {timeout} s; got {[m for _, m in self.got]}")

    def quiet_for(self, seconds: float) -> list[Msg]:
        """Every message that arrives within ``seconds`` (to prove something did not come)."""
        deadline = time.monotonic() + seconds
        out = []
        while (left := deadline - time.monotonic()) > 0:
            msg = self._recv(left)
            if msg is not None:
                out.append(msg)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def manager() -> Iterator[ServiceManager]:
    m = ServiceManager()
    yield m
    m.close()


def is_ready(m: Msg) -> bool:
    return m.get("READY") == "1"


def is_ping(m: Msg) -> bool:
    return m.get("WATCHDOG") == "1"


class Proc:
    """The daemon as systemd starts it: NOTIFY_SOCKET, WATCHDOG_USEC and JOURNAL_STREAM in the environment."""

    def __init__(self, cfg: Path, manager: ServiceManager, watchdog_usec: int = 2_000_000):
        self.cfg = cfg
        self.err_path = cfg.parent / "stderr.log"
        self.err = self.err_path.open("w")
        # systemd names the stream it gives the service as stderr when that stream is the journal.
        st = os.fstat(self.err.fileno())
        env = dict(os.environ, NOTIFY_SOCKET=manager.address, WATCHDOG_USEC=str(watchdog_usec),
                   JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
        env.pop("WATCHDOG_PID", None)
        self.p = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)],
                                  stdout=subprocess.DEVNULL, stderr=self.err, env=env)

    def signal(self, sig: int) -> None:
        self.p.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        rc = self.p.wait(timeout)
        self.err.close()
        return rc

    def log(self) -> str:
        return self.err_path.read_text()

    def kill(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.err.close()


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockerd", *args, "-c", str(cfg)], capture_output=True,
                          text=True, timeout=30)


def events(journal: Path) -> list[tuple[str, dict[str, Any]]]:
    """(kind, data) of every committed event, read beside the running daemon (WAL)."""
    conn = connect(journal, readonly=True)
    try:
        return [(k, json.loads(d)) for k, d in conn.execute("SELECT kind, data FROM events ORDER BY seq")]
    finally:
        conn.close()


def kinds(journal: Path) -> list[str]:
    return [k for k, _ in events(journal)]


def setup_station(tmp_path: Path, text: str = TOML, data: dict | None = None) -> Path:
    cfg = tmp_path / "lockerd.toml"
    cfg.write_text(text)
    (tmp_path / "data.json").write_text(json.dumps(data or DATA))
    return cfg


@pytest.fixture
def running(tmp_path: Path, manager: ServiceManager) -> Iterator[tuple[Path, Proc]]:
    """The rig's sim station, started and ready, with people and items imported."""
    cfg = setup_station(tmp_path)
    proc = Proc(cfg, manager)
    try:
        manager.wait_for(is_ready)
        r = cli(cfg, "import", str(tmp_path / "data.json"))
        assert r.returncode == 0, r.stderr
        yield cfg, proc
    finally:
        proc.kill()


# ---------------------------------------------------------------------------
# Modbus relay board: READY after the drivers, SIGTERM mid-pulse


# The rig's [controller] and [journal], then one relay board on Modbus TCP.
MODBUS_TOML = TOML[:TOML.index("[timing]")] + """[timing]
pulse_ms = 1500
open_timeout_s = 10
[buses.line]
type = "tcp"
host = "127.0.0.1"
port = {port}
timeout_ms = 300
[drivers.relay]
type = "modbus"
bus = "line"
unit = 1
coils = 8
inputs = 8
poll_hz = 20
[cabinets.d]
kind = "dossier"
lock_driver = "relay"
count = 6
[scanners.front]
type = "sim"
cabinets = ["d"]
debounce_ms = 0
"""

MODBUS_DATA = {"people": DATA["people"], "badges": DATA["badges"],
               "items": [i for i in DATA["items"] if i["kind"] == "dossier"]}


@pytest.mark.asyncio
async def test_ready_after_drivers_then_pings_and_sigterm_mid_pulse_leaves_no_relay_on(tmp_path, manager):
    peer = RelayPeer([1], coils=8, inputs=8)
    port = await peer.start_tcp()
    # A relay left on by a crash of the previous run: start must switch it off before READY.
    await peer.set_coils(1, [False] * 5 + [True] + [False] * 2)
    cfg = setup_station(tmp_path, MODBUS_TOML.format(port=port), MODBUS_DATA)
    proc = Proc(cfg, manager)
    try:
        ready = await asyncio.to_thread(manager.wait_for, is_ready)
        # READY only once the board was told "every relay off" and the journal recorded the doors.
        assert peer.count(1, 15) >= 1 and await peer.coils_of(1) == [False] * 8
        assert "daemon.ready" in kinds(tmp_path / "journal.db")
        assert ready["STATUS"].startswith("ready: ") and "every device online" in ready["STATUS"]
        assert "6 compartments" in ready["STATUS"]
        before = [m for _, m in manager.got[:-1]]
        assert any(m.get("STATUS", "").startswith("starting") for m in before)
        # The watchdog pings (every WATCHDOG_USEC / 2 = 1 s) while every task beats.
        for _ in range(2):
            await asyncio.to_thread(manager.wait_for, is_ping, 5)

        r = await asyncio.to_thread(cli, cfg, "import", str(tmp_path / "data.json"))
        assert r.returncode == 0, r.stderr
        r = await asyncio.to_thread(cli, cfg, "sim", "scan", "D-1")
        assert "open d01" in r.stdout, r.stdout + r.stderr
        async def coil0_on() -> bool:
            return (await peer.coils_of(1))[0]

        await peer.wait_for(coil0_on, 3)  # the 1.5 s pulse is running
        proc.signal(signal.SIGTERM)
        stopping = await asyncio.to_thread(manager.wait_for, lambda m: m.get("STOPPING") == "1", 5)
        assert stopping == {"STOPPING": "1"}
        assert await asyncio.to_thread(proc.wait, 20) == 0
        # The pulse was finished, every relay is off, and the off was the last word on coil 0.
        assert await peer.coils_of(1) == [False] * 8
        writes = [(fc, addr, value) for _, unit, fc, addr, value in peer.log if unit == 1 and fc in (5, 15)]
        assert writes[-1][0] == 15  # all off at close, after the pulse's own off
        ks = kinds(tmp_path / "journal.db")
        assert "lock.pulsed" in ks and ks[-2:] == ["daemon.stopped", "journal.checkpoint"]
        r = await asyncio.to_thread(cli, cfg, "verify")
        assert r.returncode == 0 and "hash chain intact" in r.stdout
        assert verify(tmp_path / "journal.db").ok
        log = proc.log()
        assert "stopping: no more scans" in log and "<6>lockerd: stopped" in log
    finally:
        proc.kill()
        await peer.stop()


# ---------------------------------------------------------------------------
# SIGHUP


def reload_and_wait(proc: Proc, manager: ServiceManager) -> Msg:
    """SIGHUP, then the RELOADING=1 and READY=1 that bracket the reload; returns the READY message."""
    proc.signal(signal.SIGHUP)
    reloading = manager.wait_for(lambda m: "RELOADING" in m)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    return manager.wait_for(is_ready)


def test_sighup_with_a_good_config_applies_it_in_process(running, manager):
    cfg, proc = running
    pid = proc.p.pid
    new = (TOML.replace("pulse_ms = 500", "pulse_ms = 700")
               .replace("channels = 6", "channels = 8")
               .replace('lock_driver = "sim-d"\ncount = 6', 'lock_driver = "sim-d"\ncount = 7'))
    assert new.count("700") == 1 and "count = 7" in new
    cfg.write_text(new)
    ready = reload_and_wait(proc, manager)
    assert "reloaded" in ready["STATUS"] and "11 compartments" in ready["STATUS"]
    assert proc.p.poll() is None and proc.p.pid == pid  # the same process, not a restart

    st = json.loads(cli(cfg, "status", "--json").stdout)
    assert "d07" in st["compartments"]
    r = cli(cfg, "sim", "scan", "D-1", "--pull")
    assert "open d01" in r.stdout and "door pulled open" in r.stdout
    journal = cfg.parent / "journal.db"
    evs = events(journal)
    reloaded = [d for k, d in evs if k == "config.reloaded"]
    assert len(reloaded) == 1
    assert set(reloaded[0]["changed"]) >= {"timing", "drivers", "cabinets"}
    assert reloaded[0]["config"] == config_mod.load(cfg).digest != reloaded[0]["previous"]
    pulsed = [d for k, d in evs if k == "lock.pulsed"]
    assert [d["ms"] for d in pulsed] == [700]
    # The storage's share of the opening, measured on the real clock: part of scan -> pulse, never more.
    assert 0 < pulsed[0]["durable_ms"] <= pulsed[0]["latency_ms"]
    # One daemon start; the reload keeps the journal (and its boot) open.
    assert [k for k, _ in evs].count("daemon.started") == 1
    # The registry survived the restart of the controller: D-1 is still known and was deposited.
    assert cli(cfg, "sim", "close", "d01").returncode == 0
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    assert "dossier.deposited" in kinds(journal)
    assert "config reloaded (" in proc.log()
    assert cli(cfg, "verify").returncode == 0


def test_sighup_with_a_bad_config_keeps_the_old_one_and_says_why(running, manager):
    cfg, proc = running
    good = cfg.read_text()
    cfg.write_text(good.replace("pulse_ms = 500", "pulse_ms = -5\npulse = 3"))
    ready = reload_and_wait(proc, manager)
    assert "reload refused, old config kept (2 errors, first: " in ready["STATUS"]
    assert "timing.pulse" in ready["STATUS"]

    # The journal path cannot change in-process: refused with the reason.
    cfg.write_text(good.replace('path = "journal.db"', 'path = "other.db"'))
    ready = reload_and_wait(proc, manager)
    assert "journal.path changed" in ready["STATUS"]

    # The old config still runs: d01 opens with a 500 ms pulse, d07 does not exist.
    r = cli(cfg, "sim", "scan", "D-1")
    assert "open d01" in r.stdout
    assert "d07" not in json.loads(cli(cfg, "status", "--json").stdout)["compartments"]
    evs = events(cfg.parent / "journal.db")
    refused = [d for k, d in evs if k == "config.reload_refused"]
    assert len(refused) == 2
    assert any("timing.pulse_ms" in e for e in refused[0]["errors"])
    assert any("timing.pulse" in e and "unknown" in e for e in refused[0]["errors"])
    assert refused[0]["config"] is None  # an invalid file has no digest that runs
    assert "restart" in refused[1]["errors"][0]
    assert [d["ms"] for k, d in evs if k == "lock.pulsed"] == [500]
    assert "config.reloaded" not in [k for k, _ in evs]
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0
    log = proc.log()
    assert log.count("<3>lockerd: reload refused, still running the old config") == 2
    assert "timing.pulse_ms" in log
    assert not (cfg.parent / "other.db").exists()


def test_a_reload_waits_until_the_door_opened_by_a_grant_is_shut(running, manager):
    cfg, proc = running
    cfg.write_text(cfg.read_text().replace("pulse_ms = 500", "pulse_ms = 600"))
    r = cli(cfg, "sim", "scan", "D-1", "--pull")
    assert "open d01" in r.stdout and "door pulled open" in r.stdout
    proc.signal(signal.SIGHUP)
    manager.wait_for(lambda m: "RELOADING" in m)
    # The deposit is in flight until the door shuts: the reload waits for it, and
    # the controller keeps working meanwhile.
    assert cli(cfg, "sim", "close", "d01").returncode == 0
    ready = manager.wait_for(is_ready)
    assert "reloaded" in ready["STATUS"]
    ks = kinds(cfg.parent / "journal.db")
    assert ks.index("lock.pulsed") < ks.index("door.closed") < ks.index("dossier.deposited") \
        < ks.index("config.reloaded")
    r = cli(cfg, "history", "--dossier", "D-1")
    assert "dossier.deposited" in r.stdout
    proc.signal(signal.SIGTERM)
    assert proc.wait() == 0


# ---------------------------------------------------------------------------
# The watchdog follows the health of the daemon's own tasks


def test_a_stuck_journal_writer_stops_the_watchdog_pings(tmp_path, manager):
    """The controller beats after a round trip through the journal writer; a writer that hangs
    (here: another connection holds SQLite's write lock, as a stalled disk would) stops the pings."""
    cfg = setup_station(tmp_path)
    proc = Proc(cfg, manager, watchdog_usec=1_000_000)  # ping every 0.5 s, a task is late after 0.75 s
    try:
        manager.wait_for(is_ready)
        manager.wait_for(is_ping, 5)
        manager.wait_for(is_ping, 5)
        blocker = sqlite3.connect(tmp_path / "journal.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            down = manager.wait_for(lambda m: m.get("STATUS", "").startswith("unhealthy"), 5)
            assert "controller silent" in down["STATUS"]
            # Three ping intervals without a single ping.
            assert not [m for m in manager.quiet_for(1.5) if is_ping(m)]
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        up = manager.wait_for(lambda m: "STATUS" in m and not m["STATUS"].startswith("unhealthy"), 5)
        assert up["STATUS"].startswith("healthy again: site test-site node node-1; 10 compartments")
        manager.wait_for(is_ping, 5)
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
        log = proc.log()
        assert "<3>lockerd.sdnotify: unhealthy, withholding the watchdog ping: controller silent" in log
        assert verify(tmp_path / "journal.db").ok
    finally:
        proc.kill()


@pytest.mark.asyncio
async def test_a_scanner_reader_that_died_stops_the_pings_and_is_named(tmp_path, manager, monkeypatch, caplog):
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # ping every 0.5 s, a task is late after 0.75 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(config_mod.load(setup_station(tmp_path)), Clock(), Notifier(manager.address))
    front = daemon.hw.scanners["front"]
    real = front.scans

    async def reader_with_a_bug():
        async for scan in real():
            if scan.code == "BOOM":
                raise RuntimeError("reader bug")
            yield scan

    front.scans = reader_with_a_bug  # type: ignore[method-assign]
    await daemon.start()
    try:
        await asyncio.to_thread(manager.wait_for, is_ready)
        await asyncio.to_thread(manager.wait_for, is_ping, 5)
        assert daemon.watchdog is not None and daemon.watchdog.healthy
        front.inject("BOOM")
        down = await asyncio.to_thread(manager.wait_for, lambda m: m.get("STATUS", "").startswith("unhealthy"), 5)
        assert down["STATUS"] == f"unhealthy: {daemon.watchdog.reason}"
        assert "scanner:front silent" in down["STATUS"] and "controller" not in down["STATUS"]
        # The reader's own error is in the log, with its traceback, for the technician.
        assert any(r.getMessage() == "task scanner-front failed" and r.exc_info for r in caplog.records)
        assert not [m for m in await asyncio.to_thread(manager.quiet_for, 1.0) if is_ping(m)]
        # The other scanner and the door loops still beat: only the dead reader is named.
        assert daemon.beats.check()[1].count("silent") == 1
    finally:
        await daemon.stop()


@pytest.mark.asyncio
async def test_an_unplugged_scanner_is_offline_not_unhealthy(tmp_path, manager, monkeypatch):
    """The serial reader beats while it retries: pulling the scanner out changes STATUS, never the pings."""
    pair = SocatPair(tmp_path, "front").start()
    text = TOML.replace('[scanners.front]\ntype = "sim"', f'[scanners.front]\ntype = "serial"\nport = "{pair.device}"')
    assert 'type = "serial"' in text
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(config_mod.load(setup_station(tmp_path, text)), Clock(), Notifier(manager.address))
    front = daemon.hw.scanners["front"]
    # Faster than in service (watch 1 s, retries up to 5 s) so that the test outlasts the heartbeat limit.
    front.watch_s, front.retry_max, front.heartbeat_s = 0.1, 0.4, 0.4
    await daemon.start()
    try:
        ready = await asyncio.to_thread(manager.wait_for, is_ready)
        assert "every device online" in ready["STATUS"]
        assert daemon.beats._limits["driver:front"] == pytest.approx(0.8)
        assert "driver:front" in daemon._beat_names
        pair.stop()  # unplugged
        off = await asyncio.to_thread(manager.wait_for, lambda m: "offline: front" in m.get("STATUS", ""), 5)
        assert "does not exist" in off["STATUS"] or "read failed" in off["STATUS"] or "end of file" in off["STATUS"]
        for _ in range(4):  # 2 s: more than twice the reader's heartbeat limit
            await asyncio.to_thread(manager.wait_for, is_ping, 5)
        assert not any(m.get("STATUS", "").startswith("unhealthy") for _, m in manager.got)
        pair.start()  # plugged back in
        await asyncio.to_thread(manager.wait_for, lambda m: "every device online" in m.get("STATUS", ""), 10)
    finally:
        await daemon.stop()
        pair.stop()


def test_sigterm_says_goodbye_on_mqtt(tmp_path, manager, mosquitto, recorders):
    """The last words on the station link: daemon.stopped delivered, then presence offline (clean, retained)."""
    from broker import Recorder, station_config

    base = "lockerd/test-site/node-1"
    rec = Recorder(mosquitto.port, [f"{base}/presence", f"{base}/events"])
    recorders.append(rec)
    cfg = station_config(tmp_path, [f"127.0.0.1:{mosquitto.port}"])
    proc = Proc(cfg, manager)
    try:
        manager.wait_for(is_ready)
        rec.wait(lambda r: any(p["state"] == "online" for p in r.on("/presence")))
        proc.signal(signal.SIGTERM)
        assert proc.wait() == 0
        rec.wait(lambda r: r.on("/presence")[-1]["state"] == "offline")
        assert rec.on("/presence")[-1]["clean"] is True
        # The process has exited: daemon.stopped reached the broker before it went (else it would
        # wait in the outbox for the next start).
        rec.wait(lambda r: "daemon.stopped" in [e["kind"] for e in r.on("/events")], 5)
    finally:
        proc.kill()
    # A newcomer still reads the goodbye: it was published retained.
    late = Recorder(mosquitto.port, [f"{base}/presence"], client_id="late")
    recorders.append(late)
    late.wait(lambda r: len(r.on("/presence")) >= 1)
    assert late.on("/presence")[-1]["state"] == "offline" and late.messages[-1][2] is True


# ---------------------------------------------------------------------------
# Logs a technician can read: a failing device once, then quiet, then "recovered"


def device_lines(caplog: pytest.LogCaptureFixture, name: str, level: int) -> list[str]:
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
            if r.levelno >= level and r.getMessage().startswith(f"{name}:")]


@pytest.mark.asyncio
async def test_a_failing_board_is_logged_once_then_quietly_then_recovered(caplog):
    from test_modbus import open_tcp

    caplog.set_level(logging.DEBUG)
    rig = await open_tcp()
    try:
        board = rig.boards[1]
        changed = asyncio.Event()
        board.on_status(lambda _st: changed.set())
        rig.peer.dead.add(1)
        async with asyncio.timeout(5):
            while board.online:
                changed.clear()
                await changed.wait()
        polls = rig.peer.count(1, 2)
        await rig.peer.wait_for(lambda: rig.peer.count(1, 2) >= polls + 4, 5)  # four more polls, unanswered
        assert device_lines(caplog, "board-1", logging.WARNING) == [f"ERROR board-1: offline: {board.detail}"]
        assert len([m for m in device_lines(caplog, "board-1", logging.DEBUG) if "still not answering" in m]) >= 3
        rig.peer.dead.discard(1)
        async with asyncio.timeout(5):
            while not board.online:
                changed.clear()
                await changed.wait()
        assert device_lines(caplog, "board-1", logging.WARNING)[1:] == ["WARNING board-1: recovered"]
        assert not device_lines(caplog, "board-2", logging.WARNING)  # its neighbour on the bus never noticed
    finally:
        await rig.close()


@pytest.mark.asyncio
async def test_an_unplugged_scanner_is_logged_once_then_quietly_then_recovered(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    pair = SocatPair(tmp_path, "s1").start()
    opts = config_mod.load(setup_station(tmp_path, TOML.replace(
        '[scanners.front]\ntype = "sim"', f'[scanners.front]\ntype = "serial"\nport = "{pair.device}"'))).scanners
    scanner = SerialScanner("front", Clock(), opts["front"].options)
    scanner.retry_max = 0.1  # many retries in little time; the backoff doubles the same way
    changed = asyncio.Event()
    scanner.on_status(lambda _st: changed.set())
    await scanner.start()
    try:
        pair.stop()
        async with asyncio.timeout(5):
            while scanner.online:
                changed.clear()
                await changed.wait()
        attempts: list[str] = []
        six = asyncio.Event()

        def attempt(name: str) -> None:
            attempts.append(name)
            if len(attempts) >= 6:
                six.set()

        scanner.on_heartbeat(attempt)  # the supervisor beats once per reopen attempt
        await asyncio.wait_for(six.wait(), 5)
        loud = device_lines(caplog, "front", logging.WARNING)
        # The hangup, then the cause of the failed reopen: each said once, however many retries.
        assert len(loud) == 2 and loud[0].startswith("ERROR front: offline: ") and "does not exist" in loud[1]
        assert len([m for m in device_lines(caplog, "front", logging.DEBUG) if "still cannot open" in m]) >= 3
        pair.start()
        async with asyncio.timeout(5):
            while not scanner.online:
                changed.clear()
                await changed.wait()
        assert device_lines(caplog, "front", logging.WARNING)[2:] == ["WARNING front: recovered"]
    finally:
        await scanner.close()
        pair.stop()


# ---------------------------------------------------------------------------
# Reload in-process: the station link, a busy controller, a new config that fails to start


async def started(tmp_path: Path, manager: ServiceManager, cfg: Path) -> Daemon:
    daemon = Daemon(config_mod.load(cfg), Clock(), Notifier(manager.address))
    await daemon.start()
    return daemon


async def until(daemon: Daemon, pred: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``pred()`` holds, checked whenever a compartment's state changes."""
    changed = asyncio.Event()
    daemon.controller.on_state(lambda _state: changed.set())
    async with asyncio.timeout(timeout_s):
        while not pred():
            changed.clear()
            await changed.wait()


@pytest.mark.asyncio
async def test_a_reload_restarts_the_station_link_with_the_new_config(tmp_path, manager, mosquitto, recorders):
    from broker import Recorder, station_config
    from test_station_commands import BASE, Station, reply_for

    rec = Recorder(mosquitto.port, [f"{BASE}/#"])
    recorders.append(rec)
    cfg = station_config(tmp_path, [f"127.0.0.1:{mosquitto.port}"])
    daemon = await started(tmp_path, manager, cfg)
    station = Station(mosquitto.port)
    try:
        await asyncio.to_thread(rec.wait, lambda r: len(r.on("/info")) >= 1)
        cfg.write_text(cfg.read_text().replace("count = 4", "count = 3"))
        assert await daemon.reload() is True
        new = config_mod.load(cfg)
        # Offline (clean) for the swap, then online again announcing the new config.
        await asyncio.to_thread(rec.wait, lambda r: [p["state"] for p in r.on("/presence")][-3:]
                                == ["online", "offline", "online"])
        await asyncio.to_thread(rec.wait, lambda r: r.on("/info")[-1]["config"] == new.digest)
        # Commands reach the new controller: d04 is gone, d03 opens.
        gone = station.send("open", {"compartment": "d04", "reason": "inspection"})
        opened = station.send("open", {"compartment": "d03", "reason": "inspection"})
        await asyncio.to_thread(rec.wait, lambda r: reply_for(r, gone) and reply_for(r, opened))
        assert reply_for(rec, opened)[0]["ok"] is True
        assert reply_for(rec, gone)[0]["ok"] is False and "d04" in reply_for(rec, gone)[0]["error"]
    finally:
        await daemon.stop()
        station.close()


@pytest.mark.asyncio
async def test_a_reload_with_a_door_held_open_by_a_grant_is_refused_after_waiting(tmp_path, manager, monkeypatch):
    import lockerd.daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "RELOAD_QUIET_WAIT_S", 0.3)
    cfg = setup_station(tmp_path)
    daemon = await started(tmp_path, manager, cfg)
    try:
        await importer.apply(daemon.controller, json.loads(json.dumps(DATA)))
        board = daemon.hw.drivers["sim-d"]
        board.pull(0, 2.0)  # the person is already pulling when the lock releases
        done = asyncio.get_running_loop().create_future()
        daemon.controller.on_outcome(lambda _scan, outcome: done.done() or done.set_result(outcome))
        daemon.hw.scanners["front"].inject("D-1")
        assert (await asyncio.wait_for(done, 5)).pulsed
        slot = daemon.controller.slots["d01"]
        await until(daemon, lambda: slot.door.value == "open" and not slot.pulsing)  # pulse over, door open
        cfg.write_text(cfg.read_text().replace("pulse_ms = 500", "pulse_ms = 700"))
        assert await daemon.reload() is False
        await daemon._flush_journal()
        refused = [e.data for e in daemon.journal.read(0, 10**6) if e.kind == "config.reload_refused"]
        assert len(refused) == 1 and "compartment d01 is open for a grant and not yet shut" in refused[0]["errors"][0]
        assert daemon.config.timing.pulse_ms == 500 and daemon.reloads == 0
        board.close_door(0)
        await until(daemon, lambda: daemon.controller.busy() is None)
        assert await daemon.reload() is True and daemon.config.timing.pulse_ms == 700
    finally:
        await daemon.stop()


@pytest.mark.asyncio
async def test_a_new_config_that_fails_to_start_falls_back_to_the_old_one(tmp_path, manager):
    cfg = setup_station(tmp_path)
    daemon = await started(tmp_path, manager, cfg)
    try:
        # Valid to the checks, but a Unix socket path longer than the kernel takes fails at bind.
        cfg.write_text(cfg.read_text().replace('control_socket = "lockerd.sock"',
                                               f'control_socket = "{"x" * 120}.sock"'))
        assert await daemon.reload() is False
        await daemon._flush_journal()
        refused = [e.data for e in daemon.journal.read(0, 10**6) if e.kind == "config.reload_refused"]
        assert "starting with the new config failed" in refused[0]["errors"][0]
        assert refused[0]["running"] == daemon.config.digest
        # The old config runs again, control socket included.
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "lockerd.sock"))
        writer.write(b'{"op": "status"}\n')
        status = json.loads(await reader.readline())
        writer.close()
        assert status["ok"] and sorted(status["compartments"])[-1] == "e04"
        assert daemon.controller.accepting and daemon.config.control_socket == tmp_path / "lockerd.sock"
    finally:
        await daemon.stop()


@pytest.mark.asyncio
async def test_lockerd_run_keeps_the_heap_it_started_with_out_of_the_collectors_walks(tmp_path, monkeypatch):
    """`lockerd run` turns the collector off before its imports, and freezes what the start built once ready (then
    turns it on): a full collection later walks only what came since, not the 5-6 ms of the whole start."""
    import gc

    from lockerd import cli
    from lockerd import daemon as daemon_mod

    calls: list[tuple[str, bool]] = []
    enabled = asyncio.Event()
    d = Daemon(config_mod.load(setup_station(tmp_path)), Clock())
    monkeypatch.setattr(gc, "freeze", lambda: calls.append(("freeze", d._ready)))
    monkeypatch.setattr(gc, "enable", lambda: calls.append(("enable", d._ready)) or enabled.set())
    running = asyncio.ensure_future(d.run())
    try:
        await asyncio.wait_for(enabled.wait(), 10)
        assert calls == [("freeze", True), ("enable", True)]
    finally:
        d.stopping.set()
        assert await running == 0

    order: list[str] = []
    monkeypatch.setattr(gc, "disable", lambda: order.append("gc off"))
    monkeypatch.setattr(cli, "load_runnable_config", lambda _path: order.append("config") or "cfg")
    monkeypatch.setattr(daemon_mod, "run", lambda cfg: order.append(f"run {cfg}") or 0)
    assert cli.main(["run", "-c", "x.toml"]) == 0
    assert order == ["gc off", "config", "run cfg"]

