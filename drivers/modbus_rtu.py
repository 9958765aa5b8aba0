"""A lean Modbus RTU client for the RS-485 line: the few requests relay boards need, framed by hand.

Door polling is the only thing the daemon does all day, 16 boards x 10 polls
a second on a busy line, and pymodbus's general machinery (framer classes,
PDU objects, transaction manager, its own timers) costs most of a core's
2 % budget on every poll. The relay boards need five function codes, so
this client frames them itself:

- requests are built once per (unit, function, address, count) and reused,
  the CRC-16 comes from a 256-entry table;
- the port is opened with pyserial (raw mode, line settings, an exclusive
  lock) and read from its non-blocking descriptor through the event loop's
  ``add_reader``: no thread, never a blocking read;
- a reply is taken only when it is whole and right: CRC, unit id, function
  code and length are checked; an exception reply comes back as an error
  result naming its code; leading noise is skipped, bytes left over from an
  earlier (late or timed-out) reply are dropped before each request.

It speaks the subset of pymodbus's client API that :mod:`modbus` uses
(``read_discrete_inputs(address, count=, device_id=)`` and friends, and
``execute`` for a custom request), with replies that carry the same
attributes, so the bus task drives either client alike. It does no timing
of its own: the bus bounds every request with its timeout and retries, and
keeps one request in flight and the gap between frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import struct
from collections.abc import Callable
from typing import Any

from lockerd.drivers.tty import open_problem, read_ready

log = logging.getLogger(__name__)

READ_SIZE = 512
EXCEPTION_FLAG = 0x80
MAX_BITS = 2000  # the Modbus limits per request
MAX_REGISTERS = 125


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


CRC_TABLE = _crc_table()
# The eight coil/input bits of each byte value, least significant first (the Modbus order).
BYTE_BITS = tuple(tuple(bool(v >> i & 1) for i in range(8)) for v in range(256))


def crc16(data: bytes | bytearray | memoryview) -> int:
    """Modbus CRC-16 (poly 0xA001, init 0xFFFF), as the integer whose little-endian bytes end a frame."""
    crc = 0xFFFF
    table = CRC_TABLE
    for b in data:
        crc = (crc >> 8) ^ table[(crc ^ b) & 0xFF]
    return crc


def frame(unit: int, pdu: bytes) -> bytes:
    """An RTU frame: unit id, PDU, CRC low byte first."""
    body = bytes((unit,)) + pdu
    return body + crc16(body).to_bytes(2, "little")


class LineLost(ConnectionError):
    """The serial device went away (read error, hangup) or is not open."""


class BadFrame(IOError):
    """A reply that cannot be the answer: bad CRC, another unit, another function, wrong length."""


class RtuReply:
    """A decoded reply, with the attributes of the pymodbus reply objects the bus checks."""

    __slots__ = ("function_code", "dev_id", "address", "value", "count", "bits", "registers", "exception_code",
                 "_raw")

    def __init__(self, function_code: int, dev_id: int) -> None:
        self.function_code = function_code
        self.dev_id = dev_id
        self.address = 0
        self.value = 0
        self.count = 0
        self.bits: list[bool] = []
        self.registers: list[int] = []
        self.exception_code = 0
        self._raw = b""

    def isError(self) -> bool:  # noqa: N802 (pymodbus's name)
        return self.exception_code != 0

    def __repr__(self) -> str:
        if self.exception_code:
            return f"RtuReply(unit {self.dev_id}, function {self.function_code}, exception {self.exception_code})"
        return f"RtuReply(unit {self.dev_id}, function {self.function_code}, data {self._raw.hex()})"


def reply_length(fc: int, count: int) -> int:
    """The length of a normal reply frame to a request of function ``fc`` for ``count`` items."""
    if fc in (1, 2):
        return 5 + (count + 7) // 8
    if fc in (3, 4):
        return 5 + 2 * count
    return 8  # 5, 6, 15, 16: an echo of address and value or quantity


def decode(fc: int, unit: int, data: bytes, count: int) -> RtuReply:
    """The PDU data of a whole, checked reply frame (unit, fc and CRC stripped)."""
    r = RtuReply(fc, unit)
    r._raw = data
    if fc in (1, 2):
        table = BYTE_BITS
        bits: tuple[bool, ...] = ()
        for byte in data[1:]:
            bits += table[byte]
        r.bits = list(bits)
        r.count = count
    elif fc in (3, 4):
        r.registers = list(struct.unpack(f">{len(data[1:]) // 2}H", data[1:]))
        r.count = count
    else:
        r.address, r.value = struct.unpack(">HH", data[:4])
        r.count = r.value
        r.bits = [r.value == 0xFF00] if fc == 5 else []
    return r


Callback = Callable[[RtuReply | None, Exception | None], None]


class _Pending:
    """The one request in flight: what a reply must look like, and who waits for it.

    The waiter is a future (``await``-style requests) or a plain callback
    (the bus's poll path: called from the reader callback itself, which saves
    a pass of the event loop per poll).
    """

    __slots__ = ("unit", "fc", "length", "count", "future", "callback")

    def __init__(self, unit: int, fc: int, length: int, count: int, future: asyncio.Future | None,
                 callback: Callback | None) -> None:
        self.unit, self.fc, self.length, self.count = unit, fc, length, count
        self.future, self.callback = future, callback

    @property
    def done(self) -> bool:
        return self.future is not None and self.future.done()

    def deliver(self, reply: RtuReply | None, exc: Exception | None) -> None:
        if self.callback is not None:
            self.callback(reply, exc)
        elif not self.future.done():  # type: ignore[union-attr]
            if exc is not None:
                self.future.set_exception(exc)  # type: ignore[union-attr]
            else:
                self.future.set_result(reply)  # type: ignore[union-attr]


class RtuClient:
    """Modbus RTU master on one serial port; one request at a time (the bus task sees to that)."""

    def __init__(self, device: str, *, baudrate: int = 9600, bytesize: int = 8, parity: str = "N",
                 stopbits: int = 1, name: str = "rtu") -> None:
        self.device = device
        self.baudrate, self.bytesize, self.parity, self.stopbits = baudrate, bytesize, parity, stopbits
        self.name = name
        self.last_error = ""
        self._serial: Any = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = bytearray()
        self._pending: _Pending | None = None
        self._frames: dict[tuple[int, int, int, int], bytes] = {}  # prepared read requests
        self._last_reads: dict[tuple[int, int, int], RtuReply] = {}  # (unit, fc, count): the last read reply

    # -- the port -------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._fd is not None

    async def connect(self) -> bool:
        """Open the port; False (with ``last_error`` said) when it is missing, busy or not a tty."""
        import serial  # pyserial: imported by the driver that needs it

        self.close()
        self._loop = asyncio.get_running_loop()
        try:
            ser = serial.Serial(self.device, self.baudrate, bytesize=self.bytesize, parity=self.parity,
                                stopbits=self.stopbits, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            self.last_error = open_problem(self.device, e, f"[buses.{self.name}].device")
            return False
        fd = ser.fileno()
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError) as e:
            ser.close()
            self.last_error = f"cannot watch {self.device}: {e}"
            return False
        self._serial, self._fd = ser, fd
        self._buf.clear()
        self.last_error = ""
        return True

    def close(self, reason: str = "") -> None:
        """Release the port; a request in flight fails with ``reason``."""
        fd, ser = self._fd, self._serial
        self._fd, self._serial = None, None
        if fd is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(fd)
        if ser is not None:
            with contextlib.suppress(Exception):
                ser.close()
        self._fail(LineLost(reason or f"{self.device} closed"))

    def _lost(self, detail: str) -> None:
        log.debug("%s: %s", self.name, detail)
        self.last_error = detail
        self.close(detail)

    def _fail(self, exc: Exception) -> None:
        p, self._pending = self._pending, None
        if p is not None:
            p.deliver(None, exc)

    def abandon(self) -> None:
        """Forget the request in flight (its time is up); a late reply to it is dropped."""
        self._pending = None

    # -- requests (the subset of pymodbus's client API the bus uses) ------------------------

    def read_coils(self, address: int, *, count: int = 1, device_id: int = 1) -> asyncio.Future:
        return self._read(device_id, 1, address, count)

    def read_discrete_inputs(self, address: int, *, count: int = 1, device_id: int = 1) -> asyncio.Future:
        return self._read(device_id, 2, address, count)

    def read_input_registers(self, address: int, *, count: int = 1, device_id: int = 1) -> asyncio.Future:
        return self._read(device_id, 4, address, count)

    def write_coil(self, address: int, value: bool, *, device_id: int = 1) -> asyncio.Future:
        pdu = struct.pack(">BHH", 5, address, 0xFF00 if value else 0x0000)
        return self.send(frame(device_id, pdu), device_id, 5, 1)

    def write_coils(self, address: int, values: list[bool], *, device_id: int = 1) -> asyncio.Future:
        n = len(values)
        if not 1 <= n <= 1968:
            raise ValueError(f"cannot write {n} coils in one request (1 to 1968)")
        packed = bytearray((n + 7) // 8)
        for i, v in enumerate(values):
            if v:
                packed[i // 8] |= 1 << (i % 8)
        pdu = struct.pack(">BHHB", 15, address, n, len(packed)) + bytes(packed)
        return self.send(frame(device_id, pdu), device_id, 15, n)

    def execute(self, no_response_expected: bool, request: Any) -> asyncio.Future:
        """A request object of pymodbus's shape (``function_code``, ``dev_id``, ``encode()``), e.g. a flash pulse."""
        fc = int(request.function_code)
        if fc not in (5, 6, 15, 16):
            raise ValueError(f"execute: function {fc} is not a write this client frames")
        unit = int(request.dev_id)
        return self.send(frame(unit, bytes((fc,)) + request.encode()), unit, fc, 1)

    def _read(self, unit: int, fc: int, address: int, count: int) -> asyncio.Future:
        return self.send(self._read_frame(unit, fc, address, count), unit, fc, count)

    def _read_frame(self, unit: int, fc: int, address: int, count: int) -> bytes:
        key = (unit, fc, address, count)
        req = self._frames.get(key)
        if req is None:
            limit = MAX_BITS if fc in (1, 2) else MAX_REGISTERS
            if fc not in (1, 2, 3, 4) or not 1 <= count <= limit or not 0 <= address <= 0xFFFF or not 0 <= unit <= 247:
                raise ValueError(f"cannot read {count} items of function {fc} at {address} from unit {unit}")
            req = self._frames[key] = frame(unit, struct.pack(">BHH", fc, address, count))
        return req

    def read(self, unit: int, fc: int, address: int, count: int, callback: Callback) -> None:
        """Send a read (function 1, 2, 3 or 4) from its prepared frame; ``callback(reply, error)`` gets the answer.

        The callback runs inside the reader callback (or at once, for a line
        that is gone); the caller bounds the wait and calls :meth:`abandon`
        when its time is up.
        """
        self._start(self._read_frame(unit, fc, address, count), unit, fc, count, None, callback)

    def send(self, request: bytes, unit: int, fc: int, count: int) -> asyncio.Future:
        """Write one request frame and return a future for its reply (the caller bounds the wait)."""
        if self._loop is None:
            raise LineLost(f"{self.device} is not open ({self.last_error or 'not connected'})")
        fut = self._loop.create_future()
        self._start(request, unit, fc, count, fut, None)
        return fut

    def _start(self, request: bytes, unit: int, fc: int, count: int, fut: asyncio.Future | None,
               callback: Callback | None) -> None:
        fd = self._fd
        if fd is None:
            raise LineLost(f"{self.device} is not open ({self.last_error or 'not connected'})")
        if self._pending is not None and not self._pending.done:
            raise RuntimeError(f"{self.name}: a request is already in flight")
        # Whatever is buffered now answers nothing we will ask: a late or mangled reply.
        # (A late reply still in the kernel passes only if it is from the same unit and
        # function; the bus's checks of the echoed address catch a stale write echo.)
        self._buf.clear()
        try:
            n = os.write(fd, request)
        except BlockingIOError:
            n = 0
        except OSError as e:
            self._lost(f"{self.device}: write failed ({e.strerror or e})")
            raise LineLost(self.last_error) from e
        if n != len(request):
            # A request is a few bytes: a full transmit buffer means the line is stuck.
            raise LineLost(f"{self.device}: could not write a {len(request)}-byte request ({n} written)")
        # Set only once written: a failed write has no waiter to tell twice.
        self._pending = _Pending(unit, fc, reply_length(fc, count), count, fut, callback)

    # -- replies ------------------------------------------------------------------------

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        data, gone = read_ready(fd, READ_SIZE)
        if gone:
            self._lost(f"{self.device}: {gone}")
            return
        if not data:
            return
        p = self._pending
        if p is None or p.done:
            self._pending = None
            return  # nobody is waiting: noise, or a reply the bus gave up on; dropped
        buf = self._buf
        buf += data
        self._match(p, buf)

    def _match(self, p: _Pending, buf: bytearray) -> None:
        """Take a whole reply for ``p`` from the front of ``buf``, or fail it, or wait for more bytes."""
        unit, fc = p.unit, p.fc
        while len(buf) >= 3:
            head_fc = buf[1]
            if head_fc == fc:
                # A read says its own byte count: a reply of another length is still framed right.
                length = 5 + buf[2] if fc <= 4 else p.length
            elif head_fc == fc | EXCEPTION_FLAG:
                length = 5
            else:
                del buf[0]  # noise before the reply: resynchronise on the next byte
                continue
            if len(buf) < length:
                return  # the rest is still on the wire
            if crc16(memoryview(buf)[: length - 2]) != buf[length - 2] | buf[length - 1] << 8:
                if buf[0] != unit:
                    del buf[0]  # noise that looked like a header
                    continue
                self._reject(f"CRC error in the reply ({bytes(buf[:length]).hex()})")
                return
            if buf[0] != unit:
                self._reject(f"reply from unit {buf[0]} to a request for unit {unit}")
                return
            body = bytes(buf[2 : length - 2])
            del buf[:length]
            self._pending = None
            if head_fc != fc:
                r = RtuReply(fc, unit)
                r.exception_code = body[0] or 0xFF
                r._raw = body
            elif length != p.length:
                p.deliver(None, BadFrame(f"{length}-byte reply to function {fc}, expected {p.length} bytes"))
                return
            elif fc <= 4:
                # Door polls mostly read what they read last time: the same reply
                # object again lets the bus skip decoding and checking it.
                key = (unit, fc, p.count)
                last = self._last_reads.get(key)
                if last is not None and last._raw == body:
                    r = last
                else:
                    r = self._last_reads[key] = decode(fc, unit, body, p.count)
            else:
                r = decode(fc, unit, body, p.count)
            p.deliver(r, None)
            return

    def _reject(self, detail: str) -> None:
        self._buf.clear()
        self._fail(BadFrame(detail))

