"""The bench's findings from hand-made observations: every finding kind, one per fault, and nothing else.

No hardware and no event loop: :func:`lockerd.hil.findings.conclude` is a
pure function of the result records and the drivers seen offline.
"""

from __future__ import annotations

import copy

import pytest
from lockerd.hil.findings import conclude
from lockerd.hil.report import (
    FAIL,
    FINDING_LABELS,
    PASS,
    UNTESTED,
    BoardResult,
    BrokerResult,
    CompartmentResult,
    Report,
    ScannerResult,
)


def comp(cid: str, channel: int, driver: str = "board-a", cabinet: str = "m", **kw) -> CompartmentResult:
    """A compartment whose lock and sensor are both channel ``channel`` of ``driver``."""
    return CompartmentResult(cid, cabinet, driver, channel, driver, channel, **kw)


def passed(cid: str, channel: int, driver: str = "board-a") -> CompartmentResult:
    return comp(cid, channel, driver, moved=[f"{driver}:{channel}"], open_ms=12.5, closed=True)


def observed(compartments=(), boards=(), scanners=(), brokers=()) -> Report:
    return Report(config="lockerd.toml", site="s", node="n", started="2026-11-22T08:00:00Z",
                  compartments=list(compartments), boards=list(boards), scanners=list(scanners),
                  brokers=list(brokers))


def board(name: str, requests: int, answered: int, error: str = "") -> BoardResult:
    return BoardResult(name, "gw", 1, requests=requests, answered=answered, silent=requests - answered, error=error)


def test_a_clean_run_has_no_findings_and_every_tested_compartment_passes():
    r = observed([passed("m01", 0), passed("m02", 1), comp("m03", 2, note="not selected")],
                 [board("board-a", 20, 20)], [ScannerResult("front", status=PASS, code="CARD", after_s=0.4)],
                 [BrokerResult("b:8883", ok=True, latency_ms=3.0)])
    out = conclude(r, {})
    assert out.findings == []
    assert [c.status for c in out.compartments] == [PASS, PASS, UNTESTED]


def test_two_locks_opening_each_others_door_are_one_crossed_finding_naming_both_channels():
    r = observed([passed("m01", 0),
                  comp("m02", 1, moved=["board-a:4"], problems=["wrong-sensor"], closed=True),
                  comp("m05", 4, moved=["board-a:1"], problems=["wrong-sensor"], closed=True)])
    out = conclude(r, {})
    assert [f.key for f in out.findings] == [("crossed", "m02+m05")]
    f = out.findings[0]
    assert "board-a channel 1" in f.message and "board-a channel 4" in f.message
    assert f.detail == {"compartments": ["m02", "m05"], "channels": {"m02": [1, 1], "m05": [4, 4]}}
    by_id = {c.id: c for c in out.compartments}
    assert by_id["m02"].problems == ["crossed"] and by_id["m02"].note == "crossed with m05"
    assert by_id["m05"].problems == ["crossed"] and by_id["m05"].note == "crossed with m02"
    assert [c.status for c in out.compartments] == [PASS, FAIL, FAIL]


def test_a_lock_opening_another_door_one_way_is_a_wrong_sensor_finding():
    r = observed([passed("m01", 0), comp("m02", 1, moved=["board-a:0"], problems=["wrong-sensor"])])
    out = conclude(r, {})
    assert [f.key for f in out.findings] == [("wrong-sensor", "m02")]
    assert "moved sensor board-a:0 (m01)" in out.findings[0].message
    assert out.findings[0].detail == {"moved": ["board-a:0"]}


def test_a_lock_opening_a_door_no_compartment_watches_names_the_sensor():
    r = observed([comp("m02", 1, moved=["board-x:7"], problems=["wrong-sensor"])])
    (f,) = conclude(r, {}).findings
    assert f.key == ("wrong-sensor", "m02") and "moved sensor board-x:7 (board-x:7)" in f.message


