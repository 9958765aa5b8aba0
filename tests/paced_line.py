"""An RS-485 line for tests: bytes take their wire time at the baud rate, and one side talks at a time.

A pty carries bytes as fast as they are written, whatever baud rate the
port is set to, so a test over a pty says nothing about what a real line
costs. ``PacedLine`` is two ptys with a relay thread between them: the
daemon opens ``device``, pymodbus's RTU server opens ``boards``, and every
byte one side writes reaches the other side one character time (10 bits
at 8N1: start, 8 data, stop) after the byte before it has, as a UART
sends them.

Half-duplex, as the bus is: one transmitter drives the pair at a time. A
side that starts writing while the other side's bytes are still on the
wire collides with them, and as on a real pair neither gets through
whole: the bytes it wrote, and the other side's bytes not yet delivered,
are lost (counted in ``collisions``). Bytes are lost rather than delayed
because a real transceiver does not wait for the line: a Modbus master
that talks over a slow board's late reply gets garbage, not a queue.

``busy_s`` adds up the wire time of every byte carried, for the line's
load.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
import tty
from collections import deque


class PacedLine:
    """Two ptys joined by a paced, half-duplex relay (see the module doc)."""

    def __init__(self, baudrate: int = 9600, bits_per_char: int = 10):
        self.baudrate = baudrate
        self.char_s = bits_per_char / baudrate
        self.collisions = 0
        self.carried = 0  # bytes delivered
        self.busy_s = 0.0
        self._fds: list[int] = []
        self._masters: tuple[int, int] = (-1, -1)
        self.device = ""  # the daemon's end
        self.boards = ""  # the boards' end (pymodbus's server)
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None

    def start(self) -> PacedLine:
        ends = []
        for _ in range(2):
            master, slave = os.openpty()
            tty.setraw(master)
            tty.setraw(slave)  # no echo, no line discipline: the opener's settings come on top
            self._fds += [master, slave]  # the slave stays open here, so a reopen never hangs the master up
            ends.append((master, os.ttyname(slave)))
        (m1, self.device), (m2, self.boards) = ends
        self._masters = (m1, m2)
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="paced-line", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in (*self._fds, self._stop_r, self._stop_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fds, self._stop_r, self._stop_w = [], -1, -1

    def _run(self) -> None:
        m1, m2 = self._masters
        other = {m1: m2, m2: m1}
        wire: deque[tuple[float, int, int]] = deque()  # (delivered at, to fd, byte), in wire order
        talker = -1  # the fd whose bytes are on the wire
        free_at = 0.0  # when the wire falls silent
        while True:
            now = time.monotonic()
            wait = max(0.0, wire[0][0] - now) if wire else 0.5
            ready, _, _ = select.select([m1, m2, self._stop_r], [], [], wait)
            now = time.monotonic()
            if self._stop_r in ready:
                return
            for fd in (m1, m2):
                if fd not in ready:
                    continue
                try:
                    data = os.read(fd, 4096)
                except OSError:  # nobody has the other end open yet
                    continue
                if now < free_at and talker != fd:
                    # Both drive the pair: what is still on the wire and what was just written are garbage.
                    self.collisions += 1
                    wire.clear()
                    free_at = max(free_at, now + len(data) * self.char_s)
                    talker = -1
                    continue
                start = max(now, free_at) if talker == fd else now
                for i, b in enumerate(data):
                    wire.append((start + (i + 1) * self.char_s, other[fd], b))
                talker, free_at = fd, start + len(data) * self.char_s
                self.busy_s += len(data) * self.char_s
            out: dict[int, bytearray] = {}
            while wire and wire[0][0] <= now:
                _, to, b = wire.popleft()
                out.setdefault(to, bytearray()).append(b)
            for to, chunk in out.items():
                with contextlib.suppress(OSError):  # the other side not open (yet, or any more): lost
                    os.write(to, chunk)
                self.carried += len(chunk)
