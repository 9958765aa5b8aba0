"""Station authorisations of evidence retrievals: the reason comes from the case record.

The property room's usual path is a reason card scanned at the cabinet with
the two badges. When the retrieval was requested in the station's case
system (a court order, a laboratory request), the station may instead
authorise it ahead: the item and the reason, for a limited time. The two
people still have to come to the cabinet; the authorisation only stands in
for the card, once. It is journaled, so a restart keeps it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from lockerd.clock import Clock, iso_utc
from lockerd.domain import Item, ItemState
from lockerd.errors import CommandError
from lockerd.journal import Event, Journal

log = logging.getLogger(__name__)

REASON_CODE = "station-authorisation"


@dataclass(frozen=True)
class Authorisation:
    item: str
    reason: str
    release: bool
    until: float  # wall time
    seq: int  # of retrieval.authorised


class Authorisations:
    """Pending station authorisations, one per item."""

    def __init__(self, journal: Journal, clock: Clock):
        self.journal = journal
        self.clock = clock
        self._by_item: dict[str, Authorisation] = {}

    def load(self) -> None:
        """Authorisations not yet used: newer than the item's last retrieval or release."""
        if not self.journal.healthy:
            return
        rows = self.journal.query(
            "SELECT a.seq, a.dossier, a.data FROM events a WHERE a.kind = 'retrieval.authorised' AND a.seq > "
            "(SELECT COALESCE(MAX(b.seq), 0) FROM events b WHERE b.dossier = a.dossier AND b.kind IN "
            "('evidence.retrieved', 'evidence.released')) ORDER BY a.seq")
        for seq, code, data in rows:
            d = json.loads(data)
            self._by_item[code] = Authorisation(code, d["reason"], bool(d["release"]), float(d["until_epoch"]), seq)

    async def authorise(self, item: Item | None, code: str, reason: str, release: bool, valid_s: float,
                        by: dict[str, Any]) -> Event:
        """Journal a station's authorisation of one evidence item's retrieval (or release)."""
        if item is None:
            raise CommandError(f"item {code}: not registered")
        if item.kind != "evidence":
            raise CommandError(f"item {code} is a {item.kind}: only evidence needs a retrieval authorisation")
        if item.state is not ItemState.IN:
            raise CommandError(f"item {code} is not in the locker ({item.state}): there is nothing to retrieve")
        if not reason.strip():
            raise CommandError("a reason is required: say why the item leaves the locker")
        until = self.clock.wall() + valid_s
        ev = await self.journal.append_durable("retrieval.authorised", compartment=item.compartment, dossier=code,
                                       reason=reason.strip(), release=release, until=iso_utc(until),
                                       until_epoch=round(until, 3), **by)
        self._by_item[code] = Authorisation(code, reason.strip(), release, until, ev.seq)
        return ev

    def reason_for(self, code: str) -> tuple[str, str, bool] | None:
        """(reason code, text, is a release) when a valid authorisation stands for the item."""
        a = self._by_item.get(code)
        if a is None or self.clock.wall() > a.until:
            return None
        return f"{REASON_CODE}:{a.seq}", a.reason, a.release

    def used(self, code: str) -> None:
        """An authorisation opens once."""
        self._by_item.pop(code, None)
