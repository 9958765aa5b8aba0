"""Modbus relay boards: locks on coils, door sensors on inputs, over RTU (RS-485) or TCP.

One :class:`ModbusBus` per ``[buses.NAME]`` section owns one client (the
lean RTU client of :mod:`modbus_rtu` on a serial line, pymodbus's TCP client
on a gateway) and one task. That task is the only thing that sends commands (lock
on/off, all off): from a queue, one request in flight, a gap between frames, a
timeout and a bounded number of attempts per request. Commands always go
before polls, so a scan is never stuck behind a poll cycle. Polls run board by
board at each board's ``poll_hz``: on a TCP gateway the task sends them too; on
an RS-485 line the RTU client's line thread sends them and the bus judges only
the polls with news (see "the poll path" below).

One :class:`ModbusBoard` per ``[drivers.NAME]`` of type "modbus" is a lock
bank and a door-sensor bank at one unit id. A board that stops answering is
reported offline, its doors become UNKNOWN and it is polled at a slower rate
(one attempt each time) so it never stalls the other boards on its bus; it is
reported back online when it answers again.

Bus-level timing (frame gap, timeouts, poll periods, reconnect backoff) runs
on real time: it paces a physical line. The pulse length runs on the injected
clock through :class:`LockBank`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from lockerd.drivers.base import DoorSensors, DoorState, Driver, LockBank, PowerBudget
from lockerd.drivers.modbus_rtu import BadFrame, LineLost, PollSlot, RtuClient, RtuReply, next_poll_at
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu.bit_message import WriteSingleCoilRequest

from lockerd.clock import Clock
from lockerd.config import Section
from lockerd.errors import DriverError, DriverTimeout, DriverUnavailable

log = logging.getLogger(__name__)

# Requests in a row a board leaves unanswered before it counts as offline (its polls come
# every period, so a dead board is still found within about two periods).
OFFLINE_AFTER = 2

# Modbus exception codes, for messages a technician can act on.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}
# A TCP gateway answers these when the RS-485 device behind it is silent:
# the board is not answering, exactly as if we had timed out ourselves.
GATEWAY_SILENT = (10, 11)

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


def rtu_frame_gap_ms(baudrate: int) -> float:
    """The silence that ends an RTU frame: 3.5 characters of 11 bits at ``baudrate``, and a fixed
    1.75 ms above 19200 baud (Modbus over Serial Line V1.02, section 2.5.1.1)."""
    return 1.75 if baudrate > 19200 else 3.5 * 11 * 1000 / baudrate


def waveshare_flash_units(ms: int) -> int:
    """The flash time field for a pulse of ``ms``: whole 100 ms units, rounded up, at least one."""
    return min(0xFFFF, max(1, math.ceil(ms / WAVESHARE_FLASH_UNIT_MS)))


class WaveshareFlashRequest(WriteSingleCoilRequest):
    """Function 05 with a raw 16-bit value: the Waveshare flash-on/off command.

    pymodbus's write_coil only sends 0xFF00/0x0000; the flash command puts
    the time in the value field, so it needs its own encoding. The reply is
    decoded by pymodbus as an ordinary write-coil echo.
    """

    function_code = 5
    rtu_frame_size = 8

    def __init__(self, address: int = 0, value: int = 0, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(address=address, bits=[bool(value)], dev_id=dev_id, transaction_id=transaction_id)
        self.value = value

    def encode(self) -> bytes:
        self.verifyAddress()
        if not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"flash value {self.value} outside 0..65535")
        return struct.pack(">HH", self.address, self.value)

    def decode(self, data: bytes) -> None:
        self.address, self.value = struct.unpack(">HH", data[:4])
        self.bits = [bool(self.value)]


class DriverRefused(DriverError):
    """The board answered with a Modbus exception: it did not carry the request out."""


class _BadReply(Exception):
    """A reply that does not match the request (late frame, wrong function, short data)."""


@dataclass(eq=False, slots=True)
class _Request:
    """One Modbus transaction the bus task will perform."""

    board: ModbusBoard
    what: str
    send: Callable[[Any], Awaitable[Any]]  # given the bus's client, starts the request
    check: Callable[[Any], Any]  # validates the reply, returns the useful value or raises _BadReply
    attempts: int
    future: asyncio.Future | None = None  # commands: the caller waits on it; polls: None


# ---------------------------------------------------------------------------
# The bus


class ModbusBus(Driver):
    """One physical bus (RS-485 line or TCP connection) and the task that owns it."""

    type_name = "modbus-bus"

    # Reconnect backoff for a bus whose device or host is missing (seconds).
    reconnect_first_s = 0.5
    reconnect_max_s = 10.0
    # TCP: this many silent requests in a row with no reply at all on the bus
    # means a half-open connection: drop it and reconnect.
    tcp_silent_limit = 6
    # The service watchdog (see Driver.heartbeat_s): the task beats on each pass
    # of its loop, an RTU line thread this often while it cycles, and an idle
    # wait is cut into pieces this long so that a bus with nothing to do still
    # beats. A task stuck in a request or dead stops beating, and so does a
    # stuck line thread; a silent board does not.
    beat_every_s = 0.5
    heartbeat_s = 1.0

    def __init__(self, name: str, clock: Clock, kind: str, options: dict[str, Any]):
        super().__init__(name, clock)
        if kind not in ("rtu", "tcp"):
            raise ValueError(f"bus {name}: unknown type {kind!r} (expected 'rtu' or 'tcp')")
        self.kind = kind
        self.options = dict(options)
        self.timeout_s = float(options.get("timeout_ms", 200 if kind == "rtu" else 500)) / 1000
        self.retries = int(options.get("retries", 1))
        gap_ms = options.get("frame_gap_ms")
        if gap_ms is None:
            gap_ms = rtu_frame_gap_ms(int(options.get("baudrate", 9600))) if kind == "rtu" else 0.0
        self.gap_s = float(gap_ms) / 1000
        self.where = (
            str(options.get("device"))
            if kind == "rtu"
            else f"{options.get('host')}:{options.get('port', 502)}"
        )
        self.boards: list[ModbusBoard] = []
        self._task_sent = 0  # frames the task sent: commands, and the polls of a TCP bus (see transactions)
        self._polls_sent_before = 0  # poll frames sent by the RTU clients dropped so far
        self.connected = False
        self._client: Any = None
        self._commands: deque[_Request] = deque()
        self._waiter: asyncio.Future | None = None
        self._task: asyncio.Task | None = None
        self._closing = False
        self._last_end = 0.0  # loop time the last transaction ended
        self._silent_streak = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # RTU: a command is queued or being performed, so the line thread starts no poll.
        self.line_held = False
        # How long the task waits for a command's reply. The RTU line thread times a
        # request from the moment it is sent, which may follow a poll in flight and the
        # gap: the task's own bound only catches a client that never answers at all.
        self._await_s = self.timeout_s if kind == "tcp" else 2 * self.timeout_s + self.gap_s + 0.25

    @property
    def transactions(self) -> int:
        """Frames sent, retries included: benchmarks and tests count them."""
        rtu = self._client.polls_sent if isinstance(self._client, RtuClient) else 0
        return self._task_sent + self._polls_sent_before + rtu

    # -- life ------------------------------------------------------------------

    def attach(self, board: ModbusBoard) -> None:
        for other in self.boards:
            if other.unit == board.unit:
                log.warning("%s: boards %s and %s both use unit %s: they will answer together",
                            self.name, other.name, board.name, board.unit)
        self.boards.append(board)

    async def start(self) -> None:
        """Open the bus; never raises: a missing device is reported offline and retried."""
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._closing = False
        try:
            await self._connect()
        except Exception as e:  # start must not stop the daemon, whatever pymodbus does
            log.exception("%s: opening %s failed", self.name, self.where)
            self._went_down(f"cannot open {self.where}: {e}")
        self._task = asyncio.create_task(self._run(), name=f"modbus-bus-{self.name}")

    async def close(self) -> None:
        """Stop the bus task and close the port (boards switch their relays off before this)."""
        self._closing = True
        self._wake()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._fail_pending(DriverUnavailable(f"{self.name}: bus closed"))
        self._drop_client()

    # -- the API boards use ---------------------------------------------------------

    async def call(self, board: ModbusBoard, what: str, send: Callable[[Any], Awaitable[Any]],
                   check: Callable[[Any], Any], attempts: int | None = None) -> Any:
        """Queue a command ahead of every poll and wait for its result."""
        if self._closing or self._loop is None:
            raise DriverUnavailable(f"{board.name}: bus {self.name} is not running")
        if not self.connected:
            raise DriverUnavailable(f"{board.name}: bus {self.name} is down ({self.detail})")
        fut = self._loop.create_future()
        n = self.retries + 1 if attempts is None else max(1, attempts)
        self._commands.append(_Request(board, what, send, check, n, fut))
        self.line_held = True  # no new poll on an RTU line from now: the command goes next
        self._wake()
        return await fut

    def poll_soon(self, board: ModbusBoard) -> None:
        """Make ``board`` due for a poll now (after start or recovery)."""
        if self._loop is not None:
            board._due = self._loop.time()
            if isinstance(self._client, RtuClient):
                self._client.resume(board._poll_slot(), board._due, None)
            else:
                self._wake()

    def stop_polling(self, board: ModbusBoard) -> None:
        if isinstance(self._client, RtuClient):
            self._client.park(board._poll_slot())

    def due_changed(self, board: ModbusBoard) -> None:
        """``board._due`` was set outside a poll's judgement (a command's outcome): tell the line thread."""
        if isinstance(self._client, RtuClient):
            self._client.reschedule(board._poll_slot(), board._due)

    # -- the task ---------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.reconnect_first_s
        while not self._closing:
            self.beat()
            try:
                if not self._client_connected():
                    if self.connected:
                        why = getattr(self._client, "last_error", "")
                        self._went_down(f"connection to {self.where} lost" + (f" ({why})" if why else ""))
                    if not await self._connect():
                        await self._sleep_until_work(delay, commands_wake=False)
                        delay = min(delay * 2, self.reconnect_max_s)
                        continue
                    delay = self.reconnect_first_s
                req = await self._next_request()
                if req is not None:
                    await self._perform(req)
            except asyncio.CancelledError:
                raise
            except Exception:  # the bus task must outlive any surprise
                log.exception("%s: unexpected error in the bus task", self.name)
                await asyncio.sleep(0.1)

    async def _connect(self) -> bool:
        self._drop_client()
        if self.kind == "rtu":
            # Our own lean RTU client (see modbus_rtu): door polls are the daemon's
            # steady load, and pymodbus's general framing costs several times the CPU.
            o = self.options
            self._client = RtuClient(
                str(o["device"]),
                baudrate=int(o.get("baudrate", 9600)),
                bytesize=int(o.get("bytesize", 8)),
                parity=str(o.get("parity", "N")),
                stopbits=int(o.get("stopbits", 1)),
                name=self.name,
                timeout_s=self.timeout_s,
                gap_s=self.gap_s,
                owner=self,
            )
        else:
            self._client = AsyncModbusTcpClient(
                str(self.options["host"]),
                framer=FramerType.SOCKET,
                port=int(self.options.get("port", 502)),
                timeout=max(2 * self.timeout_s, 1.0),
                retries=0,
                reconnect_delay=0,
                name=self.name,
            )
        try:
            ok = bool(await self._client.connect())
        except Exception as e:  # pymodbus returns False for most failures; be safe about the rest
            ok = False
            detail = f"cannot open {self.where}: {e}"
        else:
            detail = f"cannot open {self.where}"
            if getattr(self._client, "last_error", ""):
                detail = f"cannot open {self.where}: {self._client.last_error}"
        if not ok:
            self._drop_client()
            self._went_down(detail)
            return False
        self.connected = True
        self._silent_streak = 0
        self.report_status(True, "")
        log.info("%s: connected to %s", self.name, self.where)
        now = self._loop.time() if self._loop else 0.0
        for b in self.boards:
            b._due = now
        if isinstance(self._client, RtuClient):
            slots = [b._poll_slot() for b in self.boards if not b._misconfigured]
            for slot in slots:
                slot.due, slot.quiet_reply, slot.parked = now, None, not slot.owner._polling
            self._client.set_polls(slots)
        return True

    def _client_connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    def _drop_client(self) -> None:
        client, self._client = self._client, None
        if isinstance(client, RtuClient):
            self._polls_sent_before += client.polls_sent
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _went_down(self, detail: str) -> None:
        was = self.connected
        self.connected = False
        self._drop_client()
        self.report_status(False, detail)
        self._fail_pending(DriverUnavailable(f"{self.name}: {detail}"))
        if was or any(b.online for b in self.boards):
            for b in self.boards:
                b._bus_down(detail)
        # Found outside the task (a poll judged on the loop): the task may be waiting
        # for a command and must reconnect now.
        self._wake()

    def _fail_pending(self, exc: DriverError) -> None:
        while self._commands:
            req = self._commands.popleft()
            if req.future is not None and not req.future.done():
                req.future.set_exception(exc)

    def _wake(self) -> None:
        _resolve_if(self._waiter)

    async def _sleep_until_work(self, delay: float | None, commands_wake: bool = True) -> None:
        """Wait for a command (or close) or until ``delay`` seconds have passed, beating meanwhile."""
        loop = self._loop or asyncio.get_running_loop()
        end = None if delay is None else loop.time() + delay
        while not self._closing:
            self.beat()
            wait = self.beat_every_s if end is None else min(self.beat_every_s, end - loop.time())
            if wait <= 0:
                return
            fut = loop.create_future()
            self._waiter = fut if commands_wake else None
            handle = loop.call_later(wait, _resolve_with, fut, _TICK)
            try:
                await fut
            finally:
                self._waiter = None
                handle.cancel()
            if fut.result() is not _TICK:
                return  # woken: a command, a schedule change or close

    async def _respect_gap(self) -> None:
        if self.gap_s > 0 and not isinstance(self._client, RtuClient):  # an RTU client keeps the gap itself
            wait = self._last_end + self.gap_s - self._loop.time()  # type: ignore[union-attr]
            if wait > 0:
                await asyncio.sleep(wait)

    def _next_poll(self) -> ModbusBoard | None:
        best: ModbusBoard | None = None
        for b in self.boards:
            if b._polling and (best is None or b._due < best._due):
                best = b
        return best

    async def _next_request(self) -> _Request | None:
        """The next transaction: a queued command first, else the most overdue poll.

        On an RTU line polls are not returned: the line thread runs them (see
        "the poll path" below) while the task waits here for a command.
        """
        loop = self._loop
        while not self._closing:
            while self._commands and self._commands[0].future is not None and self._commands[0].future.done():
                self._commands.popleft()  # the caller gave up before it was sent
            if self._commands:
                await self._respect_gap()
                if self._commands:
                    return self._commands.popleft()
                continue
            if isinstance(self._client, RtuClient):
                self.line_held = False
                self._client.wake()  # polls may start again
                await self._wait_for_command()
                if not self._client_connected():
                    return None
                continue
            board = self._next_poll()
            now = loop.time()  # type: ignore[union-attr]
            if board is not None and board._due <= now:
                await self._respect_gap()
                if self._commands:
                    continue  # a command arrived during the gap: it goes first
                return board._poll_request()
            await self._sleep_until_work(None if board is None else board._due - now)
            if not self._client_connected():
                return None
        return None

    async def _perform(self, req: _Request) -> None:
        """Run one request with timeout and bounded attempts, then tell the caller and the board."""
        loop = self._loop
        error: DriverError | None = None
        silent = True  # no usable answer from the board
        for attempt in range(req.attempts):
            if req.future is not None and req.future.done():
                return  # caller gone before this attempt: nothing was sent for it
            if attempt:
                if req.future is None and self._commands:
                    # A poll never delays a command with its retries: poll again
                    # right after the command, without judging the board yet.
                    req.board._due = loop.time()  # type: ignore[union-attr]
                    return
                await self._respect_gap()
            client = self._client
            if client is None or not client.connected:
                error = DriverUnavailable(f"{req.board.name}: bus {self.name} is down")
                break
            self._task_sent += 1
            reply: Any = None
            exc: Exception | None = None
            try:
                async with asyncio.timeout(self._await_s):
                    reply = await req.send(client)
            except (TimeoutError, ConnectionException, LineLost, ModbusIOException, BadFrame, ModbusException,
                    ValueError, struct.error) as e:
                exc = e
            finally:
                self._last_end = loop.time()  # type: ignore[union-attr]
            value, error, retry, silent = self._judge(req, reply, exc)
            if error is None:
                self._succeeded(req, value)
                return
            if not retry:
                break
        assert error is not None
        self._failed(req, error, silent)

    def _judge(self, req: _Request, reply: Any, exc: Exception | None) -> tuple[Any, DriverError | None, bool, bool]:
        """One attempt's outcome: (value, error, worth retrying, board silent)."""
        if exc is None and reply is not None and not reply.isError():
            try:
                return req.check(reply), None, False, False
            except _BadReply as e:
                return None, self._bad_reply(req, e), True, True
        board = req.board
        who = f"{board.name} (unit {board.unit} on {self.name})"
        if isinstance(exc, TimeoutError):
            return None, DriverTimeout(f"{who}: no answer to {req.what} within {self.timeout_s * 1000:.0f} ms"), \
                True, True
        if isinstance(exc, (ConnectionException, LineLost)):
            return None, DriverUnavailable(f"{board.name}: bus {self.name} lost its connection: {exc}"), False, True
        if isinstance(exc, (ModbusIOException, BadFrame)):  # garbled frame, wrong unit or transaction id
            return None, DriverError(f"{who}: bad reply to {req.what}: {exc}"), True, True
        if exc is not None:  # a request we could not even encode
            return None, DriverError(f"{board.name}: cannot send {req.what}: {exc}"), False, False
        if reply is None:
            return None, DriverError(f"{board.name}: no reply object for {req.what}"), True, True
        code = int(getattr(reply, "exception_code", 0))
        name = EXCEPTION_NAMES.get(code, "unknown")
        if code in GATEWAY_SILENT:
            return None, DriverTimeout(f"{who}: gateway says the device does not answer {req.what} "
                                       f"(exception {code}, {name})"), True, True
        return None, DriverRefused(f"{who}: {req.what} refused with Modbus exception {code} ({name})"), False, False

    def _bad_reply(self, req: _Request, e: _BadReply) -> DriverError:
        return DriverError(f"{req.board.name} (unit {req.board.unit} on {self.name}): {req.what}: {e}")

    def _succeeded(self, req: _Request, value: Any) -> None:
        self._silent_streak = 0
        req.board._heard()
        if req.future is None:
            req.board._poll_done(value)
        elif not req.future.done():
            req.future.set_result(value)

    def _failed(self, req: _Request, error: DriverError, silent: bool) -> None:
        """Every attempt failed (or one that is not worth repeating)."""
        board = req.board
        if isinstance(error, DriverUnavailable):
            self._went_down(str(error))
        elif silent:
            self._silent_streak += 1
            board._silent(error)
            if self.kind == "tcp" and self._silent_streak >= self.tcp_silent_limit:
                log.warning("%s: %d requests in a row without any reply: reconnecting", self.name,
                            self._silent_streak)
                self._drop_client()
        else:
            board._heard()
        if req.future is None:
            if not silent:
                board._poll_refused(error)
        elif not req.future.done():
            req.future.set_exception(error)

    # -- the poll path (RTU) ---------------------------------------------------------------
    #
    # Door polls are the line's steady load: 16 boards at 10 Hz is 160 polls a
    # second, every hour of the day. The RTU client's line thread sends them on
    # each board's schedule and wakes the loop only for a poll with news: data
    # unlike the last, no answer, a wrong or refused reply. Those are judged here
    # as the task judges its own requests, with the same bounded attempts; the
    # board's slot is then resumed with its next due time, and with the reply
    # data as "quiet" when the board needs nothing more for the same data again.
    # The thread starts no poll while a command is queued or being performed
    # (line_held), and beats for the bus while it cycles.

    async def _wait_for_command(self) -> None:
        """Wait for a command, close or a lost line; the line thread beats meanwhile."""
        fut = self._loop.create_future()  # type: ignore[union-attr]
        self._waiter = fut
        try:
            await fut
        finally:
            self._waiter = None

    def line_beat(self, client: RtuClient) -> None:
        if client is self._client:
            self.beat()

    def line_lost(self, client: RtuClient, detail: str) -> None:
        if client is self._client:
            log.debug("%s: %s", self.name, detail)
            self._wake()  # the task sees the line gone and reconnects

    def line_polled(self, client: RtuClient, slot: PollSlot, reply: RtuReply | None, exc: Exception | None) -> None:
        """A poll with news from the line thread; the slot stays parked until resumed here."""
        board = slot.owner
        if client is not self._client or self._closing or not board._polling:
            return  # from a line since replaced, or a board that stopped polling
        board._due = slot.due
        req = board._poll_request()
        quiet_reply: bytes | None = None
        try:
            value, error, retry, silent = self._judge(req, reply, exc)
            if error is None:
                board._attempt = 0
                self._succeeded(req, value)
                if board.quiet() and (board.inputs > 0 or not any(value)) and reply is not None:
                    quiet_reply = reply.frame  # the same again needs nothing from here
            else:
                board._attempt += 1
                if retry and board._attempt < req.attempts:
                    # Again after the gap, or after the commands queued: a poll never delays one.
                    board._due = self._loop.time()  # type: ignore[union-attr]
                else:
                    board._attempt = 0
                    self._failed(req, error, silent)
        except Exception:  # whatever happens, the board's polls must go on: resumed below
            log.exception("%s: unexpected error handling a poll reply", self.name)
        if client is self._client and board._polling:
            client.resume(slot, board._due, quiet_reply)


