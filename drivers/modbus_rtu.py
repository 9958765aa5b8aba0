"""A lean Modbus RTU master for the RS-485 line, framed by hand and run by a thread of its own.

Door polling is the only thing the daemon does all day: 16 boards x 10 polls a
second on a busy line. Two choices keep it inside 2 % of a core:

- Framing by hand (:mod:`modbus_frame`): pymodbus's general machinery cost
  more than the whole budget. A reply is taken only when it is whole and right
  (CRC, unit id, function code, length), an exception reply comes back as an
  error result naming its code, leading noise is skipped and bytes left over
  from a late reply are dropped. A board that answers after the timeout is
  never taken as answering the next request: see "late replies" below.
- A thread for the line. On the event loop every poll costs two passes of
  asyncio's machinery (a timer for its due time, a reader callback for its
  reply): the bare I/O alone measured 1.9 % of a core. A thread blocked in
  epoll did the same I/O for 0.9 %. So the line thread sends the polls
  itself, on each board's schedule (polls of one rate go as one train per
  cycle: see ``next_poll_at``), and wakes the event loop only when a
  poll has news: a reply unlike the last one (a door moved), a board that does
  not answer, a wrong or refused reply. A reply equal to the last one is
  counted and nothing else happens; the board decided, on the loop, that it
  needs nothing more (see ``PollSlot``).

The port is opened with pyserial (raw mode, the line settings, an exclusive
lock) and the thread waits in epoll on its non-blocking descriptor and on an
eventfd the loop writes to wake it: it never blocks in a read.

Commands (lock on, off, flash, all off) come from the bus task on the loop
through the subset of pymodbus's client API that :mod:`modbus` uses
(``write_coil(address, value, device_id=)`` and friends, ``execute`` for a
custom request), and return futures with replies that carry the same
attributes as pymodbus's. A command goes on the wire at once from the loop
when the line is free, or next, before any poll, when it is not. The thread
keeps the line's rules for both: one request in flight, a gap between frames,
a timeout from the moment a request is sent. Judging replies, retrying and
board state stay on the loop, in the bus.

Late replies: see :mod:`modbus_line`.

The loop and the thread share the request in flight, the command queue and the
poll schedule under one lock, held for microseconds and never across a wait.
Results reach the loop with ``call_soon_threadsafe``; otherwise the thread
only reads a few flags of the bus (``LineOwner``) and of the boards.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from lockerd.drivers import modbus_frame as codec
from lockerd.drivers.modbus_frame import BadFrame, RtuReply, decode, take_reply
from lockerd.drivers.modbus_line import (
    Command,
    LateReplies,
    LineLost,
    PollSlot,
    next_poll_at,
    settle,
)
from lockerd.drivers.tty import open_problem, read_ready

log = logging.getLogger(__name__)

# A call for the loop: a function and its arguments, for call_soon_threadsafe.
Call = tuple[Any, ...]

READ_SIZE = 512
IDLE_WAIT_S = 1.0  # the longest the thread sleeps with nothing to do (beats and wake-ups cut it shorter)
JOIN_S = 2.0


class LineOwner(Protocol):
    """What the line thread needs from the bus that owns it (:class:`modbus.ModbusBus`)."""

    beat_every_s: float  # while polls may run, the thread tells the loop this often that it is alive
    line_held: bool  # a command is queued or being performed on the loop: no poll may start

    def line_polled(self, client: RtuClient, slot: PollSlot, reply: RtuReply | None,
                    exc: Exception | None) -> None:
        """On the loop: a poll with news, or one that failed; ``slot`` stays parked until resumed."""

    def line_beat(self, client: RtuClient) -> None:
        """On the loop: the line thread is cycling."""

    def line_lost(self, client: RtuClient, detail: str) -> None:
        """On the loop: the port is gone and the line thread has stopped."""


class RtuClient:
    """Modbus RTU master on one serial port; its line thread runs while the port is open."""

    def __init__(self, device: str, *, baudrate: int = 9600, bytesize: int = 8, parity: str = "N",
                 stopbits: int = 1, name: str = "rtu", timeout_s: float = 0.2, gap_s: float = 0.004,
                 owner: LineOwner) -> None:
        self.device = device
        self.baudrate, self.bytesize, self.parity, self.stopbits = baudrate, bytesize, parity, stopbits
        self.name = name
        self.timeout_s, self.gap_s = timeout_s, gap_s
        self.last_error = ""
        self.polls_sent = 0  # poll frames the thread sent (the bus counts the commands itself)
        self._owner = owner
        self._serial: Any = None
        self._fd: int | None = None
        self._wake_fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._lost = ""  # why the line is gone, once it is
        # Shared with the line thread, under the lock:
        self._lock = threading.Lock()
        self._inflight: Command | PollSlot | None = None
        self._queue: deque[Command] = deque()
        self._slots: list[PollSlot] = []
        self._last_end = 0.0  # monotonic time the last request ended (reply, timeout or failure)
        self._buf = bytearray()
        self.late = LateReplies(name, timeout_s)  # replies owed by units that answered after their timeout
        self._sent_listener: Callable[[bytes], None] | None = None

    # -- the port and the thread (loop side) ----------------------------------------------

    @property
    def connected(self) -> bool:
        return self._fd is not None and not self._lost

    async def connect(self) -> bool:
        """Open the port and start the line thread; False (with ``last_error`` said) when it is missing or busy."""
        import serial  # pyserial: imported by the driver that needs it

        self.close()
        self._loop = asyncio.get_running_loop()
        try:
            ser = serial.Serial(self.device, self.baudrate, bytesize=self.bytesize, parity=self.parity,
                                stopbits=self.stopbits, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            self.last_error = open_problem(self.device, e, f"[buses.{self.name}].device")
            return False
        self._serial, self._fd = ser, ser.fileno()
        self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._stopping, self._lost, self.last_error = False, "", ""
        self._inflight, self._last_end = None, 0.0
        self._buf.clear()
        self.late.owed.clear()
        self._thread = threading.Thread(target=self._run, name=f"rtu-{self.name}", daemon=True)
        self._thread.start()
        return True

    def close(self, reason: str = "") -> None:
        """Stop the thread and release the port; commands not yet answered fail with ``reason``."""
        thread, self._thread = self._thread, None
        self._stopping = True
        if thread is not None:
            self.wake()
            thread.join(JOIN_S)
            if thread.is_alive():
                log.error("%s: the line thread did not stop within %.0f s", self.name, JOIN_S)
        waiting = self._take_commands()
        fd, ser, self._fd, self._serial = self._wake_fd, self._serial, None, None
        self._wake_fd = None
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()
        if fd is not None:
            os.close(fd)
        exc = LineLost(reason or self._lost or f"{self.device} closed")
        for c in waiting:
            settle(c.future, None, exc)

    def _take_commands(self) -> list[Command]:
        """Clear the line of commands, the one in flight and those queued: none will be answered."""
        with self._lock:
            commands = [c for c in (self._inflight, *self._queue) if isinstance(c, Command)]
            self._inflight = None
            self._queue.clear()
        return commands

    def on_sent(self, listener: Callable[[bytes], None] | None) -> None:
        """Have ``listener(frame)`` called as each request frame has been written (None: no more).

        For benchmarks timing a frame leaving for the line. It runs with the line's
        lock held, on the loop or on the line thread: it must be quick and thread-safe.
        """
        self._sent_listener = listener

    def wake(self) -> None:
        """Have the line thread look again at once (a command, a schedule change, the hold lifted)."""
        fd = self._wake_fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    # -- the poll schedule (loop side) ------------------------------------------------------

    def set_polls(self, slots: list[PollSlot]) -> None:
        with self._lock:
            self._slots = list(slots)
        self.wake()

    def resume(self, slot: PollSlot, due: float, quiet_reply: bytes | None) -> None:
        """Hand ``slot`` back to the thread, due at ``due``; the frame ``quiet_reply`` needs the loop no more."""
        with self._lock:
            slot.due, slot.quiet_reply, slot.parked = due, quiet_reply, False
        self.wake()

    def reschedule(self, slot: PollSlot, due: float) -> None:
        """Move a running slot's next poll (a parked one gets its time when it is resumed)."""
        with self._lock:
            if slot.parked:
                return
            slot.due = due
        self.wake()

    def park(self, slot: PollSlot) -> None:
        """No more polls for ``slot`` until it is resumed (a poll in flight still reports)."""
        with self._lock:
            slot.parked = True

    # -- commands (loop side; the subset of pymodbus's client API the bus uses) -------------

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> asyncio.Future[RtuReply]:
        return self.send(codec.read_frame(device_id, 1, address, count), device_id, 1, count)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> asyncio.Future[RtuReply]:
        return self.send(codec.read_frame(device_id, 2, address, count), device_id, 2, count)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> asyncio.Future[RtuReply]:
        return self.send(codec.read_frame(device_id, 4, address, count), device_id, 4, count)

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> asyncio.Future[RtuReply]:
        return self.send(codec.write_coil_frame(device_id, address, value), device_id, 5, 1)

    def write_coils(self, address: int, values: list[bool], *, device_id: int = 1) -> asyncio.Future[RtuReply]:
        return self.send(codec.write_coils_frame(device_id, address, values), device_id, 15, len(values))

    def execute(self, no_response_expected: bool, request: Any) -> asyncio.Future[RtuReply]:
        """A request object of pymodbus's shape (``function_code``, ``dev_id``, ``encode()``), e.g. a flash pulse."""
        whole = codec.write_request_frame(no_response_expected, request)
        return self.send(whole, whole[0], whole[1], 1)

    def send(self, request: bytes, unit: int, fc: int, count: int) -> asyncio.Future[RtuReply]:
        """Send one request frame, now if the line is free, else next; a future for its reply.

        The thread fails the future with TimeoutError ``timeout_s`` after the
        frame went out; the caller may bound its own wait too.
        """
        if not self.connected or self._loop is None:
            raise LineLost(f"{self.device} is not open ({self.last_error or 'not connected'})")
        c = Command(request, unit, fc, count, self._loop.create_future())
        try:
            with self._lock:
                now = time.monotonic()
                if (self._inflight is None and not self._queue and now >= self._last_end + self.gap_s
                        and not self.late.owes(unit, now)):
                    self._write(c, now)  # the usual case: no hop through the thread on the way out
                else:
                    self._queue.append(c)
        finally:
            self.wake()  # the thread keeps the deadline, or sends it when the line is free
        return c.future

    # -- the line thread ---------------------------------------------------------------------

    def _write(self, item: Command | PollSlot, now: float) -> None:
        """Put one request on the wire (lock held) and make it the one in flight."""
        request = item.request
        try:
            n = os.write(self._fd, request)  # type: ignore[arg-type]
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._lost = self.last_error = f"{self.device}: write failed ({e.strerror or e})"
            raise LineLost(self.last_error) from e
        if n != len(request):
            # A request is a few bytes: a full transmit buffer means the line is stuck.
            raise LineLost(f"{self.device}: could not write a {len(request)}-byte request ({n} written)")
        # Whatever is buffered now answers nothing we asked: a late or mangled reply.
        self._buf.clear()
        item.deadline = now + self.timeout_s
        self._inflight = item
        if self._sent_listener is not None:
            try:
                self._sent_listener(request)
            except Exception:  # an observer must never stop the line
                log.exception("%s: sent-frame listener failed", self.name)

    def _run(self) -> None:
        # This loop runs twice per poll, all day: what it touches is kept in locals.
        owner, fd, wake_fd, lock, step = self._owner, self._fd, self._wake_fd, self._lock, self._step
        monotonic, readable, post = time.monotonic, self._readable, self._post
        news: list[Call] = []  # calls for the loop, made once the lock is released
        ep = select.epoll(2)
        try:
            ep.register(fd, select.EPOLLIN)  # type: ignore[arg-type]
            ep.register(wake_fd, select.EPOLLIN)  # type: ignore[arg-type]
            wait_on = ep.poll
            next_beat = 0.0
            while not self._stopping and not self._lost:
                now = monotonic()
                with lock:
                    wait = step(now, news)
                if now >= next_beat:
                    # A held line (a command on the loop) does not beat: the bus task does,
                    # once its command is done, so a task stuck in one stops the beats.
                    if not owner.line_held:
                        news.append((owner.line_beat, self))
                    next_beat = now + owner.beat_every_s
                if news:
                    post(news)
                until_beat = next_beat - now
                for ready, _ in wait_on(wait if wait < until_beat else until_beat):
                    if ready == fd:
                        readable(news)
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.eventfd_read(wake_fd)  # type: ignore[arg-type]
                if news:
                    post(news)
        except Exception as e:  # a bug here must not leave the line silently unpolled: the bus reconnects
            log.exception("%s: the line thread failed", self.name)
            self._lost = self._lost or f"{self.device}: line thread failed ({e})"
        finally:
            ep.close()
            if self._lost and not self._stopping:
                self._give_up()

    def _give_up(self) -> None:
        """The line is gone: fail what waits and tell the bus (thread side)."""
        self.last_error = self._lost
        exc = LineLost(self._lost)
        news: list[Call] = [(settle, c.future, None, exc) for c in self._take_commands()]
        news.append((self._owner.line_lost, self, self._lost))
        self._post(news)

    def _post(self, news: list[Call]) -> None:
        try:
            for call in news:
                self._loop.call_soon_threadsafe(*call)  # type: ignore[union-attr]
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self._stopping = True
        news.clear()

    def _step(self, now: float, news: list[Call]) -> float:
        """Do what is due on the line (lock held); how long the thread may sleep."""
        p = self._inflight
        if p is not None:
            if now < p.deadline:
                return p.deadline - now
            self._timed_out(p, now, news)
        gap_end = self._last_end + self.gap_s
        queue = self._queue
        while queue and queue[0].future.done():
            queue.popleft()  # its caller gave up before it was sent
        owed = self.late.owed
        wait = self.late.wait(now, IDLE_WAIT_S) if owed else IDLE_WAIT_S
        if queue:
            # Commands in order, but one to a unit that owes a late reply waits for it behind the others.
            c = queue[0] if not owed else next((c for c in queue if c.unit not in owed), None)
            if c is not None:
                if now < gap_end:
                    return gap_end - now
                queue.remove(c)
                return self._send(c, now, news)
        if self._owner.line_held:
            return wait  # a command is on its way: polls wait for it (the bus wakes us after)
        best: PollSlot | None = None
        best_due = math.inf
        for s in self._slots:
            if s.due < best_due and not s.parked and s.unit not in owed:
                best, best_due = s, s.due
        if best is None:
            return wait
        at = best_due if best_due > gap_end else gap_end
        if at > now:
            return min(at - now, wait)
        self.polls_sent += 1
        return self._send(best, now, news)

    def _timed_out(self, p: Command | PollSlot, now: float, news: list[Call]) -> None:
        """``p`` got no reply in time (lock held): its unit owes one, and whatever came so far is dropped."""
        self._buf.clear()
        self._finish(p, None, self.late.timed_out(p.unit, p.fc, p.length, p.deadline - self.timeout_s), now, news)

    def _send(self, item: Command | PollSlot, now: float, news: list[Call]) -> float:
        """Write ``item``; how long until its reply is late (0 when it failed: the next may go)."""
        try:
            self._write(item, now)
        except LineLost as e:
            self._finish(item, None, e, now, news)
            return 0.0
        return self.timeout_s

    def _finish(self, item: Command | PollSlot, reply: RtuReply | None, exc: Exception | None, now: float,
                news: list[Call]) -> None:
        """``item`` is over (lock held): its reply or error goes to the loop."""
        if self._inflight is item:
            self._inflight = None
        self._last_end = now
        if reply is not None:
            self.late.in_time(item.unit, item.fc)
        if isinstance(item, Command):
            news.append((settle, item.future, reply, exc))
        else:
            item.parked = True
            news.append((self._owner.line_polled, self, item, reply, exc))

    def _readable(self, news: list[Call]) -> None:
        data, gone = read_ready(self._fd, READ_SIZE)  # type: ignore[arg-type]
        if gone:
            self._lost = self.last_error = f"{self.device}: {gone}"
            return
        if not data:
            return
        with self._lock:
            p = self._inflight
            if p is not None and data == p.quiet_reply and not self._buf and p.owner.quiet():
                self._quiet_poll(p, time.monotonic())  # the usual poll: one read, one compare
                return
            if p is None and not self.late.owed:
                return  # nobody is waiting: noise, or a reply given up on; dropped
            self._buf += data
            now = time.monotonic()
            if self.late.owed and not self.late.take(self._buf, now):
                return  # a late reply is still arriving
            if p is None:
                self._buf.clear()  # the rest answers nothing we wait for
                return
            self._match(p, self._buf, now, news)

    def _quiet_poll(self, p: PollSlot, now: float) -> None:
        """The same reply as last time, and the board needs nothing more (lock held): counted, nobody woken."""
        self._inflight = None
        self._last_end = now
        p.quiet_polls += 1
        p.due = next_poll_at(now, p.owner.period_s)
        self.late.in_time(p.unit, p.fc)

    def _match(self, p: Command | PollSlot, buf: bytearray, now: float, news: list[Call]) -> None:
        """Take a whole reply for ``p`` from the front of ``buf``, or fail it, or wait for more bytes."""
        whole, bad = take_reply(buf, p.unit, p.fc, p.length)
        if bad is not None:
            self._reject(p, bad, now, news)
        elif whole is None:
            return  # the rest is still on the wire
        elif whole[1] != p.fc:
            r = RtuReply(p.fc, p.unit)
            r.exception_code = whole[2] or 0xFF
            r.frame = whole
            self._finish(p, r, None, now, news)
        elif len(whole) != p.length:
            self._finish(p, None, BadFrame(f"{len(whole)}-byte reply to function {p.fc}, expected {p.length} bytes"),
                         now, news)
        elif whole == p.quiet_reply and p.owner.quiet():
            self._quiet_poll(p, now)
        else:
            self._finish(p, decode(p.fc, p.unit, whole, p.count), None, now, news)

    def _reject(self, p: Command | PollSlot, detail: str, now: float, news: list[Call]) -> None:
        self._buf.clear()
        self._finish(p, None, BadFrame(detail), now, news)
