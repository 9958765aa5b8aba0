"""The systemd notify protocol (sd_notify) and a health-gated watchdog, without a dependency.

systemd passes ``$NOTIFY_SOCKET`` to a ``Type=notify`` service: a Unix
datagram socket (a path, or ``@name`` for the abstract namespace) that
takes newline-separated ``KEY=value`` assignments. Outside systemd the
variable is unset and every call here is a quiet no-op, so the daemon
can call them unconditionally.

The watchdog pings only while a health callback says the daemon works:
a stuck scanner reader or controller then stops the pings and systemd
restarts the service, instead of a live event loop vouching for a dead
daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

from lockerd.clock import Clock

log = logging.getLogger(__name__)

Health = Callable[[], tuple[bool, str]]


def _address(raw: str) -> str | bytes | None:
    """Turn a ``$NOTIFY_SOCKET`` value into a socket address, or None if unusable."""
    if raw.startswith("@"):
        # Abstract namespace: a leading NUL instead of the @, no terminator.
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    # vsock: and other transports of newer systemd are not needed on a board.
    log.warning("NOTIFY_SOCKET=%r is neither a path nor an abstract socket; not notifying systemd", raw)
    return None


class Notifier:
    """Sends sd_notify messages to the socket named by ``$NOTIFY_SOCKET`` (or an explicit one)."""

    def __init__(self, socket_path: str | None = None):
        raw = os.environ.get("NOTIFY_SOCKET", "") if socket_path is None else socket_path
        self.address = _address(raw) if raw else None
        self._sock: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """True when there is a systemd to tell."""
        return self.address is not None

    def notify(self, *assignments: str) -> bool:
        """Send one datagram of ``KEY=value`` lines; True if it was sent."""
        if self.address is None:
            return False
        payload = "\n".join(assignments).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never let a stalled service manager block the event loop:
                # a dropped datagram costs less than a frozen controller.
                self._sock.settimeout(0.0)
            self._sock.sendto(payload, self.address)
        except OSError as e:
            # Logged once per outage: the watchdog would repeat it every few seconds.
            if not self._failing:
                log.warning("cannot notify systemd at %r: %s", self.address, e)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd works again")
            self._failing = False
        return True

    def ready(self, status: str | None = None) -> bool:
        """Start-up is complete: config, journal and drivers are up."""
        return self.notify("READY=1", *((f"STATUS={_one_line(status)}",) if status is not None else ()))

    def status(self, text: str) -> bool:
        """A one-line status that ``systemctl status`` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """Tell systemd the daemon is alive and healthy."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        """A reload has begun; send ready() when it is done.

        systemd 253+ wants MONOTONIC_USEC alongside to match the reload to
        the request; older versions ignore the extra field.
        """
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def close(self) -> None:
        """Release the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    # A newline would start a new assignment: one status line only.
    return " ".join(str(text).splitlines())


_default: Notifier | None = None


def process_notifier() -> Notifier:
    """The one notifier of this process (the module-level helpers below share it)."""
    global _default
    if _default is None:
        _default = Notifier()
    return _default


def ready(status: str | None = None) -> bool:
    """Send READY=1 (and a status) through the process-wide notifier."""
    return process_notifier().ready(status)


def status(text: str) -> bool:
    """Send STATUS=text through the process-wide notifier."""
    return process_notifier().status(text)


def watchdog() -> bool:
    """Send WATCHDOG=1 through the process-wide notifier."""
    return process_notifier().watchdog()


def stopping() -> bool:
    """Send STOPPING=1 through the process-wide notifier."""
    return process_notifier().stopping()


def reloading() -> bool:
    """Send RELOADING=1 with MONOTONIC_USEC through the process-wide notifier."""
    return process_notifier().reloading()


