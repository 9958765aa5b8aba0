"""Config text for tests that build real drivers from a config: the sections every config needs, once."""

from __future__ import annotations

from pathlib import Path

from lockerd import config

HEAD = """
[controller]
site = "s"
node = "n"
[journal]
path = "j.db"
"""


def load(folder: Path, body: str) -> config.Config:
    """Check ``HEAD + body`` as the daemon would, from a file in ``folder`` (relative paths resolve there)."""
    path = folder / "lockerd.toml"
    path.write_text(HEAD + body)
    return config.load(path)
