"""Pty pairs for serial tests: a real tty the driver opens, and a peer end the test writes to.

``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B`` joins two ptys, each
reachable by a path: the driver opens A with pyserial exactly as it opens a
``/dev/ttyACM0``, the test plays the scanner by writing to B. Killing socat
is a scanner pulled out; starting it again with the same paths is the
scanner plugged back in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

SOCAT = shutil.which("socat") or "/usr/bin/socat"


class SocatPair:
    """Two linked pty paths, ``device`` (for the driver) and ``peer`` (for the test)."""

    def __init__(self, folder: Path, name: str = "scanner"):
        self.device = folder / f"{name}-dev"
        self.peer = folder / f"{name}-peer"
        self.proc: subprocess.Popen | None = None
        self._fd: int | None = None

    def start(self, timeout: float = 30.0) -> SocatPair:
        """Start socat and wait until both links exist."""
        self.proc = subprocess.Popen(
            [SOCAT, "-d", "-d", f"pty,raw,echo=0,link={self.device}", f"pty,raw,echo=0,link={self.peer}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        # socat announces nothing on stdout; the links appearing is the signal.
        while not (self.device.exists() and self.peer.exists()):
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                self.stop()
                raise RuntimeError(f"socat exited early: {err}")
            if time.monotonic() > deadline:
                self.stop()  # never leave socat running behind a failed test
                raise TimeoutError("socat did not create its pty links")
            time.sleep(0.005)
        return self

    def peer_fd(self) -> int:
        """The test's end, opened once per socat run."""
        if self._fd is None:
            self._fd = os.open(self.peer, os.O_RDWR | os.O_NOCTTY)
        return self._fd

    def write_now(self, data: bytes) -> None:
        """Write a small burst (well under the ~4 KiB pty buffer) from the calling thread."""
        fd = self.peer_fd()
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]

    async def write(self, data: bytes, chunk: int = 512) -> None:
        """Write any amount from a worker thread in chunks: a big write from the loop can deadlock."""

        def run() -> None:
            for i in range(0, len(data), chunk):
                self.write_now(data[i : i + chunk])

        await asyncio.to_thread(run)

    def stop(self) -> None:
        """Pull the scanner out: socat ends and both ptys hang up."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
        # socat removes its links on SIGTERM; make sure, so a restart links afresh.
        for p in (self.device, self.peer):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
