"""While the journal cannot be written, nothing that happens is dropped: the real daemon on a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from broker import Mosquitto, Recorder, wait_for
from lockerd.drivers.base import DoorState
from rig import fill_disk
from test_station_commands import reply_for
from test_station_daemon import station_daemon

from lockerd import journal as journal_mod
from lockerd import journal_outage, journal_writer
from lockerd.errors import JournalError
from lockerd.journal import Journal, verify


async def until(pred: Any, timeout_s: float = 15.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not pred():
            await asyncio.sleep(0.01)


async def free_space(j: Journal) -> None:
    """Space comes back. The statement runs on the writer; in a batch that still fails it is rolled back too."""
    for _ in range(50):
        with contextlib.suppress(JournalError):
            await j.execute("PRAGMA max_page_count = 1073741823")
            return
        await asyncio.sleep(0.05)
    raise AssertionError("could not free the journal")


class DiskFault:
    """Every row write fails as an I/O error of the file would (sqlite3.OperationalError), while on."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.on = False
        real = journal_writer.canonical

        def canonical(obj: Any) -> str:
            if self.on:
                raise sqlite3.OperationalError("disk I/O error (injected by the test)")
            return real(obj)

        monkeypatch.setattr(journal_writer, "canonical", canonical)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> DiskFault:
    return DiskFault(monkeypatch)


FORCED = ["door.opened", "alarm.forced", "door.closed"]  # the alarm stays after the door shut, until acknowledged


@pytest.mark.asyncio
async def test_a_forced_door_while_the_journal_is_unwritable_is_journaled_late_and_reaches_the_station(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder], disk: DiskFault) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        j, board = daemon.journal, daemon.hw.drivers["sim"]
        disk.on = True
        last = j.last_seq
        board.force(2)  # d03 pried open while nothing can be written
        await until(lambda: j.held == 2)  # the door reading settled (debounce): door.opened, alarm.forced
        board.close_door(2)
        await until(lambda: j.held == 3)
        # A station open is refused meanwhile: its acceptance cannot be made durable, so nothing moves.
        cid = station.send("open", {"compartment": "d02", "reason": "inspection"})
        await wait_for(rec, lambda r: reply_for(r, cid), 10)
        assert reply_for(rec, cid)[0]["ok"] is False and "not applied" in reply_for(rec, cid)[0]["error"]
        assert board.released(1) is False
        disk.on = False
        await until(lambda: any(e.kind == "journal.outage" for e in j.read(last, 100)))
        events = j.read(last, 100)
        kinds = [e.kind for e in events]
        outage = events[kinds.index("journal.outage")]
        held = events[: kinds.index("journal.outage")]
        # In the order they happened, each saying how late it was journaled.
        assert [e.kind for e in held] == FORCED and all(e.compartment == "d03" for e in held)
        assert [e.mono for e in held] == sorted(e.mono for e in held)
        assert all(e.data["journaled_late_s"] > 0 for e in held)
        assert outage.data["held"] == 3 and outage.data["dropped"] == {}
        assert "disk I/O error" in outage.data["reason"] and outage.data["lasted_s"] > 0
        await wait_for(rec, lambda r: {"alarm.forced", "journal.outage"} <= {e.get("kind") for e in r.on("/events")},
                       10)
        assert j.healthy and j.held == 0
        assert (await j.append_durable("test.after")).seq == j.last_seq
    assert verify(daemon.config.journal_path).ok


