"""One Modbus request as the bus performs it, and how its outcome is judged.

A board hands the bus :class:`Request` objects (what to send, how to check
the reply); the bus tells the board how they went through :class:`Polled`.
:class:`Judge` turns one attempt (a reply or an exception) into a value or
an error, and says whether another attempt is worth it and whether the
board was silent.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Protocol

from lockerd.drivers.modbus_frame import BadFrame
from lockerd.drivers.modbus_line import LateReply, LineLost, PollSlot, late_ms

from lockerd.errors import DriverError, DriverTimeout, DriverUnavailable

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

# What a request can raise on either kind of bus (a TCP bus adds pymodbus's errors):
# LineLost and BadFrame from the RTU client, ValueError and struct.error from encoding.
COMMON_ERRORS: tuple[type[Exception], ...] = (TimeoutError, LineLost, BadFrame, ValueError, struct.error)

class DriverRefused(DriverError):
    """The board answered with a Modbus exception: it did not carry the request out."""


class BadReply(Exception):
    """A reply that does not match the request (late frame, wrong function, short data)."""


@dataclass(eq=False, slots=True)
class Request:
    """One Modbus transaction the bus task will perform."""

    board: Polled
    what: str
    send: Callable[[ModbusClient], Awaitable[Any]]  # given the bus's client, starts the request
    check: Callable[[Any], Any]  # validates the reply, returns the useful value or raises BadReply
    attempts: int
    future: asyncio.Future[Any] | None = None  # commands: the caller waits on it; polls: None
    off: Hashable | None = None  # an off-write: it goes before other commands and ends the hold for this key
    pulse: bool = False  # an on-write a scan waits for: held back only for a board reported offline


class ModbusClient(Protocol):
    """The part of pymodbus's client API a board's requests use; the RTU client offers the same."""

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]: ...

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]: ...

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> Awaitable[Any]: ...

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> Awaitable[Any]: ...

    def write_coils(self, address: int, values: list[bool], *, device_id: int = 1) -> Awaitable[Any]: ...

    def execute(self, no_response_expected: bool, request: Any) -> Awaitable[Any]: ...


class Polled(Protocol):
    """What the bus needs from a board on it: its schedule, and where to tell how its requests went."""

    name: str
    unit: int
    inputs: int
    online: bool
    due: float  # loop time its next poll is due; the bus moves it too (a retry, a command first)
    polling: bool
    misconfigured: str  # why it cannot be polled at all; "" when it can
    poll_attempt: int  # RTU: attempts made so far at the poll being judged

    def quiet(self) -> bool: ...

    def poll_slot(self) -> PollSlot: ...

    def poll_request(self) -> Request: ...

    def heard(self) -> None: ...

    def poll_done(self, levels: tuple[int, ...]) -> None: ...

    def silent(self, error: DriverError) -> None: ...

    def poll_refused(self, error: DriverError) -> None: ...

    def bus_down(self, detail: str) -> None: ...


class Judge:
    """The outcome of one attempt at a request on one bus."""

    def __init__(self, bus: str, timeout_s: float, lost_errors: tuple[type[Exception], ...],
                 garbled_errors: tuple[type[Exception], ...]) -> None:
        self.name, self.timeout_s = bus, timeout_s
        self.lost_errors = lost_errors  # the connection or line is gone
        self.garbled_errors = garbled_errors  # a frame that is not the answer (CRC, unit, transaction)

    def __call__(self, req: Request, reply: Any, exc: Exception | None) -> tuple[Any, DriverError | None, bool, bool]:
        """One attempt's outcome: (value, error, worth retrying, board silent)."""
        if exc is None and reply is not None and not reply.isError():
            try:
                return req.check(reply), None, False, False
            except BadReply as e:
                return None, self.bad_reply(req, e), True, True
        board = req.board
        who = f"{board.name} (unit {board.unit} on {self.name})"
        if isinstance(exc, LateReply):
            # Said the same way each time, so the board's status and its log line say it once; another
            # attempt would only be late again.
            t = f"{exc.timeout_s * 1000:.0f}"
            return None, DriverTimeout(f"{who} answers in about {late_ms(exc.after_s)} ms, more than timeout_ms {t} "
                                       f"(no answer to {req.what} within {t} ms)"), False, True
        if isinstance(exc, TimeoutError):
            return None, DriverTimeout(f"{who}: no answer to {req.what} within {self.timeout_s * 1000:.0f} ms"), \
                True, True
        if isinstance(exc, self.lost_errors):
            return None, DriverUnavailable(f"{board.name}: bus {self.name} lost its connection: {exc}"), False, True
        if isinstance(exc, self.garbled_errors):  # garbled frame, wrong unit or transaction id
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

    def bad_reply(self, req: Request, e: BadReply) -> DriverError:
        return DriverError(f"{req.board.name} (unit {req.board.unit} on {self.name}): {req.what}: {e}")