def watchdog_interval(environ: dict[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between pings from ``$WATCHDOG_USEC`` (half the timeout), or None if no watchdog is asked for.

    ``$WATCHDOG_PID``, when set, names the process the watchdog is meant
    for; a child that inherited the environment must not ping.
    """
    env = os.environ if environ is None else environ
    raw_usec = env.get("WATCHDOG_USEC", "")
    if not raw_usec:
        return None
    try:
        usec = int(raw_usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number; no watchdog", raw_usec)
        return None
    if usec <= 0:
        return None
    raw_pid = env.get("WATCHDOG_PID", "")
    if raw_pid:
        try:
            meant_for = int(raw_pid)
        except ValueError:
            log.warning("WATCHDOG_PID=%r is not a number; no watchdog", raw_pid)
            return None
        if meant_for != (os.getpid() if pid is None else pid):
            return None
    # Half the timeout, as systemd recommends: one late ping is not a restart.
    return usec / 2_000_000


class Watchdog:
    """Pings systemd every ``interval`` seconds, but only while ``health()`` says the daemon works."""

    def __init__(self, notifier: Notifier, interval: float, health: Health, clock: Clock | None = None):
        if not interval > 0:
            raise ValueError(f"watchdog interval must be > 0 s, not {interval!r}")
        self.notifier = notifier
        self.interval = interval
        self.health = health
        self.clock = clock or Clock()
        self.healthy: bool | None = None
        self.reason = ""
        self.pings = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_env(cls, health: Health, notifier: Notifier | None = None, clock: Clock | None = None) -> Watchdog | None:
        """A watchdog as systemd asked for it, or None when it did not (or there is no socket)."""
        notifier = notifier or process_notifier()
        interval = watchdog_interval()
        if interval is None or not notifier.enabled:
            return None
        return cls(notifier, interval, health, clock)

    def check(self) -> bool:
        """Ask the health callback once; ping if healthy. True if a ping was sent."""
        try:
            ok, reason = self.health()
        except Exception as e:  # a broken health check must read as unhealthy, not kill the loop
            log.exception("watchdog health check failed")
            ok, reason = False, f"health check raised {type(e).__name__}: {e}"
        if not ok:
            if self.healthy is not False:
                # Logged once per outage; systemd restarts us when the timeout runs out.
                log.error("unhealthy, withholding the watchdog ping: %s", reason)
            if self.healthy is not False or reason != self.reason:
                # systemctl status shows why the pings stopped.
                self.notifier.status(f"unhealthy: {reason}")
            self.healthy, self.reason = False, reason
            return False
        if self.healthy is False:
            log.warning("healthy again, resuming the watchdog ping")
            self.notifier.status(f"healthy again{': ' + reason if reason else ''}")
        self.healthy, self.reason = True, reason
        sent = self.notifier.watchdog()
        if sent:
            self.pings += 1
        return sent

    async def run(self) -> None:
        """Check and ping now, then every interval, until cancelled."""
        while True:
            self.check()
            await self.clock.sleep(self.interval)

    def start(self) -> asyncio.Task[None]:
        """Run the watchdog as a task of the current loop."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="sd-watchdog")
        return self._task

    async def stop(self) -> None:
        """Stop pinging."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class Heartbeats:
    """Named heartbeats with a maximum age, the usual health callback for :class:`Watchdog`.

    Each long-running task (a scanner reader, the controller loop, a bus
    owner) calls :meth:`beat` whenever it completes a cycle; ``check`` is
    unhealthy as soon as one of them has been silent longer than its limit.
    """

    def __init__(self, clock: Clock | None = None):
        self.clock = clock or Clock()
        self._limits: dict[str, float] = {}
        self._last: dict[str, float] = {}

    def register(self, name: str, max_age: float) -> None:
        """Expect ``name`` to beat at least every ``max_age`` seconds, starting now."""
        if not max_age > 0:
            raise ValueError(f"heartbeat {name!r}: max_age must be > 0 s, not {max_age!r}")
        self._limits[name] = max_age
        self._last[name] = self.clock.monotonic()

    def unregister(self, name: str) -> None:
        """Stop expecting ``name`` (a task that ended on purpose)."""
        self._limits.pop(name, None)
        self._last.pop(name, None)

    def beat(self, name: str) -> None:
        """``name`` is alive now."""
        if name in self._limits:
            self._last[name] = self.clock.monotonic()

    def check(self) -> tuple[bool, str]:
        """(healthy, reason): unhealthy names every heartbeat that is overdue."""
        now = self.clock.monotonic()
        late = [f"{n} silent {now - self._last[n]:.1f} s (limit {limit:g} s)"
                for n, limit in sorted(self._limits.items()) if now - self._last[n] > limit]
        if late:
            return False, "; ".join(late)
        return True, ""
