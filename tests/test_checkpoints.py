"""Signed checkpoints anchor the journal outside the board: the real daemon on a real Mosquitto, then root with
sqlite3 truncating, rewriting and renumbering the journal; `verify --anchors` and the next start find each."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import nacl.signing
import pytest
from broker import Mosquitto, Recorder
from rig import DATA, TOML
from test_daemon_e2e import cli, wait_for_socket

from lockerd.checkpoints import signature_ok, signed_text
from lockerd.journal import EVENT_COLUMNS, GENESIS, Event, chain_hash, verify

pytestmark = pytest.mark.slow


def as_root(journal: Path, sql: list[tuple[str, tuple]]) -> None:
    """What root does with sqlite3: the append-only triggers are no obstacle to it."""
    conn = sqlite3.connect(journal)
    with conn:
        conn.execute("DROP TRIGGER IF EXISTS events_no_update")
        conn.execute("DROP TRIGGER IF EXISTS events_no_delete")
        for q, params in sql:
            conn.execute(q, params)
    conn.close()


def rehash(journal: Path) -> None:
    """Recompute every hash and link from seq 1, so that the chain is whole again (what a careful forger does)."""
    conn = sqlite3.connect(journal)
    rows = conn.execute(f"SELECT {EVENT_COLUMNS} FROM events ORDER BY seq").fetchall()
    prev = GENESIS
    with conn:
        for row in rows:
            ev = Event.from_row(row)
            h = chain_hash(prev, ev.record())
            conn.execute("UPDATE events SET prev = ?, hash = ? WHERE seq = ?", (prev, h, ev.seq))
            prev = h
    conn.close()


def reference_checker(key: str):
    """The Python block of docs/station-server.md, run as the station would."""
    return docs_python("class Controller")["Controller"](key)


def docs_python(defining: str) -> dict:
    """Run the Python block of docs/station-server.md that contains ``defining``; its namespace."""
    doc = (Path(__file__).parent.parent / "docs" / "station-server.md").read_text()
    [code] = [b.split("```", 1)[0] for b in doc.split("```python\n")[1:] if defining in b.split("```", 1)[0]]
    space: dict = {}
    exec(code, space)
    return space


def verify_cli(cfg: Path, journal: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lockerd", "verify", "-c", str(cfg), "--journal", str(journal),
                           *extra], capture_output=True, text=True, timeout=30)


def test_checkpoints_are_signed_published_and_catch_truncation_rewrite_and_renumbering(
        tmp_path: Path, mosquitto: Mosquitto, recorders: list[Recorder]) -> None:
    cfg = tmp_path / "lockerd.toml"
    cfg.write_text(TOML.replace('path = "journal.db"', 'path = "journal.db"\ncheckpoint_every = 20')
                   + f'\n[station]\nbrokers = ["127.0.0.1:{mosquitto.port}"]\n')
    (tmp_path / "data.json").write_text(json.dumps(DATA))
    journal = tmp_path / "journal.db"
    rec = Recorder(mosquitto.port, ["lockerd/#"])
    recorders.append(rec)

    def start() -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-m", "lockerd", "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        wait_for_socket(tmp_path / "lockerd.sock", p)
        return p

    proc = start()
    try:
        assert cli(cfg, "import", str(tmp_path / "data.json")).returncode == 0
        for code in ("D-1", "D-3", "D-1"):
            assert "open" in cli(cfg, "sim", "scan", code).stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # Every checkpoint reached the station, signed by the key in checkpoint.key; the newest is retained.
    seed = bytes.fromhex((tmp_path / "checkpoint.key").read_text().strip())
    public = nacl.signing.SigningKey(seed).verify_key.encode().hex()
    assert oct((tmp_path / "checkpoint.key").stat().st_mode & 0o777) == "0o600"
    # What the station keeps: each checkpoint as published on the checkpoint topic (the newest retained).
    rec.wait(lambda r: r.on("/checkpoint") and r.on("/checkpoint")[-1]["reason"] == "stop", 20)
    held = rec.on("/checkpoint")
    assert {c["reason"] for c in held} >= {"every", "stop"} and all(signature_ok(c, public) for c in held)
    anchors = tmp_path / "station-checkpoints.jsonl"
    anchors.write_text("".join(json.dumps(c) + "\n" for c in held))
    last = held[-1]["seq"]
    conn = sqlite3.connect(journal)
    (first_hash,) = conn.execute("SELECT hash FROM events WHERE seq = 1").fetchone()
    conn.close()

    # The station's reference checker (docs/station-server.md) accepts the stream and every checkpoint.
    station = reference_checker(public)
    before = [e for e in rec.on("/events") if "seq" in e]
    for ev in before:
        station.event(ev)
    for cp in held:
        station.checkpoint(cp)

    r = verify_cli(cfg, journal, "--anchors", str(anchors), "--key", public)
    assert r.returncode == 0 and "matching" in r.stdout and "signatures checked" in r.stdout, r.stdout
    # A checkpoint signed by another key is not this controller's.
    forged = dict(held[-1])
    forged["sig"] = nacl.signing.SigningKey.generate().sign(signed_text(forged)).signature.hex()
    (tmp_path / "forged.jsonl").write_text(json.dumps(forged) + "\n")
    r = verify_cli(cfg, journal, "--anchors", str(tmp_path / "forged.jsonl"), "--key", public)
    assert r.returncode == 1 and "not signed by key" in r.stdout

    export = tmp_path / "whole.json"
    assert cli(cfg, "export", "--format", "json", "-o", str(export)).returncode == 0
    r = subprocess.run([sys.executable, "-m", "lockerd", "verify-export", str(export), "-c", str(cfg),
                        "--anchors", str(anchors), "--key", public], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "anchors within its range match" in r.stdout, r.stdout

    cases = {
        "truncated": [("DELETE FROM events WHERE seq > ?", (last - 5,))],
        "rewritten": [("UPDATE events SET data = json_set(data, '$.forged', 1) WHERE seq = ?", (last - 10,))],
        "renumbered": [("DELETE FROM events WHERE seq = ?", (last - 10,)),
                       ("UPDATE events SET seq = seq - 1 WHERE seq > ?", (last - 10,))],
    }
    for name, sql in cases.items():
        copy = tmp_path / f"{name}.db"
        shutil.copy(journal, copy)
        as_root(copy, sql)
        rehash(copy)
        assert verify(copy).ok, name  # the chain alone is whole again: only the station's anchors tell
        r = verify_cli(cfg, copy, "--anchors", str(anchors), "--key", public)
        assert r.returncode == 1, (name, r.stdout)
        assert ("TRUNCATED" if name == "truncated" else "REWRITTEN") in r.stdout, (name, r.stdout)
        r = verify_cli(cfg, copy, "--anchor", f"1:{first_hash}")
        assert r.returncode == 0  # an anchor before the change still matches: it is the later ones that tell
        # An export of the doctored journal is as good as its anchors too.
        export = tmp_path / f"{name}.json"
        assert cli(cfg, "export", "--journal", str(copy), "--format", "json", "-o", str(export)).returncode == 0
        r = subprocess.run([sys.executable, "-m", "lockerd", "verify-export", str(export), "--standalone",
                            "--anchors", str(anchors), "--key", public], capture_output=True, text=True, timeout=30)
        assert r.returncode == 1 and ("TRUNCATED" if name == "truncated" else "REWRITTEN") in r.stdout, r.stdout

    # The real journal loses its tail; the next start says so before anything else, and what it journals from
    # now on reaches the station (the outbox had delivered past the new end).
    as_root(journal, cases["truncated"])
    proc = start()
    try:
        rec.wait(lambda r: any(e.get("kind") == "alarm.journal_truncated" for e in r.on("/events")), 20)
        alarms = [json.loads(x) for x in cli(cfg, "history", "--kind", "alarm", "--json").stdout.splitlines()]
        reasons = " | ".join(a["data"]["reason"] for a in alarms if a["kind"] == "alarm.journal_truncated")
        assert f"before the checkpoint of seq {last}" in reasons and "acknowledged seq" in reasons
        assert "open" in cli(cfg, "sim", "scan", "D-3").stdout
        rec.wait(lambda r: sum(e.get("kind") == "access.granted" for e in r.on("/events")) >= 4, 20)
        # ... and the reference checker, fed what arrived since, names the rewrite.
        with pytest.raises(ValueError, match="came again as another event"):
            for ev in [e for e in rec.on("/events") if "seq" in e][len(before):]:
                station.event(ev)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
