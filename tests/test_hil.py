"""The bench harness (lockerd.hil) against the simulated cabinet and pymodbus relay boards with injected faults.

Each fault-finding test injects known faults and asserts the exact set of
findings: every fault found, and nothing else. The report is opened in a
real headless Chromium. The hardware lock is proven both ways against the
real daemon, and "no relay left on" against a board's own coils after an
error, a cancellation and a SIGINT of the command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from broker import Mosquitto, free_port
from hil_boards import DoorPeer, DoorWatcher
from lockerd.drivers.base import DoorState
from lockerd.hil import Bench, BenchOptions, Unattended
from lockerd.hil.report import PASS, UNTESTED, render_html
from lockerd.hil.technician import SimTechnician
from ptys import SocatPair

from lockerd import config as config_mod
from lockerd.hwlock import HardwareBusy, HardwareLock, hardware_lock_path

HEAD = """
[controller]
site = "test-site"
node = "node-1"
control_socket = "lockerd.sock"
[journal]
path = "journal.db"
[timing]
pulse_ms = {pulse_ms}
open_timeout_s = 0.5
"""

SIM = HEAD + """
[drivers.sim-d]
type = "sim"
channels = 8
spring = true
crossed = [2, 5]
[drivers.sim-e]
type = "sim"
channels = 4
[cabinets.d]
kind = "dossier"
lock_driver = "sim-d"
count = 8
[cabinets.e]
kind = "evidence"
lock_driver = "sim-e"
count = 4
[scanners.front]
type = "sim"
cabinets = ["d", "e"]
debounce_ms = 0
"""

MODBUS = HEAD + """
[buses.gw-a]
type = "tcp"
host = "127.0.0.1"
port = {port_a}
timeout_ms = {timeout_ms}
retries = 1
[buses.gw-b]
type = "tcp"
host = "127.0.0.1"
port = {port_b}
timeout_ms = {timeout_b_ms}
retries = 1
[drivers.board-a]
type = "modbus"
bus = "gw-a"
unit = 1
coils = 8
inputs = 8
poll_hz = 50
[drivers.board-b]
type = "modbus"
bus = "gw-b"
unit = 2
coils = 8
inputs = 8
poll_hz = 50
[cabinets.m]
kind = "dossier"
lock_driver = "board-a"
count = 8
[cabinets.n]
kind = "evidence"
lock_driver = "board-b"
count = 8
"""

QUICK = {"settle_s": 0.1, "close_timeout_s": 2.0, "modbus_requests": 20, "scan_timeout_s": 1.0}


def write_config(folder: Path, text: str, **fmt: object) -> config_mod.Config:
    path = folder / "lockerd.toml"
    # A board counts as offline after one unanswered request: 100 ms (twice) was less than the pauses a loaded
    # machine gives the peer in this process and the bench in another, and both boards were reported offline.
    path.write_text(text.format(**({"pulse_ms": 20, "timeout_ms": 1000, "timeout_b_ms": 1000} | fmt)))
    return config_mod.load(path)


def faults_on_progress(bench: Bench, faults: dict[tuple[str, str], object]):
    """A progress hook that injects a fault when the bench reaches a stage and subject."""

    def hook(stage: str, subject: str) -> None:
        action = faults.pop((stage, subject), None)
        if action is not None:
            action(bench)

    return hook


async def run_sim(tmp_path: Path, faults: dict[tuple[str, str], object], text: str = SIM, **opts) -> Bench:
    cfg = write_config(tmp_path, text)
    bench = Bench(cfg, SimTechnician(Unattended()), BenchOptions(**(QUICK | opts)))
    bench.progress = faults_on_progress(bench, faults)
    await bench.run()
    return bench


# -- the simulated cabinet ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sim_cabinet_finds_crossed_pair_jam_stuck_relay_and_vanished_board_and_nothing_else(tmp_path):
    faults = {
        ("compartment", "d01"): lambda b: (b.hw.drivers["sim-d"].jam(6), b.hw.drivers["sim-d"].stick(0)),
        ("compartment", "e02"): lambda b: b.hw.drivers["sim-e"].vanish(),  # drops out mid-run
    }
    bench = await run_sim(tmp_path, faults)
    r = bench.report
    assert r.finding_keys() == {("crossed", "d03+d06"), ("lock-not-released", "d07"), ("relay-stuck", "d01"),
                                ("board-offline", "sim-e")}
    crossed = next(f for f in r.findings if f.kind == "crossed")
    assert "sim-d channel 2" in crossed.message and "sim-d channel 5" in crossed.message
    status = {c.id: c.status for c in r.compartments}
    assert {c for c, s in status.items() if s != PASS} == {"d01", "d03", "d06", "d07", "e02", "e03", "e04"}
    assert [status[c] for c in ("e02", "e03", "e04")] == [UNTESTED] * 3
    offline = next(f for f in r.findings if f.kind == "board-offline")
    assert offline.detail["untested"] == ["e02", "e03", "e04"]
    # Spring doors open by themselves, sim-e's doors were pulled by the technician.
    assert {c.doors for c in r.compartments if c.cabinet == "d"} == {"spring"}
    assert next(c for c in r.compartments if c.id == "e01").doors == "manual"
    assert all(c.open_ms is not None and c.open_ms >= 0 for c in r.compartments if c.status == PASS)
    # Nothing left released but the welded relay; every door shut again.
    d = bench.hw.drivers["sim-d"]
    assert [ch for ch in range(8) if d.released(ch)] == [0]
    assert not any(door.open for door in d.doors)
    assert r.scanners[0].status == PASS and r.scanners[0].code == "BENCH-TEST-CARD"


@pytest.mark.asyncio
async def test_sim_cabinet_without_faults_passes_everything(tmp_path):
    bench = await run_sim(tmp_path, {}, SIM.replace("crossed = [2, 5]\n", ""))
    r = bench.report
    assert r.findings == [] and r.passed
    assert {c.status for c in r.compartments} == {PASS}
    assert r.layout == {"d": {"rows": 4, "compartments": [f"d0{i}" for i in range(1, 9)]},
                        "e": {"rows": 4, "compartments": ["e01", "e02", "e03", "e04"]}}


@pytest.mark.asyncio
async def test_doors_opened_with_no_pulse_are_reported_as_such_and_blame_no_lock(tmp_path):
    # d07's lock is jammed; while it is tested, someone forces d04 open; while d02 is tested, d05 is opened
    # with a key; after the last compartment, d01 is forced. One pulse would blame d07's lock for d04's door
    # and d02's for d05's: the bench pulses again before it blames a wire, and says what it cannot explain.
    faults = {
        ("compartment", "d01"): lambda b: b.hw.drivers["sim-d"].jam(6),
        ("pulsed", "d07"): lambda b: b.hw.drivers["sim-d"].force(3),
        ("pulsed", "d02"): lambda b: b.hw.drivers["sim-d"].force(4),
        ("scanner", "front"): lambda b: b.hw.drivers["sim-d"].force(0),
    }
    bench = await run_sim(tmp_path, faults, SIM.replace("crossed = [2, 5]\n", ""))
    r = bench.report
    assert r.finding_keys() == {("lock-not-released", "d07"), ("unexplained-opening", "d04"),
                                ("unexplained-opening", "d05"), ("unexplained-opening", "d01")}
    during = {f.subject: f.detail["during"] for f in r.findings if f.kind == "unexplained-opening"}
    assert during == {"d04": "during the compartment check of d07", "d05": "during the compartment check of d02",
                      "d01": "during the scanner check of front"}
    status = {c.id: c.status for c in r.compartments}
    assert {c for c, s in status.items() if s != PASS} == {"d07"}


@pytest.mark.asyncio
async def test_an_interrupted_run_keeps_the_verdicts_of_what_it_tested(tmp_path):
    def stop(_bench: Bench) -> None:
        raise RuntimeError("the technician's laptop fell over")

    cfg = write_config(tmp_path, SIM.replace("crossed = [2, 5]\n", ""))
    bench = Bench(cfg, SimTechnician(Unattended()), BenchOptions(**QUICK))
    bench.progress = faults_on_progress(bench, {("compartment", "d04"): stop})
    with pytest.raises(RuntimeError):
        await bench.run()
    status = {c.id: c.status for c in bench.report.compartments}
    assert [status[c] for c in ("d01", "d02", "d03")] == [PASS] * 3
    assert status["d04"] == UNTESTED and bench.report.interrupted.startswith("RuntimeError")


@pytest.mark.asyncio
async def test_scanner_test_card_silent_wrong_and_right(tmp_path):
    cfg = write_config(tmp_path, SIM)

    class Mute(SimTechnician):
        async def scan_card(self, _scanner, _card):
            return True  # says yes, scans nothing

    for tech, card, expected in ((SimTechnician(), "CARD-1", set()),
                                 (Mute(), "CARD-1", {("scanner-silent", "front")})):
        bench = Bench(cfg, tech, BenchOptions(**(QUICK | {"test_card": card, "scan_timeout_s": 0.3})))
        bench.opt.compartments = ("d01",)
        r = await bench.run()
        assert r.finding_keys() == expected
    wrong = Bench(cfg, SimTechnician(), BenchOptions(**(QUICK | {"compartments": ("d01",)})))
    r = await wrong.run()  # the sim technician scans BENCH-TEST-CARD: any readable code passes
    assert r.scanners[0].status == PASS

    class WrongCard(SimTechnician):
        async def scan_card(self, scanner, _card):
            return await super().scan_card(scanner, "SOMETHING-ELSE")

    r = await Bench(cfg, WrongCard(), BenchOptions(**(QUICK | {"compartments": ("d01",), "test_card": "CARD-1"}))).run()
    assert r.finding_keys() == {("scanner-wrong-code", "front")}
    assert "SOMETHING-ELSE" in r.findings[0].message


@pytest.mark.asyncio
async def test_serial_scanner_reads_the_test_card_over_a_pty(tmp_path):
    pty = SocatPair(tmp_path, "desk").start()
    try:
        text = SIM + f'[scanners.desk]\ntype = "serial"\nport = "{pty.device}"\ncabinets = ["d"]\n'
        cfg = write_config(tmp_path, text)

        class AtTheDesk(SimTechnician):
            """Scans with the serial scanner: its bytes come down the pty; the second card is smudged."""

            def __init__(self, cards: list[bytes]):
                super().__init__()
                self.cards = cards

            async def scan_card(self, scanner, card):
                if scanner != "desk":
                    return await super().scan_card(scanner, card)
                await pty.write(self.cards.pop(0))
                return True

        tech = AtTheDesk([b"CARD-7\r", b"CA\x01RD\r"])
        opts = BenchOptions(**(QUICK | {"compartments": ("d01",), "test_card": "CARD-7", "scan_timeout_s": 5.0}))
        r = await Bench(cfg, tech, opts).run()
        desk = next(x for x in r.scanners if x.name == "desk")
        assert desk.status == PASS and desk.code == "CARD-7"
        assert r.finding_keys() == set()
        r = await Bench(cfg, tech, opts).run()
        assert ("scanner-bad-read", "desk") in r.finding_keys()
        assert "control character" in next(x for x in r.scanners if x.name == "desk").error
    finally:
        pty.stop()


# -- pymodbus relay boards with doors ---------------------------------------------------------------


class Boards:
    """Two gateways (pymodbus servers) with one door board each, and the config that names them."""

    def __init__(self, a: DoorPeer, b: DoorPeer, cfg: config_mod.Config):
        self.a, self.b, self.cfg = a, b, cfg

    def watcher(self) -> DoorWatcher:
        return DoorWatcher({"board-a": (self.a, 1), "board-b": (self.b, 2)})

    async def coils(self) -> list[bool]:
        return [*await self.a.coils_of(1), *await self.b.coils_of(2)]


@contextlib.asynccontextmanager
async def door_boards(tmp_path: Path, pulse_ms: int = 100, timeout_b_ms: int = 1000):
    """Two boards on two TCP gateways; ``timeout_b_ms`` shortens board-b's waits where a test kills it."""
    a, b = DoorPeer([1], coils=8, inputs=8), DoorPeer([2], coils=8, inputs=8)
    try:
        port_a, port_b = await a.start_tcp(), await b.start_tcp()
        yield Boards(a, b, write_config(tmp_path, MODBUS, port_a=port_a, port_b=port_b, pulse_ms=pulse_ms,
                                        timeout_b_ms=timeout_b_ms))
    finally:
        await a.stop()
        await b.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("attended", [True, False], ids=["technician", "unattended"])
