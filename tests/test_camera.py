"""Cameras: a still on every grant and door close, journaled with its SHA-256; failures never refuse."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest
from rig import TOML, Rig, close_rig, make_rig, write_config

from lockerd import config
from lockerd.cli import main
from lockerd.errors import ConfigError
from lockerd.journal import Event, Journal, verify
from lockerd.station import contract
from lockerd.station.validate import errors

pytestmark = pytest.mark.asyncio


def with_camera(section: str) -> str:
    """The rig's station with a camera on the dossier cabinet."""
    return TOML.replace('[cabinets.d]\nkind = "dossier"', '[cabinets.d]\nkind = "dossier"\ncamera = "cam"') + section


SIM = '[cameras.cam]\ntype = "sim"\n'


def command_camera(argv: list[str], timeout_s: float = 5.0, extension: str = "jpg") -> str:
    return (f'[cameras.cam]\ntype = "command"\ncommand = {json.dumps(argv)}\n'
            f"timeout_s = {timeout_s}\nextension = {json.dumps(extension)}\n")


def script(tmp: Path, name: str, body: str) -> str:
    path = tmp / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


async def journaled(rig: Rig, done: Callable[[list[Event]], bool], timeout_s: float = 10.0) -> list[Event]:
    """Wait (on journal commits, with a timeout_s) until the events so far satisfy ``done``."""
    changed = asyncio.Event()

    def listener(_: list[Event]) -> None:
        changed.set()

    rig.journal.subscribe(listener)
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                changed.clear()
                events = rig.journal.read(0, 100000)
                if done(events):
                    return events
                await changed.wait()
    finally:
        rig.journal._listeners.remove(listener)


def count(kind: str, n: int) -> Callable[[list[Event]], bool]:
    return lambda evs: sum(e.kind == kind for e in evs) >= n


async def deposit(rig: Rig, code: str = "D-1", channel: int = 0) -> None:
    out = await rig.scan(code)
    assert out.accepted and out.pulsed, out
    assert await rig.pull(rig.d, channel)
    await rig.close(rig.d, channel)


def by_kind(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.kind == kind]


async def test_sim_camera_photographs_grant_and_door_close_with_the_stored_files_sha256(tmp_path):
    rig = await make_rig(tmp_path, with_camera(SIM))
    try:
        await deposit(rig)
        events = await journaled(rig, count("photo.taken", 2))
        grant = by_kind(events, "access.granted")[-1]
        pulsed = by_kind(events, "lock.pulsed")[-1]
        closed = by_kind(events, "door.closed")[-1]
        photos = by_kind(events, "photo.taken")
        assert [(p.data["step"], p.data["for_seq"]) for p in photos] == [("grant", grant.seq),
                                                                          ("door.closed", closed.seq)]
        assert photos[0].seq > pulsed.seq  # the still comes after the pulse, never before it
        folder = rig.cfg.journal_path.parent / "photos"
        for p in photos:
            assert p.compartment == "d01" and p.data["camera"] == "cam"
            data = (folder / p.data["file"]).read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) == p.data["bytes"]
            assert hashlib.sha256(data).hexdigest() == p.data["sha256"]
        assert b"compartment d01 door.closed seq %d" % closed.seq in (folder / photos[1].data["file"]).read_bytes()
        assert rig.c.registry.items["D-1"].state == "in"
        assert verify(rig.cfg.journal_path).ok
    finally:
        await close_rig(rig)


async def test_grant_while_the_door_is_open_is_photographed_too(tmp_path):
    rig = await make_rig(tmp_path, with_camera(SIM))
    try:
        assert (await rig.scan("D-1")).pulsed
        await rig.pull(rig.d, 0)
        again = await rig.scan("D-2")  # same compartment, door already open: a grant without a pulse
        assert again.accepted and not again.pulsed
        events = await journaled(rig, count("photo.taken", 2))
        unpulsed = [e for e in by_kind(events, "access.granted") if e.data["pulse"] is False][-1]
        assert unpulsed.seq in [p.data["for_seq"] for p in by_kind(events, "photo.taken")]
    finally:
        await close_rig(rig)


