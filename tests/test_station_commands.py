"""Station commands over a real Mosquitto: replies, dedup across restarts, refusals, replay, the contract."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import paho.mqtt.client as paho
import pytest
from broker import SIGNER_SEEDS, Handler, Mosquitto, Node, Recorder, arrived, wait_for
from paho.mqtt.enums import CallbackAPIVersion

from lockerd.clock import iso_utc
from lockerd.station import asyncapi, contract, signing
from lockerd.station.validate import errors

BASE = "lockerd/test-site/node-1"


class Station:
    """The station side: a plain paho client that sends commands."""

    def __init__(self, port: int):
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"station-{uuid.uuid4().hex[:6]}",
                             protocol=paho.MQTTv5)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, name: str, args: dict[str, Any] | None = None, *, cid: str | None = None,
             retain: bool = False, raw: bytes | None = None, topic_node: str = "node-1",
             signers: tuple[str, ...] | None = None, **envelope: Any) -> str:
        """Publish a command signed by ``signers``: default desk (and watch for an emergency open); () unsigned."""
        cid = cid or uuid.uuid4().hex
        body = {"id": cid, "ts": iso_utc(time.time()), "requested_by": "sgt-1", "args": args or {}} | envelope
        if signers is None:
            signers = ("desk", "watch") if name == "emergency-open" else ("desk",)
        if signers:
            body = {"site": "test-site", "node": topic_node} | body
            body["signatures"] = [signing.sign(name, body, s, SIGNER_SEEDS[s]) for s in signers]
        payload = raw if raw is not None else json.dumps(body).encode()
        topic = f"lockerd/test-site/{topic_node}/cmd/{name}"
        self.c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
        return cid

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


def replies(rec: Recorder) -> list[dict[str, Any]]:
    return rec.on(f"{BASE}/reply")


def reply_for(rec: Recorder, cid: str | None) -> list[dict[str, Any]]:
    return [r for r in replies(rec) if r["id"] == cid]


def journaled(node: Node, kind: str) -> list[dict[str, Any]]:
    return [e for e in node.events() if e["kind"] == kind]


@pytest.fixture
def station(mosquitto: Mosquitto):
    s = Station(mosquitto.port)
    yield s
    s.close()


@pytest.mark.asyncio
async def test_a_command_sent_twice_is_applied_once_even_across_a_restart(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder], station: Station) -> None:
    rec = Recorder(mosquitto.port, [f"{BASE}/reply", f"{BASE}/presence"])
    recorders.append(rec)
    handler = Handler()
    node = await Node(tmp_path, [f"127.0.0.1:{mosquitto.port}"], handler=handler).start()
    try:
        await wait_for(rec, lambda r: len(r.on("/presence")) >= 1)  # online, so subscribed
        cid = station.send("open", {"compartment": "d-1", "reason": "court order 12"})
        station.send("open", {"compartment": "d-1", "reason": "court order 12"}, cid=cid)
        await wait_for(rec, lambda r: len(reply_for(r, cid)) == 2)
        first, second = reply_for(rec, cid)
        assert first["ok"] is True and first["result"] == {"done": "open"} and "duplicate" not in first
        assert second["ok"] is True and second["duplicate"] is True
        assert [c[0] for c in handler.calls] == ["open"]
        assert handler.calls[0][2]["command_id"] == cid and handler.calls[0][2]["requested_by"] == "sgt-1"
        [accepted] = journaled(node, "command.accepted")
        assert accepted["data"]["command_id"] == cid and accepted["data"]["command"] == "open"
        assert accepted["data"]["requested_by"] == "sgt-1" and accepted["compartment"] == "d-1"
    finally:
        await node.stop()
    # A restart: the id is reloaded from the journal, so a third copy is not applied either.
    handler2 = Handler()
    node2 = await Node(tmp_path, [f"127.0.0.1:{mosquitto.port}"], handler=handler2).start()
    try:
        await wait_for(rec, lambda r: r.on("/presence")[-1]["state"] == "online" and len(r.on("/presence")) >= 3)
        station.send("open", {"compartment": "d-1", "reason": "court order 12"}, cid=cid)
        await wait_for(rec, lambda r: len(reply_for(r, cid)) == 3)
        assert reply_for(rec, cid)[2]["duplicate"] is True
        assert handler2.calls == []
        for r in replies(rec):
            jsonschema.validate(r, contract.REPLY)
    finally:
        await node2.stop()


@pytest.mark.asyncio
async def test_refusals_are_replied_and_journaled(tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder],
                                                  station: Station) -> None:
    rec = Recorder(mosquitto.port, [f"{BASE}/reply", f"{BASE}/presence", "lockerd/test-site/node-2/#"])
    recorders.append(rec)
    handler = Handler()
    node = await Node(tmp_path, [f"127.0.0.1:{mosquitto.port}"], handler=handler).start()
    try:
        await wait_for(rec, lambda r: len(r.on("/presence")) >= 1)
        cases = {
            "retained": station.send("open", {"compartment": "d-1", "reason": "x"}, retain=True),
            "wrong types": station.send("open", {"compartment": 7, "reason": "x"}),
            "missing": station.send("register-person", {"id": "p1", "name": "A"}),
            "extra field": station.send("unassign", {"code": "D1", "bogus": 1}),
            "stale": station.send("unassign", {"code": "D1"}, ts="2020-01-01T00:00:00Z"),
            "other node in payload": station.send("unassign", {"code": "D1"}, node="node-9"),
            "unknown": station.send("explode", {}),
            "handler refusal": station.send("open", {"compartment": "d-4", "reason": "x"}),
        }
        station.send("open", raw=b"{not json")
        station.send("open", raw=json.dumps({"id": "big", "ts": "x", "requested_by": "a",
                                             "args": {"reason": "x" * 20000}}).encode())
        for_other = station.send("open", {"compartment": "d-1", "reason": "x"}, topic_node="node-2")
        expected = len(cases) + 2
        await wait_for(rec, lambda r: len(replies(r)) >= expected)
        by_id = {r["id"]: r for r in replies(rec)}
        for what, cid in cases.items():
            assert by_id[cid]["ok"] is False and by_id[cid]["error"], what
        assert "retained" in by_id[cases["retained"]]["error"]
        assert "args.compartment: expected string" in by_id[cases["wrong types"]]["error"]
        assert "args.role: required" in by_id[cases["missing"]]["error"]
        assert "args.bogus: unknown field" in by_id[cases["extra field"]]["error"]
        assert "older than command_max_age_s" in by_id[cases["stale"]]["error"]
        assert "node-9" in by_id[cases["other node in payload"]]["error"]
        assert "unknown command 'explode'" in by_id[cases["unknown"]]["error"]
        assert by_id[cases["handler refusal"]]["error"] == "compartment d-4 is in fault"
        unread = [r for r in replies(rec) if r["id"] is None]
        assert any("not JSON" in r["error"] for r in unread)
        assert any("exceeds the 16384-byte limit" in r["error"] for r in unread)
        # Only the command that passed every check reached the handler.
        assert [(c[0], c[1]["compartment"]) for c in handler.calls] == [("open", "d-4")]
        refused = journaled(node, "command.refused")
        assert len(refused) == expected - 1  # every refusal but the handler's, which is journaled as failed
        assert all(e["data"]["error"] for e in refused)
        assert journaled(node, "command.failed")[0]["data"]["command_id"] == cases["handler refusal"]
        # A command on another node's topic never reaches this node, and this node does not answer it.
        assert for_other not in by_id
        assert not any(c[2]["command_id"] == for_other for c in handler.calls)
        for r in replies(rec):
            jsonschema.validate(r, contract.REPLY)
    finally:
        await node.stop()


@pytest.mark.asyncio
async def test_ping_and_replay(tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder],
                               station: Station) -> None:
    rec = Recorder(mosquitto.port, [f"{BASE}/reply", f"{BASE}/replay", f"{BASE}/events"])
    recorders.append(rec)
    node = await Node(tmp_path, [f"127.0.0.1:{mosquitto.port}"], handler=Handler()).start()
    try:
        await node.append(400)
        await arrived(rec, node)
        await node.delivered()
        ping = station.send("ping")
        await wait_for(rec, lambda r: len(reply_for(r, ping)) == 1)
        result = reply_for(rec, ping)[0]["result"]
        jsonschema.validate(result, contract.PING_RESULT)
        assert result["delivered"] >= 401
        rid = station.send("replay", {"from_seq": 100, "to_seq": 350})
        await wait_for(rec, lambda r: len(reply_for(r, rid)) == 1)
        res = reply_for(rec, rid)[0]["result"]
        jsonschema.validate(res, contract.REPLAY_RESULT)
        assert res == {"from_seq": 100, "to_seq": 350, "count": 251, "topic": f"{BASE}/replay"}
        await wait_for(rec, lambda r: len(r.on(f"{BASE}/replay")) >= 251)
        replayed = rec.on(f"{BASE}/replay")
        journal = {e["seq"]: e for e in node.events()}
        assert [e["seq"] for e in replayed] == list(range(100, 351))
        assert all(e == journal[e["seq"]] for e in replayed)
        # The live stream is not disturbed: still every event (the commands' too), in order.
        await arrived(rec, node)
    finally:
        await node.stop()


def test_contract_document_matches_the_code() -> None:
    doc = Path(__file__).parent.parent / "docs" / "asyncapi.yaml"
    assert doc.read_text() == asyncapi.render(), "regenerate: python -m lockerd.station.asyncapi > docs/asyncapi.yaml"
    for schema in asyncapi.asyncapi()["components"]["schemas"].values():
        jsonschema.Draft202012Validator.check_schema(schema)


SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("open", {"compartment": "d-1", "reason": "x"}),
    ("open", {"compartment": "D 1", "reason": "x"}),
    ("open", {"compartment": "d-1"}),
    ("open", {"compartment": "d-1", "reason": ""}),
    ("assign", {"code": "D1", "compartment": None}),
    ("assign", {"code": "D1", "compartment": "d-2", "kind": "evidence", "officer": "p1"}),
    ("assign", {"code": "", "compartment": "d-2"}),
    ("assign", {"code": "D1", "compartment": "d-2", "kind": "box"}),
    ("assign", {"code": "D" * 129, "compartment": "d-2"}),
    ("register-person", {"id": "p1", "name": "A", "role": "officer"}),
    ("register-person", {"id": "p1", "name": "A", "role": "chief"}),
    ("register-badge", {"code": "B1", "person": "p1"}),
    ("revoke-badge", {"code": 5}),
    ("replay", {"from_seq": 1}),
    ("replay", {"from_seq": 0}),
    ("replay", {"from_seq": True}),
    ("replay", {"from_seq": 1.5}),
    ("ping", {}),
    ("ping", {"x": 1}),
]


@pytest.mark.parametrize("name,args", SAMPLES)
def test_link_validator_agrees_with_jsonschema(name: str, args: dict[str, Any]) -> None:
    body = {"id": "c1", "ts": "2026-01-01T00:00:00Z", "requested_by": "a", "args": args}
    schema = contract.command_schema(name)
    ours = errors(body, schema)
    theirs = list(jsonschema.Draft202012Validator(schema).iter_errors(body))
    assert bool(ours) == bool(theirs), (ours, [e.message for e in theirs])
