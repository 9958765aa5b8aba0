"""One process at a time on a cabinet's hardware: the daemon or the bench harness.

Both take an exclusive ``flock`` on the same file beside the journal
(``<journal>.hardware.lock``), so the bench harness refuses to run while the
service drives the locks, and the service refuses to start while a
technician is benching the cabinet. The kernel drops an flock when its
holder dies, so a crashed holder never leaves a stale lock behind.

Both also bind an abstract Unix socket named after that file. It needs no
file system at all: a journal folder that is read-only, missing or not a
folder still leaves the daemon running (refusing every grant, supervising
the doors) and still keeps the bench off the same locks. The kernel drops
it with its holder too.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import socket
from pathlib import Path

from lockerd.config import Config
from lockerd.errors import LockerdError

log = logging.getLogger(__name__)


class HardwareBusy(LockerdError, BlockingIOError):
    """Another process (the daemon or the bench harness) holds the cabinet's hardware."""


def hardware_lock_path(config: Config) -> Path:
    """The lock file for the hardware a config describes (one config, one journal, one cabinet set)."""
    j = config.journal_path
    return j.with_name(j.name + ".hardware.lock")


class HardwareLock:
    """An exclusive, non-blocking lock on a cabinet's hardware; ``who`` is written into the file for the message."""

    def __init__(self, path: Path, who: str):
        self.path = Path(path)
        self.who = who
        self._fd: int | None = None
        self._sock: socket.socket | None = None

    @property
    def held(self) -> bool:
        return self._sock is not None

    @property
    def abstract_name(self) -> bytes:
        digest = hashlib.sha256(os.path.abspath(self.path).encode()).hexdigest()[:32]
        return b"\0lockerd-hardware-" + digest.encode()

    def acquire(self) -> None:
        """Take the lock or raise :class:`HardwareBusy` naming the holder."""
        if self.held:
            return
        fd = self._lock_file()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.abstract_name)
        except OSError as e:
            sock.close()
            if fd is not None:
                os.close(fd)
            if e.errno != errno.EADDRINUSE:
                raise
            raise HardwareBusy(
                f"the cabinet hardware is in use by another lockerd process (lock {self.path})") from None
        self._fd, self._sock = fd, sock
        log.debug("hardware lock %s taken by %s", self.path, self.who)

    def _lock_file(self) -> int | None:
        """The flock on the file, which names its holder; None where the folder cannot hold the file."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except PermissionError:
                # A file created by another user (the service's dynamic user, or root
                # running the bench): an flock needs no write access.
                fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            log.warning("hardware lock: cannot use %s (%s); the lock holds by its abstract socket alone",
                        self.path, e.strerror or e)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            raise HardwareBusy(
                f"the cabinet hardware is in use by {holder or 'another lockerd process'} (lock {self.path})"
            ) from None
        with contextlib.suppress(OSError):  # read-only file: the lock holds, only the note is missing
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{self.who} (pid {os.getpid()})\n".encode(), 0)
        return fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> HardwareLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
