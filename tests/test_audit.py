"""Audit reports: an item's chain of custody and each cabinet's occupancy, read from the journal."""

from __future__ import annotations

import contextlib
import json

import pytest
import pytest_asyncio
from evidence_rig import data, deposit, toml
from rig import Rig, close_rig, make_rig
from test_camera import SIM, count, journaled, with_camera

from lockerd.cli import main
from lockerd.custody_report import CustodyReport, custody_report
from lockerd.journal_reader import open_journal
from lockerd.occupancy import occupancy

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await make_rig(tmp_path, with_camera(SIM))
    yield r
    await close_rig(r)


async def cycle(rig: Rig, code: str, channel: int) -> None:
    """One opening of a dossier's compartment: scan, pull the door, shut it, an hour later."""
    out = await rig.scan(code)
    assert out.accepted and out.pulsed, out
    assert await rig.pull(rig.d, channel)
    await rig.close(rig.d, channel)
    await rig.clock.advance(3600)


def chain(rig: Rig, code: str) -> CustodyReport:
    with contextlib.closing(open_journal(rig.cfg.journal_path)) as conn:
        return custody_report(conn, code)


OPENING = ["scan", "access.granted", "lock.pulsed", "door.opened", "door.closed"]


async def test_chain_of_custody_of_a_dossier_through_deposit_checkout_and_return(rig, capsys):
    for _ in range(3):  # deposit, checkout, return
        await cycle(rig, "D-1", 0)
    await cycle(rig, "D-3", 1)  # another dossier, another compartment: not in D-1's chain
    await journaled(rig, count("photo.taken", 8))
    c = chain(rig, "D-1")
    kinds = [e.kind for e in c.events]
    grants = [e.seq for e in c.events if e.kind == "access.granted"]
    photos = ["photo.taken", "photo.taken"]  # the grant's still and the close's
    # (Deadline and reminder events of the item are in its chain too; this test is about the openings.)
    core = {*OPENING, "item.assigned", "dossier.deposited", "dossier.checked_out", "dossier.returned"}
    assert [k for k in kinds if k in core] == [
        "item.assigned",
        *OPENING, "dossier.deposited",
        *OPENING, "dossier.checked_out",
        *OPENING, "dossier.returned",
    ]
    assert kinds.count("photo.taken") == 6 == len(photos) * 3
    assert [e.seq for e in c.events] == sorted(e.seq for e in c.events)
    assert {e.compartment for e in c.events if e.kind in core} == {"d01"}
    assert all(e.dossier == "D-1" or e.data.get("grant_seq") in grants or e.data.get("for_seq") is not None
               or e.kind == "access.granted" for e in c.events)
    closes = [e.seq for e in c.events if e.kind == "door.closed"]
    assert sorted(e.data["for_seq"] for e in c.events if e.kind == "photo.taken") == sorted(grants + closes)
    assert c.item is not None and c.item["state"] == "in" and c.item["compartment"] == "d01"
    assert c.names == {"berg": "Anna Berg"}  # the responsible officer

    capsys.readouterr()  # the simulated scanners' console feedback
    assert main(["chain-of-custody", "D-1", "-c", str(rig.cfg.path)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith('D-1: dossier "Case one" (fraud), officer berg (Anna Berg), '
                                           "compartment d01: in since ")
    lines = [ln for ln in text.splitlines() if "dossier." in ln]
    assert [ln.split()[2] for ln in lines] == ["dossier.deposited", "dossier.checked_out", "dossier.returned"]
    assert all(ln.split()[3] == "d01" for ln in lines)
    assert main(["chain-of-custody", "D-1", "--json", "-c", str(rig.cfg.path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e["seq"] for e in doc["events"]] == [e.seq for e in c.events]
    assert doc["item"]["code"] == "D-1"


async def test_item_joining_an_opening_under_way_gets_that_openings_door_events(rig):
    assert (await rig.scan("D-1")).pulsed
    await rig.pull(rig.d, 0)
    assert not (await rig.scan("D-2")).pulsed  # same compartment, door already open
    await rig.close(rig.d, 0)
    await journaled(rig, count("photo.taken", 3))
    c = chain(rig, "D-2")
    kinds = [e.kind for e in c.events]
    first_grant = chain(rig, "D-1").events[2]
    assert first_grant.kind == "access.granted" and first_grant.dossier == "D-1"
    # The door it went in through was opened by D-1's grant: that pulse and door are in its chain, ...
    pulsed = next(e for e in c.events if e.kind == "lock.pulsed")
    assert pulsed.data["grant_seq"] == first_grant.seq
    assert {"access.granted", "door.opened", "door.closed", "dossier.deposited"} <= set(kinds)
    # ... D-1's own scan and grant are not.
    assert all(e.dossier in ("D-2", None) for e in c.events)
    assert [e.data["pulse"] for e in c.events if e.kind == "access.granted"] == [False]
    closed = next(e for e in c.events if e.kind == "door.closed")
    assert closed.seq in [e.data["for_seq"] for e in c.events if e.kind == "photo.taken"]


async def test_chain_of_custody_of_evidence_names_both_people(rig, capsys):
    for code in ("B-BERG", "B-LIND", "E-1"):
        await rig.scan(code)
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    await rig.flush()
    c = chain(rig, "E-1")
    grant = next(e for e in c.events if e.kind == "access.granted")
    deposited = next(e for e in c.events if e.kind == "evidence.deposited")
    assert set(grant.people) == set(deposited.people) == {"berg", "lind"}
    assert c.names == {"berg": "Anna Berg", "lind": "Maria Lindqvist"}
    assert [e.kind for e in c.events][-2:] == ["door.closed", "evidence.deposited"]
    capsys.readouterr()
    assert main(["chain-of-custody", "E-1", "-c", str(rig.cfg.path)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "evidence.deposited" in ln)
    assert "berg (Anna Berg)" in line and "lind (Maria Lindqvist)" in line and " e01 " in line


async def test_chain_of_custody_of_an_unknown_code(rig, capsys):
    assert main(["chain-of-custody", "NOPE", "-c", str(rig.cfg.path)]) == 1
    assert "NOPE: not registered now, and never seen in the journal" in capsys.readouterr().out


async def test_occupancy_of_each_cabinet(rig, capsys):
    await cycle(rig, "D-1", 0)  # deposited in d01
    await cycle(rig, "D-3", 1)
    await cycle(rig, "D-3", 1)  # deposited, then taken out of d02
    for code in ("B-BERG", "B-LIND", "E-1"):
        await rig.scan(code)
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    rig.d.force(4)  # d05 forced open and left open
    await rig.clock.advance(0.1)
    await rig.flush()
    with contextlib.closing(open_journal(rig.cfg.journal_path)) as conn:
        occ = occupancy(conn, rig.cfg)
    cabs = {c["id"]: c for c in occ["cabinets"]}
    assert list(cabs) == ["d", "e"] and cabs["d"]["camera"] == "cam" and cabs["e"]["camera"] is None
    d = {c["id"]: c for c in cabs["d"]["compartments"]}
    e = {c["id"]: c for c in cabs["e"]["compartments"]}
    assert list(d) == ["d01", "d02", "d03", "d04", "d05", "d06"]
    assert [i["code"] for i in d["d01"]["in"]] == ["D-1"] and d["d01"]["awaiting"] == ["D-2"]
    assert d["d02"]["in"] == [] and [i["code"] for i in d["d02"]["out"]] == ["D-3"]
    assert d["d05"]["door"] == "open" and d["d05"]["alarms"] == ["forced"]
    assert d["d01"]["door"] == "closed" and d["d01"]["faults"] == {} and d["d01"]["alarms"] == []
    assert e["e01"]["in"][0]["code"] == "E-1" and e["e01"]["in"][0]["depositor"] == "berg"
    assert occ["as_of_seq"] == rig.journal.last_seq

    capsys.readouterr()
    assert main(["occupancy", "-c", str(rig.cfg.path)]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  ")}
    assert "in: D-1 (since " in lines["d01"] and "awaiting deposit: D-2" in lines["d01"]
    assert "out: D-3 (since " in lines["d02"]  # a dossier's scan names nobody: no holder to show
    assert "door open" in lines["d05"] and "ALARM forced" in lines["d05"]
    assert lines["d06"].endswith("empty")
    assert main(["occupancy", "--cabinet", "e", "--json", "-c", str(rig.cfg.path)]) == 0
    only_e = json.loads(capsys.readouterr().out)
    assert [c["id"] for c in only_e["cabinets"]] == ["e"]
    assert main(["occupancy", "--cabinet", "x", "-c", str(rig.cfg.path)]) == 2
    assert "no cabinet 'x'" in capsys.readouterr().err


async def test_occupancy_shows_a_fault(rig, capsys):
    rig.d.jam(1)  # D-3's compartment d02: pulsed, but the latch stays shut
    for _ in range(rig.cfg.timing.jam_after):
        out = await rig.scan("D-3")
        assert out.pulsed
        await rig.clock.advance(rig.cfg.timing.open_timeout_s + 1)
    await rig.flush()
    with contextlib.closing(open_journal(rig.cfg.journal_path)) as conn:
        occ = occupancy(conn, rig.cfg, "d")
    d02 = next(c for c in occ["cabinets"][0]["compartments"] if c["id"] == "d02")
    assert "jam" in d02["faults"]
    capsys.readouterr()
    assert main(["occupancy", "-c", str(rig.cfg.path)]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  d02"))
    assert "FAULT jam: 3 pulses in a row without the door opening" in line


async def test_pass_through_cabinet_custody_stills_and_occupancy_include_the_rear_door(tmp_path):
    text = toml(pass_through=True).replace('[cabinets.e]\nkind = "evidence"', '[cabinets.e]\nkind = "evidence"\n'
                                           'camera = "cam"') + SIM
    rig = await make_rig(tmp_path, text, data())
    try:
        await deposit(rig, channel=0)  # through the front door
        for code in ("B-LIND", "R-COURT", "E-1"):
            await rig.scan(code)
        out = await rig.scan("B-OKAFOR")
        assert out.pulsed and out.compartment == "e01-rear"
        await rig.pull(rig.e, 2)  # the rear door, on channel 2
        rig.e.force(0)  # and someone pries the front open meanwhile
        await rig.clock.advance(0.1)
        await rig.flush()
        with contextlib.closing(open_journal(rig.cfg.journal_path)) as conn:
            occ = occupancy(conn, rig.cfg, "e")
        e01 = occ["cabinets"][0]["compartments"][0]
        assert (e01["id"], e01["door"], e01["alarms"]) == ("e01", "open", ["forced"])
        assert e01["rear"] == {"id": "e01-rear", "door": "open", "faults": {}, "alarms": []}
        await rig.close(rig.e, 2)
        events = await journaled(rig, count("photo.taken", 4))  # front grant and close, rear grant and close
        rear = [e for e in events if e.kind == "photo.taken" and e.compartment == "e01-rear"]
        assert [p.data["step"] for p in rear] == ["grant", "door.closed"]
        c = chain(rig, "E-1")
        assert {e.compartment for e in c.events if e.kind == "door.closed"} == {"e01", "e01-rear"}
        assert [e.kind for e in c.events if e.kind.startswith("evidence.")] == ["evidence.deposited",
                                                                                "evidence.retrieved"]
        assert {p.seq for p in rear} <= {e.seq for e in c.events}
    finally:
        await close_rig(rig)
