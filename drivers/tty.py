"""What the serial drivers (scanners, the RS-485 line) share about a tty: why it will not open, reading it."""

from __future__ import annotations

import errno
import os


def open_problem(port: str, e: BaseException, where: str) -> str:
    """A technician's sentence for a failed open of ``port``; ``where`` names the config key to check."""
    code = getattr(e, "errno", None)
    if code == errno.ENOENT or not os.path.exists(port):
        return f"port {port} does not exist (unplugged, or a wrong {where}?)"
    if code in (errno.EACCES, errno.EPERM):
        return f"no permission to open {port} (is the service user in the dialout group?)"
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK) or "lock" in str(e).lower():
        return f"{port} is in use by another program"
    return f"cannot open {port}: {e}"


def read_ready(fd: int, size: int) -> tuple[bytes, str]:
    """Read what a non-blocking tty has: (data, "") or, when the device is gone, (b"", why)."""
    try:
        data = os.read(fd, size)
    except (BlockingIOError, InterruptedError):
        return b"", ""
    except OSError as e:
        # EIO on a hung-up pty or a USB device pulled out; ENODEV and
        # friends for adapters that vanish from the bus.
        return b"", f"read failed ({e.strerror or e}); device gone?"
    if not data:
        return b"", "end of file (device closed)"
    return data, ""
