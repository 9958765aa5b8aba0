"""One Modbus bus (an RS-485 line or a TCP gateway) and the task that owns it.

One :class:`ModbusBus` per ``[buses.NAME]`` section owns one client (the
lean RTU client of :mod:`modbus_rtu` on a serial line, the lean TCP client of
:mod:`modbus_tcp` on a gateway) and one task. That task is the only thing that sends commands (lock
on/off, all off): from a queue, one request in flight, a gap between frames, a
timeout and a bounded number of attempts per request. Commands always go
before polls, so a scan is never stuck behind a poll cycle, and off-writes go
before other commands. Polls run board by board at each board's ``poll_hz``: on
a TCP gateway the task sends them too; on an RS-485 line the RTU client's line
thread sends them and the bus judges only the polls with news
(:mod:`modbus_line_side`). A pulse's length is the hardware's, not the queue's:
near an off-write no request goes to a doubtful board (:mod:`modbus_hold`).

The bus knows its boards through :class:`Polled`, the few public methods
by which a board (:mod:`modbus_board`) is scheduled and told how its
requests went; a board reaches the bus through :meth:`ModbusBus.call` and
the scheduling calls below it.

Bus-level timing (frame gap, timeouts, poll periods, reconnect backoff) runs
on real time: it paces a physical line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Any

from lockerd.drivers.base import Driver, Parts
from lockerd.drivers.modbus_frame import BadFrame, RawCoilWrite, rtu_frame_gap_ms
from lockerd.drivers.modbus_hold import DoubtfulHolds
from lockerd.drivers.modbus_line import LineLost
from lockerd.drivers.modbus_line_side import RtuLineSide
from lockerd.drivers.modbus_request import COMMON_ERRORS, Judge, Polled, Request
from lockerd.drivers.modbus_rtu import RtuClient
from lockerd.drivers.modbus_tcp import TcpClient
from lockerd.drivers.options import BAUD_RATES, Opt, Spec, with_defaults
from lockerd.drivers.wakeup import Wakeup

from lockerd.clock import Clock
from lockerd.errors import DriverError, DriverUnavailable

log = logging.getLogger(__name__)

RTU_OPTIONS: Spec = {
    "device": Opt("path", doc="serial device, e.g. /dev/serial/by-id/..."),
    "baudrate": Opt("int", 9600, choices=BAUD_RATES),
    "parity": Opt("str", "N", choices=("N", "E", "O")),
    "stopbits": Opt("int", 1, choices=(1, 2)),
    "bytesize": Opt("int", 8, choices=(7, 8)),
    "timeout_ms": Opt("int", 200, min=10, max=10000),
    "retries": Opt("int", 1, min=0, max=5),
    "frame_gap_ms": Opt("float", None, min=0, max=1000,
                        doc="silence between frames; by default 3.5 characters (1.75 ms above 19200 baud)"),
}
TCP_OPTIONS: Spec = {
    "host": Opt("str"),
    "port": Opt("int", 502, min=1, max=65535),
    "timeout_ms": Opt("int", 500, min=10, max=10000),
    "retries": Opt("int", 1, min=0, max=5),
    "frame_gap_ms": Opt("float", 0.0, min=0, max=1000),
}


class ModbusBus(RtuLineSide, DoubtfulHolds, Driver):
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

    def __init__(self, name: str, clock: Clock, kind: str, options: Mapping[str, Any]):
        super().__init__(name, clock)
        if kind not in ("rtu", "tcp"):
            raise ValueError(f"bus {name}: unknown type {kind!r} (expected 'rtu' or 'tcp')")
        self.kind = kind
        self.options = o = with_defaults(RTU_OPTIONS if kind == "rtu" else TCP_OPTIONS, options)
        self.timeout_s = float(o["timeout_ms"]) / 1000
        self.retries = int(o["retries"])
        gap_ms = o["frame_gap_ms"]
        if gap_ms is None:
            gap_ms = rtu_frame_gap_ms(int(o["baudrate"])) if kind == "rtu" else 0.0
        self.gap_s = float(gap_ms) / 1000
        self.where = str(o.get("device")) if kind == "rtu" else f"{o.get('host')}:{o['port']}"
        self._errors = COMMON_ERRORS
        self._judge = Judge(name, self.timeout_s, (LineLost,), (BadFrame,))
        self.boards: list[Polled] = []
        self._task_sent = 0  # frames the task sent: commands, and the polls of a TCP bus (see transactions)
        self._polls_sent_before = 0  # poll frames sent by the RTU clients dropped so far
        self.connected = False
        self._client: Any = None
        self._commands: deque[Request] = deque()
        self._off_writes: deque[Request] = deque()  # commands with ``off``: before the others
        self._offs: dict[Hashable, tuple[float, list[asyncio.TimerHandle]]] = {}  # expected off-writes: due at
        self._held: set[Polled] = set()  # RTU: boards whose poll slot the bus parked for an off-write
        self._missed: dict[Polled, float] = {}  # loop time each board last left an attempt unanswered
        self._wakeup = Wakeup()  # the task's wait for a command, a schedule change or close
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._last_end = 0.0  # loop time the last transaction ended
        self._silent_streak = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        # RTU: a command is queued or being performed, so the line thread starts no poll.
        self.line_held = False
        # How long the task waits for a command's reply. Both clients time a request
        # from the moment it is sent (on RTU that may follow a poll in flight and the
        # gap): the task's own bound only catches a client that never answers at all.
        self._await_s = 2 * self.timeout_s + self.gap_s + 0.25

    @property
    def client(self) -> Any:
        """The client on the line now, None while there is none; each reconnect makes a new one."""
        return self._client

    @property
    def transactions(self) -> int:
        """Frames sent, retries included: benchmarks and tests count them."""
        rtu = self._client.polls_sent if isinstance(self._client, RtuClient) else 0
        return self._task_sent + self._polls_sent_before + rtu

    @classmethod
    def build(cls, kind: str, name: str, options: Mapping[str, Any], parts: Parts) -> ModbusBus:
        return cls(name, parts.clock, kind, options)

    # -- life ------------------------------------------------------------------

    def attach(self, board: Polled) -> None:
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
        except Exception as e:  # start must not stop the daemon, whatever goes wrong opening the bus
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
        for _at, timers in self._offs.values():
            for t in timers:
                t.cancel()
        self._offs.clear()
        self._held.clear()

    # -- the API boards use ---------------------------------------------------------

    async def call(self, board: Polled, what: str, send: Callable[[Any], Awaitable[Any]],
                   check: Callable[[Any], Any], attempts: int | None = None, *, off: Hashable | None = None,
                   pulse: bool = False) -> Any:
        """Queue a command ahead of every poll and wait for its result.

        ``off`` marks an off-write: it goes before the other commands, and ends
        the hold :meth:`expect_off` began under the same key. ``pulse`` marks an
        on-write a scan waits for: a board that answers lately gets it at once.
        """
        if self._closing or self._loop is None:
            raise DriverUnavailable(f"{board.name}: bus {self.name} is not running")
        if not self.connected:
            raise DriverUnavailable(f"{board.name}: bus {self.name} is down ({self.detail})")
        fut = self._loop.create_future()
        n = self.retries + 1 if attempts is None else max(1, attempts)
        req = Request(board, what, send, check, n, fut, off, pulse)
        (self._commands if off is None else self._off_writes).append(req)
        self.line_held = True  # no new poll on an RTU line from now: the command goes next
        self._wake()
        return await fut

    def now(self) -> float:
        """The loop time polls are scheduled on (0 before the bus started)."""
        return self._loop.time() if self._loop is not None else 0.0

    def flash_request(self, address: int, value: int, unit: int) -> Any:
        """A write-coil request carrying a raw value (a board's own command), for this bus's client."""
        return RawCoilWrite(address, value, unit)

    def poll_soon(self, board: Polled) -> None:
        """Make ``board`` due for a poll now (after start or recovery)."""
        if self._loop is not None:
            board.due = self._loop.time()
            if isinstance(self._client, RtuClient):
                if self._poll_held(board, board.due):
                    self._held.add(board)  # its slot stays parked: resumed once the off-write is done
                else:
                    self._client.resume(board.poll_slot(), board.due, None)
            else:
                self._wake()

    def stop_polling(self, board: Polled) -> None:
        self._held.discard(board)
        if isinstance(self._client, RtuClient):
            self._client.park(board.poll_slot())

    def due_changed(self, board: Polled) -> None:
        """``board.due`` was set outside a poll's judgement (a command's outcome): tell the line thread."""
        if isinstance(self._client, RtuClient):
            if board.polling and board not in self._held and self._poll_held(board, self.now()):
                self._client.park(board.poll_slot())  # it just left a command unanswered, near an off-write
                self._held.add(board)
            else:
                self._client.reschedule(board.poll_slot(), board.due)

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
                baudrate=int(o["baudrate"]),
                bytesize=int(o["bytesize"]),
                parity=str(o["parity"]),
                stopbits=int(o["stopbits"]),
                name=self.name,
                timeout_s=self.timeout_s,
                gap_s=self.gap_s,
                owner=self,
            )
        else:
            self._client = TcpClient(str(self.options["host"]), int(self.options["port"]), timeout_s=self.timeout_s,
                                     name=self.name)
        try:
            ok = bool(await self._client.connect())
        except Exception as e:  # noqa: BLE001 - the clients return False for the failures they know, not every one
            # Whatever it was, the bus reports itself offline and backs off; the task's
            # last-resort handler would retry every 0.1 s and report nothing.
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
        self.report_status(online=True)
        log.info("%s: connected to %s", self.name, self.where)
        now = self._loop.time() if self._loop else 0.0
        for b in self.boards:
            b.due = now
        if isinstance(self._client, RtuClient):
            self._line_connected(self._client, now)
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
        self.report_status(online=False, detail=detail)
        self._fail_pending(DriverUnavailable(f"{self.name}: {detail}"))
        if was or any(b.online for b in self.boards):
            for b in self.boards:
                b.bus_down(detail)
        # Found outside the task (a poll judged on the loop): the task may be waiting
        # for a command and must reconnect now.
        self._wake()

    def _fail_pending(self, exc: DriverError) -> None:
        for queue in (self._off_writes, self._commands):
            while queue:
                req = queue.popleft()
                if req.future is not None and not req.future.done():
                    req.future.set_exception(exc)

    def _wake(self) -> None:
        self._wakeup.wake()

    async def _sleep_until_work(self, delay: float | None, commands_wake: bool = True) -> None:
        """Wait for a command (or close) or until ``delay`` seconds have passed, beating meanwhile."""
        loop = self._loop or asyncio.get_running_loop()
        end = None if delay is None else loop.time() + delay
        while not self._closing:
            self.beat()
            wait = self.beat_every_s if end is None else min(self.beat_every_s, end - loop.time())
            if wait <= 0:
                return
            if await self._wakeup.wait(wait, commands_wake):
                return  # woken: a command, a schedule change or close

    async def _respect_gap(self) -> None:
        if self.gap_s > 0 and not isinstance(self._client, RtuClient):  # an RTU client keeps the gap itself
            wait = self._last_end + self.gap_s - self._loop.time()  # type: ignore[union-attr]
            if wait > 0:
                await asyncio.sleep(wait)

    def _next_poll(self, now: float) -> Polled | None:
        best: Polled | None = None
        for b in self.boards:
            if b.polling and (best is None or b.due < best.due) and not self._poll_held(b, now):
                best = b
        return best

    def _next_command(self, now: float) -> Request | None:
        """The command to send now: off-writes first, then the others in order, none that must wait."""
        for queue in (self._off_writes, self._commands):
            for req in queue:
                if req.future is not None and req.future.done():
                    continue  # the caller gave up before it was sent: dropped below
                if not self._command_held(req, now):
                    return req
        return None

    def _drop_abandoned(self) -> None:
        for queue in (self._off_writes, self._commands):
            if any(r.future is not None and r.future.done() for r in queue):
                kept = [r for r in queue if r.future is None or not r.future.done()]
                queue.clear()
                queue.extend(kept)

    async def _next_request(self) -> Request | None:
        """The next transaction: a queued command first (off-writes before the rest), else the most overdue poll.

        On an RTU line polls are not returned: the line thread runs them (see
        "the poll path" below) while the task waits here for a command.
        """
        loop = self._loop
        while not self._closing:
            self._drop_abandoned()
            req = self._next_command(loop.time())  # type: ignore[union-attr]
            if req is not None:
                await self._respect_gap()
                if self._next_command(loop.time()) is req:  # type: ignore[union-attr]
                    (self._commands if req.off is None else self._off_writes).remove(req)
                    return req
                continue  # an off-write arrived during the gap, or this one must wait now
            if isinstance(self._client, RtuClient):
                self.line_held = False
                self._client.wake()  # polls may start again
                await self._wait_for_command()
                if not self._client_connected():
                    return None
                continue
            now = loop.time()  # type: ignore[union-attr]
            board = self._next_poll(now)
            if board is not None and board.due <= now:
                await self._respect_gap()
                if self._off_writes or self._commands:
                    continue  # a command arrived during the gap: it goes first
                return board.poll_request()
            await self._sleep_until_work(None if board is None else board.due - now)
            if not self._client_connected():
                return None
        return None

    async def _perform(self, req: Request) -> None:
        """Run one request with timeout and bounded attempts, then tell the caller and the board."""
        loop = self._loop
        error: DriverError | None = None
        silent = True  # no usable answer from the board
        for attempt in range(req.attempts):
            if req.future is not None and req.future.done():
                return  # caller gone before this attempt: nothing was sent for it
            if attempt:
                if req.future is None and (self._off_writes or self._commands
                                           or self._poll_held(req.board, loop.time())):  # type: ignore[union-attr]
                    # A poll never delays a command with its retries, nor an off-write
                    # falling due: poll again after it, without judging the board yet.
                    req.board.due = loop.time()  # type: ignore[union-attr]
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
            except self._errors as e:
                exc = e
            finally:
                self._last_end = loop.time()  # type: ignore[union-attr]
                if req.off is not None:
                    self._off_sent(req.off)
            value, error, retry, silent = self._judge(req, reply, exc)
            if error is None:
                self._succeeded(req, value)
                return
            if silent:
                self._missed[req.board] = self._last_end
            if not retry:
                break
        assert error is not None
        self._failed(req, error, silent)

    def _succeeded(self, req: Request, value: Any) -> None:
        self._silent_streak = 0
        req.board.heard()
        if req.future is None:
            req.board.poll_done(value)
        elif not req.future.done():
            req.future.set_result(value)

    def _failed(self, req: Request, error: DriverError, silent: bool) -> None:
        """Every attempt failed (or one that is not worth repeating)."""
        board = req.board
        if isinstance(error, DriverUnavailable):
            self._went_down(str(error))
        elif silent:
            self._silent_streak += 1
            board.silent(error)
            if self.kind == "tcp" and self._silent_streak >= self.tcp_silent_limit:
                log.warning("%s: %d requests in a row without any reply: reconnecting", self.name,
                            self._silent_streak)
                self._drop_client()
        else:
            board.heard()
        if req.future is None:
            if not silent:
                board.poll_refused(error)
        elif not req.future.done():
            req.future.set_exception(error)
