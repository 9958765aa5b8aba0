"""A reader that goes away (`| head`) ends a listing quietly, as it would any Unix tool."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from lockerd.clock import Clock
from lockerd.journal import Journal


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.db"

    async def fill() -> None:
        j = Journal(path, Clock())
        assert j.open(), j.error
        for i in range(3000):
            j.append("test.tick", n=i, note="x" * 80)
        await j.flush()
        j.close()

    asyncio.run(fill())
    return path


@pytest.mark.parametrize("argv", [["history", "--limit", "3000"], ["history", "--limit", "3000", "--json"],
                                  ["export", "--format", "csv"], ["export", "--format", "json"]])
def test_a_closed_pipe_ends_the_listing_quietly(journal: Path, argv: list[str]) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "lockerd", *argv, "--journal", str(journal)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline()  # the reader takes one line, then goes away (as `head -1` does)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(30) == 141, err  # 128 + SIGPIPE, as a shell reports a tool ended by a closed pipe
    assert err == ""