async def test_cabinet_without_a_camera_takes_no_stills(tmp_path):
    rig = await make_rig(tmp_path, with_camera(SIM))
    try:
        await rig.scan("B-BERG")
        await rig.scan("B-LIND")
        out = await rig.scan("E-1")
        assert out.pulsed and out.compartment == "e01"
        await rig.pull(rig.e, 0)
        await rig.close(rig.e, 0)
        await deposit(rig)  # a dossier in the cabinet with the camera, so we know when the stills are done
        events = await journaled(rig, count("photo.taken", 2))
        assert {e.compartment for e in by_kind(events, "photo.taken")} == {"d01"}
        assert by_kind(events, "evidence.deposited")
    finally:
        await close_rig(rig)


async def test_command_camera_runs_the_configured_capture_script(tmp_path):
    tool = script(tmp_path, "capture.sh", 'printf "still of %s at %s\\n" "$2" "$3" > "$1"\n')
    rig = await make_rig(tmp_path, with_camera(command_camera([tool, "{path}", "{compartment}", "{step}"])))
    try:
        await deposit(rig)
        events = await journaled(rig, count("photo.taken", 2))
        photos = by_kind(events, "photo.taken")
        folder = rig.cfg.journal_path.parent / "photos"
        stills = [(folder / p.data["file"]).read_bytes() for p in photos]
        assert stills == [b"still of d01 at grant\n", b"still of d01 at door.closed\n"]
        assert [hashlib.sha256(s).hexdigest() for s in stills] == [p.data["sha256"] for p in photos]
        assert all(p.data["file"].endswith(".jpg") for p in photos)
    finally:
        await close_rig(rig)


FAILURES = {
    "exit-1": ('echo "sensor not detected" >&2\nexit 1\n', 5.0, "exited with status 1: sensor not detected"),
    "timeout": ("echo $$ > \"$0.pid\"\nexec sleep 30\n", 0.3, "gave no still within 0.3 s; killed"),
    "no-file": ("exit 0\n", 5.0, "succeeded but wrote no file"),
    "empty-file": (': > "$1"\n', 5.0, "wrote an empty file"),
}


@pytest.mark.parametrize("case", [*FAILURES, "missing-binary"])
async def test_failing_capture_is_journaled_and_the_deposit_still_goes_through(tmp_path, case, caplog):
    if case == "missing-binary":
        argv, timeout_s, expect = ["/nonexistent/rpicam-still", "-o", "{path}"], 5.0, "no such program"
    else:
        body, timeout_s, expect = FAILURES[case]
        argv = [script(tmp_path, "capture.sh", body), "{path}"]
    rig = await make_rig(tmp_path, with_camera(command_camera(argv, timeout_s)))
    try:
        await deposit(rig)
        events = await journaled(rig, count("camera.failed", 2))
        failed = by_kind(events, "camera.failed")
        assert [f.data["step"] for f in failed] == ["grant", "door.closed"]
        assert all(expect in f.data["error"] for f in failed), [f.data["error"] for f in failed]
        assert by_kind(events, "dossier.deposited") and rig.c.registry.items["D-1"].state == "in"
        assert not by_kind(events, "photo.taken") and not by_kind(events, "access.denied")
        assert sum("no still of d01" in r.getMessage() for r in caplog.records) == 2
        if case == "timeout":
            pid = int(Path(argv[0] + ".pid").read_text())
            with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
                os.kill(pid, 0)
        # The next person is not held up by the broken camera either.
        out = await rig.scan("D-3")
        assert out.accepted and out.pulsed
    finally:
        await close_rig(rig)


async def test_camera_events_fit_the_station_contract(tmp_path):
    rig = await make_rig(tmp_path, with_camera(command_camera(["/nonexistent/cam", "{path}"])))
    try:
        await deposit(rig)
        events = await journaled(rig, count("camera.failed", 2))
    finally:
        await close_rig(rig)
    (tmp_path / "b").mkdir()
    rig2 = await make_rig(tmp_path / "b", with_camera(SIM))
    try:
        await deposit(rig2)
        events += await journaled(rig2, count("photo.taken", 2))
    finally:
        await close_rig(rig2)
    shown = [e for e in events if e.kind in ("camera.failed", "photo.taken")]
    assert len(shown) == 4
    for e in shown:
        assert errors(e.as_dict(), contract.EVENT) == [], e
        jsonschema.Draft202012Validator(contract.EVENT).validate(e.as_dict())


