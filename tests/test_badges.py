"""Badge codes are keys to evidence: the journal holds fingerprints, is readable by its owner and group only,
and a journal from before fingerprints is converted without naming a code again."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest
from rig import close_rig, make_rig

from lockerd.badges import BadgeKey, is_fingerprint
from lockerd.clock import ManualClock
from lockerd.journal import Journal, verify


def test_a_fingerprint_shows_the_last_characters_and_hides_the_rest(tmp_path: Path) -> None:
    key = BadgeKey.load_or_create(tmp_path / "badge.key")
    fp = key.fingerprint("B-OFFICER-1234")
    assert fp.startswith("234~") and is_fingerprint(fp) and "OFFICER" not in fp
    assert key.fingerprint("B-OFFICER-1234") == fp  # stable
    assert BadgeKey.load_or_create(tmp_path / "badge.key").fingerprint("B-OFFICER-1234") == fp  # kept on disk
    assert BadgeKey.load_or_create(tmp_path / "other.key").fingerprint("B-OFFICER-1234") != fp  # keyed
    assert key.fingerprint("B-1").startswith("~")  # a short code shows nothing of itself
    assert stat.S_IMODE((tmp_path / "badge.key").stat().st_mode) == 0o600


@pytest.mark.asyncio
async def test_the_journal_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        j = Journal(tmp_path / "journal.db", ManualClock())
        assert j.open()
        await j.append_durable("person.registered", people=("berg",))
        j.close()
    finally:
        os.umask(old)
    for name in ("journal.db", "journal.db-wal"):
        path = tmp_path / name
        if path.exists():
            assert stat.S_IMODE(path.stat().st_mode) == 0o640, name


@pytest.mark.asyncio
async def test_a_journal_with_badge_codes_in_clear_is_converted_at_start(tmp_path: Path) -> None:
    # What an earlier lockerd left: the badge codes themselves in the table and in the events.
    j = Journal(tmp_path / "journal.db", ManualClock())
    assert j.open()
    await j.append_durable("person.registered", people=("berg",), state=[
        ("upsert", "people", {"id": "berg", "name": "Anna Berg", "role": "officer", "active": 1})])
    await j.append_durable("badge.registered", people=("berg",), badge="B-OLD-0001", state=[
        ("upsert", "badges", {"code": "B-OLD-0001", "person": "berg", "active": 1})])
    await j.append_durable("badge.revoked", people=("berg",), badge="B-LOST-0002", state=[
        ("upsert", "badges", {"code": "B-LOST-0002", "person": "berg", "active": 0})])
    j.close()

    rig = await make_rig(tmp_path, data=None)
    try:
        key = rig.c.registry.badge_key
        rows = sqlite3.connect(tmp_path / "journal.db").execute("SELECT code, person, active FROM badges").fetchall()
        assert sorted(rows) == sorted([(key.fingerprint("B-OLD-0001"), "berg", 1),
                                       (key.fingerprint("B-LOST-0002"), "berg", 0)])
        [conversion] = [e for e in await rig.events() if e.kind == "badges.fingerprinted"]
        assert list(conversion.state[0]) == ["clear", "badges", {}] and conversion.data["badges"] == 2
        assert "B-OLD" not in str(conversion.state) and "B-LOST" not in str(conversion.state)
        # The badge still works, and the revoked one is still refused as a badge.
        assert rig.c.registry.read_badge("B-OLD-0001")[1].id == "berg"
        out = await rig.scan("B-LOST-0002")
        assert not out.accepted and "badge revoked" in out.message
    finally:
        await close_rig(rig)
    assert verify(tmp_path / "journal.db").ok
    # A second start finds the tables true to the chain (no tamper alarm) and converts nothing again.
    rig = await make_rig(tmp_path, data=None)
    try:
        kinds = [e.kind for e in await rig.events()]
        assert kinds.count("badges.fingerprinted") == 1 and "alarm.journal_tampered" not in kinds
    finally:
        await close_rig(rig)
