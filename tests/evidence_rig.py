"""The sim rig with what the evidence and override tests need: reason cards, a supervisor, a rear door."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from rig import DATA, TOML, Rig, make_rig

REASONS = """
[evidence]
depositor_may_retrieve = true
[evidence.reasons]
R-COURT = "court hearing"
R-LAB = "forensic laboratory"
[evidence.release_reasons]
X-OWNER = "returned to its owner"
"""

# The evidence cabinet with a rear door per compartment: fronts on channels 0-1, rears on 2-3.
PASS_THROUGH = ('[cabinets.e]\nkind = "evidence"\nlock_driver = "sim-e"\ncount = 2\n'
                "first_rear_lock = 2\nfirst_rear_sensor = 2\n")


def toml(*, depositor_may_retrieve: bool = True, pass_through: bool = False, max_energised: int = 2) -> str:
    text = TOML + REASONS.replace("depositor_may_retrieve = true",
                                  f"depositor_may_retrieve = {str(depositor_may_retrieve).lower()}")
    if pass_through:
        text = text.replace('[cabinets.e]\nkind = "evidence"\nlock_driver = "sim-e"\ncount = 4\n', PASS_THROUGH)
    return text.replace("max_energised = 2", f"max_energised = {max_energised}")


def data() -> dict[str, Any]:
    d = copy.deepcopy(DATA)
    d["people"] += [
        {"id": "holm", "name": "Erik Holm", "role": "supervisor"},
        {"id": "sato", "name": "Yuki Sato", "role": "supervisor"},
        {"id": "ex", "name": "Former Officer", "role": "officer"},
    ]
    d["badges"] += [{"code": "B-HOLM", "person": "holm"}, {"code": "B-NOWAK", "person": "nowak"}]
    d["items"] += [{"code": "E-2", "kind": "evidence", "case_name": "Case two", "category": "phone",
                    "officer": "okafor", "compartment": "e02"}]
    return d


async def evidence_rig(tmp: Path, **kw: Any) -> Rig:
    r = await make_rig(tmp, toml(**kw), data())
    # A revoked person, as the station's revoke-person leaves it.
    await r.c.journal.append_durable("person.revoked", people=("ex",), state=r.c.registry.revoke_person("ex"))
    return r


async def deposit(r: Rig, code: str = "E-1", officer: str = "B-BERG", channel: int = 0) -> None:
    """Officer and case manager deposit an evidence item; the door opens and shuts again."""
    await r.scan(officer)
    await r.scan(code)
    out = await r.scan("B-LIND")
    assert out.pulsed, out.message
    await r.pull(r.e, channel)
    await r.close(r.e, channel)
    await r.clock.advance(1)
    await r.flush()  # so that journal.last_seq counts the deposit's events
