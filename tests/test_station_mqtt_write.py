"""The link's writes to the broker: a publish leaves at once, and never from inside one of paho's callbacks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from broker import Mosquitto, Recorder, until

from lockerd.station.mqtt import Connection, Settings

pytestmark = pytest.mark.asyncio


@contextlib.asynccontextmanager
async def connected(mosquitto: Mosquitto, **callbacks: Any) -> AsyncIterator[Connection]:
    conn = Connection(Settings(brokers=(("127.0.0.1", mosquitto.port),), client_id="writer"), **callbacks)
    conn.start()
    try:
        async with asyncio.timeout(10):
            await until(lambda: conn.connected)
        yield conn
    finally:
        await conn.stop()


async def test_a_publish_is_on_the_socket_before_the_loop_runs_anything_else(
        mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    """A command's reply waited a loop pass (for the socket's writability) behind whatever was ready then."""
    rec = Recorder(mosquitto.port, ["t/#"])
    recorders.append(rec)
    async with connected(mosquitto) as conn:
        assert conn.client is not None
        for n in range(3):
            assert conn.publish("t/reply", f"{n}".encode(), qos=1) is not None
            # Nothing left for paho to write, and the loop has not run since.
            assert not conn.client.want_write()
        await asyncio.to_thread(rec.wait, lambda r: r.on("/reply") == [0, 1, 2])


async def test_a_publish_from_inside_a_paho_callback_waits_for_the_loop(
        mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    """paho holds a lock around its callbacks that its write path takes again: writing there would deadlock."""
    rec = Recorder(mosquitto.port, ["t/#"])
    recorders.append(rec)
    link: list[Connection] = []  # the connection, once made
    queued: list[bool] = []

    def publish_inside(topic: str, payload: bytes) -> None:
        client = link[0].client
        assert client is not None
        link[0].publish(topic, payload, qos=1)
        queued.append(client.want_write())  # left for the loop's writer

    def answer(msg: Any) -> None:  # on_message: a callback paho runs inside its lock
        publish_inside("t/answer", bytes(msg.payload))

    def next_one(mid: int, refused: str | None) -> None:  # on_publish: the same
        if len(queued) == 1:
            publish_inside("t/after", b"1")

    async with connected(mosquitto, on_message=answer, on_publish=next_one) as conn:
        link.append(conn)
        conn.subscribe("t/ask")
        async with asyncio.timeout(10):
            while True:
                # Until the subscription is in place the broker drops what is published on t/ask.
                await asyncio.to_thread(rec.client.publish, "t/ask", b"7", 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.to_thread(rec.wait, lambda r: r.on("/after") == [1], 0.5)
                    break
    assert rec.on("/answer")[0] == 7 and queued[:2] == [True, True]
