"""The custody rules as configured: the kinds of deadline, and the ladder of reminders each one climbs.

Read by the config (the ``[custody]`` section) and by custody, which runs
them; kept apart so the config never imports what runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class DeadlineKind(StrEnum):
    DEPOSIT = "deposit"  # a registered dossier is deposited
    RETURN = "return"  # a dossier taken out comes back (by the end of its shift)
    EVIDENCE_DEPOSIT = "evidence_deposit"
    EVIDENCE_RETURN = "evidence_return"


DEADLINE_KINDS = tuple(DeadlineKind)
# Deadlines that run while an item is out, from the moment it left.
OUT_KINDS = (DeadlineKind.RETURN, DeadlineKind.EVIDENCE_RETURN)
RECIPIENTS = ("officer", "supervisor", "legal")
# Who the station may ask to release a dossier (removed from the locker for good).
RELEASE_ROLES = ("supervisor", "case_manager")


@dataclass(frozen=True)
class Step:
    """One rung of a reminder ladder: who is told, and how long after the previous rung."""

    to: str
    after_s: float


@dataclass(frozen=True)
class Ladder:
    steps: tuple[Step, ...]
    ack_pause_s: float


def _ladder(delays: tuple[float, float, float], pause: float) -> Ladder:
    return Ladder(tuple(Step(to, after) for to, after in zip(RECIPIENTS, delays, strict=True)), pause)


DEFAULT_LADDERS = {
    DeadlineKind.DEPOSIT: _ladder((0, 4 * 3600, 24 * 3600), 4 * 3600),
    DeadlineKind.RETURN: _ladder((0, 2 * 3600, 24 * 3600), 2 * 3600),
    DeadlineKind.EVIDENCE_DEPOSIT: _ladder((0, 2 * 3600, 12 * 3600), 2 * 3600),
    DeadlineKind.EVIDENCE_RETURN: _ladder((0, 2 * 3600, 12 * 3600), 2 * 3600),
}


@dataclass(frozen=True)
class Rules:
    """The [custody] section."""

    deposit_within_h: float = 24.0
    return_without_shifts_h: float = 12.0
    tick_s: float = 30.0
    release_roles: tuple[str, ...] = RELEASE_ROLES
    ladders: dict[str, Ladder] = field(default_factory=lambda: dict(DEFAULT_LADDERS))
    dossier_badge: str = "optional"  # or "required": a dossier scan needs a badge just before it
    badge_window_s: float = 30.0
