"""The lower layers type-check under ``mypy --strict`` (settings in pyproject.toml): the drivers, the
journal and what both stand on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".mypy_cache"  # kept between runs: a second run checks only what changed
# The package lockerd.drivers lives in drivers/: mypy finds it, and the core modules checked with
# it, in a tree of links. A checked module importing anything of lockerd not linked here fails.
JOURNAL = ["journal", "journal_chain", "journal_schema", "journal_writer", "journal_snapshot", "journal_wal",
           "journal_outage", "journal_export", "projection", "checkpoints", "secretfile"]
LINKS = {
    "lockerd/__init__.py": "lockerd/__init__.py",
    "lockerd/py.typed": "lockerd/py.typed",
    "lockerd/errors.py": "lockerd/errors.py",
    "lockerd/clock.py": "lockerd/clock.py",
    "lockerd/drivers": "drivers",
    **{f"lockerd/{m}.py": f"lockerd/{m}.py" for m in JOURNAL},
}
CHECKED = ["-p", "lockerd.drivers", "-m", "lockerd.errors", "-m", "lockerd.clock",
           *(arg for m in JOURNAL for arg in ("-m", f"lockerd.{m}"))]


def source_tree() -> Path:
    src = CACHE / "src"
    for link, target in LINKS.items():
        path = src / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() and path.resolve() == (ROOT / target).resolve():
            continue
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(ROOT / target)
    return src


def test_drivers_journal_errors_and_clock_pass_mypy_strict() -> None:
    src = source_tree()
    env = os.environ | {"MYPYPATH": str(src)}
    # Run from the link tree, not the checkout: lockerd/ there would hide lockerd.drivers.
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                        "--cache-dir", str(CACHE), *CHECKED], cwd=src, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