async def test_modbus_boards_find_crossed_dead_lock_dead_sensor_and_dropped_board_and_nothing_else(
        tmp_path, attended):
    async with door_boards(tmp_path, timeout_b_ms=250) as boards:
        boards.a.crossed[1] = (1, 4)  # m02 and m05
        boards.a.dead_locks.add((1, 6))  # m07: the relay clicks, the door stays shut
        boards.a.dead_sensors.add((1, 2))  # m03: the door opens, its input stays 0
        tech = boards.watcher() if attended else Unattended()
        bench = Bench(boards.cfg, tech, BenchOptions(**(QUICK | {"doors": "spring"})))
        bench.progress = faults_on_progress(bench, {("compartment", "n03"): lambda _b: boards.b.dead.add(2)})
        r = await bench.run()
        # Which of lock and sensor is dead needs a pair of eyes: unattended, the bench says it cannot tell.
        dead_lock, dead_sensor = ("lock-not-released", "sensor-dead") if attended else ("no-change", "no-change")
        assert r.finding_keys() == {("crossed", "m02+m05"), (dead_lock, "m07"), (dead_sensor, "m03"),
                                    ("board-offline", "board-b")}
        crossed = next(f for f in r.findings if f.kind == "crossed")
        assert "board-a channel 1" in crossed.message and "board-a channel 4" in crossed.message
        status = {c.id: c.status for c in r.compartments}
        assert {c for c, s in status.items() if s != PASS} == {"m02", "m03", "m05", "m07", "n03", "n04", "n05",
                                                               "n06", "n07", "n08"}
        # Both boards answered every read before board-b dropped out.
        assert [(b.name, b.answered, b.requests) for b in r.boards] == [("board-a", 20, 20), ("board-b", 20, 20)]
        assert all(0 < ms < 1000 for b in r.boards for ms in b.latencies_ms)
        opens = [c.open_ms for c in r.compartments if c.status == PASS]
        assert len(opens) == 4 + 2 and all(0 < ms < 1000 for ms in opens)  # m01 m04 m06 m08, n01 n02
        assert not any(await boards.a.coils_of(1))  # no relay left on (board-b is gone and cannot say)


