"""Snapshots of the state tables are taken beside the writer (lockerd/journal_snapshot.py): a grant never waits for
one, and the check at start replays what was committed while it was being taken."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lockerd import journal_snapshot, projection
from lockerd.journal import Journal, verify
from lockerd.journal_chain import Event, canonical
from lockerd.journal_schema import connect

pytestmark = pytest.mark.asyncio


def item(code: str, **kw: Any) -> tuple[str, str, dict[str, Any]]:
    row = {"code": code, "kind": "dossier", "case_name": f"case {code}", "category": "fraud", "officer": "berg",
           "compartment": "d01", "state": "in", "holder": None, "depositor": None, "since": None} | kw
    return ("upsert", "items", row)


async def test_the_snapshot_text_is_the_canonical_spelling_of_the_tables(tmp_path: Path) -> None:
    """Built a row at a time, the body is byte for byte what one encode of every table gives (its digest is chained)."""
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        await j.append_durable("setup", state=[
            item("D-1", case_name="Müller \u2603 \"quoted\"", holder="lind"),
            item("D-0", compartment=None, state="out"),
            ("upsert", "people", {"id": "berg", "name": "Berg", "role": "officer", "active": 1}),
            ("upsert", "compartments", {"id": "d01", "door": "closed", "faults": {"jam": "x"}, "alarm": [],
                                        "not_opened": 2}),
            ("upsert", "deadlines", {"id": "D-1:dossier_return", "code": "D-1", "kind": "dossier_return",
                                     "due": "2026-12-03T10:00:00Z", "due_ts": 1796378400.123456, "level": 0}),
        ])
    finally:
        j.close()
    conn = connect(tmp_path / "j.db", readonly=True)
    try:
        body, rows = journal_snapshot.encode_tables(conn)
        assert body == canonical(projection.dump(conn))
        assert rows == {"badges": 0, "compartments": 1, "deadlines": 1, "items": 2, "people": 1}
    finally:
        conn.close()


async def test_a_grant_commits_while_a_snapshot_is_being_taken(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot is held mid-encode: grants and state changes still commit; it lands after them, as of the seq it
    was read at, and the next start finds the tables equal to it plus the operations committed in between."""
    monkeypatch.setattr(projection, "SNAPSHOT_EVERY", 20)
    reading, release = threading.Event(), threading.Event()
    real = journal_snapshot.encode_tables

    def held(conn: sqlite3.Connection, pause: Any = None) -> tuple[str, dict[str, int]]:
        reading.set()
        assert release.wait(10)
        return real(conn, pause)

    monkeypatch.setattr(journal_snapshot, "encode_tables", held)
    j = Journal(tmp_path / "j.db")
    assert j.open()
    snapshots: list[Event] = []
    landed = asyncio.Event()

    def seen(events: list[Event]) -> None:
        snapshots.extend(e for e in events if e.kind == projection.SNAPSHOT_KIND)
        if snapshots:
            landed.set()

    j.subscribe(seen)
    try:
        for n in range(20):
            await j.append_durable("item.assigned", state=[item(f"D-{n}")])
        assert await asyncio.to_thread(reading.wait, 10)
        # The writer is free: these commit while the snapshot thread is still inside its read.
        moved = await asyncio.wait_for(j.append_durable("dossier.taken", state=[item("D-3", state="out")]), 5)
        grant = await asyncio.wait_for(j.append_durable("access.granted", compartment="d01"), 5)
        assert not release.is_set() and not snapshots
        release.set()
        await asyncio.wait_for(landed.wait(), 10)
    finally:
        release.set()
        j.close()
    [snap] = snapshots
    assert snap.data["state_seq"] == 20 < moved.seq < grant.seq < snap.seq
    assert snap.data["rows"]["items"] == 20

    conn = sqlite3.connect(tmp_path / "j.db")
    try:
        found = projection.check(conn)
        assert found.differences == [] and found.snapshot_seq == snap.seq
        assert found.replayed == 1  # the move of D-3, committed between the read and the snapshot's own commit
        assert conn.execute("SELECT state FROM items WHERE code = 'D-3'").fetchone() == ("out",)
    finally:
        conn.close()
    assert verify(tmp_path / "j.db").ok
    reopened = Journal(tmp_path / "j.db")
    assert reopened.open()
    try:
        assert not [e for e in reopened.read() if e.kind == "alarm.journal_tampered"]
    finally:
        reopened.close()


