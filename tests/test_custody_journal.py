"""A journal written before custody deadlines existed (schema 1) is upgraded in place."""

from __future__ import annotations

import sqlite3

import pytest
from custody_rig import HOUR, command, custody_rig, ladder, reminders
from rig import close_rig

from lockerd.clock import iso_utc
from lockerd.journal import SCHEMA_VERSION, verify

pytestmark = pytest.mark.asyncio


async def test_a_schema_1_journal_gains_the_deadlines_table(tmp_path):
    rig = await custody_rig(tmp_path)
    seq = rig.journal.last_seq
    await close_rig(rig)
    # Make it what an older lockerd left behind: no deadlines table, user_version 1.
    conn = sqlite3.connect(tmp_path / "journal.db")
    conn.execute("DROP TABLE deadlines")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    rig = await custody_rig(tmp_path, clock=rig.clock, data=None)
    try:
        assert rig.journal.query("PRAGMA user_version") == [(SCHEMA_VERSION,)]
        assert rig.journal.last_seq > seq and verify(rig.cfg.journal_path).ok
        await command(rig, "assign", code="D-NEW", compartment="d03", officer="berg",
                      deposit_due=iso_utc(rig.clock.wall() + HOUR))
        await rig.clock.advance(HOUR + 1)
        assert ladder(await reminders(rig, "D-NEW")) == [("reminder.due", 1, "officer")]
    finally:
        await close_rig(rig)