@pytest.mark.parametrize("section,cabinet_camera,problem", [
    (SIM, "nocam", "cabinets.d.camera = 'nocam': expected one of the [cameras] sections (cam)"),
    ('[cameras.cam]\ntype = "command"\ncommand = ["rpicam-still", "-o", "out.jpg"]\n', "cam",
     "expected an argument with {path}"),
    ('[cameras.cam]\ntype = "command"\ncommand = ["cam", "{path}", "{when}"]\n', "cam",
     "expected placeholders among {cabinet}, {compartment}, {path}, {seq}, {step}"),
    ('[cameras.cam]\ntype = "command"\ncommand = []\n', "cam", "expected a program and its arguments"),
    ('[cameras.cam]\ntype = "command"\ncommand = ["cam", "{path}"]\ntimeout_s = 0\n', "cam",
     "cameras.cam.timeout_s = 0.0: expected a number from 0.1 to 300"),
    ('[cameras.cam]\ntype = "sim"\nresolution = 3\n', "cam", "cameras.cam.resolution: unknown option"),
    ('[cameras.cam]\ntype = "webcam"\n', "cam", "cameras.cam.type = 'webcam': expected one of 'command', 'sim'"),
])
async def test_camera_config_is_strict(tmp_path, section, cabinet_camera, problem):
    text = with_camera(section).replace('camera = "cam"', f'camera = "{cabinet_camera}"')
    with pytest.raises(ConfigError) as e:
        config.load(write_config(tmp_path, text))
    assert any(problem in p for p in e.value.problems), e.value.problems


async def test_camera_config_accepts_the_boards_camera_tool(tmp_path, capsys):
    cfg = config.load(write_config(tmp_path, with_camera(
        command_camera(["rpicam-still", "-n", "-t", "1", "-o", "{path}"], 3.0))))
    assert cfg.cabinets["d"].camera == "cam" and cfg.cabinets["e"].camera == ""
    assert cfg.cameras["cam"].type == "command" and cfg.cameras["cam"]["timeout_s"] == 3.0
    assert main(["check-config", str(cfg.path)]) == 0
    assert capsys.readouterr().out.rstrip().endswith(", camera cam (command) on cabinet(s) d")


async def test_stopping_mid_capture_journals_the_missing_still_and_kills_the_tool(tmp_path):
    tool = script(tmp_path, "capture.sh", 'echo $$ > "$0.pid"\nexec sleep 30\n')
    rig = await make_rig(tmp_path, with_camera(command_camera([tool, "{path}"], 60.0)))
    out = await rig.scan("D-1")
    assert out.pulsed
    pidfile = Path(tool + ".pid")
    async with asyncio.timeout(10):  # the capture of the grant runs once the tool has written its pid
        while not (pidfile.exists() and pidfile.read_text().strip()):
            await asyncio.sleep(0.01)  # polling for a condition, with a deadline
    await close_rig(rig)
    again = Journal(rig.cfg.journal_path)  # the rig's journal is closed: read the file again
    assert again.open()
    try:
        failed = [e for e in again.read(0, 100000) if e.kind == "camera.failed"]
        assert [f.data["error"] for f in failed] == ["camera cam: capture abandoned: the daemon is stopping"]
        assert [e.kind for e in again.read(failed[0].seq)][-1] == "daemon.stopped"
    finally:
        again.close()
    with pytest.raises(ProcessLookupError):
        os.kill(int(pidfile.read_text()), 0)


async def test_verify_photos_finds_a_missing_and_an_altered_still(tmp_path, capsys):
    rig = await make_rig(tmp_path, with_camera(SIM))
    try:
        await deposit(rig)
        photos = by_kind(await journaled(rig, count("photo.taken", 2)), "photo.taken")
    finally:
        await close_rig(rig)
    cfg = str(rig.cfg.path)
    capsys.readouterr()
    assert main(["verify-photos", "-c", cfg]) == 0
    assert capsys.readouterr().out.strip().endswith("2 stills journaled, 0 missing, 0 altered: OK")
    folder = rig.cfg.journal_path.parent / "photos"
    grant, closed = (folder / p.data["file"] for p in photos)
    grant.write_bytes(grant.read_bytes() + b"\x00")  # touched up
    closed.unlink()
    assert main(["verify-photos", "-c", cfg]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"MISSING  {closed.name} (photo.taken seq {photos[1].seq})"
    assert out[1] == f"ALTERED  {grant.name} (photo.taken seq {photos[0].seq}): its SHA-256 is not the journaled one"
