"""Badge fingerprints: a badge's code is a key to evidence, so it is never stored or published.

The journal, its tables, the events and every MQTT payload carry a badge's
fingerprint instead: its last few characters, for people to recognise it,
and an HMAC-SHA256 of the code under a secret of this installation (a file
beside the journal, readable by the service only, made at first start).
Whoever reads the journal or the broker cannot print a badge from it; the
controller recognises a scanned badge by computing its fingerprint.

The secret belongs with the journal: back them up together. A journal moved
to a controller with another secret no longer recognises its badges (they
are registered again, or the secret file is moved along).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from pathlib import Path

from lockerd import secretfile

log = logging.getLogger(__name__)

TAIL = 3  # characters of the code shown, when it has at least TAIL_FROM
TAIL_FROM = 6
FINGERPRINT_RE = re.compile(r"^.{0,3}~[0-9a-f]{24}$", re.DOTALL)


class BadgeKey:
    """The installation's badge secret."""

    def __init__(self, secret: bytes, unusable: str | None = None):
        if len(secret) < 16:
            raise ValueError("a badge secret has at least 16 bytes")
        self._secret = secret
        # Why the installation's secret could not be read, when this is a stand-in:
        # then no badge is recognised and none may be registered.
        self.unusable = unusable

    @classmethod
    def for_journal(cls, path: Path) -> BadgeKey:
        """The secret in ``path`` (made if missing); a stand-in that matches no badge if it cannot be read."""
        try:
            return cls.load_or_create(path)
        except (OSError, ValueError) as e:
            # An installation problem, not a bug: one line naming the file and the cause.
            log.error(  # noqa: TRY400
                "badges: cannot read or make the badge secret %s (%s): no badge is recognised", path, e)
            return cls(os.urandom(32), unusable=f"badge secret {path} unusable: {e}")

    @classmethod
    def load_or_create(cls, path: Path) -> BadgeKey:
        secret, made = secretfile.load_or_make(path)
        if made:
            log.warning("badges: made a new badge secret in %s; back it up with the journal", path)
        return cls(secret)

    def fingerprint(self, code: str) -> str:
        """``tail~hmac``: what stands for the badge ``code`` everywhere outside the scanner."""
        mac = hmac.new(self._secret, code.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:24]
        tail = code[-TAIL:] if len(code) >= TAIL_FROM else ""
        return f"{tail}~{mac}"


def is_fingerprint(value: str) -> bool:
    return bool(FINGERPRINT_RE.match(value))
