"""Verifying the stills: each photo a ``photo.taken`` event names, against the SHA-256 journaled with it."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from lockerd.journal_reader import events_where
from lockerd.photos import sha256_of


@dataclass
class PhotoCheck:
    """Each journaled still against the file beside the journal."""

    checked: int = 0
    missing: list[tuple[int, str]] = field(default_factory=list)  # (seq of photo.taken, file)
    altered: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.altered


def verify_photos(conn: sqlite3.Connection, folder: Path) -> PhotoCheck:
    """Hash every still a ``photo.taken`` names and compare with the journaled SHA-256."""
    r = PhotoCheck()
    for e in events_where(conn, "kind = 'photo.taken'", ()):
        name = str(e.data.get("file", ""))
        path = folder / Path(name).name  # a name only: never a path out of the folder
        r.checked += 1
        try:
            with open(path, "rb") as f:
                digest, _ = sha256_of(f)
        except FileNotFoundError:
            r.missing.append((e.seq, name))
            continue
        if digest != e.data.get("sha256"):
            r.altered.append((e.seq, name))
    return r
