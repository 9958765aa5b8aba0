"""From what the bench observed to findings: one finding per fault, never one per symptom.

Pure: the observations in (the result records of a run, and which drivers
were seen offline), the findings and each compartment's verdict out, with no
I/O and no hardware, so every finding kind is proven by a unit test on
hand-made records (tests/test_hil_findings.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

from lockerd.hil.report import (
    FAIL,
    PASS,
    UNTESTED,
    BoardResult,
    BrokerResult,
    CompartmentResult,
    Finding,
    Report,
    ScannerResult,
)


@dataclass
class Conclusion:
    """The compartments with their verdicts (status, crossed pairs named), the findings in report order, and
    what the technician must do at once."""

    compartments: list[CompartmentResult]
    findings: list[Finding]
    actions: list[str]


def conclude(observed: Report, offline: Mapping[str, str]) -> Conclusion:
    """The findings of a run; ``offline`` maps each driver seen offline during it to what it said.

    ``observed`` is left as it is: the compartments come back as copies.
    """
    comps = [replace(c, moved=list(c.moved), problems=list(c.problems)) for c in observed.compartments]
    for c in comps:
        c.status = FAIL if c.problems else PASS if c.open_ms is not None else UNTESTED
    # A board that never answered a read is offline, whether or not a driver said so.
    gone = dict(offline)
    for b in observed.boards:
        if b.requests and b.answered == 0:
            gone.setdefault(b.name, b.error)
    # A board that answers after the timeout is one fault said once: not also "not answering" and
    # "misses replies".
    slow = [b for b in observed.boards if b.late_ms is not None]
    for b in slow:
        gone.pop(b.name, None)
    findings = [
        *_slow_boards(slow, comps),
        *_unreliable_boards([b for b in observed.boards if b.late_ms is None]),
        *_offline_drivers(gone, comps),
        *_wiring(comps),
        *_compartment_faults(comps),
        *_unexplained(observed.unexplained),
        *_scanner_faults(observed.scanners),
        *_broker_faults(observed.brokers),
    ]
    # A relay left on burns its solenoid and leaves a door unlocked: the board's power goes off before
    # anything else is done.
    stuck = dict.fromkeys(c.lock_driver for c in comps if "relay-stuck" in c.problems)
    actions = [f"cut the power to board {board}: a relay of it stays on" for board in stuck]
    return Conclusion(comps, findings, actions)


def _unexplained(openings: list[dict[str, str]]) -> list[Finding]:
    """Doors that opened with no pulse to explain them: never blamed on a lock, said as what they are."""
    return [Finding("unexplained-opening", o["compartment"] or o["sensor"],
                    f"its door (sensor {o['sensor']}) opened with no pulse to explain it, {o['during']}: a forced "
                    "door, a key or a person; no lock was blamed for it", dict(o))
            for o in openings]


def _slow_boards(boards: list[BoardResult], comps: list[CompartmentResult]) -> list[Finding]:
    findings = []
    for b in boards:
        untested = [c.id for c in comps if b.name in (c.lock_driver, c.sensor_driver)
                    and c.status == UNTESTED and c.note != "not selected"]
        findings.append(Finding(
            "board-slow", b.name,
            f"board {b.name} answers in about {b.late_ms} ms, more than timeout_ms {b.timeout_ms} of "
            f"[buses.{b.bus}]: its replies come too late to be used (raise timeout_ms above {b.late_ms}, or find "
            "why the board is slow)" + (f"; not tested: {', '.join(untested)}" if untested else ""),
            {"late_ms": b.late_ms, "timeout_ms": b.timeout_ms, "answered": b.answered, "requests": b.requests,
             "untested": untested}))
    return findings


def _unreliable_boards(boards: list[BoardResult]) -> list[Finding]:
    return [Finding("board-unreliable", b.name,
                    f"answered {b.answered} of {b.requests} reads ({b.rate:.0%}); last error: {b.error}",
                    {"answered": b.answered, "requests": b.requests})
            for b in boards if b.answered and b.answered < b.requests]


def _offline_drivers(gone: Mapping[str, str], comps: list[CompartmentResult]) -> list[Finding]:
    findings = []
    for name, detail in gone.items():
        untested = [c.id for c in comps if name in (c.lock_driver, c.sensor_driver)
                    and c.status == UNTESTED and c.note != "not selected"]
        findings.append(Finding("board-offline", name,
                                f"not answering ({detail})" + (f"; not tested: {', '.join(untested)}" if untested
                                                               else ""),
                                {"untested": untested}))
    return findings


def _wiring(comps: list[CompartmentResult]) -> list[Finding]:
    """Locks that opened another compartment's door, two that open each other's folded into a crossed pair.

    The crossed compartments' problems and notes are rewritten to say so.
    """
    by_id = {c.id: c for c in comps}
    by_sensor = {(c.sensor_driver, c.sensor): c.id for c in comps}
    wrong: dict[str, str] = {}  # compartment -> the compartment (or else the sensor) whose door its lock opened
    for c in comps:
        if "wrong-sensor" in c.problems:
            other = [by_sensor.get(_channel(m)) for m in c.moved]
            wrong[c.id] = next((o for o in other if o), c.moved[0] if c.moved else "?")
    findings = []
    done: set[str] = set()
    for a, b in wrong.items():
        if a in done:
            continue
        ca = by_id[a]
        if wrong.get(b) == a:
            cb = by_id[b]
            done |= {a, b}
            for x, y in ((ca, cb), (cb, ca)):
                x.problems = ["crossed" if p == "wrong-sensor" else p for p in x.problems]
                x.note = f"crossed with {y.id}"
            findings.append(Finding(
                "crossed", "+".join(sorted((a, b))),
                f"lock of {a} ({ca.lock_driver} channel {ca.lock}) opens the door seen on sensor "
                f"{cb.sensor_driver} channel {cb.sensor}, and lock of {b} ({cb.lock_driver} channel {cb.lock}) "
                f"the one on sensor {ca.sensor_driver} channel {ca.sensor}: those two channels are crossed "
                "(lock wires or sensor wires swapped)",
                {"compartments": sorted((a, b)), "channels": {a: [ca.lock, ca.sensor], b: [cb.lock, cb.sensor]}}))
        else:
            done.add(a)
            findings.append(Finding("wrong-sensor", a,
                                    f"its lock ({ca.lock_driver} channel {ca.lock}) moved sensor "
                                    f"{', '.join(ca.moved)} ({b}), not its own ({ca.sensor_driver} channel "
                                    f"{ca.sensor})",
                                    {"moved": ca.moved}))
    return findings


def _compartment_faults(comps: list[CompartmentResult]) -> list[Finding]:
    """Every other problem of a compartment, one finding each (wiring is :func:`_wiring`'s)."""
    return [Finding(p, c.id, _message(p, c), {"moved": c.moved, "note": c.note})
            for c in comps for p in c.problems if p not in ("crossed", "wrong-sensor")]


def _scanner_faults(scanners: list[ScannerResult]) -> list[Finding]:
    findings = []
    for s in scanners:
        if s.status == FAIL:
            kind = ("scanner-offline" if s.error.startswith("offline") else
                    "scanner-silent" if s.code is None and s.after_s is None else
                    "scanner-bad-read" if s.code is None else "scanner-wrong-code")
            findings.append(Finding(kind, s.name, s.error))
    return findings


def _broker_faults(brokers: list[BrokerResult]) -> list[Finding]:
    return [Finding("broker-unreachable", b.broker, b.error) for b in brokers if not b.ok]


def _channel(moved: str) -> tuple[str, int]:
    d, _, ch = moved.rpartition(":")
    return d, int(ch)


def _message(kind: str, c: CompartmentResult) -> str:
    lock, sensor = f"{c.lock_driver} channel {c.lock}", f"{c.sensor_driver} channel {c.sensor}"
    return {
        "lock-not-released": f"the door did not open when its lock ({lock}) was pulsed: check the lock, its wiring "
                             "and its relay",
        "sensor-dead": f"the door opened but its sensor ({sensor}) did not change: check the sensor and its wiring",
        "no-change": f"no door sensor changed after its lock ({lock}) was pulsed: the lock did not release or "
                     f"the sensor ({sensor}) is dead; nobody was there to tell which",
        "extra-sensor": f"its lock ({lock}) opened its own door and also moved "
                        f"{', '.join(m for m in c.moved if m != f'{c.sensor_driver}:{c.sensor}')}",
        "not-closed": f"sensor {', '.join(c.moved) or sensor} still reads open after the door should have closed",
        "open-before": f"its sensor ({sensor}) reads open before the lock was pulsed and did not close: "
                       "close the door, or the sensor is stuck or inverted (open_level)",
        "sensor-unknown": f"its sensor ({sensor}) cannot be read",
        "relay-stuck": f"the relay of its lock ({lock}) did not switch off after the pulse",
        "pulse-failed": f"the board refused the pulse of {lock}: {c.note}",
    }.get(kind, kind)
