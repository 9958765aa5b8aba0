"""The Modbus RTU frame codec: requests built, replies checked and decoded, by hand.

The relay boards need five function codes, so these are framed here rather
than through pymodbus's general machinery, which cost more CPU than the whole
polling budget (see :mod:`modbus_rtu`): requests are built once and reused,
the CRC-16 comes from a 256-entry table, and a reply carries the attributes
of the pymodbus reply objects the bus checks.
"""

from __future__ import annotations

import struct
from typing import Any

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


class BadFrame(IOError):
    """A reply that cannot be the answer: bad CRC, another unit, another function, wrong length."""


class RtuReply:
    """A decoded reply, with the attributes of the pymodbus reply objects the bus checks."""

    __slots__ = ("function_code", "dev_id", "address", "value", "count", "bits", "registers", "exception_code",
                 "frame")

    def __init__(self, function_code: int, dev_id: int) -> None:
        self.function_code = function_code
        self.dev_id = dev_id
        self.address = 0
        self.value = 0
        self.count = 0
        self.bits: list[bool] = []
        self.registers: list[int] = []
        self.exception_code = 0
        self.frame = b""  # the whole reply frame: the bus hands it back as a poll's quiet reply

    def isError(self) -> bool:  # pymodbus's name: the bus judges a reply of either client alike
        return self.exception_code != 0

    def __repr__(self) -> str:
        if self.exception_code:
            return f"RtuReply(unit {self.dev_id}, function {self.function_code}, exception {self.exception_code})"
        return f"RtuReply(unit {self.dev_id}, function {self.function_code}, data {self.frame[2:-2].hex()})"


def reply_length(fc: int, count: int) -> int:
    """The length of a normal reply frame to a request of function ``fc`` for ``count`` items."""
    if fc in (1, 2):
        return 5 + (count + 7) // 8
    if fc in (3, 4):
        return 5 + 2 * count
    return 8  # 5, 6, 15, 16: an echo of address and value or quantity


def decode(fc: int, unit: int, whole: bytes, count: int) -> RtuReply:
    """A whole, checked reply frame to a request of function ``fc`` for ``count`` items."""
    r = decode_pdu(fc, unit, whole[1:-2], count)  # unit and CRC stripped
    r.frame = whole
    return r


def decode_pdu(fc: int, unit: int, pdu: bytes, count: int) -> RtuReply:
    """A checked reply PDU (function code first) to a request of function ``fc`` for ``count`` items."""
    r = RtuReply(fc, unit)
    data = pdu[1:]
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


def read_frame(unit: int, fc: int, address: int, count: int) -> bytes:
    """The request frame of a read (function 1, 2, 3 or 4), checked against the Modbus limits."""
    limit = MAX_BITS if fc in (1, 2) else MAX_REGISTERS
    if fc not in (1, 2, 3, 4) or not 1 <= count <= limit or not 0 <= address <= 0xFFFF or not 0 <= unit <= 247:
        raise ValueError(f"cannot read {count} items of function {fc} at {address} from unit {unit}")
    return frame(unit, struct.pack(">BHH", fc, address, count))


def take_reply(buf: bytearray, unit: int, fc: int, length: int) -> tuple[bytes | None, str | None]:
    """Take the reply to a request (``unit``, function ``fc``, normal reply ``length``) from the front of ``buf``.

    Returns ``(frame, None)`` for a whole frame with a good CRC from ``unit``
    (a normal or an exception reply: the caller tells them apart by the
    function code), ``(None, why)`` for one that cannot be the answer, and
    ``(None, None)`` while more bytes are needed. Leading noise is dropped.
    """
    while len(buf) >= 3:
        head_fc = buf[1]
        if head_fc == fc:
            # A read says its own byte count: a reply of another length is still framed right.
            n = 5 + buf[2] if fc <= 4 else length
        elif head_fc == fc | EXCEPTION_FLAG:
            n = 5
        else:
            del buf[0]  # noise before the reply: resynchronise on the next byte
            continue
        if len(buf) < n:
            return None, None
        if crc16(memoryview(buf)[: n - 2]) != buf[n - 2] | buf[n - 1] << 8:
            if buf[0] != unit:
                del buf[0]  # noise that looked like a header
                continue
            return None, f"CRC error in the reply ({bytes(buf[:n]).hex()})"
        if buf[0] != unit:
            return None, f"reply from unit {buf[0]} to a request for unit {unit}"
        whole = bytes(buf[:n])
        del buf[:n]
        return whole, None
    return None, None


def write_coil_frame(unit: int, address: int, on: bool) -> bytes:
    """The request frame of function 05: one coil on or off."""
    return frame(unit, struct.pack(">BHH", 5, address, 0xFF00 if on else 0x0000))


def write_coils_frame(unit: int, address: int, values: list[bool]) -> bytes:
    """The request frame of function 15: consecutive coils, packed eight to a byte."""
    n = len(values)
    if not 1 <= n <= 1968:
        raise ValueError(f"cannot write {n} coils in one request (1 to 1968)")
    packed = bytearray((n + 7) // 8)
    for i, v in enumerate(values):
        if v:
            packed[i // 8] |= 1 << (i % 8)
    return frame(unit, struct.pack(">BHHB", 15, address, n, len(packed)) + bytes(packed))


class RawCoilWrite:
    """Function 05 with a raw 16-bit value, as the RTU client's ``execute`` takes it.

    A plain write-coil sends only 0xFF00 or 0x0000; a board's own commands
    put other values there (the Waveshare flash: the time in 100 ms units).
    """

    function_code = 5

    def __init__(self, address: int, value: int, dev_id: int) -> None:
        self.address, self.value, self.dev_id = address, value, dev_id

    def encode(self) -> bytes:
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"address {self.address} outside 0..65535")
        if not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"flash value {self.value} outside 0..65535")
        return struct.pack(">HH", self.address, self.value)


def write_request_frame(no_response_expected: bool, request: Any) -> bytes:
    """The frame of a write request object (``function_code``, ``dev_id``, ``encode()``), e.g. a flash pulse:
    what both clients' ``execute`` sends."""
    if no_response_expected:
        # pymodbus would send and not wait; both clients wait for the board's echo of every
        # write, so a broadcast would only time out: refused rather than misread.
        raise ValueError("execute: this client waits for a reply to every request")
    fc = int(request.function_code)
    if fc not in (5, 6, 15, 16):
        raise ValueError(f"execute: function {fc} is not a write this client frames")
    return frame(int(request.dev_id), bytes((fc,)) + request.encode())


def rtu_frame_gap_ms(baudrate: int) -> float:
    """The silence that ends an RTU frame: 3.5 characters of 11 bits at ``baudrate``, and a fixed
    1.75 ms above 19200 baud (Modbus over Serial Line V1.02, section 2.5.1.1)."""
    return 1.75 if baudrate > 19200 else 3.5 * 11 * 1000 / baudrate
