"""A station's authorisation stands in for a reason card, once, for a limited time."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_asyncio
from evidence_rig import deposit, evidence_rig
from rig import close_rig, make_rig

from lockerd.errors import CommandError
from lockerd.station import contract
from lockerd.station.validate import errors
from lockerd.station_handler import StationHandler

pytestmark = pytest.mark.asyncio

META = {"command_id": "req-77", "requested_by": "case-system", "name": "authorize-retrieval"}


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await evidence_rig(tmp_path)
    yield r
    await close_rig(r)


async def authorise(rig, **args: Any) -> dict[str, Any]:
    body = {"id": "req-77", "ts": "2026-01-01T00:00:00Z", "requested_by": "case-system", "args": args}
    assert errors(body, contract.command_schema("authorize-retrieval")) == []
    return await StationHandler(rig.c).handle("authorize-retrieval", args, META)


async def retrieve_without_card(rig) -> Any:
    for code in ("B-LIND", "E-1"):
        await rig.scan(code)
    return await rig.scan("B-OKAFOR")


async def test_an_authorised_retrieval_needs_no_card_and_only_once(rig):
    await deposit(rig)
    res = await authorise(rig, code="E-1", reason="court hearing 2026-11-26, case 4411", valid_s=3600)
    out = await retrieve_without_card(rig)
    assert out.pulsed and "retrieve E-1" in out.message
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    evs = await rig.events()
    [auth] = [e for e in evs if e.kind == "retrieval.authorised"]
    assert auth.seq == res["seq"] and auth.data["command_id"] == "req-77"
    assert auth.data["requested_by"] == "case-system" and auth.dossier == "E-1"
    [ret] = [e for e in evs if e.kind == "evidence.retrieved"]
    assert ret.data["reason_code"] == f"station-authorisation:{res['seq']}"
    assert ret.data["evidence_reason"] == "court hearing 2026-11-26, case 4411"
    # Back in, and out again: the authorisation was used up, a card is needed.
    await rig.clock.advance(61)
    await deposit(rig, officer="B-OKAFOR")
    out = await retrieve_without_card(rig)
    assert not out.pulsed and "reason card" in out.message


async def test_an_expired_authorisation_opens_nothing(rig):
    await deposit(rig)
    await authorise(rig, code="E-1", reason="laboratory", valid_s=60)
    await rig.clock.advance(61)
    out = await retrieve_without_card(rig)
    assert not out.pulsed and "reason card" in out.message


async def test_an_authorised_release_releases(rig):
    await deposit(rig)
    await authorise(rig, code="E-1", reason="returned to its owner by court order", release=True)
    out = await retrieve_without_card(rig)
    assert out.pulsed and "release E-1" in out.message
    await rig.pull(rig.e, 0)
    await rig.close(rig.e, 0)
    assert rig.c.registry.items["E-1"].state == "released"


@pytest.mark.parametrize("args,message", [
    ({"code": "E-404", "reason": "x"}, "item E-404: not registered"),
    ({"code": "D-1", "reason": "x"}, "is a dossier"),
    ({"code": "E-2", "reason": "x"}, r"is not in the locker \(new\)"),
    ({"code": "E-1", "reason": "  "}, "a reason is required"),
])
async def test_bad_authorisations_are_refused_with_nothing_journaled(rig, args, message):
    await deposit(rig)
    start = rig.journal.last_seq
    with pytest.raises(CommandError, match=message):
        await authorise(rig, **args)
    assert await rig.events(start) == []


async def test_an_authorisation_survives_a_restart(tmp_path):
    r = await evidence_rig(tmp_path)
    try:
        await deposit(r)
        await authorise(r, code="E-1", reason="court hearing")
    finally:
        await close_rig(r)
    r2 = await make_rig(tmp_path, r.cfg.path.read_text(), data=None, clock=r.clock)
    try:
        out = await retrieve_without_card(r2)
        assert out.pulsed and "retrieve E-1" in out.message
    finally:
        await close_rig(r2)