@pytest.mark.parametrize(("kind", "words"), [
    ("lock-not-released", "did not open when its lock (board-a channel 3) was pulsed"),
    ("sensor-dead", "its sensor (board-a channel 3) did not change"),
    ("no-change", "nobody was there to tell which"),
    ("open-before", "reads open before the lock was pulsed"),
    ("sensor-unknown", "cannot be read"),
    ("relay-stuck", "did not switch off after the pulse"),
])
def test_each_compartment_fault_is_one_finding_with_its_sentence(kind, words):
    r = observed([passed("m01", 0), comp("m04", 3, problems=[kind], note="n")])
    out = conclude(r, {})
    assert [f.key for f in out.findings] == [(kind, "m04")]
    assert words in out.findings[0].message
    assert out.findings[0].detail == {"moved": [], "note": "n"}
    assert out.compartments[1].status == FAIL


def test_a_refused_pulse_says_what_the_board_said():
    (f,) = conclude(observed([comp("m04", 3, problems=["pulse-failed"], note="exception 4")]), {}).findings
    assert f.key == ("pulse-failed", "m04") and f.message.endswith("board-a channel 3: exception 4")


def test_a_door_that_also_moves_another_sensor_names_the_other_one():
    c = comp("m04", 3, moved=["board-a:3", "board-a:6"], open_ms=10.0, problems=["extra-sensor"])
    (f,) = conclude(observed([c]), {}).findings
    assert f.key == ("extra-sensor", "m04") and f.message.endswith("also moved board-a:6")


def test_a_door_still_open_after_the_close_names_every_sensor_that_moved():
    c = comp("m04", 3, moved=["board-a:3"], open_ms=10.0, closed=False, problems=["not-closed"])
    (f,) = conclude(observed([c]), {}).findings
    assert f.key == ("not-closed", "m04") and f.message.startswith("sensor board-a:3 still reads open")


def test_a_relay_stuck_after_a_good_opening_is_its_only_finding():
    c = comp("m04", 3, moved=["board-a:3"], open_ms=10.0, closed=True, problems=["relay-stuck"])
    assert [f.key for f in conclude(observed([c]), {}).findings] == [("relay-stuck", "m04")]


def test_a_board_seen_offline_is_one_finding_listing_the_compartments_it_left_untested():
    r = observed([passed("m01", 0), comp("n01", 0, "board-b", "n", note="board-b offline"),
                  comp("n02", 1, "board-b", "n", note="board-b offline"),
                  comp("n03", 2, "board-b", "n", note="not selected")])
    out = conclude(r, {"board-b": "no reply"})
    assert [f.key for f in out.findings] == [("board-offline", "board-b")]
    assert out.findings[0].detail == {"untested": ["n01", "n02"]}
    assert out.findings[0].message == "not answering (no reply); not tested: n01, n02"


def test_a_board_that_never_answered_a_read_is_offline_even_unreported():
    r = observed([passed("m01", 0)], [board("board-a", 20, 20), board("board-b", 5, 0, "timeout")])
    out = conclude(r, {})
    assert [f.key for f in out.findings] == [("board-offline", "board-b")]
    assert out.findings[0].message == "not answering (timeout)"
    # Reported offline already: the driver's own words are kept, and it is still one finding.
    assert [f.message for f in conclude(r, {"board-b": "port closed"}).findings] == ["not answering (port closed)"]


def test_a_board_missing_some_reads_is_unreliable():
    (f,) = conclude(observed(boards=[board("board-a", 20, 15, "timeout")]), {}).findings
    assert f.key == ("board-unreliable", "board-a")
    assert f.message == "answered 15 of 20 reads (75%); last error: timeout"
    assert f.detail == {"answered": 15, "requests": 20}


@pytest.mark.parametrize(("scanner", "kind"), [
    (ScannerResult("front", status=FAIL, error="offline: no port"), "scanner-offline"),
    (ScannerResult("front", status=FAIL, error="no scan within 30 s"), "scanner-silent"),
    (ScannerResult("front", status=FAIL, after_s=1.0, error="unreadable"), "scanner-bad-read"),
    (ScannerResult("front", status=FAIL, code="OTHER", after_s=1.0, error="read 'OTHER'"), "scanner-wrong-code"),
])
def test_each_scanner_fault_is_told_apart(scanner, kind):
    (f,) = conclude(observed(scanners=[scanner]), {}).findings
    assert f.key == (kind, "front") and f.message == scanner.error


def test_an_untested_scanner_is_no_finding():
    s = ScannerResult("front", error="not tested: nobody to scan the test card (non-interactive)")
    assert conclude(observed(scanners=[s]), {}).findings == []


