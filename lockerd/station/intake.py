"""Station commands: parsing, checking against the contract, and de-duplication.

A command is refused (with a reply and a ``command.refused`` journal event)
when it is too big, not JSON, not matching its schema, retained, too old or
too far in the future, or addressed to another site or node. An id seen
before is answered with its first outcome and never applied again; the ids
of accepted commands are journaled, so this holds across restarts.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from lockerd.clock import parse_time
from lockerd.station import contract, signing
from lockerd.station.validate import errors

log = logging.getLogger(__name__)

# How many command ids (and their first replies) are remembered.
SEEN_MAX = 20_000


@dataclass
class Command:
    """A command as far as it could be read."""

    name: str
    id: str | None = None
    requested_by: str | None = None
    ts: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    addressed: bool = False  # names its site and node (required when signed)
    signatures: list[dict[str, str]] | None = None  # as sent; checked when the command runs
    digest: bytes | None = None  # of the signed text, when signatures were sent
    signed_by: tuple[str, ...] = ()  # key ids whose signatures held, set when authorised

    @property
    def meta(self) -> dict[str, Any]:
        return {"command_id": self.id, "requested_by": self.requested_by, "ts": self.ts, "name": self.name}


class Refused(Exception):
    """The command cannot be run; ``command`` holds what could be read of it."""

    def __init__(self, command: Command, message: str):
        super().__init__(message)
        self.command = command
        self.message = message


def parse(name: str, payload: bytes, *, retained: bool, site: str, node: str, now: float,
          max_age_s: float) -> Command:
    """Read and check one command; raise Refused with a one-sentence reason."""
    cmd = Command(name)
    body = _json_object(cmd, payload)
    _take_identity(cmd, body)
    where = _not_text(body)
    if where is not None:
        raise Refused(cmd, f"{where}: holds a lone UTF-16 surrogate, which is not text")
    if name not in contract.COMMAND_ARGS:
        raise Refused(cmd, f"unknown command {name!r} (known: {', '.join(contract.COMMAND_ARGS)})")
    problems = errors(body, _schema(name))
    if problems:
        raise Refused(cmd, "; ".join(problems[:5]))
    cmd.args = body["args"]
    cmd.addressed = "site" in body and "node" in body
    if "signatures" in body:
        cmd.signatures = body["signatures"]
        cmd.digest = signing.digest(name, body)
    if body.get("site", site) != site or body.get("node", node) != node:
        raise Refused(cmd, f"addressed to {body.get('site', site)}/{body.get('node', node)}, this is {site}/{node}")
    if retained:
        raise Refused(cmd, "retained commands are refused: publish commands with retain=false")
    _check_age(cmd, body["ts"], now, max_age_s)
    return cmd


def _json_object(cmd: Command, payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object, or Refused."""
    if len(payload) > contract.MAX_COMMAND_BYTES:
        raise Refused(cmd, f"payload of {len(payload)} bytes exceeds the {contract.MAX_COMMAND_BYTES}-byte limit")
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as e:
        # ValueError covers bad UTF-8, bad JSON and integers past Python's
        # 4300-digit limit; RecursionError, nesting a few thousand deep.
        raise Refused(cmd, f"payload is not JSON this controller reads: {type(e).__name__}: {str(e)[:120]}") from None
    if not isinstance(body, dict):
        raise Refused(cmd, "payload must be a JSON object")
    return body


def _take_identity(cmd: Command, body: dict[str, Any]) -> None:
    """Take what we can for the reply and the journal before judging the rest.

    Only text that is text: a lone surrogate, valid JSON, is not.
    """
    cid = body.get("id")
    if _text(cid) and len(cid) <= 64:
        cmd.id = cid
    by = body.get("requested_by")
    if _text(by) and len(by) <= 64:
        cmd.requested_by = by
    if _text(body.get("ts")):
        cmd.ts = body["ts"][:40]


def _check_age(cmd: Command, ts: str, now: float, max_age_s: float) -> None:
    """Refuse a command sent too long ago, or stamped too far in the future."""
    try:
        sent = parse_time(ts)
    except ValueError:
        raise Refused(cmd, f"ts: {ts!r} is not an ISO 8601 time") from None
    age = now - sent
    if age > max_age_s:
        raise Refused(cmd, f"command is {age:.0f} s old, older than command_max_age_s ({max_age_s:g} s)")
    if age < -max_age_s:
        raise Refused(cmd, f"command ts is {-age:.0f} s in the future: check the clocks")


def _text(value: Any) -> bool:
    """A string that encodes as UTF-8 (json.loads lets lone surrogates through)."""
    if not isinstance(value, str):
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _not_text(body: Any) -> str | None:
    """The path of the first key or string in ``body`` that is not UTF-8 text; None when all are."""
    stack: list[tuple[str, Any]] = [("payload", body)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if not _text(value):
                return path
        elif isinstance(value, dict):
            for k, v in value.items():
                if not _text(k):
                    return f"{path} (a key)"
                stack.append((f"{path}.{k}" if path != "payload" else k, v))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
    return None


@cache
def _schema(name: str) -> dict[str, Any]:
    # Built once per command name: building it (a deep copy of the envelope)
    # cost as much as checking a command against it, on every command.
    return contract.command_schema(name)


class SeenIds:
    """Ids of accepted commands, oldest first, with their first reply."""

    def __init__(self, capacity: int = SEEN_MAX):
        self.capacity = capacity
        self._seen: OrderedDict[str, dict[str, Any] | None] = OrderedDict()

    def __contains__(self, cid: str) -> bool:
        return cid in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, cid: str, reply: dict[str, Any] | None = None) -> None:
        self._seen[cid] = reply
        self._seen.move_to_end(cid)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)

    def discard(self, cid: str) -> None:
        """Forget an id whose acceptance could not be journaled (a repeat may apply it)."""
        self._seen.pop(cid, None)

    def reply(self, cid: str) -> dict[str, Any] | None:
        return self._seen.get(cid)

    def load(self, journal: Any) -> None:
        """Reload recent ids (and outcomes) from the journal's command events."""
        rows = journal.query(
            "SELECT kind, json_extract(data, '$.command_id'), json_extract(data, '$.command'), "
            "json_extract(data, '$.error') FROM events WHERE kind IN ('command.accepted', 'command.failed') "
            # A grant carries its command id: it counts even if the acceptance
            # row (queued just before it, not awaited) failed to be written.
            "OR (kind = 'access.granted' AND json_extract(data, '$.command_id') IS NOT NULL) "
            "ORDER BY seq DESC LIMIT ?", self.capacity * 2)
        for kind, cid, name, error in reversed(rows):
            if not isinstance(cid, str):
                continue
            if kind == "command.accepted":
                self.add(cid, {"command": name, "ok": True})
            elif kind == "access.granted":
                if cid not in self:
                    self.add(cid, {"command": "open", "ok": True})
            else:
                self.add(cid, {"command": name, "ok": False, "error": error or "failed"})
        if rows:
            log.info("station: %d recent command ids reloaded from the journal", len(self))
