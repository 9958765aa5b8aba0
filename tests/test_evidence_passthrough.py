"""Pass-through evidence cabinets: deposits open the front door, retrievals and releases the rear."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytest_asyncio
from evidence_rig import data, deposit, evidence_rig, toml
from rig import close_rig, make_rig

from lockerd import config
from lockerd.errors import ConfigError

FRONT, REAR = 0, 2  # e01's channels on the sim board: front lock/sensor 0, rear lock/sensor 2


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await evidence_rig(tmp_path, pass_through=True)
    yield r
    await close_rig(r)


@pytest.mark.asyncio
async def test_deposit_opens_the_front_and_retrieval_the_rear(rig):
    await deposit(rig, channel=FRONT)
    assert [ch for ch, _, _ in rig.e.pulse_log] == [FRONT]
    start = rig.journal.last_seq
    for code in ("B-LIND", "R-LAB", "E-1"):
        await rig.scan(code)
    out = await rig.scan("B-OKAFOR")
    assert out.pulsed and out.compartment == "e01-rear"
    assert [ch for ch, _, _ in rig.e.pulse_log] == [FRONT, REAR]
    assert not await rig.pull(rig.e, FRONT)  # the front stays locked
    assert await rig.pull(rig.e, REAR)
    await rig.close(rig.e, REAR)
    evs = await rig.events(start)
    ret = next(e for e in evs if e.kind == "evidence.retrieved")
    assert ret.compartment == "e01"  # the item's compartment, whichever door it left by
    assert rig.c.registry.items["E-1"].state == "out"
    # The failed pull on the front door was not an opening: no alarm there.
    assert not [e.kind for e in evs if e.compartment == "e01" and e.kind.startswith(("door.", "alarm."))]


@pytest.mark.asyncio
async def test_release_opens_the_rear_door(rig):
    await deposit(rig, channel=FRONT)
    for code in ("X-OWNER", "B-BERG", "E-1"):
        await rig.scan(code)
    out = await rig.scan("B-LIND")
    assert out.pulsed and out.compartment == "e01-rear"
    await rig.pull(rig.e, REAR)
    await rig.close(rig.e, REAR)
    assert rig.c.registry.items["E-1"].state == "released"


@pytest.mark.asyncio
async def test_rear_door_is_supervised_like_any_door(rig):
    await deposit(rig, channel=FRONT)
    rig.e.force(REAR)
    await rig.clock.advance(0.05)
    st = rig.c.states()["e01-rear"]
    assert st["alarm"] == "forced" and st["items"] == ["E-1"]
    await rig.close(rig.e, REAR)
    kinds = await rig.kinds(compartment="e01-rear")
    assert kinds[-3:] == ["door.opened", "alarm.forced", "door.closed"]  # the alarm waits for acknowledgement
    assert rig.c.registry.items["E-1"].state == "in"


@pytest.mark.asyncio
async def test_the_rear_door_journal_order(rig):
    await deposit(rig, channel=FRONT)
    start = rig.journal.last_seq
    for code in ("B-LIND", "R-COURT", "E-1", "B-OKAFOR"):
        await rig.scan(code)
    await rig.pull(rig.e, REAR)
    await rig.close(rig.e, REAR)
    evs = await rig.events(start)
    rear = [e.kind for e in evs if e.compartment == "e01-rear"]
    assert rear == ["access.granted", "lock.pulsed", "door.opened", "door.closed"]
    assert [e.kind for e in evs if e.compartment == "e01"][-1] == "evidence.retrieved"


def _load(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "lockerd.toml"
    path.write_text(text)
    return config.load(path)


def test_rear_door_config_is_read(tmp_path):
    cfg = _load(tmp_path, toml(pass_through=True))
    e01 = cfg.compartments["e01"]
    assert (e01.lock, e01.sensor, e01.rear_lock, e01.rear_sensor, e01.rear_id) == (0, 0, 2, 2, "e01-rear")
    assert cfg.compartments["d01"].rear_id is None
    assert cfg.evidence.reason_card("X-OWNER") == ("returned to its owner", True)


@pytest.mark.parametrize("change,expected", [
    (("first_rear_sensor = 2\n", ""), "cabinets.e.count.rear_sensor = -1: expected a channel: a rear door needs both"),
    (("first_rear_lock = 2", "first_rear_lock = 1"), "cabinets.e.count.lock = 1: expected a lock channel not already"),
    (("first_rear_lock = 2", "first_rear_lock = 3"),
     "cabinets.e.count = 2: expected a count its drivers' channels hold: it needs rear lock channels 3-4 of driver "
     "'sim-e', which has 0 to 3"),
    (("first_rear_lock = 2", 'first_rear_lock = 2\nrear_lock_driver = "nope"'),
     "cabinets.e.rear_lock_driver = 'nope': expected one of the [drivers] sections"),
    (('count = 6\n', 'count = 3\nfirst_rear_lock = 3\nfirst_rear_sensor = 3\n'),
     "cabinets.d.count.rear_lock = 3: expected no rear door: pass-through (front and rear) cabinets hold evidence"),
    (('X-OWNER = "returned to its owner"', 'R-COURT = "returned"'),
     "evidence.release_reasons.R-COURT = 'returned': expected a card barcode not also in evidence.reasons"),
    (('R-LAB = "forensic laboratory"', 'R-LAB = "  "'),
     "evidence.reasons.R-LAB = '  ': expected the reason as a non-empty text"),
    (("depositor_may_retrieve = true", "depositor_may_retrieve = 1"),
     "evidence.depositor_may_retrieve = 1: expected true or false"),
])
def test_bad_rear_door_and_reason_config_is_named(tmp_path, change, expected):
    old, new = change
    text = toml(pass_through=True)
    assert old in text
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, text.replace(old, new, 1))
    assert expected in str(e.value), str(e.value)


SIDES = ('[scanners.side]\ntype = "sim"\ncabinets = ["d"]\ndebounce_ms = 0\n',
         '[scanners.side]\ntype = "sim"\ncabinets = ["d"]\ndebounce_ms = 0\n'
         '[scanners.room]\ntype = "sim"\ncabinets = ["e"]\ndebounce_ms = 0\nside = "rear"\n')


@pytest.mark.asyncio
async def test_each_side_scanner_opens_only_its_own_door(tmp_path):
    text = toml(pass_through=True).replace(*SIDES).replace(
        'cabinets = ["d", "e"]\ndebounce_ms = 0\n', 'cabinets = ["d", "e"]\ndebounce_ms = 0\nside = "front"\n')
    r = await make_rig(tmp_path, text, data())
    try:
        # A deposit at the property room's (rear) scanner: refused, nothing opens.
        for code in ("B-BERG", "E-1"):
            await r.scan(code, scanner="room")
        out = await r.scan("B-LIND", scanner="room")
        assert not out.accepted and "deposits open the front door of e01" in out.message
        await deposit(r, channel=FRONT)  # at the front scanner
        # A retrieval at the officers' (front) scanner: refused, the rear stays shut.
        for code in ("B-LIND", "R-COURT", "E-1"):
            await r.scan(code)
        out = await r.scan("B-OKAFOR")
        assert not out.accepted and "retrievals and releases open the rear door of e01" in out.message
        # The same at the rear scanner opens the rear door.
        for code in ("B-LIND", "R-COURT", "E-1"):
            await r.scan(code, scanner="room")
        out = await r.scan("B-OKAFOR", scanner="room")
        assert out.pulsed and out.compartment == "e01-rear"
        assert [ch for ch, _, _ in r.e.pulse_log] == [FRONT, REAR]
        denied = [e for e in await r.events() if e.kind == "access.denied"]
        assert [d.compartment for d in denied] == ["e01", "e01-rear"]
    finally:
        await close_rig(r)
