"""A controller on simulated hardware with a hand-driven clock, for flow tests."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from pathlib import Path

from lockerd.drivers.base import Scan
from lockerd.drivers.sim import SimBoard, SimScanner

from lockerd import config, importer
from lockerd.clock import ManualClock
from lockerd.controller import Controller
from lockerd.errors import JournalError
from lockerd.hardware import Hardware, build_hardware
from lockerd.journal import Event, Journal
from lockerd.opening import Outcome

TOML = """
[controller]
site = "test-site"
node = "node-1"
control_socket = "lockerd.sock"
[journal]
path = "journal.db"
[timing]
pulse_ms = 500
open_timeout_s = 10
max_open_s = 60
alarm_repeat_s = 30
debounce_ms = 30
evidence_window_s = 60
jam_after = 3
[power]
max_energised = 2
max_wait_s = 5
[drivers.sim-d]
type = "sim"
channels = 6
state_file = "sim-d.json"
[drivers.sim-e]
type = "sim"
channels = 4
state_file = "sim-e.json"
[cabinets.d]
kind = "dossier"
lock_driver = "sim-d"
count = 6
[cabinets.e]
kind = "evidence"
lock_driver = "sim-e"
count = 4
[scanners.front]
type = "sim"
cabinets = ["d", "e"]
debounce_ms = 0
[scanners.side]
type = "sim"
cabinets = ["d"]
debounce_ms = 0
"""

DATA = {
    "people": [
        {"id": "berg", "name": "Anna Berg", "role": "officer"},
        {"id": "okafor", "name": "Daniel Okafor", "role": "officer"},
        {"id": "lind", "name": "Maria Lindqvist", "role": "case_manager"},
        {"id": "nowak", "name": "Piotr Nowak", "role": "technician"},
    ],
    "badges": [
        {"code": "B-BERG", "person": "berg"},
        {"code": "B-BERG-2", "person": "berg"},
        {"code": "B-OKAFOR", "person": "okafor"},
        {"code": "B-LIND", "person": "lind"},
    ],
    "items": [
        {"code": "D-1", "kind": "dossier", "case_name": "Case one", "category": "fraud",
         "officer": "berg", "compartment": "d01"},
        {"code": "D-2", "kind": "dossier", "case_name": "Case two", "category": "theft",
         "officer": "berg", "compartment": "d01"},
        {"code": "D-3", "kind": "dossier", "case_name": "Case three", "category": "theft",
         "officer": "okafor", "compartment": "d02"},
        {"code": "D-NOWHERE", "kind": "dossier", "case_name": "Unfiled", "category": "misc",
         "officer": "okafor", "compartment": None},
        {"code": "E-1", "kind": "evidence", "case_name": "Case one", "category": "knife",
         "officer": "berg", "compartment": "e01"},
    ],
}


@dataclass
class Rig:
    cfg: config.Config
    clock: ManualClock
    journal: Journal
    hw: Hardware
    c: Controller

    @property
    def d(self) -> SimBoard:
        return self.hw.drivers["sim-d"]  # type: ignore[return-value]

    @property
    def e(self) -> SimBoard:
        return self.hw.drivers["sim-e"]  # type: ignore[return-value]

    async def scan(self, code: str | bytes, scanner: str = "front") -> Outcome:
        """Scan at a simulated scanner and wait for the controller's answer."""
        fut: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()

        def watch(scan: Scan, outcome: Outcome) -> None:
            if not fut.done():
                fut.set_result(outcome)

        self.c.on_outcome(watch)
        try:
            sc = self.hw.scanners[scanner]
            assert isinstance(sc, SimScanner)
            assert sc.inject(code)
            return await asyncio.wait_for(fut, 30)  # a safety net: the answer waits on an fsync
        finally:
            self.c.off_outcome(watch)

    async def pull(self, board: SimBoard, channel: int) -> bool:
        """A person pulls a door, then time passes beyond the sensor's settle window."""
        opened = board.pull(channel)
        await self.clock.advance(0.05)
        return opened

    async def close(self, board: SimBoard, channel: int) -> None:
        board.close_door(channel)
        await self.clock.advance(0.05)

    async def flush(self) -> None:
        """Wait until everything queued to the journal is committed."""
        await self.clock.settle()
        if self.journal.healthy or self.journal._thread is not None:
            await self.journal.flush()
        await self.clock.settle()

    async def events(self, after: int = 0) -> list[Event]:
        await self.flush()
        return self.journal.read(after, 100000)

    async def kinds(self, after: int = 0, compartment: str | None = None) -> list[str]:
        return [e.kind for e in await self.events(after) if compartment is None or e.compartment == compartment]


def write_config(tmp: Path, text: str = TOML) -> Path:
    path = tmp / "lockerd.toml"
    path.write_text(text)
    return path


async def make_rig(tmp: Path, text: str = TOML, data: dict | None = DATA, clock: ManualClock | None = None) -> Rig:
    cfg = config.load(write_config(tmp, text))
    if "badge_burst_ms" not in text:
        # The hand-driven clock stands still between scans, so every two badges
        # would read as one burst; the burst rule has tests of its own.
        cfg = replace(cfg, evidence=replace(cfg.evidence, badge_burst_ms=0))
    clock = clock or ManualClock()
    journal = Journal(cfg.journal_path, clock)
    journal.open()
    hw = build_hardware(cfg, clock)
    c = Controller(cfg, journal, hw, clock)
    await c.start()
    if data:
        await importer.apply(c, json.loads(json.dumps(data)))
    rig = Rig(cfg, clock, journal, hw, c)
    await rig.flush()
    return rig


async def fill_disk(journal: Journal) -> None:
    """The disk fills up: the database may not grow by a page, and no row fits in the pages it has.

    Rows are written one at a time until one fails: a batch of fillers that
    fails is rolled back whole and would leave room for the next small row.
    """
    pages = journal.query("PRAGMA page_count")[0][0]
    await journal.execute(f"PRAGMA max_page_count = {pages}")
    for _ in range(10_000):
        try:
            await journal.append_durable("filler", blob="x" * 64)
        except JournalError:
            break
    else:
        raise AssertionError("the journal never filled up")
    assert not journal.healthy and "full" in (journal.error or "")


async def close_rig(rig: Rig) -> None:
    await rig.clock.advance(10)  # let running pulses finish their switch-off
    await rig.c.stop()
    rig.journal.close()
