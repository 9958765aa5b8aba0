"""Events held while the journal cannot be written: in memory, then in a spill file, and what had to be dropped.

Events that gate no lock (door changes, alarms, faults, refusals) are never
lost to a journal that cannot be written: they are held here, in the order
they happened, and journaled late once it can be written again, closed by a
``journal.outage`` event that says how long it lasted and what was kept.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from lockerd.errors import JournalError
from lockerd.journal_writer import Pending
from lockerd.projection import StateOp

log = logging.getLogger(__name__)

# Events that gate no lock (door changes, alarms, faults, refusals) are held in
# memory while the journal cannot be written, and journaled late once it can.
# At a few hundred bytes each this is a few MB; past it the oldest are dropped
# and counted in the journal.outage event (a door burst of one event a second
# takes nearly three hours to fill it).
HELD_MAX = 10_000
HELD_RETRY_S = 1.0
# Past HELD_MAX, the oldest held events go to a spill file outside the
# journal's file system (the service's runtime directory, a tmpfs): a full
# disk under the journal leaves it room. Only when that cannot be written
# either are events dropped (and counted).


def spill_path_for(journal_path: Path) -> Path:
    """Where a journal's overflow goes: $RUNTIME_DIRECTORY (systemd's /run/lockerd), else the temp folder."""
    folder = (os.environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or tempfile.gettempdir()
    digest = hashlib.sha256(str(Path(journal_path).resolve()).encode()).hexdigest()[:16]
    return Path(folder) / f"lockerd-journal-{digest}.spill"


@dataclass
class Outage:
    """Since when the journal cannot be written, and what was kept or dropped meanwhile."""

    since_ts: str
    since_mono: float
    reason: str
    dropped: dict[str, int] = field(default_factory=dict)
    spilled: int = 0


def _order(item: Pending) -> int:
    return item.order


class Holding:
    """The events waiting for the journal to be writable, oldest first, and the outage they wait through."""

    def __init__(self, spill_path: Path):
        self.spill_path = spill_path
        self.items: list[Pending] = []
        self.outage: Outage | None = None

    def start_outage(self, items: list[Pending], reason: str) -> bool:
        """An outage starts with the first of ``items`` unless one is on already: True when it starts."""
        if self.outage is not None:
            return False
        first = min(items, key=_order)
        self.outage = Outage(first.fields["ts"], first.fields["mono"], reason)
        log.error("journal: cannot write (%s); holding events in memory until it can", self.outage.reason)
        return True

    def add(self, items: list[Pending]) -> None:
        """Keep ``items`` in the order they happened; past HELD_MAX the oldest are spilled, or else dropped."""
        for it in items:
            bisect.insort(self.items, it, key=_order)
        outage = self.outage
        assert outage is not None, "start_outage first"
        while len(self.items) > HELD_MAX:
            lost = self.items.pop(0)
            if self.spill(lost):
                outage.spilled += 1
                continue
            outage.dropped[lost.kind] = outage.dropped.get(lost.kind, 0) + 1
            if sum(outage.dropped.values()) == 1:
                log.error("journal: more than %d events held and no room in %s; dropping the oldest (counted in "
                          "journal.outage)", HELD_MAX, self.spill_path)
            if lost.future is not None and not lost.future.done():
                lost.future.set_exception(JournalError("dropped: too many events held while the journal was down"))

    def spill(self, item: Pending) -> bool:
        """Write one held event (the oldest) to the spill file; False when that fails too."""
        # Plain JSON, ASCII: the file is read back by json.loads only, whatever the strings hold.
        line = json.dumps({"kind": item.kind, "fields": item.fields, "state": [list(op) for op in item.state]},
                          default=repr)
        try:
            with self.spill_path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except (OSError, ValueError):
            return False
        if self.outage is not None and self.outage.spilled == 0:
            log.error("journal: more than %d events held; the oldest go to %s", HELD_MAX, self.spill_path)
        return True

    def unspill(self) -> list[Pending]:
        """The spilled events, oldest first (the file is emptied: they are held in memory again)."""
        failure: OSError | None = None
        try:
            lines = self.spill_path.read_text(encoding="utf-8").splitlines()
            self.spill_path.unlink()
        except FileNotFoundError:
            return []
        except OSError as e:
            failure = e
        if failure is not None:
            log.error("journal: cannot read the spill file %s: %s", self.spill_path, failure)
            return []
        out = []
        for i, line in enumerate(lines):
            item = _from_spill_line(line, order=-len(lines) + i)
            if item is None:
                log.error("journal: an unreadable line in the spill file was left out: %r", line[:200])
            else:
                out.append(item)
        return out


def _from_spill_line(line: str, order: int) -> Pending | None:
    """A held event back from its spill-file line; None when the line cannot be read."""
    try:
        rec = json.loads(line)
        ops = cast("tuple[StateOp, ...]", tuple(tuple(op) for op in rec["state"]))
        return Pending(rec["kind"], rec["fields"], ops, None, keep=True, order=order)
    except (ValueError, KeyError, TypeError):
        return None
