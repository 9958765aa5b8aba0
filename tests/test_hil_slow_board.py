"""The bench against a board that answers after the request timeout, over RTU on a pty."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hil_boards import DoorPeer
from lockerd.hil import Bench, BenchOptions, Unattended
from modbus_peer import PtyPair

from lockerd import config as config_mod

CONFIG = """
[controller]
site = "test-site"
node = "node-1"
control_socket = "lockerd.sock"
[journal]
path = "journal.db"
[timing]
pulse_ms = 100
open_timeout_s = 0.5
[buses.rs485-a]
type = "rtu"
device = "{device}"
baudrate = 115200
timeout_ms = 200
retries = 1
[drivers.board-a]
type = "modbus"
bus = "rs485-a"
unit = 1
coils = 4
inputs = 4
poll_hz = 10
[cabinets.m]
kind = "dossier"
lock_driver = "board-a"
count = 4
"""


@pytest.mark.asyncio
async def test_a_board_answering_in_300_ms_is_said_once_to_answer_late(tmp_path: Path):
    pty = PtyPair(tmp_path).start()
    peer = DoorPeer([1], coils=4, inputs=4)
    peer.delay[1] = 0.3  # every reply 300 ms after the request; timeout_ms is 200
    try:
        await peer.start_rtu(pty.b)
        path = tmp_path / "lockerd.toml"
        path.write_text(CONFIG.format(device=pty.a))
        opts = BenchOptions(settle_s=0.1, close_timeout_s=2.0, modbus_requests=8, doors="spring",
                            skip_scanners=True)
        r = await Bench(config_mod.load(path), Unattended(), opts).run()
    finally:
        await peer.stop()
        pty.stop()
    assert [f.key for f in r.findings] == [("board-slow", "board-a")]
    assert re.match(r"board board-a answers in about 3[0-4]0 ms, more than timeout_ms 200 of \[buses.rs485-a\]",
                    r.findings[0].message), r.findings[0].message
    b = r.boards[0]
    assert b.answered == 0 and b.latencies_ms == []  # no late reply was taken for a later read's answer
