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

from lockerd.badges import BadgeKey, is_fingerprint
from lockerd.errors import CommandError
from lockerd.journal import Journal, StateOp


class Role(StrEnum):
    OFFICER = "officer"
    CASE_MANAGER = "case_manager"
    SUPERVISOR = "supervisor"
    TECHNICIAN = "technician"


# Whose registration (or badge) is an authority change: they co-sign evidence and emergency opens.
AUTHORITY_ROLES = frozenset({Role.SUPERVISOR, Role.CASE_MANAGER})
_AUTHORITY_ROLE_NAMES = frozenset(str(r) for r in AUTHORITY_ROLES)
# Who may stand as "the officer" of a two-person evidence handling.
OFFICER_ROLES = frozenset({Role.OFFICER, Role.SUPERVISOR})


class ItemState(StrEnum):
    NEW = "new"  # registered, never deposited
    IN = "in"  # in its compartment
    OUT = "out"  # taken out
    RELEASED = "released"  # removed from the locker for good by an authorised person


class ItemKind(StrEnum):
    DOSSIER = "dossier"
    EVIDENCE = "evidence"


class Action(StrEnum):
    """What an opening does to an item when its door closes again."""

    CHECKOUT = "checkout"  # a dossier leaves
    RETURN = "return"  # a dossier comes back
    DEPOSIT = "deposit"  # an item goes in (a dossier's first time, or evidence)
    RETRIEVE = "retrieve"  # evidence leaves, with a reason
    RELEASE = "release"  # an item leaves the locker for good


# The journal event each (kind, action) writes.
ITEM_EVENT = {
    (ItemKind.DOSSIER, Action.CHECKOUT): "dossier.checked_out",
    (ItemKind.DOSSIER, Action.RETURN): "dossier.returned",
    (ItemKind.DOSSIER, Action.DEPOSIT): "dossier.deposited",
    (ItemKind.DOSSIER, Action.RELEASE): "dossier.released",
    (ItemKind.EVIDENCE, Action.DEPOSIT): "evidence.deposited",
    (ItemKind.EVIDENCE, Action.RETRIEVE): "evidence.retrieved",
    (ItemKind.EVIDENCE, Action.RELEASE): "evidence.released",
}


@dataclass
class Person:
    id: str
    name: str
    role: Role
    active: bool = True


@dataclass
class Item:
    code: str
    kind: ItemKind
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
        d["kind"], d["state"] = str(self.kind), str(self.state)
        return d


