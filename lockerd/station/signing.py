"""Signed station commands: who at the station ordered this, provably.

The controller holds only the station signers' public Ed25519 keys, each
with the roles it may exercise, in its config file ([station.signers.*]):
the root of trust changes by editing that file and reloading, never by a
command. A command that moves a lock or changes who may open what carries
one signature (two for an emergency open) in its ``signatures`` field.

What is signed: the text ``lockerd-command-v1:`` followed by the SHA-256 of
the command's canonical JSON (keys sorted, no spaces, UTF-8) with its name
added and its signatures left out::

    {"args": {...}, "command": "open", "id": "...", "node": "n1",
     "requested_by": "...", "site": "s1", "ts": "..."}

``site`` and ``node`` are required in a signed command, so a signature is
good for one command on one controller only; ``id`` and ``ts`` make a
replay a duplicate (answered, never applied twice) or too old. The digest
is journaled with the signatures, so an auditor proves offline, with the
signer's public key alone, which station user ordered each command.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from typing import Any

PREFIX = b"lockerd-command-v1:"
KEY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class Authority(StrEnum):
    """What a signer may order. A command needs the authority the registry names for it."""

    OPEN = "open"  # a remote open of a dossier compartment
    CUSTODY = "custody"  # assign, unassign, acknowledge, release of dossiers
    EVIDENCE = "evidence"  # authorize-retrieval of an evidence item (the two people still badge)
    PEOPLE = "people"  # register or revoke officers, technicians and their badges
    AUTHORITY = "authority"  # register or revoke supervisors and case managers, and their badges
    EMERGENCY = "emergency"  # one of the two signatures an emergency open needs


@dataclass(frozen=True)
class Signer:
    """A station user's public key and what it may order."""

    id: str
    public_key: bytes  # 32 bytes, Ed25519
    roles: frozenset[Authority]


def digest(name: str, body: dict[str, Any]) -> bytes:
    """SHA-256 of the command's canonical text (its name in, its signatures out)."""
    signed = {k: v for k, v in body.items() if k != "signatures"} | {"command": name}
    text = json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).digest()


def message(command_digest: bytes) -> bytes:
    return PREFIX + command_digest


def sign(name: str, body: dict[str, Any], key_id: str, seed: bytes) -> dict[str, str]:
    """One signature entry for ``body`` (used by tests, the bench and the docs' reference signer)."""
    import nacl.signing

    sig = nacl.signing.SigningKey(seed).sign(message(digest(name, body))).signature
    return {"key": key_id, "sig": sig.hex()}


@cache
def _verify_key(public_key: bytes) -> Any:
    import nacl.signing

    return nacl.signing.VerifyKey(public_key)


def check(command_digest: bytes, entries: Any, signers: dict[str, Signer]) -> tuple[list[Signer], str | None]:
    """The distinct signers whose signatures over ``command_digest`` hold; or the first problem."""
    import nacl.exceptions

    if not isinstance(entries, list) or not entries:
        return [], "signatures: expected a list of {key, sig}"
    found: list[Signer] = []
    for i, entry in enumerate(entries):
        where = f"signatures[{i}]"
        if not isinstance(entry, dict) or set(entry) != {"key", "sig"}:
            return [], f"{where}: expected {{\"key\": ..., \"sig\": ...}}"
        kid, sig = entry["key"], entry["sig"]
        signer = signers.get(kid) if isinstance(kid, str) else None
        if signer is None:
            return [], f"{where}: key {str(kid)[:64]!r} is not a signer of this controller"
        try:
            raw = bytes.fromhex(sig) if isinstance(sig, str) else b""
        except ValueError:
            raw = b""
        if len(raw) != 64:
            return [], f"{where}: the signature must be 64 bytes in hex (128 characters)"
        try:
            _verify_key(signer.public_key).verify(message(command_digest), raw)
        except nacl.exceptions.BadSignatureError:
            return [], f"{where}: the signature of {kid} does not match this command"
        if any(s.id == kid for s in found):
            return [], f"{where}: {kid} signed twice; a second signature must come from another signer"
        found.append(signer)
    return found, None
