"""One bad input never costs another record: malformed station commands against the real daemon and Mosquitto."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Recorder, wait_for
from test_station_commands import reply_for
from test_station_daemon import station_daemon

from lockerd.clock import iso_utc
from lockerd.journal import verify

SURROGATE = "\ud800"  # valid JSON ("\\ud800"), not text: it cannot be encoded as UTF-8


def envelope(cid: Any = None, by: Any = "sgt-1", args: Any = None) -> dict[str, Any]:
    return {"id": cid or f"c-{time.monotonic_ns()}", "ts": iso_utc(time.time()), "requested_by": by,
            "args": args if args is not None else {"compartment": "d02", "reason": "inspection"}}


def journal_kinds(daemon: Any, kind: str) -> list[dict[str, Any]]:
    return [e.as_dict() for e in daemon.journal.read(0, 10**6) if e.kind == kind]


async def until(pred: Any, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.01)


# Each payload is sent as bytes, exactly as a hostile or broken publisher would.
BAD = {
    "surrogate in requested_by": json.dumps(envelope(cid="bad-1", by=SURROGATE)).encode(),
    "surrogate in the id": json.dumps(envelope(cid=SURROGATE)).encode(),
    "surrogate in an argument": json.dumps(envelope(cid="bad-3", args={"compartment": "d02",
                                                                        "reason": "x" + SURROGATE})).encode(),
    "surrogate in a key": json.dumps(envelope(cid="bad-4", args={SURROGATE: 1})).encode(),
    "nested 2000 deep": b'{"id": "bad-5", "args": ' + b'{"a":' * 2000 + b"1" + b"}" * 2001,
    "an integer of 5000 digits": b'{"id": "bad-6", "args": {"n": ' + b"9" * 5000 + b"}}",
    "not UTF-8": b'{"id": "bad-7", "requested_by": "\xff\xfe"}',
}


@pytest.mark.asyncio
async def test_malformed_commands_are_refused_and_no_alarm_or_move_is_lost(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        board = daemon.hw.drivers["sim"]
        for payload in BAD.values():
            station.send("open", raw=payload)
        # A door forced right after them: its alarm must be journaled and reach the station.
        board.force(2)
        await until(lambda: any(e["compartment"] == "d03" for e in journal_kinds(daemon, "alarm.forced")))
        # Each bad command was refused with a record; every one with an id that is text got a reply.
        await until(lambda: len(journal_kinds(daemon, "command.refused")) >= len(BAD))
        refused = journal_kinds(daemon, "command.refused")
        assert len(refused) == len(BAD), refused
        for cid in ("bad-1", "bad-3", "bad-4"):
            await wait_for(rec, lambda r, cid=cid: reply_for(r, cid), 10)
            assert reply_for(rec, cid)[0]["ok"] is False
            assert "surrogate" in reply_for(rec, cid)[0]["error"]
        # Those whose id cannot be read (not JSON that this controller reads, or an id that is not text) are
        # answered too, with a null id.
        await wait_for(rec, lambda r: len(reply_for(r, None)) >= 4, 10)
        errors = sorted(r["error"] for r in reply_for(rec, None))
        assert sum("not JSON" in e for e in errors) == 3 and sum("surrogate" in e for e in errors) == 1, errors
        # Nothing bad reached the record: the refusals carry no surrogate, and the chain holds.
        assert not [e for e in refused if e["data"].get("requested_by") not in (None, "sgt-1")]
        assert journal_kinds(daemon, "journal.row_refused") == []
        await wait_for(rec, lambda r: any(e.get("kind") == "alarm.forced" for e in r.on("/events")), 10)
        board.close_door(2)
    assert verify(daemon.config.journal_path).ok


@pytest.mark.asyncio
async def test_a_row_that_cannot_be_written_is_refused_alone(tmp_path: Path, mosquitto: Mosquitto,
                                                            recorders: list[Recorder]) -> None:
    # Whatever reaches the writer (a future bug, a value no check foresaw), the rows beside it are kept.
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        j = daemon.journal
        before = j.read(j.last_seq - 1, 10)[-1].seq
        ok1 = j.append("test.before", n=1)
        bad = j.append("test.bad", note="x" + SURROGATE, obj=object())
        ok2 = j.append("test.after", n=2)
        assert (await ok1).kind == "test.before" and (await ok2).kind == "test.after"
        with pytest.raises(Exception, match="refused the row"):
            await bad
        rows = j.read(before, 10)
        assert [e.kind for e in rows] == ["test.before", "journal.row_refused", "test.after"]
        assert rows[1].data["refused_kind"] == "test.bad" and "\\ud800" in rows[1].data["content"]["note"]
        # The journal stays writable: no second-long refusal of everything after a bad row.
        assert (await j.append_durable("test.later")).seq == rows[-1].seq + 1
        await wait_for(rec, lambda r: any(e.get("kind") == "journal.row_refused" for e in r.on("/events")), 10)
    assert verify(daemon.config.journal_path).ok