class Registry:
    """People, badges and items, loaded from the journal's state tables.

    Badges are known by their fingerprints (lockerd.badges); the methods
    take a scanned or registered code and fingerprint it.
    """

    def __init__(self, badge_key: BadgeKey) -> None:
        self.badge_key = badge_key
        self.people: dict[str, Person] = {}
        self.badges: dict[str, str] = {}  # badge fingerprint -> person id (active badges only)
        self.revoked_badges: set[str] = set()  # fingerprints
        self.items: dict[str, Item] = {}
        self._clear_rows = 0  # badge rows stored in clear (before fingerprints), to convert
        self._badge_rows: list[tuple[str, str, int]] = []

    def reload(self, journal: Journal) -> None:
        """Forget everything and load again (after an import); empty when the journal is unusable."""
        self.__init__(self.badge_key)  # type: ignore[misc]
        if journal.healthy:
            self.load(journal)

    def load(self, journal: Journal) -> None:
        for pid, name, role, active in journal.query("SELECT id, name, role, active FROM people"):
            self.people[pid] = Person(pid, name, Role(role), bool(active))
        for code, person, active in journal.query("SELECT code, person, active FROM badges"):
            if not is_fingerprint(code):
                self._clear_rows += 1
                code = self.badge_key.fingerprint(code)
            self._badge_rows.append((code, person, active))
            if active:
                self.badges[code] = person
            else:
                self.revoked_badges.add(code)
        cols = "code, kind, case_name, category, officer, compartment, state, holder, depositor, since"
        for row in journal.query(f"SELECT {cols} FROM items"):
            item = Item(*row)
            item.kind, item.state = ItemKind(item.kind), ItemState(item.state)
            self.items[item.code] = item

    def fingerprint_ops(self) -> list[StateOp]:
        """Ops that replace badge codes stored in clear (journals before fingerprints) by fingerprints."""
        if not self._clear_rows or self.badge_key.unusable:
            return []
        # "clear", not a delete per row: a delete would name the code it deletes in the journal.
        ops: list[StateOp] = [("clear", "badges", {})]
        ops += [("upsert", "badges", {"code": fp, "person": person, "active": active})
                for fp, person, active in self._badge_rows]
        self._clear_rows = 0
        return ops

    def badge(self, code: str) -> str:
        """The fingerprint that stands for badge ``code``."""
        return self.badge_key.fingerprint(code)

    def is_badge(self, code: str) -> bool:
        """Whether ``code`` is a badge, active or revoked."""
        fp = self.badge(code)
        return fp in self.badges or fp in self.revoked_badges

    def read_badge(self, code: str) -> tuple[str, Person | None] | None:
        """For a scanned code that is a badge: its fingerprint and its active holder (None: revoked or
        inactive); None when the code is no badge. One keyed hash per scan."""
        fp = self.badge(code)
        pid = self.badges.get(fp)
        if pid is None and fp not in self.revoked_badges:
            return None
        return fp, self.active_person(pid) if pid else None

    def active_person(self, pid: str) -> Person | None:
        """The person with this id, unless unknown or revoked."""
        p = self.people.get(pid)
        return p if p and p.active else None

    def authority_role(self, pid: str | None, new_role: str | None = None) -> str | None:
        """The supervisor or case manager role a change of person ``pid`` touches (an authority change): the
        role it is being given, else the one it has; None when neither is one."""
        p = self.people.get(pid) if pid is not None else None
        for role in (new_role, str(p.role) if p is not None else None):
            if role in _AUTHORITY_ROLE_NAMES:
                return role
        return None

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
        if self.badge_key.unusable:
            raise CommandError(f"no badge can be registered: {self.badge_key.unusable}")
        if not code or not isinstance(code, str) or len(code) > 128:
            raise CommandError("badge code: expected 1-128 characters")
        if person not in known or not known[person].active:
            raise CommandError(f"badge {self.badge(code)}: unknown or revoked person {person!r}")
        fp = self.badge(code)
        if code in self.items:
            raise CommandError(f"badge {fp}: that code is already an item's barcode")
        owner = self.badges.get(fp)
        if owner is not None and owner != person:
            raise CommandError(f"badge {fp}: already belongs to {owner}")

    def put_badge(self, code: str, person: str) -> list[StateOp]:
        fp = self.badge(code)
        self.badges[fp] = person
        self.revoked_badges.discard(fp)
        return [("upsert", "badges", {"code": fp, "person": person, "active": 1})]

    def revoke_badge(self, code: str) -> list[StateOp]:
        return self._revoke_fingerprint(self.badge(code))

    def _revoke_fingerprint(self, fp: str) -> list[StateOp]:
        if fp not in self.badges:
            raise CommandError(f"badge {fp}: not registered")
        person = self.badges.pop(fp)
        self.revoked_badges.add(fp)
        return [("upsert", "badges", {"code": fp, "person": person, "active": 0})]

    def revoke_person(self, pid: str) -> list[StateOp]:
        p = self.people.get(pid)
        if p is None:
            raise CommandError(f"person {pid}: not registered")
        p.active = False
        ops = self.put_person(p)
        for fp in [c for c, owner in self.badges.items() if owner == pid]:
            ops += self._revoke_fingerprint(fp)
        return ops

    def put_item(self, item: Item) -> list[StateOp]:
        self.items[item.code] = item
        return [("upsert", "items", item.row())]
