"""The daemon: wires config, journal, drivers, controller, control socket and station link.

Start order matters: the journal first (nothing may unlock without it),
then the drivers (every lock de-energised), then the controller reads the
doors and journals what changed while it was down, and only then does it
tell systemd it is ready (READY=1).

Signals:

- SIGTERM/SIGINT: stop taking scans, finish what is in flight, switch every
  lock off, journal daemon.stopped, say offline on MQTT, close the journal,
  exit 0.
- SIGHUP: reload the config. A file that fails its checks is refused and the
  old config keeps running (config.reload_refused, with every error). A good
  one is applied by restarting the controller, drivers, control socket and
  station link in-process with the journal kept open, at a moment when
  nothing is in flight (config.reloaded). The journal's path cannot change
  this way: that needs a restart.

Under systemd's watchdog, each long-running task beats a heartbeat and the
ping is withheld as soon as one of them falls silent (lockerd.sdnotify).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import sys
import time

from lockerd import __version__, checkpoints, sdnotify
from lockerd import config as config_mod
from lockerd.clock import Clock
from lockerd.config import Config
from lockerd.control_socket import ControlServer
from lockerd.controller import Controller
from lockerd.drivers.base import DriverStatus
from lockerd.errors import ConfigError, JournalError
from lockerd.hardware import Hardware, build_hardware
from lockerd.hwlock import HardwareBusy, HardwareLock, hardware_lock_path
from lockerd.journal import Journal
from lockerd.sdnotify import Heartbeats, Notifier, Watchdog

log = logging.getLogger("lockerd")

# How long a reload waits for a moment with nothing in flight before it is refused.
RELOAD_QUIET_WAIT_S = 30.0
# Config fields that are not settings of their own (derived, or the file itself).
_NOT_SETTINGS = {"path", "digest", "compartments"}


def under_journald() -> bool:
    """Is stderr the systemd journal? systemd says which stream it gave us in JOURNAL_STREAM (device:inode)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str) -> None:
    # journald reads the <N> prefix as the syslog level of each line; on a terminal or in a file it is noise.
    prefix = {"DEBUG": "<7>", "INFO": "<6>", "WARNING": "<4>", "ERROR": "<3>", "CRITICAL": "<2>"} \
        if under_journald() else {}

    class Fmt(logging.Formatter):
        def format(self, record: logging.LogRecord) -> str:
            return prefix.get(record.levelname, "") + super().format(record)

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Fmt("%(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def changed_settings(old: Config, new: Config) -> list[str]:
    """The top-level settings (sections) that differ between two configs."""
    return [f.name for f in dataclasses.fields(Config)
            if f.name not in _NOT_SETTINGS and getattr(old, f.name) != getattr(new, f.name)]


class Daemon:
    def __init__(self, config: Config, clock: Clock | None = None, notifier: Notifier | None = None):
        self.config = config
        self.clock = clock or Clock()
        self.notifier = notifier or sdnotify.process_notifier()
        self.journal = Journal(config.journal_path, self.clock)
        self.beats = Heartbeats(self.clock)
        self.watchdog: Watchdog | None = None
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.ready_after: float | None = None
        self.reloads = 0  # reloads applied
        # The bench harness (hil/) takes the same lock: never both on the same locks.
        self.hwlock = HardwareLock(hardware_lock_path(config), "the lockerd daemon")
        self._ready = False
        self._beat_names: list[str] = []
        self.hw: Hardware
        self.controller: Controller
        self.control: ControlServer
        self.link = None
        self.checkpointer: checkpoints.Checkpointer | None = None
        self._build(config)

    # -- the stack a reload replaces ------------------------------------------------

    def _build(self, config: Config) -> None:
        self.hw = build_hardware(config, self.clock)
        self.controller = Controller(config, self.journal, self.hw, self.clock)
        self.control = ControlServer(config.control_socket, self.controller)
        self.link = None

    async def _start_stack(self, config: Config, reloaded: bool) -> None:
        self._wire_heartbeats()
        for d in self.hw.all():
            d.on_status(self._driver_status)
        await self.controller.start(reloaded=reloaded)
        await self.control.start()
        if config.station and config.station.get("enabled"):
            from lockerd.station import StationLink
            from lockerd.station_handler import StationHandler

            self.link = StationLink(config, self.journal, self.clock,
                                    commands=StationHandler(self.controller), states=self.controller)
            await self.link.start()

    async def _stop_stack(self, final: bool) -> None:
        """Stop taking commands and scans, finish what is in flight, every lock off, offline on MQTT."""
        await self.control.stop()
        await self.controller.stop(final=final)  # final: daemon.stopped, which the link still delivers
        if final and self.checkpointer is not None:
            await self.checkpointer.stop()  # the last checkpoint signs daemon.stopped; the link delivers it
        if self.link is not None:
            with contextlib.suppress(Exception):
                await self.link.stop()  # presence offline (clean, retained), then disconnect
            self.link = None
        self._unwire_heartbeats()

    # -- health ---------------------------------------------------------------------------

    def _wire_heartbeats(self) -> None:
        """Register a heartbeat for each long-running task of the current stack (only under a watchdog)."""
        wd = self.watchdog
        if wd is None:
            return
        beat_s = min(1.0, wd.interval / 2)
        # A task may be one beat late twice before the pings stop.
        max_age = max(wd.interval, 3 * beat_s)
        for name in self.controller.watch(self.beats.beat, beat_s):
            self._register(name, max_age)
        for d in self.hw.all():
            if d.heartbeat_s is not None:
                d.on_heartbeat(lambda name: self.beats.beat(f"driver:{name}"))
                self._register(f"driver:{d.name}", max(max_age, 2 * d.heartbeat_s))

    def _register(self, name: str, max_age: float) -> None:
        self.beats.register(name, max_age)
        self._beat_names.append(name)

    def _unwire_heartbeats(self) -> None:
        for name in self._beat_names:
            self.beats.unregister(name)
        self._beat_names.clear()

    def status_line(self) -> str:
        """One line for ``systemctl status``: what runs, and what is wrong."""
        c = self.config
        parts = [f"site {c.site} node {c.node}", f"{len(c.compartments)} compartments"]
        j = self.journal
        parts.append(f"journal at seq {j.last_seq}" if j.healthy else f"JOURNAL UNUSABLE ({j.error})")
        offline = [f"{d.name} ({d.detail})" if d.detail else d.name for d in self.hw.all() if not d.online]
        parts.append("offline: " + ", ".join(offline) if offline else "every device online")
        if self.link is not None:
            parts.append("station connected" if self.link.connected else "station not connected")
        return "; ".join(parts)

    def _health(self) -> tuple[bool, str]:
        """The watchdog's question: every heartbeat fresh? (When healthy, the status line to show again.)"""
        ok, why = self.beats.check()
        return (True, self.status_line()) if ok else (False, why)

    def _driver_status(self, _st: DriverStatus) -> None:
        if self._ready:
            self.notifier.status(self.status_line())

    # -- life -----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything, then tell systemd READY=1; HardwareBusy while the bench harness holds the cabinet."""
        t0 = time.monotonic()
        try:
            self.hwlock.acquire()
        except HardwareBusy as e:
            self.notifier.status(f"not starting: {e}")
            raise
        self.watchdog = Watchdog.from_env(self._health, self.notifier, self.clock)
        if self.watchdog is not None:
            # Pinging from the start: until the tasks have registered, nothing can be late.
            self.watchdog.start()
        self.notifier.status("starting: opening the journal")
        if not self.journal.open():
            # Fail secure: keep running (doors are still supervised where
            # possible) but every grant is refused until the journal works.
            log.error("journal unusable; every scan will be refused until it is fixed")
        else:
            self._check_anchor()
        self.notifier.status("starting: every lock off, reading the doors")
        await self._start_stack(self.config, reloaded=False)
        await self._flush_journal()  # the doors as read at start are on disk before READY
        self.ready_after = time.monotonic() - t0
        log.info("lockerd %s ready in %.0f ms: site %s node %s, %d compartments, journal %s",
                 __version__, self.ready_after * 1000, self.config.site, self.config.node,
                 len(self.config.compartments), self.config.journal_path)
        self._ready = True
        # Only now: config loaded, journal open, every driver started with its locks off.
        self.notifier.ready("ready: " + self.status_line())
        self._start_checkpoints()  # the first signature gates nothing: after READY

    def _check_anchor(self) -> None:
        """A journal that ends before, or differs at, its last signed checkpoint is an alarm before anything else."""
        problem = checkpoints.check_at_start(self.journal)
        if problem is not None:
            log.error("ALARM: the journal was truncated or rewritten: %s", problem["reason"])
            self.journal.append("alarm.journal_truncated", **problem)

    def _start_checkpoints(self) -> None:
        c = self.config
        try:
            assert c.checkpoint_key is not None  # config.parse gives the default beside the journal
            key = checkpoints.load_or_create_key(c.checkpoint_key)
        except OSError as e:
            log.error("checkpoints: no signing key (%s): the journal runs unsigned", e)  # noqa: TRY400 - e says why
            self.checkpointer = None
            return
        self.checkpointer = checkpoints.Checkpointer(self.journal, self.clock, c.site, c.node, key,
                                                     c.checkpoint_every, c.checkpoint_interval_s)
        self.checkpointer.start()

    async def stop(self) -> None:
        log.info("stopping: no more scans, finishing what is in flight")
        self._ready = False
        self.notifier.stopping()
        self.notifier.status("stopping: finishing what is in flight, then every lock off")
        if self.watchdog is not None:
            await self.watchdog.stop()
        await self._stop_stack(final=True)
        self.journal.close()  # writes whatever is still queued, then stops the writer
        self.hwlock.release()
        log.info("stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload_requested.set)
        await self.start()
        settle_heap()
        while True:
            stop = asyncio.ensure_future(self.stopping.wait())
            reload = asyncio.ensure_future(self.reload_requested.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            reload.cancel()
            if self.stopping.is_set():
                break
            self.reload_requested.clear()
            await self.reload()
        await self.stop()
        return 0

    # -- reload ---------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file and apply it; True if the new config now runs."""
        self.notifier.reloading()
        self.notifier.status("reloading the config")
        old = self.config
        log.info("reloading %s", old.path)
        try:
            new = config_mod.load(old.path)
        except ConfigError as e:
            return await self._refuse(e.problems, digest=None)
        if new.journal_path != old.journal_path:
            return await self._refuse([f"journal.path changed from {old.journal_path} to {new.journal_path}: "
                                       "the journal cannot be swapped while running; restart the service"],
                                      digest=new.digest)
        changed = changed_settings(old, new)
        if new.digest == old.digest or not changed:
            log.info("config unchanged; nothing to reload")
            await self._journal("config.reloaded", config=new.digest, previous=old.digest, changed=[])
            self.notifier.ready("ready: " + self.status_line())
            return True
        busy = await self._wait_quiet(RELOAD_QUIET_WAIT_S)
        if self.stopping.is_set():
            return False
        if busy is not None:
            return await self._refuse([f"still busy after {RELOAD_QUIET_WAIT_S:g} s ({busy}); "
                                       "send the reload again when the doors are shut"], digest=new.digest)
        # No await between the quiet check and this: nothing new can start in between.
        self.controller.stop_accepting("controller reloading its configuration")
        self._ready = False
        await self._stop_stack(final=False)
        # The new controller reads compartment state and the registry back
        # from the journal: everything queued must be committed first.
        await self._flush_journal()
        try:
            self._build(new)
            await self._start_stack(new, reloaded=True)
        except Exception as e:
            log.exception("starting with the new config failed; going back to the old one")
            with contextlib.suppress(Exception):
                await self._stop_stack(final=False)
            self._build(old)
            await self._start_stack(old, reloaded=True)
            self._ready = True
            return await self._refuse([f"starting with the new config failed: {type(e).__name__}: {e}"],
                                      digest=new.digest)
        self.config = new
        self.reloads += 1
        if new.log_level != old.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        log.info("config reloaded (%s changed): %d compartments", ", ".join(changed), len(new.compartments))
        await self._journal("config.reloaded", config=new.digest, previous=old.digest, changed=changed)
        self._ready = True
        self.notifier.ready("ready: reloaded; " + self.status_line())
        return True

    async def _wait_quiet(self, timeout_s: float) -> str | None:
        """Wait until nothing is in flight (or a stop is asked for); what is still busy, or None."""
        deadline = time.monotonic() + timeout_s
        while (busy := self.controller.busy()) is not None and not self.stopping.is_set():
            if time.monotonic() >= deadline:
                return busy
            # Polled: in-flight work ends on many paths (door shut, open timeout, pulse end).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 0.05)
        return busy

    async def _refuse(self, errors: list[str], digest: str | None) -> bool:
        log.error("reload refused, still running the old config (%s): %s", self.config.digest[:12],
                  "; ".join(errors))
        await self._journal("config.reload_refused", errors=errors, config=digest, running=self.config.digest)
        n = len(errors)
        self.notifier.ready(f"ready: reload refused, old config kept ({n} error{'s' if n != 1 else ''}, "
                            f"first: {errors[0]}); " + self.status_line())
        return False

    async def _flush_journal(self) -> None:
        """Wait until everything queued to the journal is committed (an unusable one answers at once)."""
        with contextlib.suppress(JournalError):
            await self.journal.flush()

    async def _journal(self, kind: str, **data: object) -> None:
        try:
            await self.journal.append_durable(kind, **data)
        except JournalError as e:
            log.error("cannot journal %s: %s", kind, e)  # noqa: TRY400 - an unusable journal is expected; e says why


def settle_heap() -> None:
    """Once ready: what the start built lives as long as the process, so keep it out of the collector's walks.

    A full collection walked it all (5-6 ms with the demo station here), on whatever opening it landed; now it
    walks only what came since. Collection is off until here (``lockerd run`` turns it off before its imports):
    the start makes little cyclic garbage, and collecting it cost some 15 ms of every start.
    """
    gc.freeze()
    gc.enable()


def run(config: Config) -> int:
    setup_logging(config.log_level)
    try:
        return asyncio.run(Daemon(config).run())
    except HardwareBusy as e:
        log.error("not starting: %s; the bench harness must finish first", e)  # noqa: TRY400 - expected, e says who
        return 1
