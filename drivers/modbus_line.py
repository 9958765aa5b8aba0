"""What travels on an RS-485 line and when: a board's door poll, a queued command, and a reply a late board owes.

The line thread of :mod:`modbus_rtu` runs these; the bus and its boards
(:mod:`modbus_bus`, :mod:`modbus_board`) schedule the polls and judge what
comes back.

Late replies. A board slower than ``timeout_s`` answers a request after the
client has given up on it; sent at once, its next request would take that
late answer as its own (a bench measured 300 ms replies as 100 ms ones, and
stale door levels as fresh). So after a timeout the board's unit is *owed* a
reply: nothing more goes to that unit until the late reply has come (it is
dropped, and how late it came is kept in ``late_s``) or until
``LATE_WINDOW`` timeouts after the request was sent. Requests to other
units go meanwhile (their replies carry another unit id), so a slow board
costs the others nothing. The next timeout of a unit known to be late is a
:class:`LateReply` saying how late it answers, which is what the board's
status and the log then say, once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from lockerd.drivers import modbus_frame as codec
from lockerd.drivers.modbus_frame import BadFrame, RtuReply, reply_length

log = logging.getLogger(__name__)


class LineLost(ConnectionError):
    """The serial device went away (read error, hangup) or is not open."""


class LateReply(TimeoutError):
    """No reply within the timeout from a unit seen answering later than that: how much later."""

    def __init__(self, unit: int, after_s: float, timeout_s: float) -> None:
        self.unit, self.after_s, self.timeout_s = unit, after_s, timeout_s
        super().__init__(f"unit {unit} answers in about {late_ms(after_s)} ms, more than timeout_ms "
                         f"{timeout_s * 1000:.0f}")


def late_ms(after_s: float) -> int:
    """A late reply's delay as said to a person: to 10 ms, which is what a timeout is set in."""
    return max(10, round(after_s * 100) * 10)


# After a timeout, the unit's next request waits this many timeouts from the sending of the
# one unanswered (or 1.5 times the lateness last seen, if longer) for its late reply.
LATE_WINDOW = 3.0


