"""The outbox re-sends exactly the window it documents after a lost connection, measured on its own clock."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lockerd.journal import Journal
from lockerd.station.outbox import REWIND_S, Outbox


class Wire:
    """Stands in for paho: records what is published and gives each message a mid."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, int]] = []  # (mid, seq)
        self.up = True

    def publish(self, _topic: str, payload: bytes) -> int | None:
        if not self.up:
            return None
        import json

        mid = len(self.sent) + 1
        self.sent.append((mid, json.loads(payload)["seq"]))
        return mid


async def settle() -> None:
    for _ in range(4):  # the pump runs two loop turns after it is scheduled
        await asyncio.sleep(0)


async def outbox_acked_one_per_second(tmp_path: Path, events: int) -> tuple[Outbox, Wire, list[float], Journal]:
    """``events`` events, each published and acknowledged one second after the one before (at t = 0, 1, ...)."""
    journal = Journal(tmp_path / "j.db")
    assert journal.open()
    now = [1000.0]
    wire = Wire()
    box = Outbox(journal, wire.publish, "t/events", batch_size=1, connected=lambda: wire.up,
                 clock=lambda: now[0])
    journal.subscribe(lambda _events: box.on_events())
    box.on_connect()
    acked = 0

    async def acknowledge_all() -> None:
        """PUBACK each event as the outbox publishes it, until the broker has the whole journal."""
        nonlocal acked
        async with asyncio.timeout(5):
            while box.acked < journal.last_seq:
                await settle()
                while acked < len(wire.sent):
                    box.on_publish(wire.sent[acked][0], None)
                    acked += 1

    for i in range(events):
        await journal.append_durable("test.event", n=i)
        await acknowledge_all()
        now[0] += 1.0
    assert box.acked == journal.last_seq
    return box, wire, now, journal


def resent_after_reconnect(box: Outbox, wire: Wire) -> int:
    """Reconnect; the index in ``wire.sent`` from which the outbox publishes again."""
    before = len(wire.sent)
    wire.up = True
    box.on_connect()
    return before


@pytest.mark.asyncio
async def test_a_connection_lost_at_once_resends_what_was_acknowledged_in_the_window_before(tmp_path: Path) -> None:
    box, wire, now, journal = await outbox_acked_one_per_second(tmp_path, 30)
    try:
        # Acknowledged at t = 0..29; lost at t = 29.5 (now is 30 after the loop: half a second back).
        now[0] -= 0.5
        wire.up = False
        box.on_disconnect()
        now[0] += 5  # reconnected 5 s later
        start = resent_after_reconnect(box, wire)
        await settle()
        # Acknowledged within REWIND_S (10 s) before the loss: t = 20..29, the last ten.
        assert box.rewound == int(REWIND_S)
        assert wire.sent[start][1] == journal.last_seq - int(REWIND_S) + 1
    finally:
        journal.close()


@pytest.mark.asyncio
async def test_a_broker_that_dies_silently_still_has_its_last_window_resent(tmp_path: Path) -> None:
    # A broker that loses power sends no RST: the link notices only when the keepalive runs out, a minute
    # or more later. The events it acknowledged just before it died may be lost with it; the window is
    # counted back from the last time the broker was heard, not from when the loss was noticed.
    box, wire, now, journal = await outbox_acked_one_per_second(tmp_path, 30)
    try:
        now[0] += 90  # silence, then the keepalive gives up
        wire.up = False
        box.on_disconnect()
        now[0] += 5
        start = resent_after_reconnect(box, wire)
        await settle()
        assert box.rewound == int(REWIND_S)
        assert wire.sent[start][1] == journal.last_seq - int(REWIND_S) + 1
    finally:
        journal.close()
