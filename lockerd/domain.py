"""What the controller knows of the station: people, badges and items.

An item is a dossier or an evidence item, identified by its barcode and
assigned to one compartment. The registry lives in memory for fast
decisions; every change to it is a journal event carrying the matching
state-table update, so the journal and the tables never disagree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from lockerd.errors import CommandError
from lockerd.journal import Journal, StateOp


class Role(StrEnum):
    OFFICER = "officer"
    CASE_MANAGER = "case_manager"
    SUPERVISOR = "supervisor"
    TECHNICIAN = "technician"


# Who may stand as "the officer" of a two-person evidence handling.
OFFICER_ROLES = frozenset({Role.OFFICER, Role.SUPERVISOR})


class ItemState(StrEnum):
    NEW = "new"  # registered, never deposited
    IN = "in"  # in its compartment
    OUT = "out"  # taken out
    RELEASED = "released"  # removed from the locker for good by an authorised person


ITEM_KINDS = ("dossier", "evidence")


@dataclass
class Person:
    id: str
    name: str
    role: Role
    active: bool = True


@dataclass
class Item:
    code: str
    kind: str  # dossier | evidence
    case_name: str
    category: str
    officer: str  # responsible officer (person id)
    compartment: str | None
    state: ItemState = ItemState.NEW
    holder: str | None = None  # who took it out (person id), when known
    depositor: str | None = None  # evidence: who deposited it
    since: str | None = None  # wall time of the last state change

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["state"] = str(self.state)
        return d


class Registry:
    """People, badges and items, loaded from the journal's state tables."""

    def __init__(self) -> None:
        self.people: dict[str, Person] = {}
        self.badges: dict[str, str] = {}  # badge code -> person id (active badges only)
        self.revoked_badges: set[str] = set()
        self.items: dict[str, Item] = {}

    def load(self, journal: Journal) -> None:
        for pid, name, role, active in journal.query("SELECT id, name, role, active FROM people"):
            self.people[pid] = Person(pid, name, Role(role), bool(active))
        for code, person, active in journal.query("SELECT code, person, active FROM badges"):
            if active:
                self.badges[code] = person
            else:
                self.revoked_badges.add(code)
        cols = "code, kind, case_name, category, officer, compartment, state, holder, depositor, since"
        for row in journal.query(f"SELECT {cols} FROM items"):
            item = Item(*row)
            item.state = ItemState(item.state)
            self.items[item.code] = item

    def person_of_badge(self, code: str) -> Person | None:
        pid = self.badges.get(code)
        return self.active_person(pid) if pid else None

    def active_person(self, pid: str) -> Person | None:
        """The person with this id, unless unknown or revoked."""
        p = self.people.get(pid)
        return p if p and p.active else None

    def in_compartment(self, compartment: str) -> list[str]:
        return sorted(
            c for c, i in self.items.items() if i.compartment == compartment and i.state is ItemState.IN
        )

    # -- changes: each returns the state ops to journal with its event ------------

    def check_person(self, pid: str, name: str, role: str) -> Person:
        if not pid or not isinstance(pid, str) or len(pid) > 64:
            raise CommandError(f"person id {pid!r}: expected 1-64 characters")
        if not name or not isinstance(name, str) or len(name) > 128:
            raise CommandError(f"person {pid}: name {name!r}: expected 1-128 characters")
        try:
            r = Role(role)
        except ValueError:
            raise CommandError(
                f"person {pid}: role {role!r}: expected one of {', '.join(r.value for r in Role)}"
            ) from None
        return Person(pid, name, r)

    def put_person(self, p: Person) -> list[StateOp]:
        self.people[p.id] = p
        return [("upsert", "people", {"id": p.id, "name": p.name, "role": str(p.role), "active": int(p.active)})]

    def check_badge(self, code: str, person: str, people: dict[str, Person] | None = None) -> None:
        known = people if people is not None else self.people
        if not code or not isinstance(code, str) or len(code) > 128:
            raise CommandError(f"badge code {code!r}: expected 1-128 characters")
        if person not in known or not known[person].active:
            raise CommandError(f"badge {code}: unknown or revoked person {person!r}")
        if code in self.items:
            raise CommandError(f"badge {code}: that code is already an item's barcode")
        owner = self.badges.get(code)
        if owner is not None and owner != person:
            raise CommandError(f"badge {code}: already belongs to {owner}")

    def put_badge(self, code: str, person: str) -> list[StateOp]:
        self.badges[code] = person
        self.revoked_badges.discard(code)
        return [("upsert", "badges", {"code": code, "person": person, "active": 1})]

    def revoke_badge(self, code: str) -> list[StateOp]:
        if code not in self.badges:
            raise CommandError(f"badge {code}: not registered")
        person = self.badges.pop(code)
        self.revoked_badges.add(code)
        return [("upsert", "badges", {"code": code, "person": person, "active": 0})]

    def revoke_person(self, pid: str) -> list[StateOp]:
        p = self.people.get(pid)
        if p is None:
            raise CommandError(f"person {pid}: not registered")
        p.active = False
        ops = self.put_person(p)
        for code in [c for c, owner in self.badges.items() if owner == pid]:
            ops += self.revoke_badge(code)
        return ops

    def put_item(self, item: Item) -> list[StateOp]:
        self.items[item.code] = item
        return [("upsert", "items", item.row())]
