"""The bench run: every board, compartment, scanner and the broker, checked on the real hardware.

The bench builds the hardware from the daemon's own config with the
daemon's own drivers (so it proves what the service will drive), after
taking the hardware lock the daemon also takes. Then:

1. each Modbus board answers N reads (answer rate and latency);
2. each compartment's lock is pulsed while every door sensor of every board
   is watched, for the whole run: the expected sensor must open and no
   other. When another one opens, the lock is pulsed once more before it is
   blamed (a forced door, a key or a person may have opened that one): a
   lock that opens another compartment's door both times is wrong wiring,
   and two that open each other's are a crossed pair, named with both
   channels; nothing moving is a lock that does not release or a dead sensor
   (the technician tells which); a relay that does not switch off is
   reported at once, with the board whose power must be cut. A door that
   opens with no pulse to explain it is reported as such;
3. each scanner reads the test card, within a timeout;
4. each configured station broker accepts a connection.

Whatever happens (a fault, an exception, Ctrl-C), every lock bank is
switched off before the bench lets go of the hardware.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from lockerd.drivers.base import DoorChange, DoorSensors, DoorState, DriverStatus, LockBank, Scan
from lockerd.hil.broker_probe import probe_broker
from lockerd.hil.findings import conclude
from lockerd.hil.options import BenchOptions, default_rows
from lockerd.hil.report import FAIL, PASS, BoardResult, BrokerResult, CompartmentResult, Report, ScannerResult
from lockerd.hil.technician import Technician

from lockerd.clock import Clock
from lockerd.config import Compartment, Config
from lockerd.errors import DriverError
from lockerd.hardware import Hardware, build_hardware
from lockerd.hwlock import HardwareLock, hardware_lock_path

log = logging.getLogger(__name__)


class Bench:
    """One bench run over the hardware a config describes."""

    def __init__(self, config: Config, technician: Technician, options: BenchOptions | None = None,
                 clock: Clock | None = None, progress: Callable[[str, str], Any] | None = None):
        self.config = config
        self.tech = technician
        self.opt = options or BenchOptions()
        self.clock = clock or Clock()
        self.progress = progress  # progress(stage, subject): tests hook faults into the run here
        self.pulse_ms = self.opt.pulse_ms or config.timing.pulse_ms
        self.open_timeout_s = self.opt.open_timeout_s or config.timing.open_timeout_s
        self.hw: Hardware | None = None
        self.report = Report(config=str(config.path), site=config.site, node=config.node, started=_now())
        self._changes: list[DoorChange] = []  # every sensor's changes, for the whole run
        self._during: list[str] = []  # for each change, the step the bench was at
        self._explained: set[int] = set()  # the changes a pulse's verdict accounts for
        self._initial: dict[tuple[str, int], DoorState] = {}  # each sensor as the run began
        self._at = "before the first test"
        self._changed = asyncio.Event()
        self._watchers: list[asyncio.Task] = []
        self._offline: dict[str, str] = {}  # driver -> detail, for every driver seen offline
        self._lock_faults: dict[tuple[str, int], str] = {}  # (driver, channel) -> detail, while faulted

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> Report:
        """Run every check and return the report; the hardware is left switched off."""
        lock = HardwareLock(hardware_lock_path(self.config), "the bench harness (lockerd-hil)")
        lock.acquire()  # raises HardwareBusy while the service runs
        try:
            self.hw = build_hardware(self.config, self.clock)
            self.tech.attach(self.hw)
            for d in self.hw.all():
                d.on_status(self._status)
                if isinstance(d, LockBank):
                    d.on_lock_fault(lambda ch, detail, name=d.name: self._lock_fault(name, ch, detail))
            self.report.options = {"pulse_ms": self.pulse_ms, "open_timeout_s": self.open_timeout_s,
                                   "doors": self.opt.doors, "modbus_requests": self.opt.modbus_requests,
                                   "interactive": self.tech.interactive}
            try:
                await self.hw.start()  # every lock bank switches all its outputs off first
                await self._watch_doors()
                if not self.opt.skip_boards:
                    await self._boards()
                await self._compartments()
                if not self.opt.skip_scanners:
                    await self._scanners()
                if not self.opt.skip_broker:
                    await self._brokers()
            except (Exception, asyncio.CancelledError, KeyboardInterrupt) as e:
                self.report.interrupted = type(e).__name__ + (f": {e}" if str(e) else "")
                raise
            finally:
                await self._shutdown()
                # Also when interrupted: what was tested keeps its verdict in the partial report.
                self._conclude()
        finally:
            lock.release()
        return self.report

    async def _shutdown(self) -> None:
        """Every relay off and every device closed, whatever state the run ended in."""
        assert self.hw is not None
        for t in self._watchers:
            t.cancel()
        for d in self.hw.drivers.values():
            if isinstance(d, LockBank):
                try:
                    await asyncio.wait_for(d.all_off(), 5.0)
                except (DriverError, TimeoutError) as e:
                    # A board offline or silent: e says which; a traceback adds nothing.
                    log.error("%s: switching every relay off failed: %s", d.name, e)  # noqa: TRY400
        await self.hw.close()
        self.report.finished = _now()

    def _step(self, stage: str, subject: str) -> None:
        if stage != "pulsed":
            self._at = f"during the {stage} check of {subject}"
        if self.progress is not None:
            self.progress(stage, subject)

    # -- events from the drivers ----------------------------------------------------------

    def _status(self, s: DriverStatus) -> None:
        # Boards only: a bus reports itself through its boards, a scanner in its own check.
        if not s.online and s.driver in self.config.drivers:
            self._offline.setdefault(s.driver, s.detail)

    def _lock_fault(self, driver: str, channel: int, detail: str | None) -> None:
        if detail is None:
            self._lock_faults.pop((driver, channel), None)
        else:
            self._lock_faults[(driver, channel)] = detail

    async def _watch_doors(self) -> None:
        assert self.hw is not None
        names = {c.sensor_driver for c in self.config.compartments.values()}
        self._initial = {(c.sensor_driver, c.sensor): self.hw.sensors(c.sensor_driver).door(c.sensor)
                         for c in self.config.compartments.values()}
        for name in sorted(names):
            self._watchers.append(asyncio.create_task(self._watch(self.hw.sensors(name)), name=f"bench-{name}"))
        await asyncio.sleep(0)  # let each watcher subscribe before the first pulse

    async def _watch(self, sensors: DoorSensors) -> None:
        async for change in sensors.door_changes():
            self._changes.append(change)
            self._during.append(self._at)
            self._changed.set()

    async def _until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds after a door change, or ``timeout_s`` passes."""
        try:
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            return predicate()
        return True

    # -- Modbus boards ----------------------------------------------------------------------

    async def _boards(self) -> None:
        assert self.hw is not None
        from lockerd.drivers.modbus import DriverRefused, ModbusBoard

        for board in self.hw.drivers.values():
            if not isinstance(board, ModbusBoard):
                continue
            self._step("board", board.name)
            self.tech.say(f"Board {board.name}: {self.opt.modbus_requests} reads")
            res = BoardResult(board.name, board.bus.name, board.unit)
            # The board's own poll request: the bench measures what the service will see.
            send, check = board.poll_send(), board.poll_check()
            silent_run = 0
            for _ in range(self.opt.modbus_requests):
                res.requests += 1
                t0 = time.perf_counter()
                try:
                    await board.bus.call(board, "bench read", send, check, attempts=1)
                except DriverRefused as e:
                    res.refused += 1
                    res.error = str(e)
                    silent_run = 0
                    continue
                except DriverError as e:
                    res.silent += 1
                    res.error = str(e)
                    silent_run += 1
                    if silent_run >= self.opt.modbus_give_up_after and res.answered == 0:
                        break  # a board that never answered is gone: do not spend minutes on it
                    continue
                res.latencies_ms.append((time.perf_counter() - t0) * 1000)
                res.answered += 1
                silent_run = 0
            self._late(board, res)
            self.report.boards.append(res)

    @staticmethod
    def _late(board: Any, res: BoardResult) -> None:
        """How late the board answers, if the bus's client saw it answer after the timeout."""
        from lockerd.drivers.modbus_line import late_ms
        from lockerd.drivers.modbus_rtu import RtuClient

        client = board.bus.client
        if not isinstance(client, RtuClient):
            return
        late = [after for (unit, _fc), after in client.late.late_s.items() if unit == board.unit]
        if late:
            res.late_ms, res.timeout_ms = late_ms(max(late)), round(client.timeout_s * 1000)

    # -- compartments ---------------------------------------------------------------------

    def _manual(self, comp: Compartment) -> bool:
        """Must a person pull this door open (no spring)?"""
        if self.opt.doors in ("spring", "manual"):
            return self.opt.doors == "manual"
        sec = self.config.drivers[comp.lock_driver]
        if sec.type == "sim":
            return not sec["spring"]
        return self.tech.interactive

    async def _compartments(self) -> None:
        chosen = set(self.opt.compartments)
        for cab in self.config.cabinets.values():
            ids = list(cab.compartments)
            rows = (self.opt.rows or {}).get(cab.id) or default_rows(len(ids))
            self.report.layout[cab.id] = {"rows": rows, "compartments": ids}
            for cid in ids:
                comp = self.config.compartments[cid]
                res = CompartmentResult(cid, cab.id, comp.lock_driver, comp.lock, comp.sensor_driver, comp.sensor)
                self.report.compartments.append(res)
                if chosen and cid not in chosen:
                    res.note = "not selected"
                    continue
                self._step("compartment", cid)
                await self._compartment(comp, res)

    async def _compartment(self, comp: Compartment, res: CompartmentResult) -> None:
        assert self.hw is not None
        bank = self.hw.lock_bank(comp.lock_driver)
        sensors = self.hw.sensors(comp.sensor_driver)
        if not await self._ready(comp, res, bank, sensors):
            return
        manual = self._manual(comp)
        res.doors = "manual" if manual else "spring"
        expected = (comp.sensor_driver, comp.sensor)
        self.tech.say(f"Compartment {comp.id}: pulsing lock {comp.lock_driver}:{comp.lock}")
        window = await self._pulse_and_watch(comp, res, bank, manual)
        if window is None:
            return
        moved = window[2]
        if moved and moved != [expected] and bank.online and sensors.online:
            # One pulse is not enough to blame a wire: a forced door, a key or a person may have opened the
            # other door meanwhile. Shut them and pulse once more; the second pulse's doors are the lock's.
            first = window
            if not await self._closed(comp, res, moved):
                return
            self.tech.say(f"Compartment {comp.id}: another door moved; pulsing its lock once more")
            window = await self._pulse_and_watch(comp, res, bank, manual)
            if window is None:
                return
            moved = window[2]
            self._explain(first[0], first[1], moved)
        self._explain(window[0], window[1], moved)

        if not bank.online or not sensors.online:
            gone = bank if not bank.online else sensors
            res.note = f"{gone.name} offline"
            self._offline.setdefault(gone.name, gone.detail)
            return
        if not moved:
            saw = await self.tech.saw_open(comp)
            res.problems.append({True: "sensor-dead", False: "lock-not-released", None: "no-change"}[saw])
        elif expected not in moved:
            res.problems.append("wrong-sensor")
        elif len(moved) > 1:
            res.problems.append("extra-sensor")
        if moved:
            await self._closed(comp, res, moved)

    async def _pulse_and_watch(self, comp: Compartment, res: CompartmentResult, bank: LockBank,
                               manual: bool) -> tuple[int, int, list[tuple[str, int]]] | None:
        """One pulse: (first and past-last index of the changes it watched, the sensors that opened), or
        None when the bank would not pulse. A relay that stays on is in ``res``."""
        await self.tech.before_pulse(comp, manual)
        mark = len(self._changes)
        t0 = self.clock.monotonic()
        if not await self._pulse(comp, res, bank):
            return None
        self._step("pulsed", comp.id)
        moved = await self._opened_after(comp, res, mark, t0)
        end = len(self._changes)
        # The pulse must end: a relay that stays on burns the solenoid. The bank
        # reports a failed switch-off at once; do not wait out its retries.
        if await self._pulse_stuck(bank, comp) and "relay-stuck" not in res.problems:
            res.problems.append("relay-stuck")
        return mark, end, moved

    def _explain(self, start: int, end: int, moved: list[tuple[str, int]]) -> None:
        """The openings of ``moved`` sensors among changes ``start:end`` are the pulse's doing."""
        self._explained.update(i for i in range(start, end) if (self._changes[i].driver, self._changes[i].channel)
                               in moved)

    async def _closed(self, comp: Compartment, res: CompartmentResult, moved: list[tuple[str, int]]) -> bool:
        """Have the doors that moved shut again; False (the reason in ``res``) if one does not.

        A board that goes offline meanwhile cannot say, and is reported as such, not as a door left open.
        """
        assert self.hw is not None
        hw = self.hw
        await self.tech.close_door(comp)
        shut = await self._until(lambda: all(hw.sensors(d).door(ch) is DoorState.CLOSED for d, ch in moved)
                                 or any(not hw.sensors(d).online for d, _ in moved), self.opt.close_timeout_s)
        gone = next((hw.sensors(d) for d, _ in moved if not hw.sensors(d).online), None)
        if gone is not None:
            res.note = f"{gone.name} offline"
            self._offline.setdefault(gone.name, gone.detail)
            return False
        res.closed = shut
        if not shut:
            res.problems.append("not-closed")
        return shut

    async def _ready(self, comp: Compartment, res: CompartmentResult, bank: LockBank, sensors: DoorSensors) -> bool:
        """Are the lock's bank and the door's sensor online, and the door shut? If not, why is in ``res``."""
        for d in {bank, sensors}:
            if not d.online:
                res.note = f"{d.name} offline"
                self._offline.setdefault(d.name, d.detail)
                return False
        before = sensors.door(comp.sensor)
        if before is DoorState.UNKNOWN:
            res.problems.append("sensor-unknown")
            res.note = "door sensor unreadable"
            return False
        if before is DoorState.OPEN:
            await self.tech.close_door(comp)
            if not await self._until(lambda: sensors.door(comp.sensor) is DoorState.CLOSED, self.opt.close_timeout_s):
                res.problems.append("open-before")
                return False
        return True

    async def _pulse(self, comp: Compartment, res: CompartmentResult, bank: LockBank) -> bool:
        """Pulse the compartment's lock; False, with the reason in ``res``, if the bank would not."""
        try:
            await bank.pulse(comp.lock, self.pulse_ms)
        except DriverError as e:
            if not bank.online:
                res.note = f"{bank.name} offline"
                self._offline.setdefault(bank.name, str(e))
            else:
                res.problems.append("pulse-failed")
                res.note = str(e)
            return False
        return True

    async def _opened_after(self, comp: Compartment, res: CompartmentResult, mark: int,
                            t0: float) -> list[tuple[str, int]]:
        """Every sensor that opened after the pulse, once the expected one has (or the wait ran out)."""
        expected = (comp.sensor_driver, comp.sensor)

        def opened() -> list[DoorChange]:
            return [c for c in self._changes[mark:] if c.state is DoorState.OPEN]

        got = await self._until(lambda: any((c.driver, c.channel) == expected for c in opened()),
                                self.open_timeout_s)
        if got or opened():
            await asyncio.sleep(self.opt.settle_s)  # a while for other sensors to move too, if they will
        moved = list(dict.fromkeys((c.driver, c.channel) for c in opened()))
        res.moved = [f"{d}:{ch}" for d, ch in moved]
        first = next((c for c in opened() if (c.driver, c.channel) == expected), None)
        if first is not None:
            res.open_ms = round((first.at - t0) * 1000, 3)
        return moved

    async def _pulse_stuck(self, bank: LockBank, comp: Compartment) -> bool:
        """Wait for this lock's pulse to end; True if its relay did not switch off."""
        key = (comp.lock_driver, comp.lock)
        deadline = self.clock.monotonic() + self.pulse_ms / 1000 + 2.0
        # The bank has no per-channel "pulse ended" signal (and another channel's
        # welded relay would keep wait_pulses() waiting forever): look every 10 ms.
        # A failed switch-off is reported by the bank at once, so no need to wait out its retries.
        while comp.lock in bank.energised and key not in self._lock_faults and self.clock.monotonic() < deadline:
            await self.clock.sleep(0.01)
        return comp.lock in bank.energised or key in self._lock_faults

    # -- scanners ---------------------------------------------------------------------------

    async def _scanners(self) -> None:
        assert self.hw is not None
        for name, scanner in self.hw.scanners.items():
            self._step("scanner", name)
            res = ScannerResult(name)
            self.report.scanners.append(res)
            if not scanner.online:
                res.status, res.error = FAIL, f"offline: {scanner.detail}"
                continue
            got: asyncio.Future[Scan] = asyncio.get_running_loop().create_future()

            async def first(scanner=scanner, got=got) -> None:
                async for scan in scanner.scans():
                    if not got.done():
                        got.set_result(scan)
                    return

            reader = asyncio.create_task(first())
            await asyncio.sleep(0)  # subscribed before the person scans
            t0 = time.monotonic()
            if not await self.tech.scan_card(name, self.opt.test_card):
                reader.cancel()
                res.error = "not tested: nobody to scan the test card (non-interactive)"
                continue
            try:
                scan = await asyncio.wait_for(got, self.opt.scan_timeout_s)
            except TimeoutError:
                res.status, res.error = FAIL, f"no scan within {self.opt.scan_timeout_s:g} s"
                continue
            finally:
                reader.cancel()
            res.after_s = round(time.monotonic() - t0, 3)
            res.code = scan.code
            if scan.code is None:
                res.status, res.error = FAIL, scan.error or "unreadable"
            elif self.opt.test_card is not None and scan.code != self.opt.test_card:
                res.status, res.error = FAIL, f"read {scan.code!r}, the test card is {self.opt.test_card!r}"
            else:
                res.status = PASS

    # -- the station broker -------------------------------------------------------------------

    async def _brokers(self) -> None:
        st = self.config.station
        if not st or not st.get("enabled"):
            return
        from lockerd.station.mqtt import Settings

        try:
            settings = Settings.from_station(st, f"lockerd-{self.config.site}-{self.config.node}")
        except OSError as e:  # the password file
            self.report.brokers.append(BrokerResult(", ".join(st["brokers"]), error=f"cannot read settings: {e}"))
            return
        for host, port in settings.brokers:
            self._step("broker", f"{host}:{port}")
            self.report.brokers.append(
                await asyncio.to_thread(probe_broker, settings, host, port, self.opt.broker_timeout_s))

    # -- conclusions ----------------------------------------------------------------------------

    def _conclude(self) -> None:
        """Turn the observations into findings (see :mod:`lockerd.hil.findings`)."""
        self.report.unexplained = self._unexplained_openings()
        verdict = conclude(self.report, self._offline)
        self.report.compartments = verdict.compartments
        self.report.findings.extend(verdict.findings)
        self.report.actions = verdict.actions

    def _unexplained_openings(self) -> list[dict[str, str]]:
        """Every door that went from shut to open and that no pulse's verdict accounts for."""
        by_sensor = {(c.sensor_driver, c.sensor): c.id for c in self.config.compartments.values()}
        last = dict(self._initial)
        out = []
        for i, change in enumerate(self._changes):
            key = (change.driver, change.channel)
            was, last[key] = last.get(key, DoorState.UNKNOWN), change.state
            if change.state is DoorState.OPEN and was is DoorState.CLOSED and i not in self._explained:
                out.append({"sensor": f"{change.driver}:{change.channel}", "compartment": by_sensor.get(key, ""),
                            "during": self._during[i]})
        return out


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
