"""Signed checkpoints: the journal's chain anchored outside the board.

The controller holds an Ed25519 key of its own (made at first start, in a
file only the service can read) and signs, every ``checkpoint_every`` events,
every ``checkpoint_interval_s`` seconds with new events, at start and at
stop, the pair (seq, hash) of the journal's newest event with the site, node
and time. Each checkpoint is journaled (``journal.checkpoint``) and the
station link publishes it, retained, on the node's ``checkpoint`` topic. The
station keeps them: whoever later rewrites, truncates or renumbers the
journal cannot make its hash at a kept seq match (``lockerd verify
--anchors``), and cannot sign for another key.

The newest checkpoint is also kept in a file beside the journal, so that a
start on a journal that ends before it (deleted rows) is an alarm at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lockerd import secretfile
from lockerd.clock import Clock, iso_utc
from lockerd.errors import JournalError
from lockerd.journal import Event, Journal, canonical, connect

if TYPE_CHECKING:
    import nacl.signing

log = logging.getLogger(__name__)
# PyNaCl is imported where a key is used (about 20 ms): the daemon signs its first checkpoint after READY.

KIND = "journal.checkpoint"
SIGNED_FIELDS = ("site", "node", "seq", "hash", "ts", "key")


def load_or_create_key(path: Path) -> nacl.signing.SigningKey:
    """The controller's signing key; made (readable by this user only) when there is none."""
    import nacl.signing

    seed, made = secretfile.load_or_make(path)
    key = nacl.signing.SigningKey(seed)
    if made:
        log.warning("checkpoints: made a new signing key in %s; give its public key to the station: %s", path,
                    public_hex(key))
    return key


def public_hex(key: nacl.signing.SigningKey) -> str:
    return bytes(key.verify_key).hex()


