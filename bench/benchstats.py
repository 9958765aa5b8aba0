"""Shared by the benchmark scripts (run as `python bench/NAME.py`, so this folder is on the path)."""

from __future__ import annotations

import compileall
import json
from pathlib import Path

from lockerd import config, importer
from lockerd.clock import Clock
from lockerd.controller import Controller
from lockerd.hardware import Hardware, build_hardware
from lockerd.journal import Journal

ROOT = Path(__file__).resolve().parent.parent


def compile_like_an_install() -> None:
    """Byte-compile the daemon's sources, as pip does when it installs them.

    A start -> ready figure is about the installed daemon, which finds its
    bytecode ready. From a source tree under PYTHONDONTWRITEBYTECODE (set on
    some machines) every start would compile every module again: about
    40 ms more per start on the development VM.
    """
    for folder in ("lockerd", "drivers", "hil"):
        compileall.compile_dir(ROOT / folder, quiet=1)


def pct(values: list[float], p: float) -> float:
    """The p-th percentile by nearest rank."""
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


async def start_controller(config_path: Path, data: dict) -> tuple[Controller, Journal, Hardware]:
    """The core on real time, started as the daemon starts it (journal, drivers, controller), ``data`` imported."""
    cfg = config.load(config_path)
    clock = Clock()
    journal = Journal(cfg.journal_path, clock)
    journal.open()
    hw = build_hardware(cfg, clock)
    c = Controller(cfg, journal, hw, clock)
    await c.start()
    await importer.apply(c, json.loads(json.dumps(data)))
    return c, journal, hw
