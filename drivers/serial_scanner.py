"""Barcode scanners in serial mode (USB-CDC ``ttyACM*`` or RS-232 ``ttyUSB*``).

The port is opened with pyserial (which sets raw mode, the baud rate and an
exclusive lock) and then read straight from its non-blocking file
descriptor through the event loop's ``add_reader``: no thread and never a
blocking read on the loop. Bytes are cut into scans by :class:`Framer`
(terminators, a maximum length; bytes left without a terminator are
refused as incomplete), then parsed (AIM symbology identifier, allow-list,
text rules) and published. A scanner that goes away
is reported offline and reopened with a capped backoff, so one unplugged
scanner never stops the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from lockerd.drivers.base import Parts, Scan, Scanner, decode_scan
from lockerd.drivers.options import BAUD_RATES, Opt, Spec, with_defaults
from lockerd.drivers.tty import open_problem, read_ready

from lockerd.clock import Clock

log = logging.getLogger(__name__)

READ_SIZE = 4096
AIM_LENGTH = 3  # "]" + symbology letter + modifier character


@dataclass(frozen=True, slots=True)
class Frame:
    """The bytes of one scan between terminators; ``too_long`` is set when it was over the limit."""

    raw: bytes
    too_long: int | None = None  # the frame's real length when over max_length


class Framer:
    """Cuts a byte stream into frames; pure logic, no I/O, so it can be reasoned about alone.

    Consecutive terminators (the LF of a CRLF) give no empty frame. A frame
    longer than ``max_length`` is not buffered: its bytes are counted and
    dropped up to the next terminator, and it comes out as one ``too_long``
    frame carrying only its first ``max_length`` bytes.
    """

    def __init__(self, terminators: tuple[bytes, ...], max_length: int):
        if not terminators or any(not t for t in terminators):
            raise ValueError("terminators must be non-empty byte strings")
        # Longest first, so that at one position "\r\n" wins over "\r".
        self.terminators = tuple(sorted(set(terminators), key=len, reverse=True))
        self.max_length = max_length
        self._keep = max(len(t) for t in self.terminators) - 1  # a split terminator's head
        self._buf = bytearray()
        self._dropped = 0  # bytes of an overlong frame already thrown away
        self._head = b""  # the first max_length bytes of that frame

    @property
    def pending(self) -> bool:
        """True while part of a frame waits for its terminator."""
        return bool(self._buf) or self._dropped > 0

    @property
    def buffered(self) -> int:
        """Bytes held in memory now (bounded by max_length plus a terminator's head)."""
        return len(self._buf)

    @property
    def pending_bytes(self) -> int:
        """Bytes of the unfinished frame seen so far, dropped or held."""
        return self._dropped + len(self._buf)

    def feed(self, data: bytes) -> list[Frame]:
        """Add bytes; return every frame they completed."""
        out: list[Frame] = []
        self._buf += data
        while True:
            pos, size = self._find()
            if pos < 0:
                break
            body = bytes(self._buf[:pos])
            del self._buf[: pos + size]
            frame = self._finish(body)
            if frame is not None:
                out.append(frame)
        if len(self._buf) > self.max_length + self._keep:
            # No terminator in sight and already too long: count and drop,
            # keeping only a possible partial multi-byte terminator.
            cut = len(self._buf) - self._keep
            if self._dropped == 0:
                self._head = bytes(self._buf[: self.max_length])
            self._dropped += cut
            del self._buf[:cut]
        return out

    def flush(self) -> Frame | None:
        """End the pending frame (its terminator never came); None when nothing was pending."""
        body = bytes(self._buf)
        self._buf.clear()
        # A lone CR of a "\r\n" terminator is not part of the code.
        for t in self.terminators:
            for k in range(len(t) - 1, 0, -1):
                if body.endswith(t[:k]):
                    body = body[:-k]
                    break
        return self._finish(body)

    def reset(self) -> None:
        self._buf.clear()
        self._dropped = 0
        self._head = b""

    def _find(self) -> tuple[int, int]:
        best, size = -1, 0
        for t in self.terminators:
            i = self._buf.find(t)
            if i >= 0 and (best < 0 or i < best):
                best, size = i, len(t)
        return best, size

    def _finish(self, body: bytes) -> Frame | None:
        if self._dropped:
            total = self._dropped + len(body)
            head = self._head
            self._dropped, self._head = 0, b""
            return Frame(head, too_long=total)
        if not body:
            return None
        if len(body) > self.max_length:
            return Frame(body[: self.max_length], too_long=len(body))
        return Frame(body)


def parse_aim(raw: bytes) -> tuple[str | None, bytes]:
    """Split an AIM symbology identifier (``]C1``) off a frame: (``"C1"``, rest), or (None, raw)."""
    if len(raw) >= AIM_LENGTH and raw[0] == 0x5D and 0x41 <= raw[1] <= 0x7A and chr(raw[1]).isalpha():
        modifier = raw[2]
        if 0x21 <= modifier <= 0x7E:
            return raw[1:3].decode("ascii"), raw[AIM_LENGTH:]
    return None, raw


class SerialScanner(Scanner):
    """One barcode scanner on a serial port; publishes a :class:`Scan` per code read."""

    type_name = "serial"
    # Reopen backoff after the port vanished or could not be opened (seconds).
    retry_initial = 0.2
    retry_max = 5.0
    watch_s = 1.0  # how often an open port's path is checked
    heartbeat_s = retry_max  # the supervisor beats each watch and each reopen attempt
    OPTIONS: ClassVar[Spec] = {
        **Scanner.OPTIONS,
        "port": Opt("path", doc="e.g. /dev/serial/by-id/usb-...-if00"),
        "baudrate": Opt("int", 9600, choices=BAUD_RATES),
        "terminators": Opt("list-str", ("\r", "\n"), doc="bytes that end a scan; CR, LF and CRLF alike"),
        "idle_timeout_ms": Opt("int", 200, min=5, max=10000,
                               doc="bytes that wait this long without a terminator are an incomplete scan"),
        "idle_ends_scan": Opt("bool", default=False,
                              doc="only for a scanner that sends no terminator at all: a pause of "
                              "idle_timeout_ms ends a scan. Risky: a scanner that pauses inside a scan splits it, "
                              "and a part of a code may be a code"),
        "max_length": Opt("int", 256, min=1, max=4096),
        "aim": Opt("bool", default=False, doc="scans start with an AIM symbology identifier like ]C1"),
        "symbologies": Opt(
            "list-str", (),
            doc='AIM identifiers allowed ("C1" exactly, "Q" any QR modifier); empty allows all; '
            "a non-empty list requires AIM identifiers on every scan",
        ),
    }

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], parts: Parts) -> SerialScanner:
        return cls(name, parts.clock, options)

    def __init__(self, name: str, clock: Clock, options: Mapping[str, Any]):
        options = with_defaults(self.OPTIONS, options)
        super().__init__(name, clock, debounce_ms=options["debounce_ms"])
        self.port = str(options["port"])
        self.baudrate = int(options["baudrate"])
        self.idle_s = options["idle_timeout_ms"] / 1000
        self.idle_ends_scan = bool(options["idle_ends_scan"])
        self.max_length = int(options["max_length"])
        terms = tuple(t.encode("utf-8") for t in options["terminators"] if t)
        self.framer = Framer(terms or (b"\r", b"\n"), self.max_length)
        self.allowed = tuple(s.removeprefix("]") for s in options["symbologies"] or () if s)
        # An allow-list can only be enforced on scans that say their
        # symbology, so a list implies AIM identifiers are required.
        self.aim = bool(options["aim"]) or bool(self.allowed)
        if self.allowed and not options["aim"]:
            log.warning("%s: symbologies are set, so scans must carry an AIM identifier (aim = true)", name)
        self._serial: Any = None
        self._fd: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[str] | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._closing = False
        self._last_open_error = ""

    # -- life ------------------------------------------------------------------

    async def start(self) -> None:
        """Open the port if it is there; either way keep it supervised in the background."""
        self._loop = asyncio.get_running_loop()
        self._closing = False
        self._open()
        self._task = asyncio.create_task(self._supervise(), name=f"scanner-{self.name}")

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._drop_port()
        self.framer.reset()

    async def _supervise(self) -> None:
        """Wait for the port to be lost, then reopen it with a capped, doubling backoff."""
        delay = self.retry_initial
        while not self._closing:
            self.beat()
            if self._lost is not None:
                await self._watch()
                self._lost = None
                delay = self.retry_initial
            await asyncio.sleep(delay)
            delay = self.retry_initial if self._open() else min(delay * 2, self.retry_max)

    async def _watch(self) -> None:
        """Wait until the open port is lost; meanwhile check the path still names it.

        A hangup normally shows as a read error at once, but if the path
        (a /dev/serial/by-id link) now names another device, the old one is
        gone even when its descriptor stays quiet.
        """
        assert self._lost is not None
        while not self._lost.done():
            self.beat()
            try:
                await asyncio.wait_for(asyncio.shield(self._lost), self.watch_s)
            except TimeoutError:
                if self._fd is not None and not self._same_device():
                    self._lose(f"{self.port} now names another device (or none)")

    def _same_device(self) -> bool:
        try:
            return os.stat(self.port).st_rdev == os.fstat(self._fd).st_rdev  # type: ignore[arg-type]
        except OSError:
            return False

    def _open(self) -> bool:
        """Try to open the port once; report the outcome; never raise."""
        import serial  # pyserial: only this driver needs it

        try:
            ser = serial.Serial(self.port, self.baudrate, timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as e:
            self._open_failed(e)
            return False
        assert self._loop is not None
        fd = ser.fileno()
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError) as e:  # not pollable: not a tty we can use
            ser.close()
            self._open_failed(e)
            return False
        self._serial, self._fd = ser, fd
        self._lost = self._loop.create_future()
        self.framer.reset()
        self._last_open_error = ""
        log.info("%s: reading %s at %d baud", self.name, self.port, self.baudrate)
        self.report_status(online=True)
        return True

    def _open_failed(self, e: BaseException) -> None:
        detail = open_problem(self.port, e, f"[scanners.{self.name}].port")
        if detail != self._last_open_error:
            # Said once per distinct cause; the retries that follow stay quiet.
            log.error("%s: %s; retrying every %g s at most", self.name, detail, self.retry_max)
            self._last_open_error = detail
        else:
            log.debug("%s: still cannot open: %s", self.name, detail)
        self.report_status(online=False, detail=detail)

    def _drop_port(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
        self._serial, self._fd = None, None

    def _lose(self, detail: str) -> None:
        """The device went away: refuse a half-read scan, go offline, let the supervisor reopen."""
        self._drop_port()
        if self.framer.pending:
            frame = self.framer.flush()
            if frame is not None:
                self._deliver_refused(frame.raw, "scanner disconnected in the middle of a scan")
        self.framer.reset()
        self.report_status(online=False, detail=detail)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(detail)

    # -- reading ---------------------------------------------------------------

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        data, gone = read_ready(fd, READ_SIZE)
        if gone:
            self._lose(f"{self.port}: {gone}")
            return
        if not data:
            return
        for frame in self.framer.feed(data):
            self._deliver(frame)
        self._arm_idle()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if self.framer.pending and self._loop is not None:
            # Inter-byte timeout in real time: it is about the wire, not
            # about the controller's notion of time.
            self._idle = self._loop.call_later(self.idle_s, self._on_idle)

    def _on_idle(self) -> None:
        self._idle = None
        frame = self.framer.flush()
        if frame is None:
            return
        if self.idle_ends_scan or frame.too_long:
            self._deliver(frame)
            return
        # A scan is a scan only when its terminator came: a pause inside a
        # scan (DOS-77 ... 8) must never be acted on as the code DOS-77.
        self._deliver_refused(frame.raw, f"incomplete scan: no terminator within {self.idle_s * 1000:g} ms")

    # -- parsing ---------------------------------------------------------------

    def _deliver(self, frame: Frame) -> None:
        try:
            scan = self._parse(frame)
        except Exception as e:  # bad input must never take the reader down
            log.exception("%s: could not parse a scan", self.name)
            scan = Scan(self.name, frame.raw, None, self.clock.monotonic(), None, f"unparseable scan: {e}")
        if scan.code is None:
            log.info("%s: refused input %r: %s", self.name, scan.raw[:64], scan.error)
        self._emit(scan)

    def _deliver_refused(self, raw: bytes, error: str) -> None:
        log.info("%s: refused input %r: %s", self.name, raw[:64], error)
        self._emit(Scan(self.name, raw, None, self.clock.monotonic(), None, error))

    def _parse(self, frame: Frame) -> Scan:
        at = self.clock.monotonic()
        raw = frame.raw
        if frame.too_long is not None:
            too_long = f"scan too long ({frame.too_long} bytes, at most {self.max_length})"
            return Scan(self.name, raw, None, at, None, too_long)
        symbology = None
        body = raw
        if self.aim:
            symbology, body = parse_aim(raw)
            if symbology is None:
                return Scan(self.name, raw, None, at, None, "no AIM symbology identifier (expected ]<letter><digit>)")
            if self.allowed and not self._allowed(symbology):
                allowed = ", ".join("]" + s for s in self.allowed)
                refused = f"symbology ]{symbology} not accepted by this scanner (allowed: {allowed})"
                return Scan(self.name, raw, None, at, symbology, refused)
        code, error = decode_scan(body, self.max_length)
        return Scan(self.name, raw, code, at, symbology, error)

    def _allowed(self, symbology: str) -> bool:
        """Entries are full identifiers ("C1") or a letter alone ("C": any modifier)."""
        return any(a == symbology or (len(a) == 1 and a == symbology[0]) for a in self.allowed)