@pytest.mark.asyncio
async def test_board_dead_from_the_start_is_one_finding_and_its_compartments_untested(tmp_path):
    async with door_boards(tmp_path, timeout_b_ms=250) as boards:
        boards.b.dead.add(2)
        r = await Bench(boards.cfg, Unattended(), BenchOptions(**(QUICK | {"doors": "spring"}))).run()
        assert r.finding_keys() == {("board-offline", "board-b")}
        b = next(x for x in r.boards if x.name == "board-b")
        assert b.answered == 0 and b.requests == BenchOptions().modbus_give_up_after
        assert {c.status for c in r.compartments if c.cabinet == "n"} == {UNTESTED}
        assert {c.status for c in r.compartments if c.cabinet == "m"} == {PASS}


@pytest.mark.asyncio
async def test_a_board_that_dies_while_its_door_is_open_is_offline_not_a_door_left_open(tmp_path):
    async with door_boards(tmp_path, pulse_ms=20, timeout_b_ms=250) as boards:
        bench = Bench(boards.cfg, Unattended(), BenchOptions(**(QUICK | {"doors": "spring", "skip_boards": True})))

        async def kill_once_seen_open() -> None:
            # The bench has seen n03's door open (board-b input 2) and the pulse is over (its relay off at the
            # board): now the board dies, with the door still open (it shuts 0.25 s after the relay).
            while not any((c.driver, c.channel, c.state) == ("board-b", 2, DoorState.OPEN) for c in bench._changes) \
                    or any(await boards.b.coils_of(2)):
                await asyncio.sleep(0.005)
            boards.b.dead.add(2)

        killer: list[asyncio.Task] = []
        bench.progress = faults_on_progress(
            bench, {("pulsed", "n03"): lambda _b: killer.append(asyncio.create_task(kill_once_seen_open()))})
        r = await bench.run()
        await killer[0]
        assert r.finding_keys() == {("board-offline", "board-b")}
        n03 = next(c for c in r.compartments if c.id == "n03")
        assert n03.note == "board-b offline" and "not-closed" not in n03.problems


