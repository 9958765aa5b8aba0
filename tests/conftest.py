"""Shared fixtures: a real Mosquitto per test and an independent subscriber."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from broker import Mosquitto, Recorder


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh Mosquitto on a free loopback port (anonymous, persistent, no queue limit)."""
    b = Mosquitto(tmp_path).start()
    yield b
    b.kill()


@pytest.fixture
def recorders() -> Iterator[list[Recorder]]:
    """Recorders made by a test, closed after it."""
    made: list[Recorder] = []
    yield made
    for r in made:
        r.close()
