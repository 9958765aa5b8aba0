"""What an RS-485 line can carry: the wire time of Modbus RTU transactions, and of a bus's door polling.

A character on the line is a start bit, the data bits, a parity bit if any
and the stop bits: 10 bits at 8N1. A transaction is the request frame, the
silence that ends it (the frame gap: 3.5 characters, or ``frame_gap_ms``),
the reply frame and the gap after it, before the next request may start.
The board's own time to think is not counted: it is not known before the
board is on the line, and it only makes a real line busier than this.

``check-config`` refuses a bus whose configured polling needs more line
time than a second holds (see :func:`problems`): such a line cannot poll
its boards at their ``poll_hz``, so doors are seen later than configured
and every command waits behind a poll train. The config is wrong, not the
hardware, and a config mistake is an error (as every other one is), with
the numbers that show it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lockerd.drivers.modbus_frame import reply_length, rtu_frame_gap_ms
from lockerd.drivers.options import Problem, Section

READ_REQUEST_BYTES = 8  # unit, function, address (2), count (2), CRC (2)
WRITE_COIL_BYTES = 8  # the request and its echo alike: unit, function, address (2), value (2), CRC (2)


def bits_per_char(bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> int:
    """Bits one byte costs on the line: start, data, parity (unless "N"), stop."""
    return 1 + bytesize + (0 if parity == "N" else 1) + stopbits


@dataclass(frozen=True)
class LineSettings:
    """The settings of one RTU line that its wire time depends on."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    frame_gap_ms: float | None = None  # None: 3.5 characters (1.75 ms above 19200 baud)

    @classmethod
    def of(cls, options: Mapping[str, Any]) -> LineSettings:
        """From a checked ``[buses.*]`` section of type "rtu" (defaults for what it leaves out)."""
        gap = options.get("frame_gap_ms")
        return cls(int(options.get("baudrate", 9600)), int(options.get("bytesize", 8)),
                   str(options.get("parity", "N")), int(options.get("stopbits", 1)),
                   None if gap is None else float(gap))

    @property
    def gap_s(self) -> float:
        ms = rtu_frame_gap_ms(self.baudrate) if self.frame_gap_ms is None else self.frame_gap_ms
        return ms / 1000

    def bytes_s(self, n: int) -> float:
        """Wire time of ``n`` bytes sent back to back."""
        return n * bits_per_char(self.bytesize, self.parity, self.stopbits) / self.baudrate

    def transaction_s(self, request_bytes: int, reply_bytes: int) -> float:
        """Wire time of one request and its reply, each followed by the frame gap."""
        return self.bytes_s(request_bytes + reply_bytes) + 2 * self.gap_s


def poll_bytes(board: Mapping[str, Any]) -> tuple[int, int]:
    """(request, reply) bytes of a Modbus board's door poll, from its checked ``[drivers.*]`` options.

    A board with no inputs reads its coils instead; input registers take two bytes each.
    """
    inputs = int(board.get("inputs", 16))
    if inputs == 0:
        return READ_REQUEST_BYTES, reply_length(1, int(board.get("coils", 16)))
    fc = 4 if board.get("input_kind", "discrete") == "input-register" else 2
    return READ_REQUEST_BYTES, reply_length(fc, inputs)


def write_coil_s(line: LineSettings) -> float:
    """Wire time of one coil write (a pulse's on or off): the request and the board's echo."""
    return line.transaction_s(WRITE_COIL_BYTES, WRITE_COIL_BYTES)


@dataclass(frozen=True)
class LineLoad:
    """The door polling configured on one line, and the line time it needs each second."""

    baudrate: int
    rates: tuple[float, ...]  # each board's poll_hz
    need_s: float  # seconds of line time per second of polling

    def said(self, bus: str) -> str:
        return (f"bus {bus} at {self.baudrate} baud: {_boards(self.rates)} need {self.need_s:.2f} s of line time "
                "per second; the line carries 1 s")


def line_load(bus: Mapping[str, Any], boards: list[Mapping[str, Any]]) -> LineLoad:
    """The line time the door polls of ``boards`` need on the RTU line ``bus`` (checked options both)."""
    line = LineSettings.of(bus)
    need = 0.0
    rates = []
    for b in boards:
        hz = float(b.get("poll_hz", 10.0))
        rates.append(hz)
        need += hz * line.transaction_s(*poll_bytes(b))
    return LineLoad(line.baudrate, tuple(rates), need)


def problems(name: str, bus: Section, boards: list[Section]) -> list[Problem]:
    """A line its boards' polling would overfill, said with the numbers (for ``check-config``)."""
    if bus.type != "rtu":
        return []  # a TCP gateway's own line is out of sight: its settings are not ours
    on: list[Mapping[str, Any]] = [b.options for b in boards if b.type == "modbus" and b.options.get("bus") == name]
    load = line_load(bus.options, on)
    if load.need_s <= 1.0:
        return []
    return [("baudrate", load.baudrate, f"a line that carries its polling: {load.said(name)} (lower their poll_hz, "
                                        "raise the baud rate, or split the boards over two buses)")]


def _boards(rates: tuple[float, ...]) -> str:
    """ "4 boards polled at 10 Hz", or "3 boards polled at 10 Hz and 1 at 5 Hz"."""
    counts: dict[float, int] = {}
    for hz in sorted(rates, reverse=True):
        counts[hz] = counts.get(hz, 0) + 1
    parts = [f"{n} {'board' if n == 1 else 'boards'} polled at {hz:g} Hz" if i == 0 else f"{n} at {hz:g} Hz"
             for i, (hz, n) in enumerate(counts.items())]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
