"""Journal integrity, failure modes and what survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import types
from collections.abc import Callable

import pytest
from broker import until
from rig import close_rig, fill_disk, make_rig

from lockerd import importer, journal_wal, journal_writer
from lockerd.errors import CommandError, JournalError
from lockerd.journal import Journal, chain_hash, verify
from lockerd.station.outbox import CURSOR_SQL

pytestmark = pytest.mark.asyncio


async def test_state_survives_a_restart(tmp_path):
    r = await make_rig(tmp_path)
    await r.scan("D-1")
    await r.pull(r.d, 0)
    await r.close(r.d, 0)
    r.d.force(4)  # an alarm left open across the restart
    await r.clock.advance(0.05)
    await close_rig(r)

    r2 = await make_rig(tmp_path, data=None)
    try:
        assert r2.c.registry.items["D-1"].state == "in"
        assert r2.c.registry.read_badge("B-LIND")[1].name == "Maria Lindqvist"
        assert "forced" in r2.c.states()["d05"]["alarm"]  # still open, still alarmed
        out = await r2.scan("D-1")
        assert "checkout" in out.message
        assert verify(r2.cfg.journal_path).ok
    finally:
        await close_rig(r2)


async def test_door_changed_while_down_is_journaled(tmp_path):
    r = await make_rig(tmp_path)
    await close_rig(r)
    # While lockerd was stopped, someone opened compartment d03 (the sim
    # keeps its doors in a state file, as a real cabinet keeps its doors).
    state = json.loads((tmp_path / "sim-d.json").read_text())
    state["doors"][2]["open"] = True
    (tmp_path / "sim-d.json").write_text(json.dumps(state))
    r2 = await make_rig(tmp_path, data=None)
    try:
        evs = [e for e in await r2.events() if e.compartment == "d03"]
        kinds = [e.kind for e in evs]
        assert "door.changed_while_down" in kinds and "alarm.forced" in kinds
        changed = evs[kinds.index("door.changed_while_down")]
        assert changed.data == {"was": "closed", "now": "open"}
    finally:
        await close_rig(r2)


async def test_locks_are_de_energised_at_start(tmp_path):
    r = await make_rig(tmp_path)
    try:
        assert r.d.energised == set() and r.hw.budget.in_use == 0
        assert not any(r.d.released(c) for c in range(6))
    finally:
        await close_rig(r)


async def test_verify_names_the_first_edited_row(tmp_path):
    r = await make_rig(tmp_path)
    await r.scan("D-1")
    await close_rig(r)
    db = tmp_path / "journal.db"
    assert verify(db).ok
    conn = sqlite3.connect(db)
    # Edits need the append-only triggers gone: what an attacker with the file would do.
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET data = json_set(data, '$.reason', 'edited') WHERE seq = 5")
    conn.commit()
    conn.close()
    res = verify(db)
    assert not res.ok and res.first_bad == 5 and "changed" in res.reason


async def test_verify_detects_a_deleted_row(tmp_path):
    r = await make_rig(tmp_path)
    await close_rig(r)
    conn = sqlite3.connect(tmp_path / "journal.db")
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq = 3")
    conn.commit()
    conn.close()
    res = verify(tmp_path / "journal.db")
    assert not res.ok and res.first_bad == 3 and "missing" in res.reason


async def test_the_database_refuses_edits(tmp_path):
    r = await make_rig(tmp_path)
    await close_rig(r)
    conn = sqlite3.connect(tmp_path / "journal.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE events SET kind = 'x' WHERE seq = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM events WHERE seq = 1")


async def test_full_disk_refuses_to_unlock_and_keeps_running(tmp_path):
    r = await make_rig(tmp_path)
    try:
        # The disk fills up under the running daemon: the database may not
        # grow by a single page, and a commit has failed.
        await fill_disk(r.journal)
        out = await r.scan("D-1")
        assert not out.accepted and "cannot record" in out.message
        assert r.d.pulse_log == []
        assert not r.journal.healthy
        # ... and the loop still serves the next scan (refused again, no crash).
        out = await r.scan("D-3")
        assert not out.accepted and r.d.pulse_log == []
        assert "full" in r.journal.error
        # Once space is freed, grants work again without a restart. The
        # "freeing" runs on the writer; in a batch with still-failing events
        # it is rolled back with them, so repeat it until it lands alone.
        for _ in range(10):
            with contextlib.suppress(JournalError):
                await r.journal.execute("PRAGMA max_page_count = 1073741823")
                break
        # That statement wrote no event, so the journal does not call itself
        # healthy yet: within the second, grants wait for the next probe.
        await r.clock.advance(1.0)
        assert (await r.scan("D-3")).pulsed
    finally:
        await close_rig(r)


async def test_a_commit_without_events_does_not_call_a_full_disk_healthy(tmp_path):
    """On a full disk the outbox cursor's move (an existing row) and an empty flush still commit.

    Neither shows that events can be written: taking them for health made the
    journal flap between "failed" and "writing again" with every PUBACK.
    """
    r = await make_rig(tmp_path)
    try:
        await fill_disk(r.journal)
        await r.journal.execute(CURSOR_SQL, 0, durable=False)
        await r.journal.flush()
        assert not r.journal.healthy and "full" in r.journal.error
        with pytest.raises(JournalError):
            await r.journal.append_durable("test.after")
    finally:
        await close_rig(r)


async def test_corrupt_journal_fails_secure(tmp_path):
    (tmp_path / "journal.db").write_bytes(b"this is not a database" * 100)
    r = await make_rig(tmp_path, data=None)
    try:
        assert not r.journal.healthy and "unusable" in r.journal.error
        r.c.registry.items.clear()
        out = await r.scan("D-1")
        assert not out.accepted
        assert r.d.pulse_log == []
    finally:
        await close_rig(r)


async def test_import_is_all_or_nothing(tmp_path):
    r = await make_rig(tmp_path, data=None)
    try:
        bad = {
            "people": [{"id": "x1", "name": "X", "role": "officer"}, {"id": "x2", "name": "Y", "role": "chief"}],
            "items": [{"code": "D-9", "kind": "dossier", "compartment": "d99", "officer": "x1"}],
        }
        with pytest.raises(CommandError) as e:
            await importer.apply(r.c, bad)
        assert "chief" in str(e.value) and "d99" in str(e.value)
        assert r.c.registry.people == {} and r.c.registry.items == {}
        assert not [k for k in await r.kinds() if k.startswith(("person.", "item."))]
    finally:
        await close_rig(r)


async def test_csv_import(tmp_path):
    r = await make_rig(tmp_path, data=None)
    try:
        people = importer.parse("id,name,role\nb1,Bea,officer\n", is_csv=True)
        items = importer.parse("code,kind,case_name,category,officer,compartment\nD-7,dossier,C,cat,b1,d02\n",
                               is_csv=True)
        await importer.apply(r.c, people)
        await importer.apply(r.c, items)
        assert r.c.registry.items["D-7"].compartment == "d02"
        with pytest.raises(CommandError, match="unrecognised CSV header"):
            importer.parse("foo,bar\n1,2\n", is_csv=True)
    finally:
        await close_rig(r)


async def test_rows_appended_in_one_step_share_a_commit(tmp_path):
    """A station open queues its acceptance and then awaits its grant: one fsync for both, every time."""
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        for n in range(20):
            before = j.commits
            accepted = j.append("command.accepted", command_id=f"c{n}")
            grant = await j.append("access.granted", compartment="d01", people=("p1",), command_id=f"c{n}")
            assert accepted.done() and (await accepted).seq == grant.seq - 1
            assert j.commits == before + 1
    finally:
        j.close()
    assert verify(tmp_path / "j.db").ok


async def test_the_writer_hashes_each_row_as_verify_does(tmp_path):
    """Awkward payloads (non-ASCII, nesting, floats, big ints) hash in the writer exactly as verify recomputes them."""
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        events = [
            await j.append_durable("scan", compartment="d01", dossier="D-1", people=("p1", "p2"), raw="D-1\u00e9\u2603",
                           nested={"b": [1, 2.5, None], "a": {"z": True, "y": "\"quoted\""}}),
            await j.append_durable("daemon.started"),
            await j.append_durable("door.opened", compartment="d02", granted=False, ratio=1e-7, big=10**20),
        ]
    finally:
        j.close()
    for ev in events:
        assert chain_hash(ev.prev, ev.record()) == ev.hash
    assert verify(tmp_path / "j.db").ok


async def test_no_checkpoint_lands_inside_a_commit(tmp_path, monkeypatch):
    """SQLite's own checkpoint would run inside the commit crossing 1000 WAL pages, maybe a grant's."""
    monkeypatch.setattr(journal_writer, "CHECKPOINT_AFTER_COMMITS", 10**6)
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        for n in range(200):
            await j.append_durable("scan", raw=f"{n:06d}" * 1000)  # ~6 KB: several WAL pages per commit
        other = sqlite3.connect(tmp_path / "j.db")
        try:
            busy, frames, _ = other.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            other.close()
        assert busy == 0 and frames > 1000  # all still in the WAL: nobody checkpointed at 1000
        assert j.checkpoints == 0
    finally:
        j.close()


async def test_the_writer_checkpoints_once_idle(tmp_path, monkeypatch):
    monkeypatch.setattr(journal_writer, "CHECKPOINT_AFTER_COMMITS", 5)
    monkeypatch.setattr(journal_writer, "CHECKPOINT_IDLE_S", 0.05)
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        for n in range(5):
            await j.append_durable("scan", raw=str(n))
        async with asyncio.timeout(5):
            while j.checkpoints == 0:
                await asyncio.sleep(0.01)
        assert (await j.append_durable("scan", raw="after")).seq == 6  # and writes on
    finally:
        j.close()
    assert verify(tmp_path / "j.db").ok


def checkpoint_soon(monkeypatch: pytest.MonkeyPatch, after_commits: int) -> None:
    """The writer asks for a checkpoint after this many commits and 10 ms idle (not 50 and 20 ms)."""
    monkeypatch.setattr(journal_writer, "CHECKPOINT_AFTER_COMMITS", after_commits)
    monkeypatch.setattr(journal_writer, "CHECKPOINT_IDLE_S", 0.01)


async def test_a_grant_commits_while_a_checkpoint_is_under_way(tmp_path, monkeypatch):
    """The WAL is checkpointed on a thread and connection of its own: a grant never waits for the rest of one."""
    checkpoint_soon(monkeypatch, 3)
    inside, release = threading.Event(), threading.Event()
    ran_on: list[str] = []

    class HeldCheckpoint:
        """The checkpoint's connection, whose checkpoint waits for the test's word before it runs."""

        def __init__(self, conn: sqlite3.Connection):
            self.conn = conn

        def execute(self, sql: str) -> sqlite3.Cursor:
            ran_on.append(threading.current_thread().name)
            inside.set()
            release.wait(10)
            return self.conn.execute(sql)

        def close(self) -> None:
            self.conn.close()

    real_connect = journal_wal.connect
    monkeypatch.setattr(journal_wal, "connect", lambda path: HeldCheckpoint(real_connect(path)))
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        for n in range(3):
            await j.append_durable("scan", raw=str(n))
        assert await asyncio.to_thread(inside.wait, 5)  # idle: the checkpoint began, and holds
        async with asyncio.timeout(2):
            grant = await j.append_durable("access.granted", compartment="d01")
        assert grant.seq == 4 and j.checkpoints == 0  # committed with the checkpoint still under way
        release.set()
        async with asyncio.timeout(5):
            await until(lambda: j.checkpoints > 0)
        assert ran_on == ["journal-wal"]
    finally:
        release.set()
        j.close()
    assert verify(tmp_path / "j.db").ok


async def test_without_a_checkpoint_thread_the_writer_checkpoints_and_says_so_once(tmp_path, monkeypatch, caplog):
    checkpoint_soon(monkeypatch, 1)
    tried: list[str] = []

    class NoThread(threading.Thread):
        """The process is at its thread limit (only journal_wal sees this)."""

        def start(self) -> None:
            tried.append(self.name)
            raise RuntimeError("can't start new thread")

    monkeypatch.setattr(journal_wal, "threading", types.SimpleNamespace(Thread=NoThread))
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        for spell in (1, 2, 3):
            await j.append_durable("scan", raw=str(spell))
            async with asyncio.timeout(5):
                await until(lambda n=spell: j.checkpoints >= n)  # the writer's own, once it has been idle
        assert tried == ["journal-wal"] * 3  # asked for again at each idle spell
        said = [r for r in caplog.records if "no checkpoint thread" in r.getMessage()]
        assert len(said) == 1
    finally:
        j.close()
    assert verify(tmp_path / "j.db").ok


async def test_a_surprise_in_a_checkpoint_does_not_stop_the_next(tmp_path, monkeypatch, caplog):
    """The thread's "busy" flag, left set by an exception, dropped every later ask: the WAL grew without bound."""
    checkpoint_soon(monkeypatch, 1)
    real, calls = journal_wal.checkpoint, []

    def first_one_fails(conn: sqlite3.Connection) -> bool:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            raise MemoryError("the checkpoint's surprise")
        return real(conn)

    monkeypatch.setattr(journal_wal, "checkpoint", first_one_fails)
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        await j.append_durable("scan", raw="1")
        async with asyncio.timeout(5):
            await until(lambda: bool(calls))  # the first idle spell asked, and the checkpoint failed
        async with asyncio.timeout(5):
            while j.checkpoints == 0:  # each later commit and idle spell asks again
                await j.append_durable("scan", raw="2")
                await asyncio.sleep(0.05)
        assert set(calls) == {"journal-wal"}
        assert [r.getMessage() for r in caplog.records if "unexpectedly" in r.getMessage()] == [
            "journal: checkpoint failed unexpectedly (asked again when idle)"]
    finally:
        j.close()
    assert verify(tmp_path / "j.db").ok


