"""Modbus relay boards: locks on coils, door sensors on inputs, at one unit id of a bus.

One :class:`ModbusBoard` per ``[drivers.NAME]`` of type "modbus" is a lock
bank and a door-sensor bank at one unit id of a :class:`ModbusBus`. A board
that stops answering is reported offline, its doors become UNKNOWN and it is
polled at a slower rate (one attempt each time) so it never stalls the other
boards on its bus; it is reported back online when it answers again.

The board talks to its bus through the bus's public calls (``call`` for a
command, ``poll_soon``, ``stop_polling``, ``due_changed``), and the bus tells
it how its polls went through the methods of :class:`Polled`. The pulse
length runs on the injected clock through :class:`LockBank`.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, ClassVar

from lockerd.drivers.base import DoorSensors, DoorState, LockBank, Parts, PowerBudget
from lockerd.drivers.modbus_bus import ModbusBus
from lockerd.drivers.modbus_coils import StrayRelays
from lockerd.drivers.modbus_line import PollSlot, next_poll_at
from lockerd.drivers.modbus_request import BadReply, DriverRefused, ModbusClient, Request
from lockerd.drivers.options import Channels, Opt, Problem, Spec, count_channels, with_defaults

from lockerd.clock import Clock
from lockerd.errors import DriverError, DriverUnavailable

log = logging.getLogger(__name__)

# Requests in a row a board leaves unanswered before it counts as offline (its polls come
# every period, so a dead board is still found within about two periods).
OFFLINE_AFTER = 2

# Waveshare "Modbus RTU Relay" hardware-timed pulse ("flash on"), from the
# development protocol on the Waveshare wiki (https://www.waveshare.com/wiki/Modbus_RTU_Relay,
# protocol V2/V3, section "Flash ON/OFF"): function 05 (write single coil)
# to address 0x0200 + relay with the data field holding the on time in units
# of 100 ms, e.g. ``01 05 02 00 00 07 8D B0`` = relay 0 on for 700 ms. The
# board switches the relay off by itself, so a crash between on and off
# cannot leave the solenoid energised. 0x0400 + relay is "flash off". The
# board answers with the usual echo of address and value.
WAVESHARE_FLASH_ON = 0x0200
WAVESHARE_FLASH_OFF = 0x0400
WAVESHARE_FLASH_UNIT_MS = 100


def waveshare_flash_units(ms: int) -> int:
    """The flash time field for a pulse of ``ms``: whole 100 ms units, rounded up, at least one."""
    return min(0xFFFF, max(1, math.ceil(ms / WAVESHARE_FLASH_UNIT_MS)))



class ModbusBoard(StrayRelays, LockBank, DoorSensors):
    """A relay board at one unit id: locks on coils, door sensors on discrete inputs or input registers."""

    type_name = "modbus"

    # Polling a board that does not answer: first and largest interval (seconds).
    offline_retry_first_s = 1.0
    offline_retry_max_s = 5.0
    # After a hardware-timed pulse: how long past the board's own end of it the coils are
    # read, for a board timer that runs a little slow and a reply that came back late.
    flash_check_after_s = 0.15

    OPTIONS: ClassVar[Spec] = {
        "bus": Opt("id", doc="the [buses.*] section this board hangs on"),
        "unit": Opt("int", min=0, max=247, doc="Modbus unit (device) id"),
        "profile": Opt("str", "generic", choices=("generic", "waveshare")),
        "coils": Opt("int", 16, min=1, max=256),
        "first_coil": Opt("int", 0, min=0, max=65535),
        "inputs": Opt("int", 16, min=0, max=256),
        "first_input": Opt("int", 0, min=0, max=65535),
        "input_kind": Opt("str", "discrete", choices=("discrete", "input-register")),
        "open_level": Opt("int", 1, min=0, max=1, doc="input value that means the door is open"),
        "poll_hz": Opt("float", 10.0, min=0.1, max=100),
    }

    def __init__(self, name: str, clock: Clock, budget: PowerBudget, options: Mapping[str, Any], bus: ModbusBus):
        super().__init__(name, clock, budget=budget)
        self.bus = bus
        self.options = options = with_defaults(self.OPTIONS, options)
        self.unit = int(options["unit"])
        self.profile = str(options["profile"])
        if self.profile not in ("generic", "waveshare"):
            raise ValueError(f"{name}: unknown profile {self.profile!r} (expected 'generic' or 'waveshare')")
        self.hardware_timed = self.profile == "waveshare"
        self.coils = int(options["coils"])
        self.first_coil = int(options["first_coil"])
        self.inputs = int(options["inputs"])
        self.first_input = int(options["first_input"])
        self.input_kind = str(options["input_kind"])
        self.open_level = int(options["open_level"])
        poll_hz = float(options["poll_hz"])
        self.period_s = 1.0 / poll_hz
        self.sample_period_s = self.period_s  # the controller skips a settle window shorter than this
        self._polls = 0  # successful polls judged on the loop (see polls)
        self.misconfigured = ""
        if bus.kind == "rtu" and self.unit == 0:
            # 0 is the RTU broadcast address: boards act on it but never answer.
            self.misconfigured = "unit 0 is the RS-485 broadcast address; no board answers it"
        self.polling = False
        self.due = 0.0
        self._backoff = self.offline_retry_first_s
        self._failing = False
        self._unanswered = 0  # requests in a row the board left unanswered
        self._inputs_refused = False
        self._last_levels: tuple[int, ...] | None = None
        self._all_off_pending = True
        self._starting = 0  # pulse-on writes in flight
        self._off_tasks: dict[int, asyncio.Task[None]] = {}
        self._flash_ends: dict[int, float] = {}  # bus time each channel's last flash ends by the board's timer
        self._coil_check: asyncio.Task[None] | None = None
        self._coil_check_at = 0.0
        self._poll_req: Request | None = None
        self._slot: PollSlot | None = None  # the RTU line thread's view of this board's poll
        self.poll_attempt = 0  # RTU: attempts made so far at the poll being judged
        bus.attach(self)

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], parts: Parts) -> ModbusBoard:
        bus = parts.buses[options["bus"]]
        if not isinstance(bus, ModbusBus):
            raise TypeError(f"{name}: [buses.{options['bus']}] is not a Modbus bus")
        return cls(name, parts.clock, parts.budget, options, bus)

    @staticmethod
    def offered(options: Mapping[str, Any], role: str) -> Channels | None:
        """Locks on coils 0 to coils-1, sensors on inputs 0 to inputs-1 (counted from first_coil, first_input)."""
        return count_channels(options.get("coils" if role == "lock" else "inputs"))

    @staticmethod
    def problems(options: Mapping[str, Any]) -> list[Problem]:
        inputs = options["inputs"]
        if options["input_kind"] == "input-register" and isinstance(inputs, int) and inputs > 125:
            # Modbus reads at most 125 registers in one request; a poll is one request.
            return [("inputs", inputs, "at most 125 sensors read as input registers")]
        return []

    @property
    def polls(self) -> int:
        """Successful polls, for benchmarks and tests."""
        return self._polls + (self._slot.quiet_polls if self._slot is not None else 0)

    def quiet(self) -> bool:
        """A poll that reads as the last one needs nothing more from the loop.

        Read from the RTU line thread. False while the board is failing, owes an
        all-off, has its inputs refused or its door states unknown, or stopped
        polling: then every poll is judged on the loop, which sorts it out.
        """
        return (self.polling and not self._failing and not self._all_off_pending and not self._inputs_refused
                and (self.inputs == 0 or self._last_levels is not None))

    # -- what the controller sees ------------------------------------------------

    def lock_channels(self) -> frozenset[int]:
        return frozenset(self.offered(self.options, "lock") or ())

    def sensor_channels(self) -> frozenset[int]:
        return frozenset(self.offered(self.options, "sensor") or ())

    async def start(self) -> None:
        """Switch every relay off, read the doors once, then poll. Never raises for a silent board."""
        if self.misconfigured:
            log.error("%s: %s", self.name, self.misconfigured)
            self.report_status(online=False, detail=self.misconfigured)
            return
        try:
            await self.all_off()
        except DriverError as e:
            # Retried when the board first answers a poll (see heard). One line, no
            # traceback: a board offline at start is expected, and e says why.
            log.error("%s: switching every relay off at start failed: %s", self.name, e)  # noqa: TRY400
        if self.inputs > 0 and not self._failing and self.bus.connected:
            try:
                self._apply_levels(await self.bus.call(self, self._poll_what(), self.poll_send(),
                                                       self.poll_check()))
            except DriverError as e:
                log.debug("%s: first door read failed: %s", self.name, e)
        self.polling = True
        self.bus.poll_soon(self)

    async def close(self) -> None:
        """Stop polling and switch every relay off (best effort: the board may be gone)."""
        self.polling = False
        self.bus.stop_polling(self)
        if not self.misconfigured:
            try:
                await self.all_off()
            except DriverError as e:
                # A board gone by now is expected: e says why; a traceback adds nothing.
                log.error("%s: switching every relay off at close failed: %s", self.name, e)  # noqa: TRY400
        for task in list(self._off_tasks.values()):
            task.cancel()
        if self._coil_check is not None:
            self._coil_check.cancel()

    # -- LockBank -------------------------------------------------------------------

    def _coil(self, channel: int) -> int:
        if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel < self.coils:
            raise DriverError(f"{self.name}: no lock channel {channel!r} (this board has 0 to {self.coils - 1})")
        return self.first_coil + channel

    def _write_coil(self, address: int, *, on: bool, what: str, attempts: int | None = None) -> Awaitable[Any]:
        """One coil on or off; an off is an off-write for the bus (before other commands, see ``expect_off``)."""
        unit = self.unit

        def send(c: ModbusClient) -> Awaitable[Any]:
            return c.write_coil(address, on, device_id=unit)

        def check(r: Any) -> None:
            if r.function_code != 5 or r.address != address or bool(r.bits and r.bits[0]) != on:
                raise BadReply(f"reply does not echo the write to coil {address} ({r})")

        off = None if on else (self.name, address)
        return self.bus.call(self, what, send, check, attempts, off=off, pulse=on)

    async def _energise(self, channel: int, ms: int) -> None:
        """One transaction: the coil on (generic) or a hardware-timed flash (waveshare)."""
        if self.misconfigured:
            raise DriverUnavailable(f"{self.name}: {self.misconfigured}")
        address = self._coil(channel)
        # A silent board gets one attempt, not the full retries: the scan fails fast.
        attempts = 1 if self._failing else None
        self._starting += 1
        try:
            if self.profile == "waveshare":
                await self._flash(address, ms, attempts)
            else:
                await self._write_coil(address, on=True, what=f"lock {channel} on", attempts=attempts)
                # The off-write falls due when the pulse ends: the bus keeps the line free for it.
                self.bus.expect_off((self.name, address), self.bus.now() + ms / 1000)
        except DriverError as e:
            if self.profile == "generic" and not isinstance(e, DriverRefused):
                # No answer does not mean the write did not land: make sure it goes off.
                self._ensure_off(channel, str(e))
            raise
        except asyncio.CancelledError:
            if self.profile == "generic":
                self._ensure_off(channel, "pulse cancelled while its on-write was in flight")
            raise
        finally:
            self._starting -= 1

    async def _flash(self, address: int, ms: int, attempts: int | None) -> None:
        unit = self.unit
        flash = WAVESHARE_FLASH_ON + (address - self.first_coil)
        value = waveshare_flash_units(ms)
        request = self.bus.flash_request(flash, value, unit)

        def send(c: ModbusClient) -> Awaitable[Any]:
            return c.execute(no_response_expected=False, request=request)

        def check(r: Any) -> None:
            if r.function_code != 5 or r.address != flash:
                raise BadReply(f"reply does not echo the flash command to 0x{flash:04x} ({r})")

        channel = address - self.first_coil
        # Its end by the board's timer, counted from before the request went out: the board
        # started it later, so a coil read after this (and the slack) finds it off.
        ends = self.bus.now() + value * WAVESHARE_FLASH_UNIT_MS / 1000
        self._flash_ends[channel] = max(ends, self._flash_ends.get(channel, 0.0))
        await self.bus.call(self, f"lock {channel} flash {value * 100} ms", send, check, attempts, pulse=True)

    async def _deenergise(self, channel: int) -> None:
        if self.profile != "waveshare":
            await self._write_coil(self._coil(channel), on=False, what=f"lock {channel} off")
            return
        # The board switches the relay off by its own timer: an off-write here would be a
        # second transaction per opening, landing after the relay is already off. A coil
        # read once the flash is over catches a relay the board left on (a board that did
        # not take the flash as one), and switches it off as any stray relay.
        if self.inputs == 0:
            return  # its door poll reads the coils already
        self._check_coils_at(self._flash_ends.get(channel, self.bus.now()) + self.flash_check_after_s)

    async def _all_off(self) -> None:
        """Every coil of the board off, in one request."""
        if self.misconfigured:
            raise DriverUnavailable(f"{self.name}: {self.misconfigured}")
        unit, first, n = self.unit, self.first_coil, self.coils

        def send(c: ModbusClient) -> Awaitable[Any]:
            return c.write_coils(first, [False] * n, device_id=unit)

        def check(r: Any) -> None:
            if r.function_code != 15 or r.address != first or r.count != n:
                raise BadReply(f"reply does not echo the write of coils {first}..{first + n - 1} ({r})")

        await self.bus.call(self, "all relays off", send, check, off=(self.name, "all"))
        self._all_off_pending = False

    # -- polling (called by the bus task) ----------------------------------------------

    def _poll_what(self) -> str:
        if self.inputs == 0:
            return "read coils"
        return "read discrete inputs" if self.input_kind == "discrete" else "read input registers"

    def poll_send(self) -> Callable[[ModbusClient], Awaitable[Any]]:
        """How this board's door poll is sent: the bus's requests, and the HIL bench measuring the same read."""
        unit = self.unit
        if self.inputs == 0:  # no sensors: read the coils, as a heartbeat and a relay check
            first, n = self.first_coil, self.coils
            return lambda c: c.read_coils(first, count=n, device_id=unit)
        first, n = self.first_input, self.inputs
        if self.input_kind == "discrete":
            return lambda c: c.read_discrete_inputs(first, count=n, device_id=unit)
        return lambda c: c.read_input_registers(first, count=n, device_id=unit)

    def _poll_spec(self) -> tuple[int, int, int]:
        """The poll as (function code, first address, count), for the RTU line thread's poll slot."""
        if self.inputs == 0:
            return 1, self.first_coil, self.coils
        return (2 if self.input_kind == "discrete" else 4), self.first_input, self.inputs

    def poll_check(self) -> Callable[[Any], tuple[int, ...]]:
        """How a reply to :meth:`poll_send` is judged: the levels it carries, or BadReply."""
        kind = "coils" if self.inputs == 0 else self.input_kind
        n = self.coils if self.inputs == 0 else self.inputs
        fc = {"coils": 1, "discrete": 2, "input-register": 4}[kind]

        def check(r: Any) -> tuple[int, ...]:
            if r.function_code != fc:
                raise BadReply(f"expected function {fc}, got {r.function_code}")
            if fc == 4:
                regs = r.registers
                if len(regs) != n:
                    raise BadReply(f"{len(regs)} registers in the reply, expected {n}")
                return tuple(1 if v else 0 for v in regs)
            bits = r.bits
            if len(bits) < n:
                raise BadReply(f"{len(bits)} bits in the reply, expected {n}")
            return tuple(map(int, bits[:n]))

        return check

    def poll_slot(self) -> PollSlot:
        if self._slot is None:
            fc, first, n = self._poll_spec()
            self._slot = PollSlot(self, self.unit, fc, first, n)
        return self._slot

    def poll_request(self) -> Request:
        if self._poll_req is None:
            self._poll_req = Request(self, self._poll_what(), self.poll_send(), self.poll_check(),
                                      self.bus.retries + 1)
        # A silent board gets one attempt per retry interval, so it cannot stall the bus.
        self._poll_req.attempts = 1 if self._failing else self.bus.retries + 1
        return self._poll_req

    def poll_done(self, levels: tuple[int, ...]) -> None:
        self._polls += 1
        now = self.bus.now()
        self.due = next_poll_at(now, self.period_s)
        if self._inputs_refused:
            self._inputs_refused = False
            log.warning("%s: inputs readable again", self.name)
            self.report_status(online=True)
        if self.inputs == 0:
            self._check_coils(levels)
        else:
            self._apply_levels(levels)

    def _apply_levels(self, levels: tuple[int, ...]) -> None:
        if levels == self._last_levels:
            return  # nothing changed: skip the per-channel work
        self._last_levels = levels
        for ch, level in enumerate(levels):
            self._set_door(ch, DoorState.OPEN if level == self.open_level else DoorState.CLOSED)

    def poll_refused(self, error: DriverError) -> None:
        """The board answers but refuses the poll (a wrong input address in the config, usually)."""
        self.due = self.bus.now() + max(self.period_s, self.offline_retry_max_s)
        self._last_levels = None
        for ch in range(self.inputs):
            self._set_door(ch, DoorState.UNKNOWN)
        if not self._inputs_refused:
            self._inputs_refused = True
            log.error("%s: door sensors unreadable: %s", self.name, error)
            self.report_status(online=True, detail=f"door sensors unreadable: {error}")

    # -- status (called by the bus task) ---------------------------------------------------

    def heard(self) -> None:
        """The board answered something."""
        self._unanswered = 0
        if self._failing:
            self._failing = False
            self._backoff = self.offline_retry_first_s
            self.report_status(online=True)  # logs "recovered"
            self.due = self.bus.now()
            self.bus.due_changed(self)
        if self._all_off_pending and not self.energised and not self._starting and self.polling:
            self._all_off_pending = False  # set again if this fails
            asyncio.get_running_loop().create_task(self._deferred_all_off(), name=f"{self.name}-all-off")

    async def _deferred_all_off(self) -> None:
        try:
            await self.all_off()
            log.warning("%s: every relay switched off (the board was not answering at start)", self.name)
        except DriverError as e:
            self._all_off_pending = True
            log.debug("%s: deferred all-off failed: %s", self.name, e)

    def silent(self, error: DriverError) -> None:
        """The board did not answer (after the request's attempts)."""
        now = self.bus.now()
        self._unanswered += 1
        if not self._failing and self._unanswered < OFFLINE_AFTER:
            # One unanswered request between answers is a slow board, not a dead one: taking it
            # offline would put every compartment in fault and back (a storm of events per scan).
            log.info("%s: a request went unanswered (%s); one more in a row and the board counts as gone",
                     self.name, error)
            return
        if not self._failing:
            self._failing = True
            self._backoff = self.offline_retry_first_s
            self._go_offline(str(error))  # logs once
        else:
            log.debug("%s: still not answering: %s", self.name, error)
            self._backoff = min(self._backoff * 2, self.offline_retry_max_s)
        self.due = now + self._backoff
        self.bus.due_changed(self)

    def bus_down(self, detail: str) -> None:
        self._failing = True
        self._go_offline(f"bus {self.bus.name} down: {detail}")

    def _go_offline(self, detail: str) -> None:
        self.report_status(online=False, detail=detail)
        self._last_levels = None
        for ch in range(self.inputs):
            self._set_door(ch, DoorState.UNKNOWN)

