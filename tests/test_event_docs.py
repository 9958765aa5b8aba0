"""Every event kind the code journals by name is documented in docs/events.md."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A kind journaled by name: journal.append("kind", ...), append_durable("kind", ...), or an item's event in
# lockerd.domain.ITEM_EVENT ("dossier.x", "evidence.x").
JOURNALED = re.compile(r'\.(?:append|append_durable)\(\s*"([a-z_]+\.[a-z_.]+)"')
ITEM_EVENTS = re.compile(r'"((?:dossier|evidence)\.[a-z_]+)"')
# The first column of each table row; a row may document several kinds ("`a.x` / `a.y`, `b.x`").
ROW = re.compile(r"^\| ([^|]+) \|", re.MULTILINE)
KIND = re.compile(r"`([a-z_]+\.[a-z_.]+)`")


def journaled_kinds() -> set[str]:
    kinds: set[str] = set()
    for folder in ("lockerd", "drivers"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            kinds |= set(JOURNALED.findall(text))
            if path.name == "domain.py":
                kinds |= set(ITEM_EVENTS.findall(text))
    return kinds


def test_every_journaled_kind_is_documented() -> None:
    kinds = journaled_kinds()
    assert len(kinds) > 40  # the scan itself works: it finds the kinds of the safety path, faults, overrides ...
    documented = {k for cell in ROW.findall((ROOT / "docs" / "events.md").read_text()) for k in KIND.findall(cell)}
    assert sorted(kinds - documented) == [], "journaled but not in docs/events.md"