# -- never a relay left on ----------------------------------------------------------------------------


async def _any_on(peer: DoorPeer) -> bool:
    return any(await peer.coils_of(1))


@pytest.mark.asyncio
async def test_an_error_mid_pulse_still_switches_every_relay_off(tmp_path):
    async with door_boards(tmp_path, pulse_ms=3000) as boards:
        bench = Bench(boards.cfg, Unattended(), BenchOptions(**(QUICK | {"doors": "spring", "skip_boards": True})))

        def hook(stage: str, subject: str) -> None:
            if stage == "pulsed":
                raise RuntimeError("technician's laptop fell over")

        bench.progress = hook
        with pytest.raises(RuntimeError):
            await bench.run()
        assert bench.report.interrupted.startswith("RuntimeError")
        assert boards.a.count(1, 5) >= 1  # the pulse did go out
        assert await boards.coils() == [False] * 16
        assert not HardwareLock(hardware_lock_path(boards.cfg), "test").held  # and the lock was let go
        with HardwareLock(hardware_lock_path(boards.cfg), "test"):
            pass


@pytest.mark.asyncio
async def test_cancelled_mid_pulse_switches_every_relay_off(tmp_path):
    async with door_boards(tmp_path, pulse_ms=3000) as boards:
        bench = Bench(boards.cfg, Unattended(), BenchOptions(**(QUICK | {"doors": "spring", "skip_boards": True})))
        task = asyncio.create_task(bench.run())
        await boards.a.wait_for(lambda: _any_on(boards.a), timeout_s=5)  # a solenoid is energised now
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await boards.coils() == [False] * 16


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill ``proc`` if it still runs and wait for it: nothing outlives the test that started it."""
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.mark.asyncio
async def test_sigint_of_the_command_mid_pulse_switches_every_relay_off(tmp_path):
    async with door_boards(tmp_path, pulse_ms=5000) as boards:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lockerd.hil.cli", "-c", str(boards.cfg.path), "--non-interactive",
            "--doors", "spring", "--skip", "boards", "-o", str(tmp_path / "out"),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await boards.a.wait_for(lambda: _any_on(boards.a), timeout_s=15)
            proc.send_signal(signal.SIGINT)
            proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C must not cut the switch-off short
            out, err = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            await reap(proc)
        assert proc.returncode == 130, err.decode()
        assert "every relay was switched off" in err.decode()
        assert await boards.coils() == [False] * 16
        report = json.loads((tmp_path / "out" / "bench.json").read_text())
        assert report["interrupted"] and report["passed"] is False


@pytest.mark.asyncio
async def test_a_board_dead_mid_pulse_ends_the_run_with_cutting_its_power(tmp_path):
    async with door_boards(tmp_path, pulse_ms=1000, timeout_b_ms=250) as boards:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lockerd.hil.cli", "-c", str(boards.cfg.path), "--non-interactive",
            "--doors", "spring", "--skip", "boards", "--skip", "scanners", "--skip", "broker", "--only", "n03",
            "-o", str(tmp_path / "out"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            await boards.b.wait_for(lambda: _any_on_unit(boards.b, 2), timeout_s=15)
            boards.b.dead.add(2)  # the relay is on; nothing can switch it off now
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        finally:
            await reap(proc)
        assert proc.returncode == 1, err.decode()
        assert "relay stays on" in out.decode()
        assert err.decode().strip().splitlines()[-1] == "NOW: cut the power to board board-b: a relay of it stays on"
        report = json.loads((tmp_path / "out" / "bench.json").read_text())
        assert report["actions"] == ["cut the power to board board-b: a relay of it stays on"]


async def _any_on_unit(peer: DoorPeer, unit: int) -> bool:
    return any(await peer.coils_of(unit))


# -- one at a time: the daemon and the bench -------------------------------------------------------------


class Daemon:
    """``lockerd run`` as a subprocess; :func:`daemon` reaps it whatever the test did."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.lines: list[str] = []
        self._reader: asyncio.Task | None = None

    @property
    def log(self) -> str:
        return "".join(self.lines)

    async def ready(self) -> bool:
        """Read stderr until the daemon says it is ready (True) or has exited (False)."""
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):  # a safety net: a loaded machine starts Python slowly
            while line := await self.proc.stderr.readline():
                self.lines.append(line.decode())
                if " ready in " in line.decode():
                    # Keep reading: a full stderr pipe would block the daemon's logging.
                    self._reader = asyncio.create_task(self._drain())
                    return True
            await self.proc.wait()
        return False

    async def _drain(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode())

    async def stop(self) -> int:
        """SIGTERM and wait for the exit; the exit code."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.proc.wait(), 60)
        if self._reader is not None:
            await self._reader
        return self.proc.returncode

    async def reap(self) -> None:
        await reap(self.proc)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@contextlib.asynccontextmanager
async def daemon(cfg: Path) -> AsyncIterator[Daemon]:
    """Start ``lockerd run`` and wait until it is ready or has exited; killed afterwards if still running."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "lockerd", "run", "-c", str(cfg),
                                                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    d = Daemon(proc)
    try:
        await d.ready()
        yield d
    finally:
        await d.reap()


