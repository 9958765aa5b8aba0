"""A 32-byte secret kept in a file beside the journal: hex text, readable by the service only.

The checkpoint signing key's seed and the badge fingerprints' secret are
both such files, made at first start and read at every later one.
"""

from __future__ import annotations

import os
from pathlib import Path

SIZE = 32


def load_or_make(path: Path) -> tuple[bytes, bool]:
    """The secret in ``path``; a new random one written there (0600, fsynced) when there is none.
    Returns (secret, made)."""
    try:
        return bytes.fromhex(path.read_text().strip()), False
    except FileNotFoundError:
        pass
    secret = os.urandom(SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # never over a file made meanwhile
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return secret, True
