"""The daemon: wires config, journal, drivers, controller, control socket and station link.

Start order matters: the journal first (nothing may unlock without it),
then the drivers (every lock de-energised), then the controller reads the
doors and journals what changed while it was down, and only then does it
say it is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import time

from lockerd import __version__
from lockerd.clock import Clock
from lockerd.config import Config
from lockerd.control import ControlServer
from lockerd.controller import Controller
from lockerd.drivers import build_hardware
from lockerd.hwlock import HardwareBusy, HardwareLock, hardware_lock_path
from lockerd.journal import Journal

log = logging.getLogger("lockerd")


def setup_logging(level: str) -> None:
    # journald reads the <N> prefix as the syslog level of each line.
    prefix = {"DEBUG": "<7>", "INFO": "<6>", "WARNING": "<4>", "ERROR": "<3>", "CRITICAL": "<2>"}

    class Fmt(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return prefix.get(record.levelname, "") + super().format(record)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Fmt("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class Daemon:
    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or Clock()
        self.journal = Journal(config.journal_path, self.clock)
        self.hw = build_hardware(config, self.clock)
        self.controller = Controller(config, self.journal, self.hw, self.clock)
        self.control = ControlServer(config.control_socket, self.controller)
        self.link = None
        self.hw_lock = HardwareLock(hardware_lock_path(config), "the lockerd daemon")
        self.stopping = asyncio.Event()
        self.ready_after: float | None = None

    async def start(self) -> None:
        t0 = time.monotonic()
        # Before any device is touched: the bench harness may be driving the locks.
        self.hw_lock.acquire()
        if not self.journal.open():
            # Fail secure: keep running (doors are still supervised where
            # possible) but every grant is refused until the journal works.
            log.error("journal unusable; every scan will be refused until it is fixed")
        await self.controller.start()
        await self.control.start()
        if self.config.station and self.config.station.get("enabled"):
            from lockerd.station import StationLink
            from lockerd.station_commands import CommandHandler

            self.link = StationLink(self.config, self.journal, self.clock,
                                    commands=CommandHandler(self.controller), states=self.controller)
            await self.link.start()
        self.ready_after = time.monotonic() - t0
        log.info("lockerd %s ready in %.0f ms: site %s node %s, %d compartments, journal %s",
                 __version__, self.ready_after * 1000, self.config.site, self.config.node,
                 len(self.config.compartments), self.config.journal_path)

    async def stop(self) -> None:
        log.info("stopping: no more scans, finishing what is in flight")
        await self.control.stop()
        await self.controller.stop()
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.stop()
        self.journal.close()
        self.hw_lock.release()
        log.info("stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self.start()
        await self.stopping.wait()
        await self.stop()
        return 0


def run(config: Config) -> int:
    setup_logging(config.log_level)
    try:
        return asyncio.run(Daemon(config).run())
    except HardwareBusy as e:
        log.error("not starting: %s (a bench run, lockerd-hil, holds it; the service starts once it ends)", e)
        return 1