@pytest.mark.asyncio
async def test_bench_refuses_to_run_while_the_daemon_runs(tmp_path):
    cfg = write_config(tmp_path, SIM)
    async with daemon(cfg.path) as d:
        assert d.proc.returncode is None, d.log
        with pytest.raises(HardwareBusy, match="lockerd daemon"):
            await Bench(cfg, SimTechnician(), BenchOptions(**QUICK)).run()
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lockerd.hil.cli", "-c", str(cfg.path), "--non-interactive",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(cli.communicate(), 60)
        finally:
            await reap(cli)
        assert cli.returncode == 3, err.decode()
        assert "in use by the lockerd daemon" in err.decode() and "systemctl stop lockerd" in err.decode()
        assert await d.stop() == 0, d.log


@pytest.mark.asyncio
async def test_daemon_refuses_to_start_while_the_bench_runs(tmp_path):
    cfg = write_config(tmp_path, SIM)
    tried = asyncio.Event()
    outcome: dict[str, object] = {}

    class Waits(SimTechnician):
        async def before_pulse(self, comp, manual):
            if not tried.is_set():  # the bench holds the hardware now: try to start the service
                async with daemon(cfg.path) as d:
                    outcome.update(rc=await asyncio.wait_for(d.proc.wait(), 60), log=d.log)
                tried.set()
            await super().before_pulse(comp, manual)

    r = await Bench(cfg, Waits(), BenchOptions(**(QUICK | {"compartments": ("d01",)}))).run()
    assert outcome["rc"] == 1, outcome["log"]
    assert "not starting" in outcome["log"] and "in use by the bench harness" in outcome["log"]
    assert next(c for c in r.compartments if c.id == "d01").status == PASS
    async with daemon(cfg.path) as d:  # the bench is done: the service starts
        assert d.proc.returncode is None, d.log
        assert await d.stop() == 0, d.log