def next_poll_at(now: float, period: float) -> float:
    """The next multiple of ``period`` after ``now`` (monotonic seconds).

    Boards polled at the same rate fall due together, so each cycle's polls
    run as one train on the line, frame after frame, and the line then rests
    until the next cycle. The same polls spread evenly over the cycle cost
    about twice the CPU: each one starts from an idle machine (measured by
    ``bench/modbus_poll.py``). Every board still has its poll once a period.
    """
    return (now // period + 1) * period


class PollSlot:
    """One board's door poll, as the line thread runs it.

    A slot is *parked* while the loop holds it: before its board starts, and
    from a poll with news until the bus has judged it and resumed the slot
    with its next due time. ``quiet_reply`` is the reply frame the board last
    took in full; while the same frame comes back and the board's ``quiet()``
    says it needs nothing more, the thread counts the poll, sets the next due
    time and wakes nobody.
    """

    __slots__ = ("owner", "request", "unit", "fc", "count", "length", "due", "deadline", "parked", "quiet_reply",
                 "quiet_polls")

    def __init__(self, owner: Any, unit: int, fc: int, address: int, count: int) -> None:
        self.owner = owner  # the board: its period_s and quiet() are read from the line thread
        self.request = codec.read_frame(unit, fc, address, count)
        self.unit, self.fc, self.count = unit, fc, count
        self.length = reply_length(fc, count)
        self.due = 0.0
        self.deadline = 0.0
        self.parked = True
        self.quiet_reply: bytes | None = None
        self.quiet_polls = 0  # polls answered as the last one, counted by the thread alone


class Command:
    """A request from the loop, and the future its caller waits on."""

    __slots__ = ("request", "unit", "fc", "count", "length", "future", "deadline")
    quiet_reply = None  # a command's reply always goes to its caller

    def __init__(self, request: bytes, unit: int, fc: int, count: int, future: asyncio.Future[RtuReply]) -> None:
        self.request, self.unit, self.fc, self.count = request, unit, fc, count
        self.length = reply_length(fc, count)
        self.future = future
        self.deadline = 0.0


class Owed:
    """A request that timed out: its unit may still answer it, until ``until``."""

    __slots__ = ("fc", "length", "sent", "until")

    def __init__(self, fc: int, length: int, sent: float, until: float) -> None:
        self.fc, self.length, self.sent, self.until = fc, length, sent, until


def settle(fut: asyncio.Future[RtuReply], reply: RtuReply | None, exc: Exception | None) -> None:
    if fut.done():
        return  # the caller gave up (its own bound, or cancelled)
    if exc is not None:
        fut.set_exception(exc)
    elif reply is not None:
        fut.set_result(reply)
    else:  # a result is either a reply or an error: never neither
        fut.set_exception(BadFrame("no reply and no error"))


class LateReplies:
    """The replies owed by units that answered after their timeout, and how late each unit answers.

    Used by the line thread with the client's lock held.
    """

    def __init__(self, name: str, timeout_s: float) -> None:
        self.name, self.timeout_s = name, timeout_s
        self.owed: dict[int, Owed] = {}  # unit -> its request that timed out, while a late reply may come
        # (unit, function) -> how long after its request the last late reply came; cleared by a reply in time
        self.late_s: dict[tuple[int, int], float] = {}

    def wait(self, now: float, idle_s: float) -> float:
        """Forget the late replies no longer waited for; how long until the next is not (at most ``idle_s``)."""
        wait = idle_s
        for unit, o in list(self.owed.items()):
            if now >= o.until:
                del self.owed[unit]  # no late reply came: the unit may be asked again
            elif o.until - now < wait:
                wait = o.until - now
        return wait

    def owes(self, unit: int, now: float) -> bool:
        """Does ``unit`` owe a reply to a request that timed out?"""
        o = self.owed.get(unit)
        return o is not None and now < o.until

    def timed_out(self, unit: int, fc: int, length: int, sent: float) -> Exception:
        """A request sent at ``sent`` got no reply in time: its unit owes one. The error to report."""
        late = self.late_s.get((unit, fc))
        window = max(LATE_WINDOW * self.timeout_s, 1.5 * late if late is not None else 0.0)
        self.owed[unit] = Owed(fc, length, sent, sent + window)
        if late is not None:
            return LateReply(unit, late, self.timeout_s)
        return TimeoutError(f"no reply within {self.timeout_s * 1000:.0f} ms")

    def in_time(self, unit: int, fc: int) -> None:
        """``unit`` answered in time: no longer a late unit."""
        if self.late_s:
            self.late_s.pop((unit, fc), None)

    def take(self, buf: bytearray, now: float) -> bool:
        """Drop the late replies at the front of ``buf``, noting how late each came.

        False while the front looks like a late reply not yet whole.
        """
        owed = self.owed
        while len(buf) >= 3:
            o = owed.get(buf[0])
            if o is None:
                return True
            if buf[1] == o.fc:
                n = 5 + buf[2] if o.fc <= 4 else o.length
            elif buf[1] == o.fc | codec.EXCEPTION_FLAG:
                n = 5
            else:
                return True
            if len(buf) < n:
                return False
            if codec.crc16(memoryview(buf)[: n - 2]) != buf[n - 2] | buf[n - 1] << 8:
                return True  # not a frame after all: the request in flight judges these bytes
            unit = buf[0]
            del buf[:n]
            del owed[unit]
            after = now - o.sent
            self.late_s[(unit, o.fc)] = after
            log.debug("%s: unit %d answered %.0f ms after its request, past the %.0f ms timeout: dropped",
                      self.name, unit, after * 1000, self.timeout_s * 1000)
        return not buf or buf[0] not in owed  # one or two bytes of a late reply wait for the rest
