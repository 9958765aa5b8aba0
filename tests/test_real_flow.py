"""The scan-to-open flow over the real drivers, not the simulator.

A serial scanner on a socat pty pair (the test writes scans as a scanner
does: AIM prefix, CRLF), a relay board served by pymodbus over RTU on a pty
pair, another over TCP on loopback, and a GPIO board on gpiozero's mock
pins. A person is modelled at each door: pulling opens it only while its
latch is released (coil or pin energised), pushing shuts it. Time that the
controller measures (pulse length, debounce, deadlines) runs on a
ManualClock; the buses and polls run in real time, as on a cabinet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from lockerd.drivers.base import DoorState, Scan
from lockerd.drivers.gpio import GpioBoard
from lockerd.drivers.modbus import ModbusBoard
from modbus_peer import PtyPair, RelayPeer
from ptys import SocatPair
from pymodbus.constants import ExcCodes
from rig import Rig, close_rig, make_rig

from lockerd.clock import ManualClock
from lockerd.opening import Outcome

pytestmark = pytest.mark.asyncio

WAIT = 5.0  # bound for a condition on a busy 2-core machine

TOML = """
[controller]
site = "test-site"
node = "node-1"
[journal]
path = "journal.db"
[timing]
pulse_ms = 500
open_timeout_s = 10
debounce_ms = 0
[power]
max_energised = 2
max_wait_s = 2
[buses.line]
type = "rtu"
device = "{rtu_device}"
baudrate = 115200
timeout_ms = 100
retries = 1
frame_gap_ms = 1
[buses.gw]
type = "tcp"
host = "127.0.0.1"
port = {tcp_port}
timeout_ms = 100
retries = 1
[drivers.rtu-board]
type = "modbus"
bus = "line"
unit = 1
coils = 4
inputs = 4
poll_hz = 50
[drivers.tcp-board]
type = "modbus"
bus = "gw"
unit = 1
coils = 4
inputs = 4
poll_hz = 50
[drivers.pins]
type = "gpio"
pin_factory = "mock"
locks = [17, 27]
sensors = [5, 6]
pull_up = false
bounce_ms = 0
[cabinets.r]
kind = "dossier"
lock_driver = "rtu-board"
count = 4
[cabinets.t]
kind = "dossier"
lock_driver = "tcp-board"
count = 4
[cabinets.g]
kind = "dossier"
lock_driver = "pins"
[[cabinets.g.compartments]]
id = "g1"
lock = 17
sensor = 5
[[cabinets.g.compartments]]
id = "g2"
lock = 27
sensor = 6
[scanners.front]
type = "serial"
port = "{scanner_port}"
aim = true
cabinets = ["r", "t", "g"]
debounce_ms = 0
"""

DATA = {
    "people": [{"id": "berg", "name": "Anna Berg", "role": "officer"}],
    "badges": [],
    "items": [
        {"code": code, "kind": "dossier", "case_name": f"Case {code}", "category": "fraud", "officer": "berg",
         "compartment": comp}
        for code, comp in [("D-R1", "r01"), ("D-R2", "r02"), ("D-T1", "t01"), ("D-G1", "g1")]
    ],
}


class ModbusDoor:
    """A person at a door wired to a relay board: the input follows the door."""

    def __init__(self, peer: RelayPeer, unit: int, channel: int):
        self.peer, self.unit, self.channel = peer, unit, channel

    async def latch_released(self) -> bool:
        return (await self.peer.coils_of(self.unit))[self.channel]

    async def pull(self) -> bool:
        return await self.peer.pull(self.unit, self.channel)

    async def shut(self) -> None:
        await self.peer.shut(self.unit, self.channel)


class GpioDoor:
    """A person at a door wired to the board's own pins (relay on ``lock``, reed switch on ``sensor``)."""

    def __init__(self, board: GpioBoard, lock: int, sensor: int):
        self.factory, self.lock, self.sensor = board.factory, lock, sensor

    async def latch_released(self) -> bool:
        return bool(self.factory.pin(self.lock).state)

    async def pull(self) -> bool:
        if not await self.latch_released():
            return False
        self.factory.pin(self.sensor).drive_high()
        return True

    async def shut(self) -> None:
        self.factory.pin(self.sensor).drive_low()


