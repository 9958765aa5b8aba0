"""Every opening is authorised by a signed station decision: the attacks of issue 13 against the real daemon,
its station link and a real Mosquitto, and the legitimate paths beside them."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from broker import SIGNER_SEEDS, Mosquitto, Recorder, public_key, wait_for
from test_checkpoints import docs_python
from test_station_commands import Station, reply_for
from test_station_daemon import station_daemon

from lockerd.clock import iso_utc
from lockerd.daemon import Daemon
from lockerd.station import signing

EVIDENCE = """
[drivers.sim-e]
type = "sim"
channels = 4
[cabinets.e]
kind = "evidence"
lock_driver = "sim-e"
count = 4
"""


async def answer(rec: Recorder, cid: str) -> dict[str, Any]:
    await wait_for(rec, lambda r: reply_for(r, cid), 10)
    return reply_for(rec, cid)[0]


async def events(daemon: Daemon, kind: str | None = None) -> list[dict[str, Any]]:
    await daemon.journal.flush()
    evs = [e.as_dict() for e in daemon.journal.read(0, 10**6)]
    return [e for e in evs if kind is None or e["kind"] == kind]


def pulses(daemon: Daemon) -> int:
    return sum(len(d.pulse_log) for d in daemon.hw.drivers.values())


async def refused(daemon: Daemon, rec: Recorder, cid: str, why: str) -> None:
    """Answered ok: false naming ``why``, journaled as command.refused with the same reason, nothing applied."""
    reply = await answer(rec, cid)
    assert reply["ok"] is False and why in reply["error"], reply
    [ev] = [e for e in await events(daemon, "command.refused") if e["data"]["command_id"] == cid]
    assert ev["data"]["error"] == reply["error"]
    assert not [e for e in await events(daemon, "command.accepted") if e["data"]["command_id"] == cid]


def body(name: str, args: dict[str, Any], *, node: str = "node-1", ts: float | None = None) -> dict[str, Any]:
    return {"id": uuid.uuid4().hex, "ts": iso_utc(ts if ts is not None else time.time()), "requested_by": "sgt-1",
            "site": "test-site", "node": node, "args": args}


def publish(station: Station, name: str, payload: dict[str, Any]) -> str:
    station.send(name, raw=json.dumps(payload).encode(), signers=())
    return payload["id"]


@pytest.mark.asyncio
async def test_forged_and_misused_signatures_open_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                         recorders: list[Recorder]) -> None:
    roles = {"desk": ["open", "custody", "people", "authority", "evidence", "emergency"],
             "watch": ["emergency"], "clerk": ["custody"]}
    async with station_daemon(tmp_path, mosquitto, recorders, signers=roles) as (daemon, station, rec):
        before = pulses(daemon)
        opening = {"compartment": "d01", "reason": "inspection"}
        # Unsigned.
        cid = station.send("open", opening, signers=())
        await refused(daemon, rec, cid, "unsigned: open needs a signature by a station signer with the open role")
        # A key this controller does not know.
        cid = station.send("open", opening, signers=("intruder",))
        await refused(daemon, rec, cid, "key 'intruder' is not a signer of this controller")
        # The right key, the wrong role.
        cid = station.send("open", opening, signers=("clerk",))
        await refused(daemon, rec, cid, "open needs 1 distinct signer with the open role, 0 signed; clerk may not")
        # A signature over another node's command, sent to this node.
        other = body("open", opening, node="node-2")
        other["signatures"] = [signing.sign("open", other, "desk", SIGNER_SEEDS["desk"])]
        moved = other | {"node": "node-1"}
        await refused(daemon, rec, publish(station, "open", moved), "the signature of desk does not match")
        # A signature over another command's text (an assign), on the open topic.
        assign = body("assign", opening)
        assign["signatures"] = [signing.sign("assign", assign, "desk", SIGNER_SEEDS["desk"])]
        await refused(daemon, rec, publish(station, "open", assign), "the signature of desk does not match")
        # A truncated signature.
        cut = body("open", opening)
        sig = signing.sign("open", cut, "desk", SIGNER_SEEDS["desk"])
        cut["signatures"] = [sig | {"sig": sig["sig"][:100]}]
        await refused(daemon, rec, publish(station, "open", cut), "signatures[0].sig")
        # A signed command that does not name its node.
        loose = body("open", opening)
        del loose["node"]
        loose["signatures"] = [signing.sign("open", loose, "desk", SIGNER_SEEDS["desk"])]
        await refused(daemon, rec, publish(station, "open", loose), "a signed command must name its site and node")
        # A replay with a new id and an old timestamp: the id is signed, so the signature no longer holds ...
        old = body("open", opening, ts=time.time() - 3600)
        old["signatures"] = [signing.sign("open", old, "desk", SIGNER_SEEDS["desk"])]
        await refused(daemon, rec, publish(station, "open", old), "older than command_max_age_s")
        renamed = old | {"id": uuid.uuid4().hex, "ts": iso_utc(time.time())}
        await refused(daemon, rec, publish(station, "open", renamed), "the signature of desk does not match")
        assert pulses(daemon) == before

        # The legitimate path: a signed dossier open pulses once, journals who signed, and a replay of the
        # same signed command is a duplicate, answered and never applied again.
        good = body("open", opening)
        good["signatures"] = [signing.sign("open", good, "desk", SIGNER_SEEDS["desk"])]
        assert (await answer(rec, publish(station, "open", good)))["ok"] is True
        assert pulses(daemon) == before + 1
        publish(station, "open", good)
        await wait_for(rec, lambda r: len(reply_for(r, good["id"])) == 2, 10)
        assert reply_for(rec, good["id"])[1]["duplicate"] is True and pulses(daemon) == before + 1
        [accepted] = [e for e in await events(daemon, "command.accepted") if e["data"]["command_id"] == good["id"]]
        [grant] = [e for e in await events(daemon, "access.granted") if e["data"].get("command_id") == good["id"]]
        assert accepted["data"]["signed_by"] == ["desk"] and grant["data"]["signed_by"] == ["desk"]
        # An auditor proves offline, from the journal and the signer's public key, who ordered the opening.
        d = accepted["data"]
        text = {"id": d["command_id"], "ts": d["command_ts"], "requested_by": d["requested_by"],
                "site": "test-site", "node": "node-1", "args": d["args"]}
        assert signing.digest("open", text).hex() == d["digest"]
        key = nacl.signing.VerifyKey(bytes.fromhex(public_key("desk")))
        key.verify(signing.message(bytes.fromhex(d["digest"])), bytes.fromhex(d["signatures"][0]["sig"]))


def test_the_reference_signer_in_the_docs_signs_as_the_controller_checks() -> None:
    sign_command = docs_python("def sign_command")["sign_command"]
    command = body("emergency-open", {"compartment": "e01", "people": ["a", "b"], "reason": "fire"})
    signed = sign_command("emergency-open", dict(command), "desk", SIGNER_SEEDS["desk"].hex())
    signed = sign_command("emergency-open", signed, "watch", SIGNER_SEEDS["watch"].hex())
    assert signed["signatures"] == [signing.sign("emergency-open", command, s, SIGNER_SEEDS[s])
                                    for s in ("desk", "watch")]


@pytest.mark.asyncio
async def test_evidence_never_opens_on_one_station_signature(tmp_path: Path, mosquitto: Mosquitto,
                                                            recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders, EVIDENCE) as (daemon, station, rec):
        before = pulses(daemon)
        # A signed plain open of an evidence compartment: refused, whoever signs it.
        cid = station.send("open", {"compartment": "e03", "reason": "x"}, requested_by="nobody-at-all")
        await refused(daemon, rec, cid, "compartment e03 holds evidence: it never opens on a station command alone")
        for name, role in (("sup-1", "supervisor"), ("cm-1", "case_manager")):
            cid = station.send("register-person", {"id": name, "name": name, "role": role})
            assert (await answer(rec, cid))["ok"] is True
        emergency = {"compartment": "e03", "people": ["sup-1", "cm-1"], "reason": "fire"}
        # One signer alone, or the same signer twice, is one party.
        cid = station.send("emergency-open", emergency, signers=("desk",))
        await refused(daemon, rec, cid, "emergency-open needs 2 distinct signers with the emergency role, 1 signed")
        cid = station.send("emergency-open", emergency, signers=("desk", "desk"))
        await refused(daemon, rec, cid, "desk signed twice")
        assert pulses(daemon) == before
        # Two distinct signers with the emergency role: it opens, and the alarm names both.
        cid = station.send("emergency-open", emergency, signers=("desk", "watch"))
        assert (await answer(rec, cid))["ok"] is True
        assert len(daemon.hw.drivers["sim-e"].pulse_log) == 1
        [alarm] = await events(daemon, "alarm.emergency_open")
        assert alarm["data"]["signed_by"] == ["desk", "watch"] and alarm["data"]["command_id"] == cid


@pytest.mark.asyncio
async def test_authority_changes_need_the_authority_role_and_raise_a_notice(tmp_path: Path, mosquitto: Mosquitto,
                                                                           recorders: list[Recorder]) -> None:
    roles = {"desk": ["people", "custody"], "chief": ["authority", "people"]}
    async with station_daemon(tmp_path, mosquitto, recorders, EVIDENCE, signers=roles) as (daemon, station, rec):
        cid = station.send("register-person", {"id": "fake-sup", "name": "Fake", "role": "supervisor"})
        await refused(daemon, rec, cid, "register-person needs 1 distinct signer with the authority role")
        cid = station.send("register-person", {"id": "off-1", "name": "Officer", "role": "officer"})
        assert (await answer(rec, cid))["ok"] is True
        cid = station.send("register-person", {"id": "sup-1", "name": "Sup", "role": "supervisor"},
                           signers=("chief",))
        assert (await answer(rec, cid))["ok"] is True
        # A badge for the supervisor is an authority change too; one for an officer is not.
        cid = station.send("register-badge", {"code": "B-ATTACKER-CHOSEN", "person": "sup-1"})
        await refused(daemon, rec, cid, "register-badge needs 1 distinct signer with the authority role")
        cid = station.send("register-badge", {"code": "B-OFFICER-0001", "person": "off-1"})
        assert (await answer(rec, cid))["ok"] is True
        cid = station.send("register-badge", {"code": "B-SUPERVISOR-01", "person": "sup-1"}, signers=("chief",))
        assert (await answer(rec, cid))["ok"] is True
        # Re-registering the supervisor as an officer (a demotion) is an authority change as well.
        cid = station.send("register-person", {"id": "sup-1", "name": "Sup", "role": "officer"})
        await refused(daemon, rec, cid, "with the authority role")
        # Withdrawing the supervisor's badge is one too, and still names whose it was.
        cid = station.send("revoke-badge", {"code": "B-SUPERVISOR-01"}, signers=("chief",))
        assert (await answer(rec, cid))["ok"] is True
        notices = await events(daemon, "notice.authority_changed")
        assert [(n["data"]["action"], n["people"], n["data"]["role"], n["data"]["signed_by"]) for n in notices] == [
            ("register-person", ["sup-1"], "supervisor", ["chief"]),
            ("register-badge", ["sup-1"], "supervisor", ["chief"]),
            ("revoke-badge", ["sup-1"], "supervisor", ["chief"])]
        await wait_for(rec, lambda r: len([e for e in r.on("/events") if e["kind"] == "notice.authority_changed"])
                       == 3, 10)


@pytest.mark.asyncio
async def test_badge_codes_appear_in_no_event_payload_or_journal_file(tmp_path: Path, mosquitto: Mosquitto,
                                                                      recorders: list[Recorder]) -> None:
    code = "B-SECRET-7731"
    async with station_daemon(tmp_path, mosquitto, recorders, EVIDENCE) as (daemon, station, rec):
        cid = station.send("register-person", {"id": "off-1", "name": "Officer", "role": "officer"})
        assert (await answer(rec, cid))["ok"] is True
        cid = station.send("register-badge", {"code": code, "person": "off-1"})
        assert (await answer(rec, cid))["ok"] is True
        fp = daemon.controller.registry.badge(code)
        assert fp.startswith("731~") and code not in fp
        await wait_for(rec, lambda r: any(e["kind"] == "badge.registered" for e in r.on("/events")), 10)
        [registered] = [e for e in rec.on("/events") if e["kind"] == "badge.registered"]
        assert registered["data"]["badge"] == fp
        [accepted] = [e for e in rec.on("/events") if e["kind"] == "command.accepted"
                      and e["data"]["command"] == "register-badge"]
        assert accepted["data"]["args"]["code"] == fp
        # The badge is recognised by its fingerprint: a revoke by code finds it.
        cid = station.send("revoke-badge", {"code": code})
        assert (await answer(rec, cid))["ok"] is True
        await daemon.journal.flush()
        payloads = json.dumps(rec.on("/events"))
        assert code not in payloads
    for f in tmp_path.glob("journal.db*"):
        assert code.encode() not in f.read_bytes(), f


@pytest.mark.asyncio
async def test_a_plaintext_link_refuses_lock_moving_commands_and_says_so_at_start(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders, allow_plaintext=False) as (daemon, station, rec):
        before = pulses(daemon)
        cid = station.send("open", {"compartment": "d01", "reason": "inspection"})
        await refused(daemon, rec, cid, "open refused: the station link has no TLS and credentials")
        assert pulses(daemon) == before
        ping = station.send("ping", signers=())  # read-only commands still work
        assert (await answer(rec, ping))["ok"] is True
        [posture] = await events(daemon, "station.security")
        assert posture["data"]["lock_commands"] == "refused: no TLS and credentials on the station link"
        assert posture["data"]["tls"] is False and posture["data"]["signers"] == ["desk", "watch"]


@pytest.mark.asyncio
async def test_the_lab_switch_obeys_unsigned_commands_and_warns_at_every_start(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder], caplog: pytest.LogCaptureFixture) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders, allow_unsigned=True) as (daemon, station, rec):
        cid = station.send("open", {"compartment": "d01", "reason": "lab"}, signers=())
        assert (await answer(rec, cid))["ok"] is True
        # A signature, when sent, is still checked.
        cid = station.send("open", {"compartment": "d02", "reason": "lab"}, signers=("intruder",))
        await refused(daemon, rec, cid, "not a signer of this controller")
        [posture] = await events(daemon, "station.security")
        assert posture["data"]["allow_unsigned"] is True
        assert any("UNSIGNED station commands are obeyed" in w for w in posture["data"]["warnings"])
    assert any("SECURITY" in r.getMessage() and "UNSIGNED" in r.getMessage() for r in caplog.records)


@pytest.mark.asyncio
async def test_a_signer_removed_by_a_reload_signs_nothing_more(tmp_path: Path, mosquitto: Mosquitto,
                                                             recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        cid = station.send("open", {"compartment": "d01", "reason": "before"})
        assert (await answer(rec, cid))["ok"] is True
        await daemon.journal.flush()
        path = daemon.config.path
        text = path.read_text()
        start = text.index("[station.signers.desk]")
        end = text.index("[station.signers.watch]")
        path.write_text(text[:start] + text[end:])
        assert await daemon.reload()
        await wait_for(rec, lambda r: len(r.on("/presence")) >= 2 and r.on("/presence")[-1]["state"] == "online", 10)
        before = pulses(daemon)
        cid = station.send("open", {"compartment": "d01", "reason": "after"})
        await refused(daemon, rec, cid, "key 'desk' is not a signer of this controller")
        assert pulses(daemon) == before


@pytest.mark.asyncio
async def test_a_forced_door_is_acknowledged_by_a_signed_station_command(tmp_path: Path, mosquitto: Mosquitto,
                                                                         recorders: list[Recorder]) -> None:
    async with station_daemon(tmp_path, mosquitto, recorders) as (daemon, station, rec):
        cid = station.send("register-person", {"id": "cm-1", "name": "Case Manager", "role": "case_manager"})
        assert (await answer(rec, cid))["ok"] is True
        board, slot = daemon.hw.drivers["sim"], daemon.controller.slots["d02"]
        board.force(1)
        await wait_for(rec, lambda r: any(s["alarm"] == "forced" for s in r.on("/state/d02")), 10)
        board.close_door(1)
        await wait_for(rec, lambda r: any(s["door"] == "closed" and s["alarm"] == "forced"
                                          for s in r.on("/state/d02")), 10)
        unsigned = station.send("acknowledge-alarm", {"compartment": "d02", "person": "cm-1"}, signers=())
        await refused(daemon, rec, unsigned, "unsigned: acknowledge-alarm needs a signature")
        assert "forced" in slot.alarms
        cid = station.send("acknowledge-alarm", {"compartment": "d02", "person": "cm-1", "note": "seen on camera"})
        assert (await answer(rec, cid))["result"]["acknowledged"] == ["forced"]
        [ack] = await events(daemon, "alarm.acknowledged")
        assert ack["data"]["signed_by"] == ["desk"] and ack["data"]["command_id"] == cid
        await wait_for(rec, lambda r: r.on("/state/d02")[-1]["alarm"] is None, 10)