async def test_a_journal_whose_commit_failed_writes_again_once_the_cause_is_gone(tmp_path):
    """A failed commit is not forever: with the cause gone, the next probe write lands, no restart, no other write."""
    from lockerd.clock import ManualClock

    clock = ManualClock()
    j = Journal(tmp_path / "j.db", clock)
    assert j.open()
    try:
        await j.append_durable("daemon.ready")
        await j.execute("PRAGMA busy_timeout = 100")  # fail fast while another writer holds the lock
        other = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # e.g. an offline tool holding the write lock
        with pytest.raises(JournalError, match="locked"):
            await j.append_durable("scan", code="D-1")
        assert not j.healthy
        other.execute("ROLLBACK")
        other.close()
        # The cause is gone, but within the probe interval writes are refused at once ...
        with pytest.raises(JournalError):
            await j.append_durable("scan", code="D-1")
        # ... and the first write after it is the probe that finds the journal healthy again.
        await clock.advance(1.0)
        ev = await j.append_durable("scan", code="D-1")
        assert j.healthy and ev.seq == 2
    finally:
        j.close()


async def test_the_outbox_cursor_alone_costs_no_flush_and_events_still_do(tmp_path):
    """A commit of nothing but redoable statements runs with synchronous=NORMAL (no fdatasync); the next one with an
    event is FULL again, and that flush carries the cursor to disk with it (WAL)."""
    j = Journal(tmp_path / "j.db")
    assert j.open()
    mode = "UPDATE outbox SET delivered = (SELECT synchronous FROM pragma_synchronous) WHERE id = 1"
    try:
        await j.execute(mode, durable=False)
        assert j.query("SELECT delivered FROM outbox")[0][0] == 1  # NORMAL
        ev = j.append("door.opened", compartment="d01")
        flushed = j.execute(mode, durable=False)  # shares the event's commit: flushed with it
        await ev
        await flushed
        assert j.query("SELECT delivered FROM outbox")[0][0] == 2  # FULL
        await j.execute(mode, durable=False)
        await j.execute(mode)
        assert j.query("SELECT delivered FROM outbox")[0][0] == 2  # back to FULL for everything else
    finally:
        j.close()