@pytest.mark.asyncio
async def test_a_forced_door_during_a_full_disk_is_never_lost(tmp_path: Path, mosquitto: Mosquitto,
                                                             recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        j, board = daemon.journal, daemon.hw.drivers["sim"]
        await fill_disk(j)
        last = j.last_seq
        board.force(2)
        # Whichever of them still fit on a page and whichever were held: all three, once each, in order.
        await until(lambda: j.held + len(j.read(last, 100)) >= 2)
        board.close_door(2)
        await until(lambda: j.held + len(j.read(last, 100)) >= 3)
        await free_space(j)
        await until(lambda: [e.kind for e in j.read(last, 100) if e.compartment == "d03"] == FORCED)
        await until(lambda: j.held == 0)
        assert [e.kind for e in j.read(last, 100) if e.compartment == "d03"] == FORCED
        await wait_for(rec, lambda r: "alarm.forced" in {e.get("kind") for e in r.on("/events")}, 10)
    assert verify(daemon.config.journal_path).ok


async def overflow(daemon, disk: DiskFault) -> int:
    """Three forced openings of d04 while nothing can be written: nine events, six held in memory."""
    j, board = daemon.journal, daemon.hw.drivers["sim"]
    disk.on = True
    last = j.last_seq
    slot = daemon.controller.slots["d04"]
    for _ in range(3):  # each round: door.opened, alarm.forced, door.closed
        board.force(3)
        await until(lambda: slot.door is DoorState.OPEN)  # the reading settled (debounce)
        board.close_door(3)
        await until(lambda: slot.door is DoorState.CLOSED)
    assert j.held == 6
    return last


@pytest.mark.asyncio
async def test_past_the_memory_bound_the_oldest_go_to_the_spill_file_and_nothing_is_lost(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder], monkeypatch: pytest.MonkeyPatch,
        disk: DiskFault) -> None:
    monkeypatch.setattr(journal_outage, "HELD_MAX", 6)
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        j = daemon.journal
        last = await overflow(daemon, disk)
        assert len(j.spill_path.read_text().splitlines()) == 3  # outside the journal's file system
        disk.on = False
        await until(lambda: any(e.kind == "journal.outage" for e in j.read(last, 100)))
        events = j.read(last, 100)
        outage = next(e for e in events if e.kind == "journal.outage")
        assert outage.data["held"] == 9 and outage.data["spilled"] == 3 and outage.data["dropped"] == {}
        assert [e.kind for e in events[:9]] == FORCED * 3
        assert [e.mono for e in events[:9]] == sorted(e.mono for e in events[:9])
        assert not j.spill_path.exists()
    assert verify(daemon.config.journal_path).ok


@pytest.mark.asyncio
async def test_with_no_room_to_spill_the_oldest_are_dropped_and_counted(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder], monkeypatch: pytest.MonkeyPatch,
        disk: DiskFault) -> None:
    monkeypatch.setattr(journal_outage, "HELD_MAX", 6)
    (tmp_path / "no-room").write_text("a file where the spill folder should be")
    monkeypatch.setattr(journal_mod, "spill_path_for", lambda _p: tmp_path / "no-room" / "spill")
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        j = daemon.journal
        last = await overflow(daemon, disk)
        disk.on = False
        await until(lambda: any(e.kind == "journal.outage" for e in j.read(last, 100)))
        events = j.read(last, 100)
        outage = next(e for e in events if e.kind == "journal.outage")
        assert outage.data["held"] == 6 and outage.data["dropped"] == {"door.opened": 1, "alarm.forced": 1,
                                                                        "door.closed": 1}
        # The newest were kept: the last two rounds whole.
        assert [e.kind for e in events[:6]] == FORCED * 2
    assert verify(daemon.config.journal_path).ok


@pytest.mark.asyncio
async def test_events_spilled_by_a_run_that_stopped_are_journaled_by_the_next(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    first = Journal(path, boot="first")
    assert first.open()
    await first.append_durable("test.before")
    # As an earlier run's close leaves an event it could not write: in the spill file beside the journal.
    journal_outage.Holding(first.spill_path).spill(journal_writer.Pending(
        "alarm.forced", journal_writer.new_fields(first.clock, first.boot, compartment="d01", data={"reason": "x"}),
        (), None, keep=True))
    first.close()
    again = Journal(path, boot="again")
    assert again.open()
    await until(lambda: any(e.kind == "journal.outage" for e in again.read(0, 100)))
    kinds = [e.kind for e in again.read(0, 100)]
    assert kinds[-2:] == ["alarm.forced", "journal.outage"] and not again.spill_path.exists()
    assert again.read(0, 100)[-2].data["journaled_late_s"] >= 0
    again.close()
    assert verify(path).ok
