"""The sd_notify protocol against a real Unix datagram socket, and the health-gated watchdog."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from lockerd import sdnotify
from lockerd.clock import ManualClock
from lockerd.sdnotify import Heartbeats, Notifier, Watchdog, watchdog_interval


class Manager:
    """Stands in for systemd's side: a bound AF_UNIX SOCK_DGRAM socket."""

    def __init__(self, sock: socket.socket, env_value: str):
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> dict[str, str]:
        """The next datagram as a dict of assignments."""
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.split("\n"))

    def pending(self) -> list[dict[str, str]]:
        """Every datagram already queued, without waiting.

        A Unix datagram is in the receiver's queue when sendto returns, so
        an empty queue here proves nothing was sent.
        """
        out = []
        self.sock.settimeout(0.0)
        try:
            while True:
                try:
                    data = self.sock.recv(4096).decode()
                except BlockingIOError:
                    return out
                out.append(dict(line.split("=", 1) for line in data.split("\n")))
        finally:
            self.sock.settimeout(None)


@pytest.fixture(params=["path", "abstract"])
def manager(request, tmp_path) -> Iterator[Manager]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        path = tmp_path / "notify.sock"
        s.bind(str(path))
        env_value = str(path)
    else:
        name = f"lockerd-test-{uuid.uuid4().hex}"
        s.bind(b"\0" + name.encode())
        env_value = "@" + name
    with s:
        yield Manager(s, env_value)


def test_ready_with_status(manager):
    n = Notifier(manager.env_value)
    assert n.enabled
    assert n.ready("3 cabinets, journal OK") is True
    assert manager.recv() == {"READY": "1", "STATUS": "3 cabinets, journal OK"}
    assert n.ready() is True
    assert manager.recv() == {"READY": "1"}


def test_status_watchdog_stopping(manager):
    n = Notifier(manager.env_value)
    assert n.status("scanner front offline\nsecond line")
    # A newline would start another assignment: it is folded into one line.
    assert manager.recv() == {"STATUS": "scanner front offline second line"}
    assert n.watchdog()
    assert manager.recv() == {"WATCHDOG": "1"}
    assert n.stopping()
    assert manager.recv() == {"STOPPING": "1"}


def test_reloading_carries_monotonic_usec(manager):
    n = Notifier(manager.env_value)
    before = time.monotonic_ns() // 1000
    assert n.reloading()
    msg = manager.recv()
    after = time.monotonic_ns() // 1000
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after