def _wait_until(done: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Block the loop (as a busy loop would be) until the writer thread has done something, or time out."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.0005)
    return True


async def test_a_grant_is_committed_while_work_queued_before_it_runs(tmp_path):
    """A durable append goes to the writer at once: work the loop queued earlier (an MQTT ack going out, another
    task's step) runs beside the commit instead of ahead of it. Before, the grant waited behind all of it."""
    j = Journal(tmp_path / "j.db")
    assert j.open()
    try:
        before = j.commits
        committed_meanwhile: list[bool] = []
        loop = asyncio.get_running_loop()
        loop.call_soon(lambda: committed_meanwhile.append(_wait_until(lambda: j.commits > before)))
        grant = await j.append_durable("access.granted", compartment="d01", people=("p1",))
        assert committed_meanwhile == [True]
        assert grant.seq == j.last_seq
    finally:
        j.close()


async def test_the_task_a_commit_wakes_runs_before_the_commits_observers(tmp_path, monkeypatch):
    """The grant's task (its lock waiting) resumes before the observers of that commit (the outbox publishing it,
    the metrics) take the loop. Before, every observer ran first."""
    j = Journal(tmp_path / "j.db")
    posted = threading.Event()
    published = j._published

    def posting(events: list) -> None:
        published(events)
        posted.set()

    monkeypatch.setattr(j, "_published", posting)  # the writer's hook, bound when it starts
    assert j.open()
    order: list[str] = []
    j.subscribe(lambda events: order.extend("observer" for e in events if e.kind == "access.granted"))
    try:
        # Hold the loop until the writer has posted both the grant's result and its observers.
        asyncio.get_running_loop().call_soon(lambda: _wait_until(posted.is_set))
        await j.append_durable("access.granted", compartment="d01", people=("p1",))
        order.append("resumed")
        await j.flush()
        assert order == ["resumed", "observer"]
    finally:
        j.close()
