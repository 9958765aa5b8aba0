"""Evidence: deposited by officer + case manager, retrieved or released only with a reason card."""

from __future__ import annotations

import pytest
import pytest_asyncio
from evidence_rig import deposit, evidence_rig
from rig import close_rig

from lockerd.errors import CommandError
from lockerd.journal import verify

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await evidence_rig(tmp_path)
    yield r
    await close_rig(r)


async def test_retrieval_without_a_reason_is_refused_and_journaled(rig):
    await deposit(rig)
    start = rig.journal.last_seq
    await rig.scan("B-LIND")
    await rig.scan("E-1")
    out = await rig.scan("B-OKAFOR")
    assert not out.pulsed and "reason card" in out.message
    await rig.clock.advance(61)  # the window closes without a reason card
    denied = [e for e in await rig.events(start) if e.kind == "access.denied"]
    assert len(denied) == 1 and denied[0].dossier == "E-1"
    assert "needs a reason card" in denied[0].data["reason"]
    assert len(rig.e.pulse_log) == 1  # the deposit's pulse only
    assert rig.c.registry.items["E-1"].state == "in"


async def test_retrieval_with_officer_case_manager_and_reason_is_accepted(rig):
    await deposit(rig)
    start = rig.journal.last_seq
    await rig.scan("B-LIND")
    await rig.scan("R-COURT")  # the reason card, in any order with the rest
    await rig.scan("E-1")
    out = await rig.scan("B-OKAFOR")
    assert out.pulsed and out.compartment == "e01" and "retrieve E-1" in out.message
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    evs = await rig.events(start)
    grant = next(e for e in evs if e.kind == "access.granted")
    assert grant.data["evidence_reason"] == "court hearing" and grant.data["reason_code"] == "R-COURT"
    assert grant.data["items"] == {"E-1": "retrieve"}
    card = next(e for e in evs if e.kind == "reason.accepted")
    assert card.data == {"scanner": "front", "reason_code": "R-COURT", "evidence_reason": "court hearing",
                         "release": False}
    ret = next(e for e in evs if e.kind == "evidence.retrieved")
    assert set(ret.people) == {"lind", "okafor"} and ret.data["evidence_reason"] == "court hearing"
    item = rig.c.registry.items["E-1"]
    assert item.state == "out" and item.holder == "okafor"  # the officer holds it, not the case manager
    assert verify(rig.cfg.journal_path).ok


async def test_depositor_alone_with_a_reason_card_is_refused_at_his_own_compartment(rig):
    await deposit(rig)
    await rig.clock.advance(120)
    await rig.scan("B-BERG")
    await rig.scan("R-LAB")
    await rig.scan("E-1")
    out = await rig.scan("B-BERG-2")  # his second badge is still him
    assert not out.pulsed and "case manager" in out.message
    await rig.clock.advance(61)
    denied = [e for e in await rig.events() if e.kind == "access.denied" and e.dossier == "E-1"]
    assert denied and "case manager" in denied[-1].data["reason"]
    assert len(rig.e.pulse_log) == 1


async def test_depositor_barred_from_cosigning_when_configured(tmp_path):
    r = await evidence_rig(tmp_path, depositor_may_retrieve=False)
    try:
        await deposit(r)  # berg deposits
        await r.scan("B-LIND")
        await r.scan("R-LAB")
        await r.scan("E-1")
        out = await r.scan("B-BERG")
        assert not out.pulsed and "not the depositor berg" in out.message
        # Another officer with the same case manager and card: accepted.
        out = await r.scan("B-OKAFOR")
        assert out.pulsed and out.compartment == "e01"
    finally:
        await close_rig(r)


async def test_release_removes_the_item_for_good(rig):
    await deposit(rig)
    start = rig.journal.last_seq
    await rig.scan("X-OWNER")
    await rig.scan("B-BERG")
    await rig.scan("E-1")
    out = await rig.scan("B-LIND")
    assert out.pulsed and "release E-1" in out.message
    await rig.pull(rig.e, 0)
    assert rig.c.registry.items["E-1"].state == "in"  # nothing changes hands until the door shuts
    await rig.close(rig.e, 0)
    rel = [e for e in await rig.events(start) if e.kind == "evidence.released"]
    assert len(rel) == 1 and rel[0].compartment == "e01" and set(rel[0].people) == {"berg", "lind"}
    assert rel[0].data["evidence_reason"] == "returned to its owner"
    assert rig.c.registry.items["E-1"].state == "released"
    assert rig.c.states()["e01"]["items"] == []
    # Gone for good: scanning it again opens nothing and says why.
    await rig.clock.advance(61)
    out = await rig.scan("E-1")
    assert not out.accepted and "released" in out.message
    assert len(rig.e.pulse_log) == 2


async def test_a_retrieved_item_comes_back_without_a_reason(rig):
    await deposit(rig)
    for code in ("B-LIND", "R-COURT", "E-1", "B-OKAFOR"):
        await rig.scan(code)
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    await rig.clock.advance(61)
    out = None
    for code in ("B-OKAFOR", "E-1", "B-LIND"):
        out = await rig.scan(code)
    assert out is not None and out.pulsed and "deposit E-1" in out.message
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    item = rig.c.registry.items["E-1"]
    assert item.state == "in" and item.depositor == "okafor"


async def test_reason_card_where_no_evidence_cabinet_is_served_is_refused(rig):
    out = await rig.scan("R-COURT", scanner="side")
    assert not out.accepted and "no evidence cabinet" in out.message
    assert (await rig.events())[-1].kind == "access.denied"


async def test_a_reason_card_alone_opens_nothing(rig):
    out = await rig.scan("R-COURT")
    assert out.accepted and not out.pulsed and "scan the item and both badges" in out.message
    await rig.clock.advance(61)
    assert rig.e.pulse_log == []


async def test_an_item_cannot_take_a_reason_card_barcode(rig):
    with pytest.raises(CommandError, match="that code is a reason card"):
        rig.c.registrations.check_item("R-COURT", "evidence", "e03", "Case", "misc", "berg")
    assert "R-COURT" not in rig.c.registry.items