_TICK = object()  # the result of a wait that only ran out of time


def _resolve_with(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _resolve_if(fut: asyncio.Future | None) -> None:
    if fut is not None and not fut.done():
        fut.set_result(None)


def create_bus(section: Section, clock: Clock) -> ModbusBus:
    """Build the bus object for one ``[buses.NAME]`` section."""
    return ModbusBus(section.name, clock, section.type, section.options)


# ---------------------------------------------------------------------------
# The boards


class ModbusBoard(LockBank, DoorSensors):
    """A relay board at one unit id: locks on coils, door sensors on discrete inputs or input registers."""

    type_name = "modbus"

    # Polling a board that does not answer: first and largest interval (seconds).
    offline_retry_first_s = 1.0
    offline_retry_max_s = 5.0

    def __init__(self, name: str, clock: Clock, budget: PowerBudget, options: dict[str, Any], bus: ModbusBus):
        super().__init__(name, clock, budget=budget)
        self.bus = bus
        self.unit = int(options["unit"])
        self.profile = str(options.get("profile", "generic"))
        if self.profile not in ("generic", "waveshare"):
            raise ValueError(f"{name}: unknown profile {self.profile!r} (expected 'generic' or 'waveshare')")
        self.hardware_timed = self.profile == "waveshare"
        self.coils = int(options.get("coils", 16))
        self.first_coil = int(options.get("first_coil", 0))
        self.inputs = int(options.get("inputs", 16))
        self.first_input = int(options.get("first_input", 0))
        self.input_kind = str(options.get("input_kind", "discrete"))
        self.open_level = int(options.get("open_level", 1))
        poll_hz = float(options.get("poll_hz", 10.0))
        self.period_s = 1.0 / poll_hz
        self.sample_period_s = self.period_s  # the controller skips a settle window shorter than this
        self._polls = 0  # successful polls judged on the loop (see polls)
        self._misconfigured = ""
        if bus.kind == "rtu" and self.unit == 0:
            # 0 is the RTU broadcast address: boards act on it but never answer.
            self._misconfigured = "unit 0 is the RS-485 broadcast address; no board answers it"
        self._polling = False
        self._due = 0.0
        self._backoff = self.offline_retry_first_s
        self._failing = False
        self._unanswered = 0  # requests in a row the board left unanswered
        self._inputs_refused = False
        self._last_levels: tuple[int, ...] | None = None
        self._all_off_pending = True
        self._starting = 0  # pulse-on writes in flight
        self._off_tasks: dict[int, asyncio.Task] = {}
        self._poll_req: _Request | None = None
        self._slot: PollSlot | None = None  # the RTU line thread's view of this board's poll
        self._attempt = 0  # RTU: attempts made so far at the poll being judged
        bus.attach(self)

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
        return (self._polling and not self._failing and not self._all_off_pending and not self._inputs_refused
                and (self.inputs == 0 or self._last_levels is not None))

    # -- what the controller sees ------------------------------------------------

    def lock_channels(self) -> frozenset[int]:
        return frozenset(range(self.coils))

    def sensor_channels(self) -> frozenset[int]:
        return frozenset(range(self.inputs))

    async def start(self) -> None:
        """Switch every relay off, read the doors once, then poll. Never raises for a silent board."""
        if self._misconfigured:
            log.error("%s: %s", self.name, self._misconfigured)
            self.report_status(False, self._misconfigured)
            return
        try:
            await self.all_off()
        except DriverError as e:
            # Retried when the board first answers a poll (see _heard).
            log.error("%s: switching every relay off at start failed: %s", self.name, e)
        if self.inputs > 0 and not self._failing and self.bus.connected:
            try:
                self._apply_levels(await self.bus.call(self, self._poll_what(), self._poll_send(),
                                                       self._poll_check()))
            except DriverError as e:
                log.debug("%s: first door read failed: %s", self.name, e)
        self._polling = True
        self.bus.poll_soon(self)

    async def close(self) -> None:
        """Stop polling and switch every relay off (best effort: the board may be gone)."""
        self._polling = False
        self.bus.stop_polling(self)
        if not self._misconfigured:
            try:
                await self.all_off()
            except DriverError as e:
                log.error("%s: switching every relay off at close failed: %s", self.name, e)
        for task in list(self._off_tasks.values()):
            task.cancel()

    # -- LockBank -------------------------------------------------------------------

    def _coil(self, channel: int) -> int:
        if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel < self.coils:
            raise DriverError(f"{self.name}: no lock channel {channel!r} (this board has 0 to {self.coils - 1})")
        return self.first_coil + channel

    def _write_coil(self, address: int, on: bool, what: str, attempts: int | None = None) -> Awaitable[Any]:
        unit = self.unit

        def send(c: Any) -> Awaitable[Any]:
            return c.write_coil(address, on, device_id=unit)

        def check(r: Any) -> None:
            if r.function_code != 5 or r.address != address or bool(r.bits and r.bits[0]) != on:
                raise _BadReply(f"reply does not echo the write to coil {address} ({r})")

        return self.bus.call(self, what, send, check, attempts)

    async def _energise(self, channel: int, ms: int) -> None:
        """One transaction: the coil on (generic) or a hardware-timed flash (waveshare)."""
        if self._misconfigured:
            raise DriverUnavailable(f"{self.name}: {self._misconfigured}")
        address = self._coil(channel)
        # A silent board gets one attempt, not the full retries: the scan fails fast.
        attempts = 1 if self._failing else None
        self._starting += 1
        try:
            if self.profile == "waveshare":
                await self._flash(address, ms, attempts)
            else:
                await self._write_coil(address, True, f"lock {channel} on", attempts)
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

        def send(c: Any) -> Awaitable[Any]:
            return c.execute(False, WaveshareFlashRequest(flash, value, dev_id=unit))

        def check(r: Any) -> None:
            if r.function_code != 5 or r.address != flash:
                raise _BadReply(f"reply does not echo the flash command to 0x{flash:04x} ({r})")

        await self.bus.call(self, f"lock {address - self.first_coil} flash {value * 100} ms", send, check, attempts)

    async def _deenergise(self, channel: int) -> None:
        # Generic: this is the off. Waveshare: the board has already switched the
        # relay off by itself; the plain off is a backstop for a board that did not
        # take the flash command, and costs nothing in the scan's hot path.
        await self._write_coil(self._coil(channel), False, f"lock {channel} off")

    async def _all_off(self) -> None:
        """Every coil of the board off, in one request."""
        if self._misconfigured:
            raise DriverUnavailable(f"{self.name}: {self._misconfigured}")
        unit, first, n = self.unit, self.first_coil, self.coils

        def send(c: Any) -> Awaitable[Any]:
            return c.write_coils(first, [False] * n, device_id=unit)

        def check(r: Any) -> None:
            if r.function_code != 15 or r.address != first or r.count != n:
                raise _BadReply(f"reply does not echo the write of coils {first}..{first + n - 1} ({r})")

        await self.bus.call(self, "all relays off", send, check)
        self._all_off_pending = False

    def _ensure_off(self, channel: int, reason: str) -> None:
        """Keep switching ``channel`` off in the background until the board confirms it."""
        if channel in self._off_tasks:
            return
        task = asyncio.create_task(self._off_until_confirmed(channel, reason), name=f"{self.name}-ensure-off-{channel}")
        self._off_tasks[channel] = task
        task.add_done_callback(lambda t, ch=channel: self._off_tasks.pop(ch, None) if self._off_tasks.get(ch) is t
                               else None)

    async def _off_until_confirmed(self, channel: int, reason: str) -> None:
        # Until the board confirms, nobody knows whether the solenoid is energised:
        # the lock is in fault from now, not only after a retry has failed.
        log.error("%s: lock %s may still be energised (%s); switching it off until the board confirms",
                  self.name, channel, reason)
        self.report_lock_fault(channel, f"relay may still be on: {reason}")
        delay = 0.05
        while True:
            try:
                await self._write_coil(self._coil(channel), False, f"lock {channel} off (safety)")
                break
            except DriverError as e:
                log.debug("%s: safety off of lock %s failed: %s", self.name, channel, e)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 2.0)
        log.warning("%s: lock %s confirmed off", self.name, channel)
        self.report_lock_fault(channel, None)

    # -- polling (called by the bus task) ----------------------------------------------

    def _poll_what(self) -> str:
        if self.inputs == 0:
            return "read coils"
        return "read discrete inputs" if self.input_kind == "discrete" else "read input registers"

    def _poll_send(self) -> Callable[[Any], Awaitable[Any]]:
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

    def _poll_check(self) -> Callable[[Any], tuple[int, ...]]:
        kind = "coils" if self.inputs == 0 else self.input_kind
        n = self.coils if self.inputs == 0 else self.inputs
        fc = {"coils": 1, "discrete": 2, "input-register": 4}[kind]

        def check(r: Any) -> tuple[int, ...]:
            if r.function_code != fc:
                raise _BadReply(f"expected function {fc}, got {r.function_code}")
            if fc == 4:
                regs = r.registers
                if len(regs) != n:
                    raise _BadReply(f"{len(regs)} registers in the reply, expected {n}")
                return tuple(1 if v else 0 for v in regs)
            bits = r.bits
            if len(bits) < n:
                raise _BadReply(f"{len(bits)} bits in the reply, expected {n}")
            return tuple(map(int, bits[:n]))

        return check

    def _poll_slot(self) -> PollSlot:
        if self._slot is None:
            fc, first, n = self._poll_spec()
            self._slot = PollSlot(self, self.unit, fc, first, n)
        return self._slot

    def _poll_request(self) -> _Request:
        if self._poll_req is None:
            self._poll_req = _Request(self, self._poll_what(), self._poll_send(), self._poll_check(),
                                      self.bus.retries + 1)
        # A silent board gets one attempt per retry interval, so it cannot stall the bus.
        self._poll_req.attempts = 1 if self._failing else self.bus.retries + 1
        return self._poll_req

    def _poll_done(self, levels: tuple[int, ...]) -> None:
        self._polls += 1
        now = self.bus._loop.time()  # type: ignore[union-attr]
        self._due = next_poll_at(now, self.period_s)
        if self._inputs_refused:
            self._inputs_refused = False
            log.warning("%s: inputs readable again", self.name)
            self.report_status(True, "")
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

    def _check_coils(self, levels: tuple[int, ...]) -> None:
        """A relay on that we are not pulsing is switched off (a pulse lost to a crash, or a stray write)."""
        if self._starting:
            return
        for ch, level in enumerate(levels):
            if level and ch not in self.energised and ch not in self._off_tasks:
                log.error("%s: relay %s is on without a pulse: switching it off", self.name, ch)
                self._ensure_off(ch, "found on without a pulse")

    def _poll_refused(self, error: DriverError) -> None:
        """The board answers but refuses the poll (a wrong input address in the config, usually)."""
        self._due = self.bus._loop.time() + max(self.period_s, self.offline_retry_max_s)  # type: ignore[union-attr]
        self._last_levels = None
        for ch in range(self.inputs):
            self._set_door(ch, DoorState.UNKNOWN)
        if not self._inputs_refused:
            self._inputs_refused = True
            log.error("%s: door sensors unreadable: %s", self.name, error)
            self.report_status(True, f"door sensors unreadable: {error}")

    # -- status (called by the bus task) ---------------------------------------------------

    def _heard(self) -> None:
        """The board answered something."""
        self._unanswered = 0
        if self._failing:
            self._failing = False
            self._backoff = self.offline_retry_first_s
            self.report_status(True, "")  # logs "recovered"
            self._due = self.bus._loop.time()  # type: ignore[union-attr]
            self.bus.due_changed(self)
        if self._all_off_pending and not self.energised and not self._starting and self._polling:
            self._all_off_pending = False  # set again if this fails
            asyncio.get_running_loop().create_task(self._deferred_all_off(), name=f"{self.name}-all-off")

    async def _deferred_all_off(self) -> None:
        try:
            await self.all_off()
            log.warning("%s: every relay switched off (the board was not answering at start)", self.name)
        except DriverError as e:
            self._all_off_pending = True
            log.debug("%s: deferred all-off failed: %s", self.name, e)

    def _silent(self, error: DriverError) -> None:
        """The board did not answer (after the request's attempts)."""
        now = self.bus._loop.time()  # type: ignore[union-attr]
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
        self._due = now + self._backoff
        self.bus.due_changed(self)

    def _bus_down(self, detail: str) -> None:
        self._failing = True
        self._go_offline(f"bus {self.bus.name} down: {detail}")

    def _go_offline(self, detail: str) -> None:
        self.report_status(False, detail)
        self._last_levels = None
        for ch in range(self.inputs):
            self._set_door(ch, DoorState.UNKNOWN)

