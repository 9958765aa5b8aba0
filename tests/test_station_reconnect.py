"""The link on a broker that misbehaves: backoff after a connection dropped at once, one log line per change,
failover past dead and flapping brokers."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from broker import DroppingProxy, Mosquitto, Node, Recorder, arrived, free_port

from lockerd.station.mqtt import Backoff


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    """What the link logged at info and above."""
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("lockerd.station") and r.levelno >= logging.INFO]


def test_backoff_doubles_with_jitter_up_to_its_cap() -> None:
    b = Backoff(0.25, 4.0)
    delays = [b.next() for _ in range(8)]
    for d, nominal in zip(delays, (0.25, 0.5, 1, 2, 4, 4, 4, 4), strict=True):
        assert nominal * 0.5 <= d <= min(nominal * 1.5, 4.0)
    b.reset()
    assert b.next() <= 0.25 * 1.5


@pytest.mark.asyncio
async def test_a_broker_that_drops_each_connection_at_once_is_not_hammered(
        tmp_path: Path, mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="lockerd.station")
    proxy = await DroppingProxy(mosquitto.port).start()
    node = await Node(tmp_path, [f"127.0.0.1:{proxy.port}"]).start()
    try:
        await node.append(10)
        await asyncio.sleep(4.0)
    finally:
        await node.stop()
        await proxy.stop()
    # Backoff from 0.25 s doubling, each delay at least half its nominal value: at most 6 attempts in 4 s
    # (without backoff: hundreds).
    assert 2 <= len(proxy.accepts) <= 6, len(proxy.accepts)
    gaps = [b - a for a, b in zip(proxy.accepts, proxy.accepts[1:], strict=False)]
    assert all(later > earlier for earlier, later in zip(gaps, gaps[2:], strict=False)), gaps
    lines = said(caplog)
    # One line for the first connection, one saying the broker drops it; the repeats are debug.
    assert len([m for m in lines if "connected to" in m]) == 1, lines
    assert len([m for m in lines if "closed the connection" in m]) == 1, lines
    assert not [m for m in lines if "lost" in m], lines


@pytest.mark.asyncio
async def test_fails_over_past_a_dead_and_a_flapping_broker(tmp_path: Path, mosquitto: Mosquitto,
                                                            caplog: pytest.LogCaptureFixture,
                                                            recorders: list[Recorder]) -> None:
    caplog.set_level(logging.DEBUG, logger="lockerd.station")
    other = Mosquitto(tmp_path, name="flapping").start()
    proxy = await DroppingProxy(other.port).start()
    rec = Recorder(mosquitto.port, ["lockerd/#"])
    recorders.append(rec)
    dead = free_port()
    brokers = [f"127.0.0.1:{dead}", f"127.0.0.1:{proxy.port}", f"127.0.0.1:{mosquitto.port}"]
    node = await Node(tmp_path, brokers).start()
    try:
        await node.append(50)
        stats = await arrived(rec, node, timeout_s=10)
        assert stats["duplicates"] == 0
        assert node.link.conn.broker == ("127.0.0.1", mosquitto.port)
        await asyncio.sleep(1.0)
        assert node.link.connected and node.link.conn.broker == ("127.0.0.1", mosquitto.port)
        assert len(proxy.accepts) == 1
    finally:
        await node.stop()
        await proxy.stop()
        other.kill()
    lines = said(caplog)
    assert len([m for m in lines if f":{dead}" in m]) == 1, lines
    assert len([m for m in lines if f":{proxy.port}" in m]) == 2, lines  # connected, then closed at once
    assert len([m for m in lines if f"connected to 127.0.0.1:{mosquitto.port}" in m]) == 1, lines
