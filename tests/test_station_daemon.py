"""The real daemon (controller + StationHandler) behind the station link, on the sim board and a real Mosquitto."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Recorder, station_config, wait_for
from test_station_commands import BASE, Station, reply_for

from lockerd import config as cfg
from lockerd.daemon import Daemon


@contextlib.asynccontextmanager
async def station_daemon(tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder],
                         extra: str = "", **station_opts: Any) -> AsyncIterator[tuple[Daemon, Station, Recorder]]:
    """The daemon linked to ``mosquitto`` (its station config with ``station_opts``, plus ``extra``), a station
    sending commands and a recorder on the node's topics; yields once the link is up and subscribed (d01's first
    state is out)."""
    rec = Recorder(mosquitto.port, [f"{BASE}/#"])
    recorders.append(rec)
    station = Station(mosquitto.port)
    path = station_config(tmp_path, [f"127.0.0.1:{mosquitto.port}"], **station_opts)
    if extra:
        path.write_text(path.read_text() + extra)
    daemon = Daemon(cfg.load(path))
    await daemon.start()
    try:
        await wait_for(rec, lambda r: len(r.on("/state/d01")) >= 1)
        await daemon.journal.flush()  # the start's own records (its checkpoint, signed after READY) are in
        yield daemon, station, rec
    finally:
        await daemon.stop()
        station.close()


@pytest.mark.asyncio
async def test_station_commands_reach_the_real_handler(tmp_path: Path, mosquitto: Mosquitto,
                                                       recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        person = station.send("register-person", {"id": "p1", "name": "Officer One", "role": "officer"})
        assign = station.send("assign", {"code": "DOS-1", "compartment": "d01", "officer": "p1",
                                         "case_name": "case 1", "category": "theft"})
        opened = station.send("open", {"compartment": "d02", "reason": "inspection"})
        bad = station.send("open", {"compartment": "d09", "reason": "inspection"})
        await wait_for(rec, lambda r: all(reply_for(r, c) for c in (person, assign, opened, bad)), 15)
        for cid in (person, assign, opened):
            assert reply_for(rec, cid)[0]["ok"] is True, reply_for(rec, cid)
        assert "d09" in reply_for(rec, bad)[0]["error"]
        # The grant carries the command id; the state of d02 shows the lock released.
        await wait_for(rec, lambda r: any(s["lock"] == "released" for s in r.on("/state/d02")), 10)
        events = [e.as_dict() for e in daemon.journal.read(0, 10**6)]
        grants = [e for e in events if e["kind"] == "access.granted"]
        assert grants and grants[-1]["data"]["command_id"] == opened
        await wait_for(rec, lambda r: {e["seq"] for e in events} <= r.seqs_on("/events"), 10)


@pytest.mark.asyncio
async def test_an_opens_reply_goes_out_before_the_state_it_changed(tmp_path: Path, mosquitto: Mosquitto,
                                                                   recorders: list[Recorder]) -> None:
    """The station waits on the reply; the compartment's new state follows it. Before, the state went first and
    the reply waited behind it on the wire."""
    async with station_daemon(tmp_path, mosquitto, recorders) as (_daemon, station, rec):
        opened = station.send("open", {"compartment": "d02", "reason": "inspection"})
        await wait_for(rec, lambda r: reply_for(r, opened) and any(s["lock"] == "released"
                                                                   for s in r.on("/state/d02")), 10)
        with rec.cond:
            arrived = list(rec.parsed)
        reply_at = next(i for i, (t, b) in enumerate(arrived) if t.endswith("/reply") and b["id"] == opened)
        released_at = next(i for i, (t, b) in enumerate(arrived)
                           if t.endswith("/state/d02") and b["lock"] == "released")
        assert reply_at < released_at, arrived[min(reply_at, released_at):]
