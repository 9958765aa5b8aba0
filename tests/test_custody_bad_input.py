"""Bad custody input gets a clear error and changes nothing: no event, no item, no deadline."""

from __future__ import annotations

import json

import pytest
import pytest_asyncio
from custody_rig import HOUR, command, custody_rig, deposit, reminders
from rig import close_rig

from lockerd import cli
from lockerd.clock import iso_utc
from lockerd.errors import CommandError

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def rig(tmp_path):
    r = await custody_rig(tmp_path)
    yield r
    await close_rig(r)


def snapshot(rig):
    """Everything a half-applied command could leave behind."""
    return (rig.journal.last_seq, json.dumps({c: i.row() for c, i in rig.c.registry.items.items()}, sort_keys=True),
            rig.journal.query("SELECT * FROM deadlines ORDER BY id"), dict(rig.c.custody.deadlines))


async def refused(rig, name, match, **args):
    await rig.flush()
    before = snapshot(rig)
    with pytest.raises(CommandError, match=match):
        await command(rig, name, **args)
    await rig.flush()
    assert snapshot(rig) == before


@pytest.mark.parametrize("args,match", [
    ({"taken_in": "2026-12-22T03:00:00Z"}, r"taken_in .* is in the future"),
    ({"deposit_due": "next tuesday"}, r"deposit_due 'next tuesday' is not an ISO 8601 time"),
    ({"supervisor": "ghost"}, r"unknown or revoked supervisor 'ghost'"),
    ({"supervisor": "okafor"}, r"okafor is a officer, not a supervisor"),
    ({"officer": "nowak"}, r"responsible officer nowak is a technician"),
    ({"officer": "ghost"}, r"unknown or revoked responsible officer 'ghost'"),
])
async def test_registration_refused(rig, args, match):
    base = {"code": "D-NEW", "compartment": "d03", "officer": "berg"}
    await refused(rig, "assign", match, **(base | args))
    assert "D-NEW" not in rig.c.registry.items


async def test_a_deadline_for_a_dossier_already_deposited_is_refused(rig):
    await deposit(rig, "D-3", 1)
    await refused(rig, "assign", r"deposited already", code="D-3", compartment="d02", officer="okafor",
                  deposit_due=iso_utc(rig.clock.wall() + HOUR))


async def test_acknowledge_refused(rig):
    await command(rig, "assign", code="D-NEW", compartment="d03", officer="berg",
                  deposit_due=iso_utc(rig.clock.wall() + HOUR))
    await refused(rig, "acknowledge", r"no deadline with a reminder sent \(running: deposit\)",
                  code="D-NEW", person="chief")
    await rig.clock.advance(HOUR + 1)
    await refused(rig, "acknowledge", r"unknown or revoked person 'ghost'", code="D-NEW", person="ghost")
    await refused(rig, "acknowledge", r"no return deadline", code="D-NEW", person="chief", deadline="return")
    await refused(rig, "acknowledge", r"no deadline", code="D-NOPE", person="chief")
    await command(rig, "revoke-person", id="lind")
    await refused(rig, "acknowledge", r"unknown or revoked person 'lind'", code="D-NEW", person="lind")


@pytest.mark.parametrize("args,match", [
    ({"reason": ""}, r"a reason is required"),
    ({"reason": "   "}, r"a reason is required"),
    ({"person": "ghost"}, r"unknown or revoked person 'ghost'"),
    ({"person": "berg"}, r"berg is a officer; a release needs one of supervisor, case_manager"),
    ({"code": "D-NOPE"}, r"not registered"),
    ({"code": "E-1"}, r"evidence is released at its cabinet"),
])
async def test_release_refused(rig, args, match):
    await deposit(rig, "D-3", 1)
    await refused(rig, "release", match, **({"code": "D-3", "person": "chief", "reason": "archived"} | args))
    assert rig.c.registry.items["D-3"].state == "in" and not rig.d.pulse_log[1:]


async def test_release_twice_is_refused(rig):
    reply = await command(rig, "release", code="D-NOWHERE", person="lind", reason="sent to the court")
    assert reply["on_close"] is False  # never deposited: nothing to open, released at once
    await refused(rig, "release", r"released already", code="D-NOWHERE", person="lind", reason="again")


async def test_cli_overdue_and_custody_read_the_journal(rig, capsys):
    await command(rig, "assign", code="D-NEW", compartment="d03", officer="berg", supervisor="chief",
                  deposit_due=iso_utc(rig.clock.wall() + HOUR))
    await deposit(rig, "D-3", 1)
    await rig.clock.advance(HOUR)  # 06:00: the early shift starts
    await deposit(rig, "D-3", 1)  # taken out
    await rig.clock.advance(HOUR + 30)
    assert [e.data["level"] for e in await reminders(rig, "D-NEW") if e.kind.startswith("reminder.")] == [1, 2]
    cfg = str(rig.cfg.path)
    at = iso_utc(rig.clock.wall())
    capsys.readouterr()  # the sim scanners' console feedback
    assert cli.main(["overdue", "-c", cfg, "--at", at, "--json"]) == 0
    [row] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (row["code"], row["deadline"], row["level"], row["to"], row["next"]) == (
        "D-NEW", "deposit", 2, "supervisor", "legal")
    assert row["officer"] == "berg" and row["supervisor"] == "chief"
    assert cli.main(["overdue", "-c", cfg, "--at", at]) == 0
    assert "level 2/3 (supervisor)" in capsys.readouterr().out
    assert cli.main(["custody", "-c", cfg, "--out", "--json"]) == 0
    [out] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert (out["code"], out["state"], out["officer"], out["deadline"]) == ("D-3", "out", "okafor", "return")
    assert out["due"] == "2026-12-21T13:00:00.000Z" and out["since"].startswith("2026-12-21T05:00:00.")
    assert cli.main(["custody", "-c", cfg]) == 0
    text = capsys.readouterr().out
    assert "D-3" in text and "due 2026-12-21T14:00+01:00" in text and "D-NEW" in text
    assert cli.main(["overdue", "-c", cfg, "--at", "yesterday"]) == 2