@dataclass
class Station:
    """The controller on real drivers and the peers standing in for the hardware."""

    rig: Rig
    scanner: SocatPair
    rtu: RelayPeer
    tcp: RelayPeer
    rtu_pty: PtyPair
    outcomes: asyncio.Queue
    changed: asyncio.Event

    @property
    def c(self):
        return self.rig.c

    def door(self, compartment: str) -> ModbusDoor | GpioDoor:
        cfg = self.c.slots[compartment].cfg
        if cfg.lock_driver == "pins":
            return GpioDoor(self.rig.hw.drivers["pins"], cfg.lock, cfg.sensor)
        return ModbusDoor(self.rtu if cfg.lock_driver == "rtu-board" else self.tcp, 1, cfg.lock)

    async def scan(self, data: bytes) -> Outcome:
        """Bytes from the scanner, as it sends them; the controller's answer to them."""
        self.scanner.write_now(data)
        _scan, outcome = await asyncio.wait_for(self.outcomes.get(), WAIT)
        return outcome

    async def until(self, cond: Callable[[], bool], what: str) -> None:
        """Wait until ``cond()`` holds; checked after every compartment change the controller reports."""
        async with asyncio.timeout(WAIT):
            while not cond():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    # Door changes come from polls in real time; the controller reports each.
                    await asyncio.wait_for(self.changed.wait(), 0.5)
        assert cond(), what

    async def end_pulses(self) -> None:
        """Let the pulses' length pass and wait until every relay's off-write was answered."""
        await self.rig.clock.advance(self.rig.cfg.timing.pulse_ms / 1000)
        banks = [self.rig.hw.lock_bank(name) for name in ("rtu-board", "tcp-board", "pins")]
        await self.until(lambda: not any(b.energised for b in banks), "every pulse over")

    async def kinds(self, after: int, compartment: str) -> list[str]:
        return await self.rig.kinds(after, compartment)

    async def relays_all_off(self) -> bool:
        pins = self.rig.hw.drivers["pins"]
        return (await self.rtu.coils_of(1) == [False] * 16 and await self.tcp.coils_of(1) == [False] * 16
                and not any(pins.factory.pin(p).state for p in (17, 27)))


async def open_station(folder: Path, **ports: str) -> Station:
    """Start the peers and the controller; ``ports`` may name a missing rtu_device or scanner_port."""
    scanner = SocatPair(folder, "scanner").start()
    rtu_pty = PtyPair(folder).start()
    rtu, tcp = RelayPeer([1]), RelayPeer([1])
    await rtu.start_rtu(rtu_pty.b)
    port = await tcp.start_tcp()
    names = {"rtu_device": rtu_pty.a, "tcp_port": str(port), "scanner_port": str(scanner.device)} | ports
    rig = await make_rig(folder, TOML.format(**names), DATA, ManualClock())
    for d in rig.hw.drivers.values():
        if isinstance(d, ModbusBoard):
            d.offline_retry_first_s, d.offline_retry_max_s = 0.1, 0.3  # keep recovery quick
    outcomes: asyncio.Queue[tuple[Scan, Outcome]] = asyncio.Queue()
    changed = asyncio.Event()
    rig.c.on_outcome(lambda scan, outcome: outcomes.put_nowait((scan, outcome)))
    rig.c.on_state(lambda _state: changed.set())
    station = Station(rig, scanner, rtu, tcp, rtu_pty, outcomes, changed)
    hw = rig.hw
    await station.until(lambda: all(s.door is DoorState.CLOSED for s in rig.c.slots.values()
                                     if hw.drivers[s.cfg.sensor_driver].online), "every door read at start")
    return station


async def close_station(s: Station) -> None:
    await close_rig(s.rig)
    await s.rtu.stop()
    await s.tcp.stop()
    s.rtu_pty.stop()
    s.scanner.stop()


@pytest_asyncio.fixture
async def station(tmp_path):
    s = await open_station(tmp_path)
    yield s
    await close_station(s)


# -- the flow ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "comp"), [("D-R1", "r01"), ("D-T1", "t01"), ("D-G1", "g1")],
                         ids=["modbus-rtu", "modbus-tcp", "gpio"])
async def test_scan_pulse_open_close_over_real_drivers(station, code, comp):
    rig, door, slot = station.rig, station.door(comp), station.c.slots[comp]
    start = rig.journal.last_seq
    out = await station.scan(b"]C1" + code.encode() + b"\r\n")
    assert out.accepted and out.pulsed and out.compartment == comp
    assert await door.latch_released()  # pulse() returned: the relay is energised now
    assert await door.pull()
    await station.until(lambda: slot.door is DoorState.OPEN, f"{comp} seen open")
    await station.end_pulses()
    assert not await door.latch_released()
    await door.shut()
    await station.until(lambda: slot.door is DoorState.CLOSED, f"{comp} seen closed")
    await rig.flush()
    assert await station.kinds(start, comp) == ["scan", "access.granted", "lock.pulsed", "door.opened",
                                                 "door.closed", "dossier.deposited"]
    scan = (await rig.events(start))[0]
    assert (scan.data["code"], scan.data["symbology"]) == (code, "C1")
    assert rig.c.registry.items[code].state == "in"
    assert await station.relays_all_off()


