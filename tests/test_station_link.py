"""The station link against a real Mosquitto: the event stream, presence, info, state, failover, outages."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from broker import Mosquitto, Node, Recorder, States, arrived, free_port, outages_mid_burst, wait_for

from lockerd import __version__
from lockerd.station import contract


def valid(payload: dict, schema: dict) -> None:
    jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker()).validate(payload)


@pytest.mark.asyncio
async def test_stream_presence_info_and_state_follow_the_contract(tmp_path: Path, mosquitto: Mosquitto,
                                                                  recorders: list[Recorder]) -> None:
    rec = Recorder(mosquitto.port, ["lockerd/#"])
    recorders.append(rec)
    states = States()
    node = await Node(tmp_path, [f"127.0.0.1:{mosquitto.port}"], states=states).start()
    try:
        await node.append(300)
        stats = await arrived(rec, node)
        assert stats["duplicates"] == 0
        for ev in rec.on("/events"):
            valid(ev, contract.EVENT)
        await wait_for(rec, lambda r: len(r.on("/state/d-1")) >= 1 and len(r.on("/info")) >= 1)
        [info] = rec.on("/info")
        valid(info, contract.INFO)
        assert info["version"] == __version__ and info["config"] == node.config.digest
        assert rec.on("/presence")[0]["state"] == "online"
        states.set("d-1", door="open", lock="released")
        await wait_for(rec, lambda r: any(s["door"] == "open" for s in r.on("/state/d-1")))
        for s in rec.on("/state/d-1") + rec.on("/state/d-2"):
            valid(s, contract.STATE)
        retained = {t for t, _, ret in rec.messages if ret}
        assert not any(t.endswith("/events") for t in retained), "events must never be retained"
    finally:
        await node.stop()
    await wait_for(rec, lambda r: r.on("/presence")[-1]["state"] == "offline")
    offline = rec.on("/presence")[-1]
    valid(offline, contract.PRESENCE)
    assert offline["clean"] is True
    for p in rec.on("/presence"):
        valid(p, contract.PRESENCE)


@pytest.mark.asyncio
async def test_broker_down_at_start_then_started(tmp_path: Path, recorders: list[Recorder]) -> None:
    broker = Mosquitto(tmp_path).start()
    rec = Recorder(broker.port, ["lockerd/+/+/events"])
    recorders.append(rec)
    broker.stop()  # the recorder's session (and subscription) is saved by the broker
    node = await Node(tmp_path, [f"127.0.0.1:{broker.port}"]).start()  # must not raise
    try:
        await node.append(500)
        assert not node.link.connected
        broker.start()
        stats = await arrived(rec, node)
        # Every event: the 501 appended, and the journal's own (a snapshot every 500 events).
        assert [e["kind"] for e in node.events()].count("test.tick") == 501
        assert stats["events"] == len(node.events())
    finally:
        await node.stop()
        broker.kill()


@pytest.mark.asyncio
async def test_fails_over_to_the_next_broker(tmp_path: Path, mosquitto: Mosquitto,
                                             recorders: list[Recorder]) -> None:
    rec = Recorder(mosquitto.port, ["lockerd/#"])
    recorders.append(rec)
    dead = free_port()
    node = await Node(tmp_path, [f"127.0.0.1:{dead}", f"127.0.0.1:{mosquitto.port}"]).start()
    try:
        await node.append(50)
        await arrived(rec, node)
        assert node.link.conn.broker == ("127.0.0.1", mosquitto.port)
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_broker_restarted_mid_burst_several_times(tmp_path: Path, recorders: list[Recorder]) -> None:
    broker = Mosquitto(tmp_path).start()
    rec = Recorder(broker.port, ["lockerd/+/+/events"])
    recorders.append(rec)
    node = await Node(tmp_path, [f"127.0.0.1:{broker.port}"], batch_size=100).start()
    try:
        await outages_mid_burst(node, broker, broker.stop)
        stats = await arrived(rec, node, timeout_s=30)
        assert node.link.conn.connects >= 4
        assert stats["events"] > 1000
    finally:
        await node.stop()
        broker.kill()
