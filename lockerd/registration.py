"""Registering and unregistering items: the checks a registration passes, and its journal event.

An item's kind never changes, a released item's record is closed, an item
in its compartment is taken out before it moves, and evidence that is out
comes back (or is released at its cabinet) before it can be unregistered.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from lockerd.domain import Item, ItemKind, ItemState, Person
from lockerd.errors import CommandError
from lockerd.journal import Event, StateOp
from lockerd.opening import Core


@dataclass
class Registrations:
    core: Core

    def check_item(self, code: str, kind: str | None, compartment: str | None, case_name: str | None,
                   category: str | None, officer: str | None, people: dict[str, Person] | None = None) -> Item:
        """The item a registration makes. A field given as None keeps its registered value (a new item: empty,
        a dossier); an item's kind never changes, and a released item's record is closed."""
        registry, config = self.core.registry, self.core.config
        known = people if people is not None else registry.people
        if not code or not isinstance(code, str) or len(code) > 128:
            raise CommandError(f"item code {code!r}: expected 1-128 characters")
        old = registry.items.get(code)
        if old is not None and old.state is ItemState.RELEASED:
            raise CommandError(f"item {code} was released on {old.since}: its record is closed")
        if old is not None and kind is not None and kind != old.kind:
            raise CommandError(f"item {code} is registered as {old.kind}: an item's kind never changes "
                               f"(not to {kind})")
        kind = kind if kind is not None else old.kind if old is not None else ItemKind.DOSSIER
        if kind not in tuple(ItemKind):
            raise CommandError(f"item {code}: kind {kind!r}: expected 'dossier' or 'evidence'")
        if registry.is_badge(code):
            raise CommandError(f"item {code}: that code is already a badge")
        if config.evidence.reason_card(code) is not None:
            raise CommandError(f"item {code}: that code is a reason card in [evidence]")
        if compartment is not None:
            c = config.compartments.get(compartment)
            if c is None:
                raise CommandError(f"item {code}: unknown compartment {compartment!r}")
            if c.kind != kind:
                raise CommandError(f"item {code}: a {kind} cannot go in {c.kind} compartment {compartment}")
        if officer:
            p = known.get(officer)
            if p is None or not p.active:
                raise CommandError(f"item {code}: unknown or revoked responsible officer {officer!r}")
        if old is not None and old.state is ItemState.IN and old.compartment != compartment:
            raise CommandError(f"item {code} is in compartment {old.compartment}: take it out before moving it")
        if old is None:
            return Item(code, ItemKind(kind), case_name or "", category or "", officer or "", compartment)
        return replace(old, compartment=compartment,
                       case_name=old.case_name if case_name is None else case_name,
                       category=old.category if category is None else category,
                       officer=old.officer if officer is None else officer)

    async def assign(self, item: Item, by: dict[str, Any], extra: dict[str, Any] | None = None,
                     ops: list[StateOp] | None = None) -> Event:
        """Journal an item's registration; ``extra`` and ``ops`` carry its deposit deadline (custody)."""
        return await self.core.journal.append_durable(
            "item.assigned", compartment=item.compartment, dossier=item.code, item_kind=str(item.kind),
            case_name=item.case_name, category=item.category, officer=item.officer, **by, **(extra or {}),
            state=self.core.registry.put_item(item) + (ops or []))

    async def unassign(self, code: str, by: dict[str, Any]) -> Event:
        registry = self.core.registry
        item = registry.items.get(code)
        if item is None:
            raise CommandError(f"item {code}: not registered")
        if item.state is ItemState.IN:
            raise CommandError(f"item {code} is in compartment {item.compartment}: take it out first")
        if item.kind is ItemKind.EVIDENCE and item.state is ItemState.OUT:
            raise CommandError(f"evidence {code} is out (since {item.since}, with {item.holder or 'unknown'}): "
                               "it must come back, or be released at its cabinet; it cannot be unregistered")
        registry.items.pop(code)
        return await self.core.journal.append_durable("item.unassigned", compartment=item.compartment, dossier=code,
                                                      **by, state=[("delete", "items", {"code": code})])
