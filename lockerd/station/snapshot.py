"""The controller's whole current state in one message: the station rebuilds from it, on any broker.

Retained messages cannot carry correctness: a clustered broker may keep
them on one node only, or hand them only to exact-topic subscriptions. The
snapshot says, in one payload, what they would have said (presence, every
compartment, the journal's health) plus where the event stream stands
(``last_seq``, ``last_hash``) and the newest signed checkpoint. The station
asks for it with the ``snapshot`` command; the link also publishes it on
every connect.
"""

from __future__ import annotations

import json
from typing import Any

from lockerd.checkpoints import SIGNED_FIELDS, last_path
from lockerd.journal import Journal


def kept_checkpoint(journal: Journal) -> dict[str, Any] | None:
    """The newest signed checkpoint, as kept beside the journal; None when there is none (or it is unreadable)."""
    try:
        cp = json.loads(last_path(journal.path).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(cp, dict) or any(k not in cp for k in (*SIGNED_FIELDS, "sig")):
        return None
    return {k: cp[k] for k in (*SIGNED_FIELDS, "sig")}


def build(journal: Journal, states: dict[str, dict[str, Any]], site: str, node: str, ts: str) -> dict[str, Any]:
    """The snapshot payload (contract.SNAPSHOT)."""
    return {
        "ts": ts, "site": site, "node": node, "boot": journal.boot,
        "presence": {"state": "online", "ts": ts, "boot": journal.boot},
        # Events up to last_seq are in the journal; the compartments are as of then or a little later, so an
        # event after last_seq may repeat a change the snapshot already shows.
        "last_seq": journal.last_seq, "last_hash": journal.last_hash,
        "checkpoint": kept_checkpoint(journal),
        "journal": {"writable": journal.healthy and not journal.held, "error": journal.error,
                    "held": journal.held},
        "compartments": [{**states[cid], "ts": ts} for cid in sorted(states)],
    }