def test_an_unreachable_broker_is_a_finding():
    r = observed(brokers=[BrokerResult("a:8883", ok=True), BrokerResult("b:8883", error="refused: not authorised")])
    assert [(f.key, f.message) for f in conclude(r, {}).findings] == [
        (("broker-unreachable", "b:8883"), "refused: not authorised")]


def test_findings_come_in_report_order_and_the_observations_are_left_as_they_were():
    r = observed([comp("m02", 1, moved=["board-a:4"], problems=["wrong-sensor"]),
                  comp("m05", 4, moved=["board-a:1"], problems=["wrong-sensor"]),
                  comp("m07", 6, problems=["lock-not-released"]),
                  comp("n01", 0, "board-b", "n", note="board-b offline")],
                 [board("board-a", 20, 19), board("board-b", 5, 0)],
                 [ScannerResult("front", status=FAIL, error="offline: gone")],
                 [BrokerResult("b:8883", error="no answer")])
    before = copy.deepcopy(r)
    offline = {"sim-x": "vanished"}
    out = conclude(r, offline)
    assert [f.kind for f in out.findings] == ["board-unreliable", "board-offline", "board-offline", "crossed",
                                              "lock-not-released", "scanner-offline", "broker-unreachable"]
    assert [f.subject for f in out.findings[1:3]] == ["sim-x", "board-b"]
    assert r == before and offline == {"sim-x": "vanished"}


def test_a_door_opened_with_no_pulse_is_its_own_finding_and_blames_no_lock():
    r = observed([passed("m01", 0), passed("m04", 3)])
    r.unexplained = [{"sensor": "board-a:3", "compartment": "m04", "during": "during the compartment check of m07"}]
    out = conclude(r, {})
    assert [(f.kind, f.subject) for f in out.findings] == [("unexplained-opening", "m04")]
    assert "no pulse" in out.findings[0].message and "m07" in out.findings[0].message
    assert {c.id: c.status for c in out.compartments} == {"m01": PASS, "m04": PASS}


def test_a_board_answering_after_the_timeout_is_one_finding_saying_how_late():
    # A board answering in 300 ms with timeout_ms 200: every read timed out (its late replies dropped), the
    # board went offline and its compartments untested. Said once, as what it is.
    slow = BoardResult("board-b", "rs485-a", 2, requests=5, answered=0, silent=5, late_ms=300, timeout_ms=200,
                       error="board-b (unit 2 on rs485-a) answers in about 300 ms, more than timeout_ms 200")
    r = observed([passed("m01", 0), comp("n01", 0, "board-b", "n", note="board-b offline")],
                 [board("board-a", 20, 20), slow])
    out = conclude(r, {"board-b": slow.error})
    assert [f.key for f in out.findings] == [("board-slow", "board-b")]
    assert out.findings[0].message == ("board board-b answers in about 300 ms, more than timeout_ms 200 of "
                                       "[buses.rs485-a]: its replies come too late to be used (raise timeout_ms "
                                       "above 300, or find why the board is slow); not tested: n01")
    # Some reads answered in time, some late: still the one finding, not also "misses replies".
    slow.answered, slow.silent = 3, 2
    assert [f.key for f in conclude(r, {}).findings] == [("board-slow", "board-b")]


def test_a_relay_left_on_ends_with_cutting_that_boards_power():
    r = observed([comp("m01", 0, problems=["relay-stuck"]), comp("m02", 1, problems=["relay-stuck"]),
                  comp("n01", 0, "board-b", "n", problems=["lock-not-released"])])
    out = conclude(r, {})
    assert out.actions == ["cut the power to board board-a: a relay of it stays on"]
    assert conclude(observed([passed("m01", 0)]), {}).actions == []


def test_every_labelled_finding_kind_is_covered_here():
    # Each kind the report can label is produced by a test above; a new kind needs a test here too.
    covered = {"crossed", "wrong-sensor", "extra-sensor", "lock-not-released", "sensor-dead", "no-change",
               "not-closed", "open-before", "sensor-unknown", "relay-stuck", "pulse-failed", "board-offline",
               "board-unreliable", "board-slow", "unexplained-opening", "scanner-silent", "scanner-bad-read",
               "scanner-wrong-code", "scanner-offline", "broker-unreachable"}
    assert covered == set(FINDING_LABELS)
