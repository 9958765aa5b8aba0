"""Reminders reach the station over a real Mosquitto, and its custody commands come back through the link."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from broker import Mosquitto, Recorder, wait_for
from test_station_commands import SAMPLES, reply_for
from test_station_daemon import station_daemon

from lockerd.clock import iso_utc
from lockerd.station import contract
from lockerd.station.validate import errors

# Seconds-long ladder so the real clock walks it within the test.
FAST = """
[custody]
tick_s = 1
[custody.deposit]
levels = ["officer", "supervisor", "legal"]
after_s = [0, 1, 1]
ack_pause_s = 600
"""


def events(rec: Recorder, kind: str) -> list[dict[str, Any]]:
    return [e for e in rec.on("/events") if e["kind"] == kind]


@pytest.mark.asyncio
async def test_reminders_are_published_and_custody_commands_answered(tmp_path: Path, mosquitto: Mosquitto,
                                                                     recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders, FAST) as (daemon, station, rec):
        sent = [station.send("register-person", {"id": "p1", "name": "Officer One", "role": "officer"}),
                station.send("register-person", {"id": "chief", "name": "Chief", "role": "supervisor"})]
        await wait_for(rec, lambda r: all(reply_for(r, c) for c in sent))
        assign = station.send("assign", {"code": "DOS-1", "compartment": "d01", "officer": "p1",
                                         "supervisor": "chief", "deposit_due": iso_utc(time.time() + 1.0)})
        past = station.send("assign", {"code": "DOS-2", "compartment": "d02", "officer": "p1",
                                       "deposit_due": iso_utc(time.time() - 60)})
        await wait_for(rec, lambda r: reply_for(r, assign) and reply_for(r, past))
        assert reply_for(rec, assign)[0]["ok"] is True
        # Registered after its deadline: recorded as late, not refused (its ladder starts at once).
        late = reply_for(rec, past)[0]
        assert late["ok"] is True and late["result"]["late"] is True and late["result"]["late_s"] >= 59

        # The whole ladder arrives on the event stream, each level once, in the contract's shape.
        await wait_for(rec, lambda r: len([e for e in events(r, "reminder.escalated") if e["dossier"] == "DOS-1"])
                       == 2, 15)
        ladder = [e for e in events(rec, "reminder.due") + events(rec, "reminder.escalated") if e["dossier"] == "DOS-1"]
        assert [(e["data"]["level"], e["data"]["to"], e["people"]) for e in ladder] == [
            (1, "officer", ["p1"]), (2, "supervisor", ["chief"]), (3, "legal", [])]
        for e in ladder:
            jsonschema.validate(e, contract.EVENT)
            jsonschema.validate(e["data"], contract.REMINDER)

        ack = station.send("acknowledge", {"code": "DOS-1", "person": "chief", "note": "on it"})
        ghost = station.send("acknowledge", {"code": "DOS-1", "person": "ghost"})
        blank = station.send("release", {"code": "DOS-1", "person": "chief", "reason": "   "})
        await wait_for(rec, lambda r: all(reply_for(r, c) for c in (ack, ghost, blank)))
        assert reply_for(rec, ack)[0]["ok"] is True
        assert "unknown or revoked person 'ghost'" in reply_for(rec, ghost)[0]["error"]
        assert "a reason is required" in reply_for(rec, blank)[0]["error"]
        await wait_for(rec, lambda r: len(events(r, "reminder.acknowledged")) == 1
                       and len(events(r, "command.failed")) == 2)
        assert {e["data"]["command_id"] for e in events(rec, "command.failed")} == {ghost, blank}
        [late] = [e for e in events(rec, "item.assigned") if e["dossier"] == "DOS-2"]
        assert late["data"]["late"] is True


CUSTODY_SAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("assign", {"code": "D1", "compartment": "d-1", "deposit_due": "2026-12-21T10:00:00Z", "supervisor": "s1"}),
    ("assign", {"code": "D1", "compartment": "d-1", "supervisor": ""}),
    ("assign", {"code": "D1", "compartment": "d-1", "taken_in": 5}),
    ("acknowledge", {"code": "D1", "person": "s1"}),
    ("acknowledge", {"code": "D1", "person": "s1", "deadline": "return", "note": ""}),
    ("acknowledge", {"code": "D1", "person": "s1", "deadline": "lunch"}),
    ("acknowledge", {"code": "D1"}),
    ("release", {"code": "D1", "person": "s1", "reason": "closed"}),
    ("release", {"code": "D1", "person": "s1", "reason": ""}),
    ("release", {"code": "D1", "person": "s1"}),
]


@pytest.mark.parametrize("name,args", CUSTODY_SAMPLES)
def test_the_link_validator_agrees_with_jsonschema_on_custody_commands(name: str, args: dict[str, Any]) -> None:
    assert (name, args) not in SAMPLES
    body = {"id": "c1", "ts": "2026-01-01T00:00:00Z", "requested_by": "a", "args": args}
    schema = contract.command_schema(name)
    assert bool(errors(body, schema)) == bool(list(jsonschema.Draft202012Validator(schema).iter_errors(body)))