def signed_text(cp: dict[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return canonical({k: cp[k] for k in SIGNED_FIELDS}).encode()


def signature_ok(cp: dict[str, Any], key_hex: str) -> bool:
    import nacl.exceptions
    import nacl.signing

    try:
        nacl.signing.VerifyKey(bytes.fromhex(key_hex)).verify(signed_text(cp), bytes.fromhex(cp["sig"]))
    except (nacl.exceptions.BadSignatureError, ValueError, KeyError, TypeError):
        return False
    return True


def last_path(journal_path: Path) -> Path:
    return journal_path.with_name(journal_path.name + ".checkpoint")


class Checkpointer:
    """Signs and journals checkpoints while the daemon runs."""

    def __init__(self, journal: Journal, clock: Clock, site: str, node: str, key: nacl.signing.SigningKey,
                 every: int = 1000, interval_s: float = 300.0):
        self.journal = journal
        self.clock = clock
        self.site, self.node = site, node
        self.key = key
        self.public = public_hex(key)
        self.every = every
        self.interval_s = interval_s
        self.signed_seq = 0  # the seq the newest checkpoint covers
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.journal.subscribe(self._on_events)
        self.checkpoint("start")
        self._task = asyncio.get_running_loop().create_task(self._timer(), name="checkpoints")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(JournalError):
            await self.journal.flush()  # daemon.stopped is the newest event: that is what the last one signs
        written = self.checkpoint("stop")
        if written is not None:
            # On disk before the link's last delivery, which sends what the journal holds.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(written), 2.0)

    def checkpoint(self, reason: str) -> asyncio.Future[Event] | None:
        """Sign the journal's newest event now (nothing when it is unusable or already signed)."""
        seq, h = self.journal.last_seq, self.journal.last_hash
        if not self.journal.healthy or seq == 0 or seq == self.signed_seq:
            return None
        cp: dict[str, Any] = {"site": self.site, "node": self.node, "seq": seq, "hash": h,
                              "ts": iso_utc(self.clock.wall()), "key": self.public}
        cp["sig"] = self.key.sign(signed_text(cp)).signature.hex()
        self.signed_seq = seq
        fut = self.journal.append(KIND, reason=reason, **cp)
        fut.add_done_callback(lambda f: self._keep_copy(f, cp))
        return fut

    def _keep_copy(self, fut: asyncio.Future[Event], cp: dict[str, Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            return
        path = last_path(self.journal.path)
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(cp) + "\n")
            os.replace(tmp, path)
        except OSError as e:
            log.warning("checkpoints: cannot keep a copy in %s: %s", path, e)

    def _on_events(self, events: list[Event]) -> None:
        if events[-1].seq - self.signed_seq >= self.every and events[-1].kind != KIND:
            self.checkpoint("every")

    async def _timer(self) -> None:
        while True:
            await self.clock.sleep(self.interval_s)
            # The checkpoint itself is an event: a quiet journal is not signed again for its own checkpoint.
            if self.journal.last_seq > self.signed_seq + 1:
                self.checkpoint("interval")


def check_at_start(journal: Journal) -> dict[str, Any] | None:
    """The journal against the newest checkpoint kept beside it: what is wrong, or None."""
    path = last_path(journal.path)
    try:
        cp = json.loads(path.read_text())
        seq, h = int(cp["seq"]), str(cp["hash"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        return {"reason": f"the kept checkpoint {path} is unreadable: {e}"}
    if journal.last_seq < seq:
        return {"reason": f"the journal ends at seq {journal.last_seq}, before the checkpoint of seq {seq}",
                "checkpoint_seq": seq, "last_seq": journal.last_seq}
    rows = journal.query("SELECT hash FROM events WHERE seq = ?", seq)
    if not rows or rows[0][0] != h:
        return {"reason": f"seq {seq} no longer has the hash its checkpoint signed", "checkpoint_seq": seq}
    return None


def read_anchors(texts: list[str], files: list[Path]) -> list[dict[str, Any]]:
    """Anchors the station holds: ``SEQ:HASH`` strings, and files of them or of checkpoints (JSON, one a line)."""
    lines = list(texts)
    for f in files:
        lines += [line.strip() for line in Path(f).read_text().splitlines() if line.strip()]
    out = []
    for line in lines:
        if line.startswith("{"):
            cp = json.loads(line)
            out.append({**cp, "seq": int(cp["seq"]), "hash": str(cp["hash"])})
        else:
            seq, _, h = line.partition(":")
            out.append({"seq": int(seq), "hash": h.strip()})
    return sorted(out, key=lambda a: a["seq"])


def check_anchors(path: Path, anchors: list[dict[str, Any]], key_hex: str | None) -> list[str]:
    """Each anchor against the journal: truncation, rewrite and renumbering show as a missing seq or another hash.

    With ``key_hex`` (the controller's public key, as the station pinned it), a checkpoint whose signature
    does not verify is named too: it is not this controller's.
    """
    problems = []
    conn = connect(path, readonly=True)
    try:
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0] or 0
        for a in anchors:
            if key_hex is not None and "sig" in a and not signature_ok(a, key_hex):
                problems.append(f"the checkpoint of seq {a['seq']} is not signed by key {key_hex[:16]}...")
                continue
            row = conn.execute("SELECT hash FROM events WHERE seq = ?", (a["seq"],)).fetchone()
            if a["seq"] > last:
                problems.append(f"TRUNCATED: the journal ends at seq {last}; the station holds seq {a['seq']}")
            elif row is None or row[0] != a["hash"]:
                problems.append(f"REWRITTEN: seq {a['seq']} does not have the hash the station holds "
                                f"({a['hash'][:16]}...)")
    finally:
        conn.close()
    return problems


def check_export_anchors(path: Path, anchors: list[dict[str, Any]], key_hex: str | None) -> list[str]:
    """The anchors within an export's range against its rows (a row dropped, renumbered or re-hashed shows)."""
    from lockerd.journal_export import read_export

    meta, _, rows = read_export(path)
    return export_anchor_problems(meta, [r.cells for r in rows], anchors, key_hex)


def export_anchor_problems(meta: Mapping[str, Any], rows: Iterable[Mapping[str, Any]],
                           anchors: list[dict[str, Any]], key_hex: str | None) -> list[str]:
    """The anchors within an export's range (its header ``meta``) against its rows' cells."""
    first, last = meta.get("first_seq") or 0, meta.get("last_seq") or 0
    hashes: dict[int, str] = {}
    for cells in rows:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            hashes[int(cells["seq"])] = str(cells["hash"])
    problems = []
    until = meta.get("until")
    for a in anchors:
        if a["seq"] > last and (until is None or str(a.get("ts", "")) <= until):
            # The export covers up to its end (or a time after this checkpoint): the row should be in it.
            problems.append(f"TRUNCATED: the export ends at seq {last}; the station holds seq {a['seq']}")
            continue
        if not first <= a["seq"] <= last:
            continue
        if key_hex is not None and "sig" in a and not signature_ok(a, key_hex):
            problems.append(f"the checkpoint of seq {a['seq']} is not signed by key {key_hex[:16]}...")
        elif a["seq"] not in hashes:
            problems.append(f"MISSING: seq {a['seq']}, which the station holds, is not in the export")
        elif hashes[a["seq"]] != a["hash"]:
            problems.append(f"REWRITTEN: seq {a['seq']} does not have the hash the station holds "
                            f"({a['hash'][:16]}...)")
    return problems