async def test_a_door_nobody_pulls_stays_shut_and_is_journaled(station):
    rig, slot = station.rig, station.c.slots["r02"]
    start = rig.journal.last_seq
    assert (await station.scan(b"]C1D-R2\r\n")).pulsed
    await station.end_pulses()
    assert not await station.door("r02").pull()  # the latch is closed again: the door does not give
    await rig.clock.advance(10)
    await rig.flush()
    assert await station.kinds(start, "r02") == ["scan", "access.granted", "lock.pulsed", "door.not_opened"]
    assert slot.door is DoorState.CLOSED
    assert await station.relays_all_off()


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "reason"), [
    (b"D-R1\r\n", "no AIM symbology identifier"),
    (b"]C1AB\x07CD\r\n", "control character"),
    (b"]C1\xff\xfeD-R1\r\n", "UTF-8"),
    (b"]C1" + b"X" * 300 + b"\r\n", "too long"),
    (b"]C1NOT-A-DOSSIER\r\n", "unknown code"),
], ids=["no-aim", "control", "not-utf8", "overlong", "unknown"])
async def test_garbage_scans_are_refused_and_move_no_relay(station, raw, reason):
    rig = station.rig
    start = rig.journal.last_seq
    writes = (station.rtu.count(1, 5), station.tcp.count(1, 5))
    out = await station.scan(raw)
    assert not out.accepted and reason in out.message
    await rig.flush()
    events = await rig.events(start)
    assert [e.kind for e in events] == ["scan", "access.denied"]
    assert reason in events[1].data["reason"]
    assert (station.rtu.count(1, 5), station.tcp.count(1, 5)) == writes
    assert await station.relays_all_off()
    # The scanner's framing is in step again: the next good scan opens.
    assert (await station.scan(b"]C1D-T1\r\n")).pulsed


async def test_a_modbus_exception_reply_faults_the_compartment_and_energises_nothing(station):
    rig, peer = station.rig, station.rtu
    board = rig.hw.lock_bank("rtu-board")
    peer.refuse[(1, 5)] = ExcCodes.DEVICE_BUSY  # the board refuses every coil write
    start, logged = rig.journal.last_seq, len(peer.log)
    out = await station.scan(b"]C1D-R1\r\n")
    assert not out.accepted and "Modbus exception 6 (device busy)" in out.message
    await rig.flush()
    kinds = await station.kinds(start, "r01")
    assert kinds[:2] == ["scan", "access.granted"] and sorted(kinds[2:]) == ["compartment.fault", "lock.failed"]
    failed = next(e for e in await rig.events(start) if e.kind == "lock.failed")
    assert "refused with Modbus exception 6" in failed.data["error"]
    ons = [e for e in peer.log[logged:] if e[2] == 5 and e[4] == 0xFF00]
    assert len(ons) == 1  # an exception is an answer: the on-write is not retried (an off follows, to be sure)
    assert board.online and board.budget.in_use == 0
    assert await station.relays_all_off()
    # In fault until a technician clears it; the board's other compartments still open.
    peer.refuse.clear()
    assert "in fault" in (await station.scan(b"]C1D-R1\r\n")).message
    assert (await station.scan(b"]C1D-R2\r\n")).pulsed


async def test_a_board_that_stops_answering_mid_flow(station):
    rig, peer = station.rig, station.rtu
    r01, t01 = station.c.slots["r01"], station.c.slots["t01"]
    start = rig.journal.last_seq
    assert (await station.scan(b"]C1D-R1\r\n")).pulsed
    assert await station.door("r01").pull()
    await station.until(lambda: r01.door is DoorState.OPEN, "r01 open")
    await station.end_pulses()
    # The RTU board goes silent with the door open (its replies no longer reach the line).
    peer.lose_replies.add(1)
    await station.until(lambda: all("lock" in station.c.slots[f"r0{i}"].faults for i in range(1, 5)),
                        "every compartment of the silent board in fault")
    assert r01.door is DoorState.UNKNOWN
    offline = [e for e in await rig.events(start) if e.kind == "driver.offline"]
    assert [e.data["driver"] for e in offline] == ["rtu-board"] and "no answer" in offline[0].data["detail"]
    assert "in fault" in (await station.scan(b"]C1D-R2\r\n")).message
    # The daemon keeps serving the other board meanwhile.
    t_start = rig.journal.last_seq
    assert (await station.scan(b"]C1D-T1\r\n")).pulsed
    assert await station.door("t01").pull()
    await station.until(lambda: t01.door is DoorState.OPEN, "t01 open")
    await station.end_pulses()
    await station.door("t01").shut()
    await station.until(lambda: t01.door is DoorState.CLOSED, "t01 closed")
    assert (await station.kinds(t_start, "t01"))[-1] == "dossier.deposited"
    # The person shut r01 while its board was silent; the board answers again.
    await peer.shut(1, 0)
    peer.lose_replies.discard(1)
    await station.until(lambda: r01.door is DoorState.CLOSED and not r01.faults, "r01 back, closed, no fault")
    await rig.flush()
    kinds = await station.kinds(start, "r01")
    assert kinds[:4] == ["scan", "access.granted", "lock.pulsed", "door.opened"]
    assert kinds[-2:] == ["door.closed", "dossier.deposited"]  # the opening survived the outage
    assert "door.unknown" in kinds
    assert rig.c.registry.items["D-R1"].state == "in"
    assert [e.data["driver"] for e in await rig.events(start) if e.kind == "driver.online"] == ["rtu-board"]
    assert await station.relays_all_off()


