"""The audit commands beside the real daemon: they read its live journal read-only, stills included."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from pathlib import Path

import pytest
from rig import TOML
from test_daemon_e2e import cli, running_daemon


def photos_journaled(cfg: Path, n: int, timeout: float = 10.0) -> list[dict]:
    """Poll the journal (through the CLI) until n stills are recorded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = cli(cfg, "history", "--kind", "photo", "--json")
        rows = [json.loads(line) for line in r.stdout.splitlines()]
        if len(rows) >= n:
            return rows
        time.sleep(0.05)  # polling for a condition, with a deadline
    raise AssertionError(f"fewer than {n} stills journaled within {timeout} s")


@pytest.fixture
def daemon(tmp_path):
    text = (TOML.replace('[cabinets.d]\nkind = "dossier"', '[cabinets.d]\nkind = "dossier"\ncamera = "cam"')
            + '[cameras.cam]\ntype = "sim"\n')
    with running_daemon(tmp_path, text) as d:
        yield d


def test_audit_commands_read_the_running_daemons_journal(daemon):
    cfg, proc = daemon
    assert cli(cfg, "import", str(cfg.parent / "data.json")).returncode == 0
    r = cli(cfg, "sim", "scan", "D-1", "--pull")
    assert "open d01: deposit D-1" in r.stdout, r.stdout + r.stderr
    assert cli(cfg, "sim", "close", "d01").returncode == 0
    stills = photos_journaled(cfg, 2)
    for s in stills:
        data = (cfg.parent / "photos" / s["data"]["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == s["data"]["sha256"]

    r = cli(cfg, "chain-of-custody", "D-1")
    assert r.returncode == 0, r.stderr
    kinds = [line.split()[2] for line in r.stdout.splitlines()[2:]]
    assert kinds.count("photo.taken") == 2 and "dossier.deposited" in kinds

    r = cli(cfg, "occupancy")
    assert r.returncode == 0 and "in: D-1 (since " in next(ln for ln in r.stdout.splitlines() if "d01" in ln)

    out = cfg.parent / "all.json"
    r = cli(cfg, "export", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert cli(cfg, "sim", "scan", "D-3").returncode == 0  # the journal grows while the export is checked
    r = cli(cfg, "verify-export", str(out))
    assert r.returncode == 0 and "every row matches the journal" in r.stdout, r.stdout + r.stderr

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    r = cli(cfg, "verify-export", str(out))
    assert r.returncode == 0, r.stdout
