"""The gate every station command passes before it runs: who signed it, may they, and over what link.

Checked when the command runs (not when it arrives), against the signers of
the config running then: a signer removed by a reload signs nothing more,
even for a command that was already queued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from lockerd.station import contract, signing
from lockerd.station.intake import Command
from lockerd.station.signing import Authority, Signer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Vetting:
    """What the controller's domain says of one command before it runs."""

    authority: Authority | None  # what a signature must carry (None: read-only)
    refusal: str | None = None  # a rule no signature lifts (evidence never opens on one word)
    journaled_args: dict[str, Any] = field(default_factory=dict)  # the args as journaled (badge codes hidden)


class Gate:
    def __init__(self, station: dict[str, Any]):
        self.signers: dict[str, Signer] = station.get("signers") or {}
        self.allow_unsigned = bool(station.get("allow_unsigned"))
        self.allow_plaintext = bool(station.get("allow_plaintext"))
        self.tls = bool(station.get("tls"))
        self.credentials = bool(station.get("username")) or bool(station.get("cert_file"))

    @property
    def secure(self) -> bool:
        return self.tls and self.credentials

    def posture(self) -> dict[str, Any]:
        """How this link takes commands, journaled at every start (station.security)."""
        refused = None
        if not self.secure and not self.allow_plaintext:
            refused = "no TLS and credentials on the station link"
        elif not self.signers and not self.allow_unsigned:
            refused = "no [station.signers] configured"
        return {"tls": self.tls, "credentials": self.credentials, "signers": sorted(self.signers),
                "allow_unsigned": self.allow_unsigned, "allow_plaintext": self.allow_plaintext,
                "lock_commands": "refused: " + refused if refused else "obeyed"}

    def warnings(self) -> list[str]:
        out = []
        if self.allow_unsigned:
            out.append("allow_unsigned = true: UNSIGNED station commands are obeyed (a lab setting; "
                       "anyone who can publish to the broker can open doors)")
        if not self.secure:
            out.append("the station link has no TLS and credentials: "
                       + ("lock-moving commands are obeyed anyway (allow_plaintext = true, a lab setting)"
                          if self.allow_plaintext else "lock-moving and authority commands are refused"))
        return out

    def check(self, cmd: Command, vetting: Vetting) -> str | None:
        """Why ``cmd`` may not run, or None (then ``cmd.signed_by`` names its signers)."""
        if vetting.refusal is not None:
            return vetting.refusal
        need = vetting.authority
        if need is None:
            return None
        if not self.secure and not self.allow_plaintext:
            return (f"{cmd.name} refused: the station link has no TLS and credentials "
                    "(configure tls and a username or client certificate)")
        if cmd.signatures is None:
            if self.allow_unsigned:
                return None
            return f"unsigned: {cmd.name} needs a signature by a station signer with the {need} role"
        if not cmd.addressed:
            return "a signed command must name its site and node"
        assert cmd.digest is not None
        signed, problem = signing.check(cmd.digest, cmd.signatures, self.signers)
        if problem:
            return problem
        needed = contract.SIGNERS_NEEDED.get(cmd.name, 1)
        holders = [s.id for s in signed if need in s.roles]
        if len(holders) < needed:
            lacking = [s.id for s in signed if need not in s.roles]
            who = f"; {', '.join(lacking)} may not" if lacking else ""
            return (f"{cmd.name} needs {needed} distinct signer{'s' if needed > 1 else ''} with the {need} role, "
                    f"{len(holders)} signed{who}")
        cmd.signed_by = tuple(s.id for s in signed)
        return None
