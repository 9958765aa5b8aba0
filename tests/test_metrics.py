"""Prometheus metrics read from the journal, scraped and parsed by prometheus_client's own text parser."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rig import close_rig, make_rig

from lockerd.metrics import JournalMetrics, refusal_kind


def scrape(metrics: JournalMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(metrics)
    text = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    want = {"site": "test-site", "node": "node-1"} | labels
    return samples[(name, tuple(sorted(want.items())))]


@pytest.mark.asyncio
async def test_a_shift_reads_as_counters_gauges_and_a_latency_histogram(tmp_path):
    rig = await make_rig(tmp_path)
    try:
        metrics = JournalMetrics(rig.cfg.journal_path, "test-site", "node-1")
        rig.d.force(3)  # d04 forced open
        await rig.clock.advance(0.05)
        await rig.scan("D-1")  # a deposit: grant, pulse
        await rig.scan("NOPE-42")  # refused: unknown code
        await rig.c.remote_open("d02", "test", {"command_id": "c1", "requested_by": "nowak"})  # no scan
        await rig.flush()
        s = scrape(metrics)
        assert value(s, "lockerd_scans_total") == 2 and value(s, "lockerd_grants_total") == 2
        assert value(s, "lockerd_pulses_total") == 2
        assert value(s, "lockerd_refusals_total", reason="unknown_code") == 1
        assert value(s, "lockerd_alarms_total", alarm="forced") == 1
        assert value(s, "lockerd_alarms_waiting") == 1
        assert value(s, "lockerd_doors", state="open") == 1
        # Scan to pulse is the scan's alone: the station's open had no scan to count from.
        assert value(s, "lockerd_scan_to_pulse_seconds_count") == 1
        assert value(s, "lockerd_scan_to_pulse_seconds_bucket", le="+Inf") == 1
        assert value(s, "lockerd_grant_durable_seconds_count") == 2  # the storage's share of each opening
        assert value(s, "lockerd_outbox_backlog_events") > 0  # no station link here: nothing acknowledged
        assert value(s, "lockerd_uptime_seconds") >= 0
        # The next scrape reads only what came since, and counts on from there.
        read_before = metrics.after
        await rig.scan("NOPE-43")
        await rig.flush()
        s = scrape(metrics)
        assert metrics.after > read_before
        assert value(s, "lockerd_refusals_total", reason="unknown_code") == 2 and value(s, "lockerd_scans_total") == 3
    finally:
        await close_rig(rig)


def test_refusal_reasons_fall_in_a_fixed_set_of_kinds():
    assert refusal_kind("unknown code") == "unknown_code"
    assert refusal_kind("belongs to cabinet B, not served by this scanner") == "other_cabinet"
    assert refusal_kind("compartment d02 in fault (jam: 3 pulses)") == "fault"
    assert refusal_kind("evidence rule not met within 60 s: needs a case manager's badge") == "evidence_rule"
    assert refusal_kind("something never seen before D-2026-0431") == "other"


@pytest.mark.asyncio
async def test_the_display_serves_them_on_metrics(tmp_path):
    import asyncio
    import socket

    import aiohttp

    from lockerd.display.server import serve

    rig = await make_rig(tmp_path)
    stop, ready = asyncio.Event(), asyncio.Event()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = asyncio.create_task(serve(rig.cfg, port, ready, stop))
    try:
        await rig.scan("D-1")
        await rig.flush()
        await asyncio.wait_for(ready.wait(), 10)
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain; version=")
            text = await r.text()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert value(samples, "lockerd_grants_total") == 1 and value(samples, "lockerd_pulses_total") == 1
    finally:
        stop.set()
        await server
        await close_rig(rig)