# -- the station broker ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_broker_connection_reported_for_each_configured_broker(tmp_path, mosquitto: Mosquitto):
    dead = free_port()
    text = SIM + f'[station]\nbrokers = ["127.0.0.1:{mosquitto.port}", "127.0.0.1:{dead}"]\n'
    cfg = write_config(tmp_path, text)
    r = await Bench(cfg, SimTechnician(), BenchOptions(**(QUICK | {"compartments": ("d01",)}))).run()
    good, bad = r.brokers
    assert good.ok and good.broker == f"127.0.0.1:{mosquitto.port}" and 0 < good.latency_ms < 5000
    assert not bad.ok and "cannot connect" in bad.error
    assert r.finding_keys() == {("broker-unreachable", f"127.0.0.1:{dead}")}
    # The bench used its own client id, never the daemon's (which would take the daemon's queued commands).
    assert "lockerd-test-site-node-1-bench" in mosquitto.log_text()
    assert not re.search(r"client id lockerd-test-site-node-1[^-]", mosquitto.log_text())


# -- the report ---------------------------------------------------------------------------------------------

CHROMIUM = "/usr/bin/chromium"


def chromium(tmp_path: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", *args, page.as_uri()],
        capture_output=True, text=True, timeout=90)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium not installed (scripts/setup installs it)")