async def test_config_naming_ports_that_do_not_exist(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    gone = tmp_path / "ttyUSB-gone"
    # The one scanner's port is missing, and so is the RS-485 adapter; the daemon starts all the same.
    s = await open_station(tmp_path, rtu_device=str(gone))
    try:
        rig = s.rig
        bus_events = [e for e in await rig.events(0) if e.kind == "driver.offline"]
        assert [e.data["driver"] for e in bus_events] == ["rtu-board"]
        assert f"port {gone} does not exist" in bus_events[0].data["detail"]
        assert all("lock" in rig.c.slots[f"r0{i}"].faults for i in range(1, 5))
        assert any(str(gone) in r.getMessage() and "does not exist" in r.getMessage() for r in caplog.records)
        # The boards on the other bus and the pins still open.
        assert (await s.scan(b"]C1D-T1\r\n")).pulsed
        assert (await s.scan(b"]C1D-G1\r\n")).pulsed
        assert "in fault" in (await s.scan(b"]C1D-R1\r\n")).message
    finally:
        await close_station(s)


async def test_a_scanner_port_that_does_not_exist(tmp_path, caplog):
    gone = tmp_path / "ttyACM-gone"
    s = await open_station(tmp_path, scanner_port=str(gone))
    try:
        rig = s.rig
        offline = [e for e in await rig.events(0) if e.kind == "driver.offline"]
        assert [e.data["driver"] for e in offline] == ["front"]
        assert f"port {gone} does not exist" in offline[0].data["detail"]
        assert "[scanners.front].port" in offline[0].data["detail"]
        assert any(str(gone) in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
        # The daemon runs on: the station can still open a compartment, and the doors are watched.
        out = await rig.c.remote_open("t01", "scanner broken", {"command_id": "cmd-1", "requested_by": "berg"})
        assert out.pulsed
        assert await s.door("t01").pull()
        await s.until(lambda: rig.c.slots["t01"].door is DoorState.OPEN, "t01 open")
    finally:
        await close_station(s)


async def test_a_slow_board_makes_an_unconfirmed_opening_not_a_refusal_and_not_a_forced_door(station):
    rig, peer, slot = station.rig, station.tcp, station.c.slots["t01"]
    start = rig.journal.last_seq
    peer.delay[(1, 5)] = 0.25  # the board switches the relay, but answers after our 100 ms timeout
    peer.spring_close_s = 0.3  # a door that opens as its latch releases (the person is already pulling)
    out = await station.scan(b"]C1D-T1\r\n")
    assert out.accepted and not out.pulsed
    assert out.message.startswith("opening t01, not confirmed by the board") and "pull the door" in out.message
    # The late on-write does release the latch: the door springs open, and shuts a while after the off-write.
    await station.until(lambda: slot.door is DoorState.OPEN, "t01 seen open")
    peer.delay.pop((1, 5))
    await station.end_pulses()
    await station.until(lambda: slot.door is DoorState.CLOSED, "t01 seen closed")
    await rig.flush()
    kinds = await station.kinds(start, "t01")
    # Told the truth, in a handful of events: unconfirmed (not "refused", no lock.failed), the relay that may
    # still be on is a fault until the off-write is confirmed, the opening is the grant's (not forced), the
    # deposit is recorded, and one unanswered write does not take the board (and its doors) offline.
    # (The door may open before the controller has journaled the unanswered write: both are true.)
    assert kinds[:2] == ["scan", "access.granted"] and kinds[-2:] == ["door.closed", "dossier.deposited"]
    assert sorted(kinds[2:-2]) == ["compartment.fault", "compartment.fault_cleared", "door.opened", "lock.unconfirmed"]
    opened = next(e for e in await rig.events(start) if e.kind == "door.opened")
    assert opened.data["granted"] is True
    assert rig.c.registry.items["D-T1"].state == "in"
    assert await station.relays_all_off()