def test_module_functions_use_notify_socket_from_env(manager, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", manager.env_value)
    monkeypatch.setattr(sdnotify, "_default", None)
    assert sdnotify.ready("up")
    assert manager.recv() == {"READY": "1", "STATUS": "up"}
    assert sdnotify.status("busy") and sdnotify.watchdog() and sdnotify.stopping() and sdnotify.reloading()
    got = [manager.recv() for _ in range(4)]
    assert got[0] == {"STATUS": "busy"} and got[1] == {"WATCHDOG": "1"} and got[2] == {"STOPPING": "1"}
    assert got[3]["RELOADING"] == "1"


def test_no_op_without_notify_socket(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(sdnotify, "_default", None)
    n = Notifier()
    assert not n.enabled
    assert n.ready("x") is False and n.watchdog() is False and n.stopping() is False
    assert sdnotify.ready() is False and sdnotify.reloading() is False
    assert Watchdog.from_env(lambda: (True, "")) is None


def test_unreachable_socket_is_reported_not_raised(tmp_path, caplog):
    n = Notifier(str(tmp_path / "nobody-listens.sock"))
    assert n.ready() is False
    assert n.watchdog() is False
    # One warning per outage, not one per ping.
    assert sum("cannot notify systemd" in r.getMessage() for r in caplog.records) == 1


def test_watchdog_interval_is_half_the_timeout():
    assert watchdog_interval({"WATCHDOG_USEC": "10000000"}) == 5.0
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None


def test_watchdog_pid_must_be_ours():
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_interval(env) == 2.0
    # A child process that inherited the environment must not ping.
    assert watchdog_interval(env, pid=os.getpid() + 1) is None
    assert watchdog_interval({**env, "WATCHDOG_PID": "x"}) is None


def test_from_env_builds_a_watchdog(manager, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    wd = Watchdog.from_env(lambda: (True, ""), notifier=Notifier(manager.env_value))
    assert wd is not None and wd.interval == 5.0


@pytest.mark.asyncio
async def test_watchdog_pings_only_while_healthy(manager):
    clock = ManualClock()
    state = {"ok": True, "why": ""}
    wd = Watchdog(Notifier(manager.env_value), interval=5.0, health=lambda: (state["ok"], state["why"]),
                  clock=clock)
    wd.start()
    await clock.settle()
    # The first ping goes out at once, then one per interval.
    assert manager.pending() == [{"WATCHDOG": "1"}]
    await clock.advance(4.9)
    assert manager.pending() == []
    await clock.advance(0.1)
    assert manager.pending() == [{"WATCHDOG": "1"}]

    # The scanner reader is stuck: no more pings, and the status says why.
    state.update(ok=False, why="scanner front silent 30 s")
    await clock.advance(5.0)
    assert manager.pending() == [{"STATUS": "unhealthy: scanner front silent 30 s"}]
    await clock.advance(5.0)
    await clock.advance(5.0)
    assert manager.pending() == []
    assert wd.healthy is False

    # It recovers: pings resume on the next interval.
    state.update(ok=True, why="")
    await clock.advance(5.0)
    assert manager.pending() == [{"STATUS": "healthy again"}, {"WATCHDOG": "1"}]
    await clock.advance(5.0)
    assert manager.pending() == [{"WATCHDOG": "1"}]
    assert wd.pings == 4

    await wd.stop()
    await clock.advance(50.0)
    assert manager.pending() == []


@pytest.mark.asyncio
async def test_watchdog_treats_a_raising_health_check_as_unhealthy(manager):
    clock = ManualClock()

    def broken() -> tuple[bool, str]:
        raise RuntimeError("controller gone")

    wd = Watchdog(Notifier(manager.env_value), interval=1.0, health=broken, clock=clock)
    wd.start()
    await clock.settle()
    assert manager.pending() == [{"STATUS": "unhealthy: health check raised RuntimeError: controller gone"}]
    await clock.advance(1.0)
    assert manager.pending() == []
    assert not wd.start().done()  # the task survives the broken check
    await wd.stop()


@pytest.mark.asyncio
async def test_heartbeats_drive_the_watchdog(manager):
    clock = ManualClock()
    beats = Heartbeats(clock)
    beats.register("scanner:front", max_age=8.0)
    beats.register("controller", max_age=8.0)
    wd = Watchdog(Notifier(manager.env_value), interval=5.0, health=beats.check, clock=clock)
    wd.start()
    await clock.settle()
    assert manager.pending() == [{"WATCHDOG": "1"}]

    await clock.advance(6.0)
    beats.beat("controller")
    assert manager.pending() == [{"WATCHDOG": "1"}]  # the ping at t=5
    await clock.advance(5.0)  # checked at t=10: the controller beat at 6, the scanner never did
    msgs = manager.pending()
    assert msgs == [{"STATUS": "unhealthy: scanner:front silent 10.0 s (limit 8 s)"}]
    beats.beat("scanner:front")
    beats.beat("controller")
    await clock.advance(4.0)  # t=15
    assert manager.pending() == [{"STATUS": "healthy again"}, {"WATCHDOG": "1"}]

    beats.unregister("scanner:front")
    beats.beat("scanner:front")  # an unregistered name is ignored, not an error
    assert beats.check() == (True, "")
    await wd.stop()


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="interval"):
        Watchdog(Notifier(""), interval=0, health=lambda: (True, ""))
    with pytest.raises(ValueError, match="max_age"):
        Heartbeats().register("x", 0)