async def snapshotted(path: Path, every: int, more: int = 0) -> None:
    """A journal of ``every`` items whose snapshot (taken beside the writer) has landed, then ``more`` items."""
    j = Journal(path)
    assert j.open()
    landed = asyncio.Event()
    j.subscribe(lambda events: any(e.kind == projection.SNAPSHOT_KIND for e in events) and landed.set())
    try:
        for n in range(every):
            await j.append_durable("item.assigned", state=[item(f"D-{n}")])
        await asyncio.wait_for(landed.wait(), 10)
        for n in range(every, every + more):
            await j.append_durable("item.assigned", state=[item(f"D-{n}")])
    finally:
        j.close()


async def test_an_edit_after_a_snapshot_taken_beside_the_writer_is_still_found(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "SNAPSHOT_EVERY", 10)
    await snapshotted(tmp_path / "j.db", 10, more=5)
    conn = sqlite3.connect(tmp_path / "j.db")
    with conn:
        [(state_seq,)] = conn.execute("SELECT json_extract(data, '$.state_seq') FROM events WHERE kind = ? "
                                      "ORDER BY seq DESC LIMIT 1", (projection.SNAPSHOT_KIND,)).fetchall()
        assert state_seq is not None
        conn.execute("UPDATE items SET state = 'out' WHERE code = 'D-14'")
    found = projection.check(conn)
    conn.close()
    assert found.differences == ["items 'D-14' differs from the journal in state ('out', journaled 'in')"]


async def test_a_damaged_packed_snapshot_is_named_and_nothing_is_rebuilt_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "SNAPSHOT_EVERY", 2)
    await snapshotted(tmp_path / "j.db", 2)
    conn = sqlite3.connect(tmp_path / "j.db")
    with conn:
        [(seq, stored)] = conn.execute("SELECT seq, body FROM snapshots ORDER BY seq DESC LIMIT 1").fetchall()
        assert isinstance(stored, bytes)  # packed
        conn.execute("UPDATE snapshots SET body = ? WHERE seq = ?", (stored[:-4], seq))  # a torn write
    found = projection.check(conn)
    conn.close()
    assert found.differences == [f"the snapshot at seq {seq} was changed after it was taken"]
    assert found.repair == []


async def test_no_snapshot_thread_to_be_had_costs_no_grant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(projection, "SNAPSHOT_EVERY", 2)

    def refused(self: threading.Thread) -> None:
        raise RuntimeError("can't start new thread")

    j = Journal(tmp_path / "j.db")
    assert j.open()  # its writer thread starts before threads run out
    monkeypatch.setattr(journal_snapshot.threading.Thread, "start", refused)
    try:
        grants = [await asyncio.wait_for(j.append_durable("access.granted", compartment="d01"), 5) for _ in range(6)]
    finally:
        monkeypatch.undo()
        j.close()
    assert [g.seq for g in grants] == [1, 2, 3, 4, 5, 6]
    assert [r.message for r in caplog.records if "no snapshot thread" in r.message] == [
        "journal: no snapshot thread (tried again after each commit): can't start new thread"]


async def test_closing_the_journal_drops_a_snapshot_under_way_instead_of_waiting_it_out(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(projection, "SNAPSHOT_EVERY", 800)
    monkeypatch.setattr(journal_snapshot, "PAUSE_S", 0.2)  # 800 rows: about 5 s of pauses alone
    reading = threading.Event()
    real = journal_snapshot.encode_tables

    def noted(conn: sqlite3.Connection, pause: Any = None) -> tuple[str, dict[str, int]]:
        reading.set()
        return real(conn, pause)

    monkeypatch.setattr(journal_snapshot, "encode_tables", noted)
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        for n in range(800):
            j.append("item.assigned", state=[item(f"D-{n}")])
        await j.flush()
        assert await asyncio.to_thread(reading.wait, 10)
    finally:
        started = time.monotonic()
        j.close()
        closed_in = time.monotonic() - started
    assert closed_in < 1.0, f"close waited {closed_in:.2f} s for the snapshot"
    conn = sqlite3.connect(tmp_path / "j.db")
    try:
        snapshots = conn.execute("SELECT count(*) FROM events WHERE kind = ?", (projection.SNAPSHOT_KIND,))
        assert snapshots.fetchone() == (0,)
        assert projection.check(conn).differences == []  # the next start replays from the start instead
    finally:
        conn.close()
