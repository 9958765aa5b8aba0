"""Import people, badges and item assignments from a JSON or CSV file.

Until the station link pushes them, this is how a locker learns who may
open what. The whole file is checked first and applied only if every
record is valid: nothing is half-applied. Format: see docs/import-format.md.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path
from typing import Any

from lockerd.controller import Controller
from lockerd.domain import Item, Person
from lockerd.errors import CommandError

PEOPLE_COLUMNS = {"id", "name", "role"}
BADGE_COLUMNS = {"code", "person"}
ITEM_COLUMNS = {"code", "kind", "case_name", "category", "officer", "compartment"}
MAX_RECORDS = 100_000


def read(path: Path) -> dict[str, list[dict[str, Any]]]:
    """Read a JSON file ({"people": [...], "badges": [...], "items": [...]}) or a CSV file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CommandError(f"{path}: cannot read: {e}") from None
    return parse(text, path.suffix.lower() == ".csv", str(path))


def parse(text: str, is_csv: bool, name: str = "import") -> dict[str, list[dict[str, Any]]]:
    if is_csv:
        return _parse_csv(text, name)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise CommandError(f"{name}: not valid JSON: {e}") from None
    if not isinstance(doc, dict) or not set(doc) <= {"people", "badges", "items"}:
        raise CommandError(f'{name}: expected an object with "people", "badges" and/or "items" lists')
    out: dict[str, list[dict[str, Any]]] = {}
    for key in ("people", "badges", "items"):
        records = doc.get(key, [])
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise CommandError(f"{name}: {key}: expected a list of objects")
        out[key] = records
    return out


def _parse_csv(text: str, name: str) -> dict[str, list[dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    cols = {c.strip() for c in reader.fieldnames or ()}
    for key, need in (("people", PEOPLE_COLUMNS), ("badges", BADGE_COLUMNS), ("items", ITEM_COLUMNS)):
        if cols == need:
            rows = [{k.strip(): (v or "").strip() for k, v in row.items()} for row in reader]
            return {key: rows}
    raise CommandError(
        f"{name}: unrecognised CSV header {sorted(cols)}; expected exactly the columns of people "
        f"({', '.join(sorted(PEOPLE_COLUMNS))}), badges ({', '.join(sorted(BADGE_COLUMNS))}) "
        f"or items ({', '.join(sorted(ITEM_COLUMNS))})"
    )


async def apply(controller: Controller, data: dict[str, list[dict[str, Any]]], by: str = "import",
                **who: Any) -> dict[str, int]:
    """Check every record, then journal them all (each with ``who``: the OS user of a CLI import); returns counts."""
    total = sum(len(v) for v in data.values())
    if total > MAX_RECORDS:
        raise CommandError(f"too many records ({total}, at most {MAX_RECORDS})")
    problems: list[str] = []
    people: dict[str, Person] = dict(controller.registry.people)
    new_people = _check_people(controller, data.get("people", []), people, problems)
    badges = _check_badges(controller, data.get("badges", []), people, problems)
    items = _check_items(controller, data.get("items", []), people, problems)
    codes = [c for c, _ in badges] + [it.code for it in items]
    dupes = sorted({c for c in codes if codes.count(c) > 1})
    if dupes:
        problems.append(f"codes used twice in the file: {', '.join(dupes[:10])}")
    if problems:
        raise CommandError("nothing imported:\n" + "\n".join(f"  - {p}" for p in problems))
    last = _journal_all(controller, new_people, badges, items, by, who)
    if last is not None:
        try:
            await last  # the writer is FIFO: the last one durable means all are
        except Exception:
            controller.reload_registry()  # forget what memory took but the disk refused
            raise
    controller.items_changed({it.compartment for it in items if it.compartment})
    return {"people": len(new_people), "badges": len(badges), "items": len(items)}


def _check_people(controller: Controller, records: list[dict[str, Any]], people: dict[str, Person],
                  problems: list[str]) -> list[Person]:
    """The valid people records, each also added to ``people`` so that later records may name them."""
    reg = controller.registry
    new_people: list[Person] = []
    for i, r in enumerate(records):
        try:
            p = reg.check_person(str(r.get("id", "")), str(r.get("name", "")), str(r.get("role", "")))
            people[p.id] = p
            new_people.append(p)
        except CommandError as e:
            problems.append(f"people record {i + 1}: {e}")
    return new_people


def _check_badges(controller: Controller, records: list[dict[str, Any]], people: dict[str, Person],
                  problems: list[str]) -> list[tuple[str, str]]:
    """The valid badge records as (code, person)."""
    badges: list[tuple[str, str]] = []
    for i, r in enumerate(records):
        code, person = str(r.get("code", "")), str(r.get("person", ""))
        try:
            controller.registry.check_badge(code, person, people)
            badges.append((code, person))
        except CommandError as e:
            problems.append(f"badges record {i + 1}: {e}")
    return badges


def _check_items(controller: Controller, records: list[dict[str, Any]], people: dict[str, Person],
                 problems: list[str]) -> list[Item]:
    """The valid item records; a field absent or blank keeps what the item had."""
    items = []
    for i, r in enumerate(records):
        try:
            comp = r.get("compartment") or None
            def given(key: str, r: dict[str, Any] = r) -> str | None:
                return str(r[key]) if r.get(key) not in (None, "") else None  # absent or blank: keep

            items.append(controller.registrations.check_item(
                str(r.get("code", "")), given("kind"), str(comp) if comp is not None else None,
                given("case_name"), given("category"), given("officer"), people))
        except CommandError as e:
            problems.append(f"items record {i + 1}: {e}")
    return items


def _journal_all(controller: Controller, new_people: list[Person], badges: list[tuple[str, str]],
                 items: list[Item], by: str, who: dict[str, Any]) -> asyncio.Future[Any] | None:
    """Journal and apply every checked record; returns the last append, or None when there was nothing."""
    reg, j = controller.registry, controller.journal
    last: asyncio.Future[Any] | None = None
    for p in new_people:
        authority = reg.authority_role(p.id, str(p.role))  # judged before the change, as a station command is
        last = j.append("person.registered", people=(p.id,), name=p.name, role=str(p.role), by=by, **who,
                        state=reg.put_person(p))
        if authority is not None:
            last = j.append("notice.authority_changed", people=(p.id,), action="import", role=str(p.role),
                            by=by, **who)
    for code, person in badges:
        last = j.append("badge.registered", people=(person,), badge=reg.badge(code), by=by, **who,
                        state=reg.put_badge(code, person))
        if (role := reg.authority_role(person)) is not None:
            last = j.append("notice.authority_changed", people=(person,), action="import", role=role,
                            badge=reg.badge(code), by=by, **who)
    for it in items:
        last = j.append("item.assigned", compartment=it.compartment, dossier=it.code, item_kind=it.kind,
                        case_name=it.case_name, category=it.category, officer=it.officer, by=by, **who,
                        state=reg.put_item(it))
    return last
