"""Prometheus metrics of one controller, read from its journal: what IT's monitoring already scrapes.

Served by the read-only display process (never inside the daemon's safety
loop): the journal is opened read-only, and each scrape reads only the
events written since the last one, so a scrape costs the same on a journal
of a million events as on a new one (the first scrape counts everything
once, through the kind index). Nothing here can change a record.

The refusal reasons are free text naming items and compartments; they are
counted in a fixed set of kinds (:data:`REFUSALS`) so that a label never
grows with the data.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from lockerd.clock import parse_time
from lockerd.journal import connect

PAGE = 5000
# (label, a pattern of the refusal's reason), the first that matches; else "other".
REFUSALS: tuple[tuple[str, re.Pattern[str]], ...] = tuple((label, re.compile(pattern)) for label, pattern in (
    ("malformed", r"^malformed input|^incomplete scan"),
    ("unknown_code", r"^unknown code"),
    ("badge_revoked", r"^badge revoked"),
    ("released", r"^released on"),
    ("not_assigned", r"^not assigned|is not in this locker"),
    ("other_cabinet", r"^belongs to cabinet"),
    ("wrong_kind", r"assigned to .* compartment"),
    ("evidence_rule", r"^evidence rule not met|one scan cannot be two people|^no badge before"),
    ("wrong_side", r"open the (front|rear) door"),
    ("fault", r"in fault"),
    ("journal_unavailable", r"^journal unavailable"),
    ("not_now", r"^not now|stopping|reloading|starting"),
))
# Latency buckets, seconds: the safety path's budget is 5 ms, scan to pulse.
LATENCY_BUCKETS = (0.001, 0.002, 0.003, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def refusal_kind(reason: str) -> str:
    return next((label for label, pattern in REFUSALS if pattern.search(reason)), "other")


class Latencies:
    """One latency histogram, in seconds, counted from a journal field given in milliseconds."""

    def __init__(self, name: str, doc: str):
        self.name, self.doc = name, doc
        self.counts: Counter[float] = Counter()  # bucket upper bound -> count
        self.total = 0.0

    def observe(self, ms: Any) -> None:
        if isinstance(ms, int | float) and not isinstance(ms, bool):
            seconds = ms / 1000
            self.total += seconds
            self.counts[next((b for b in LATENCY_BUCKETS if seconds <= b), float("inf"))] += 1

    def family(self, names: list[str], values: list[str]) -> Metric:
        hist = HistogramMetricFamily(self.name, self.doc, labels=names)
        cumulative, buckets = 0, []
        for bound in (*LATENCY_BUCKETS, float("inf")):
            cumulative += self.counts[bound]
            buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", cumulative))
        hist.add_metric(values, buckets, self.total)
        return hist


class JournalMetrics(Collector):
    """A prometheus_client collector over one journal, read-only, catching up on each collect()."""

    def __init__(self, journal: Path, site: str = "", node: str = ""):
        self.journal = journal
        self.labels = {"site": site, "node": node}
        self.after = 0  # events up to this seq are counted
        self.kinds: Counter[str] = Counter()
        self.refusals: Counter[str] = Counter()
        self.alarms: Counter[str] = Counter()
        self.faults: Counter[str] = Counter()
        self.board_events: Counter[tuple[str, str]] = Counter()  # (driver, event) offline/unconfirmed/failed
        self.latency = Latencies("lockerd_scan_to_pulse_seconds", "Scan to lock pulse, the grant durable in between")
        # The storage's share of each opening: an SD card wearing out shows here first.
        self.durable = Latencies("lockerd_grant_durable_seconds", "A grant written to on disk, before its lock moved")
        self.started_ts: float | None = None  # wall time of the running daemon's start, None when stopped

    def collect(self) -> Iterator[Metric]:
        with contextlib.closing(connect(self.journal, readonly=True)) as conn:
            self._catch_up(conn)
            yield from self._counters()
            yield from self._gauges(conn)

    def _catch_up(self, conn: sqlite3.Connection) -> None:
        while rows := conn.execute("SELECT seq, ts, kind, compartment, data FROM events WHERE seq > ? "
                                   "ORDER BY seq LIMIT ?", (self.after, PAGE)).fetchall():
            for seq, ts, kind, _compartment, data in rows:
                self._count(ts, kind, json.loads(data or "{}"))
                self.after = seq

    def _count(self, ts: str, kind: str, data: dict[str, Any]) -> None:
        self.kinds[kind] += 1
        if kind == "access.denied":
            self.refusals[refusal_kind(str(data.get("reason", "")))] += 1
        elif kind.startswith("alarm.") and kind not in ("alarm.cleared", "alarm.acknowledged"):
            self.alarms[kind.removeprefix("alarm.")] += 1
        elif kind == "compartment.fault":
            self.faults[str(data.get("fault", "other"))] += 1
        elif kind == "fault.wiring_suspected":
            self.faults["wiring"] += 1
        elif kind in ("driver.offline", "lock.unconfirmed", "lock.failed"):
            self.board_events[(str(data.get("driver", "")), kind)] += 1
        elif kind == "lock.pulsed":
            self.latency.observe(data.get("latency_ms"))
            self.durable.observe(data.get("durable_ms"))
        elif kind == "daemon.started":
            self.started_ts = parse_time(ts)
        elif kind == "daemon.stopped":
            self.started_ts = None

    def _counters(self) -> Iterator[Metric]:
        names, values = list(self.labels), list(self.labels.values())

        def counter(name: str, doc: str, extra: list[str], counts: dict[Any, int]) -> Metric:
            m = CounterMetricFamily(name, doc, labels=[*names, *extra])
            for key, n in sorted(counts.items()):
                m.add_metric([*values, *(key if isinstance(key, tuple) else (key,))], n)
            return m

        yield counter("lockerd_events", "Journal events by kind", ["kind"], self.kinds)
        yield counter("lockerd_scans", "Scans taken (good or bad)", [], {(): self.kinds["scan"]})
        yield counter("lockerd_grants", "Openings granted", [], {(): self.kinds["access.granted"]})
        yield counter("lockerd_refusals", "Scans and openings refused, by kind of reason", ["reason"],
                      self.refusals)
        yield counter("lockerd_pulses", "Lock pulses started", [], {(): self.kinds["lock.pulsed"]})
        yield counter("lockerd_alarms", "Alarms raised, by kind", ["alarm"], self.alarms)
        yield counter("lockerd_faults", "Compartment faults raised, by kind", ["fault"], self.faults)
        yield counter("lockerd_board_errors", "A board gone offline, or a lock write unanswered or refused",
                      ["driver", "event"], self.board_events)
        yield self.latency.family(names, values)
        yield self.durable.family(names, values)

    def _gauges(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        names, values = list(self.labels), list(self.labels.values())
        last = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0]
        delivered = conn.execute("SELECT delivered FROM outbox WHERE id = 1").fetchone()
        backlog = GaugeMetricFamily("lockerd_outbox_backlog_events",
                                    "Journal events the station broker has not acknowledged yet", labels=names)
        backlog.add_metric(values, max(0, last - (delivered[0] if delivered else 0)))
        yield backlog
        doors = GaugeMetricFamily("lockerd_doors", "Doors by state", labels=[*names, "state"])
        waiting = 0
        for state, n in conn.execute("SELECT door, COUNT(*) FROM compartments GROUP BY door"):
            doors.add_metric([*values, state or "unknown"], n)
        for (alarm,) in conn.execute("SELECT alarm FROM compartments"):
            waiting += int("forced" in json.loads(alarm or "[]"))
        yield doors
        alarms = GaugeMetricFamily("lockerd_alarms_waiting", "Forced doors waiting for a person to acknowledge them",
                                   labels=names)
        alarms.add_metric(values, waiting)
        yield alarms
        uptime = GaugeMetricFamily("lockerd_uptime_seconds", "Since the running daemon started (0: stopped)",
                                   labels=names)
        uptime.add_metric(values, max(0.0, time.time() - self.started_ts) if self.started_ts else 0.0)
        yield uptime
