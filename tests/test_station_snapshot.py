"""The snapshot: the whole current state without retained messages, as a read-only command and on every connect."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
from broker import Mosquitto, Recorder, wait_for
from test_station_commands import reply_for
from test_station_daemon import station_daemon

from lockerd import checkpoints
from lockerd.station import contract


def valid(payload: dict) -> None:
    jsonschema.Draft202012Validator(contract.SNAPSHOT, format_checker=jsonschema.FormatChecker()).validate(payload)


@pytest.mark.asyncio
async def test_snapshot_command_gives_every_compartment_the_last_seq_and_the_signed_checkpoint(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        registered = station.send("register-person", {"id": "p1", "name": "Officer One", "role": "officer"})
        await wait_for(rec, lambda r: bool(reply_for(r, registered)))
        # Read-only: no signature needed, as for ping.
        cid = station.send("snapshot", signers=())
        await wait_for(rec, lambda r: bool(reply_for(r, cid)))
        [reply] = reply_for(rec, cid)
        assert reply["ok"] is True, reply
        snap = reply["result"]
        valid(snap)
        assert [c["compartment"] for c in snap["compartments"]] == ["d01", "d02", "d03", "d04"]
        now = daemon.controller.states()
        assert [{k: v for k, v in c.items() if k != "ts"} for c in snap["compartments"]] == [
            now[cid] for cid in sorted(now)]
        assert snap["presence"]["state"] == "online" and snap["boot"] == daemon.journal.boot
        registration = [e for e in daemon.journal.read(0, 10**6) if e.kind == "person.registered"]
        assert registration and registration[-1].seq <= snap["last_seq"]  # what came before is covered
        [event] = daemon.journal.read(snap["last_seq"] - 1, 1)
        assert event.seq == snap["last_seq"] and event.hash == snap["last_hash"]
        cp = snap["checkpoint"]
        assert cp is not None and cp["seq"] <= snap["last_seq"]
        assert checkpoints.signature_ok(cp, cp["key"])
        [signed] = daemon.journal.read(cp["seq"] - 1, 1)
        assert signed.hash == cp["hash"]


@pytest.mark.asyncio
async def test_snapshot_is_published_on_every_connect_and_never_retained(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, _station, rec):
        await wait_for(rec, lambda r: len(r.on("/snapshot")) >= 1)
        [snap] = rec.on("/snapshot")
        valid(snap)
        assert {c["compartment"] for c in snap["compartments"]} == {"d01", "d02", "d03", "d04"}
        assert snap["last_seq"] <= daemon.journal.last_seq
        assert not [t for t, _, retained in rec.messages if retained and t.endswith("/snapshot")]
        # A station that subscribes later finds nothing retained: it asks with the command instead.
        late = Recorder(mosquitto.port, ["lockerd/+/+/snapshot"], client_id="late")
        recorders.append(late)
        with pytest.raises(TimeoutError):
            late.wait(lambda r: len(r.messages) > 0, 0.5)