@pytest.mark.asyncio
async def test_html_report_rendered_in_headless_chromium_shows_the_grid(tmp_path):
    bench = await run_sim(tmp_path, {("compartment", "d01"): lambda b: b.hw.drivers["sim-d"].jam(6)})
    js, page = bench.report.write(tmp_path / "report")
    assert json.loads(js.read_text())["passed"] is False
    html = page.read_text()
    assert not re.search(r"<script|<link|src=|href=|url\(|https?://", html)  # self-contained: no asset to fetch

    dom = chromium(tmp_path, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    cells = {cid: status for status, cid in re.findall(r'<div class="cell (pass|fail|untested)" id="cell-([a-z0-9-]+)"',
                                                       dom.stdout)}
    expected = {c.id: c.status for c in bench.report.compartments}
    assert cells == expected
    assert {c for c, s in cells.items() if s == "fail"} == {"d03", "d06", "d07"}
    assert 'id="cabinet-d"' in dom.stdout and 'id="cabinet-e"' in dom.stdout
    assert re.search(r'id="verdict">FAIL: 2 findings', dom.stdout)
    assert dom.stdout.count('<rect class="bar"') == 12  # the pulse-to-open histogram drew its bins

    shot = tmp_path / "report.png"
    r = chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1280,1000")
    assert r.returncode == 0, r.stderr
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    assert render_html(bench.report) == html  # rendering is deterministic


# -- the command ----------------------------------------------------------------------------------------------


def test_command_on_a_clean_sim_cabinet_passes_and_writes_both_reports(tmp_path):
    cfg = write_config(tmp_path, SIM.replace("crossed = [2, 5]\n", ""))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "lockerd.hil.cli", "-c", str(cfg.path), "--non-interactive",
                        "--rows", "d=2", "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS: 12 compartment(s) tested" in r.stdout
    report = json.loads((out / "bench.json").read_text())
    assert report["passed"] and report["layout"]["d"]["rows"] == 2
    assert {c["status"] for c in report["compartments"]} == {"pass"}
    assert (out / "bench.html").read_text().startswith("<!DOCTYPE html>")
    bad = subprocess.run([sys.executable, "-m", "lockerd.hil.cli", "-c", str(cfg.path), "--only", "zz99"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no compartment zz99" in bad.stderr


@pytest.mark.asyncio
async def test_command_asks_the_technician_whether_a_silent_door_opened(tmp_path):
    """Attended run on Modbus boards: the two prompts are answered on stdin, y for m03 and n for m07."""
    async with door_boards(tmp_path) as boards:
        boards.a.dead_sensors.add((1, 2))
        boards.a.dead_locks.add((1, 6))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "lockerd.hil.cli", "-c", str(boards.cfg.path), "--doors", "spring",
            "--only", "m01", "m03", "m07", "--requests", "5", "--close-timeout", "2", "-o", str(tmp_path / "out"),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(b"y\nn\n"), 60)
        finally:
            await reap(proc)
        text = out.decode()
        assert proc.returncode == 1, text + err.decode()
        assert "Compartment m03: no door sensor changed. Did its door open? [y/n]" in text
        assert "Compartment m07: no door sensor changed. Did its door open? [y/n]" in text
        report = json.loads((tmp_path / "out" / "bench.json").read_text())
        assert {(f["kind"], f["subject"]) for f in report["findings"]} == {("sensor-dead", "m03"),
                                                                          ("lock-not-released", "m07")}
        assert [c["id"] for c in report["compartments"] if c["status"] == "pass"] == ["m01"]
        assert "FAULT  m03" in text and "FAIL (2 findings)" in text
