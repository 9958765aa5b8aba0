"""The command line for people: `history` as an aligned table in the station's local time, values in words,
long ones cut, a last line saying how many older events were left out; log lines without syslog prefixes on a
terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from test_cli_pipes import journal  # noqa: F401  (the fixture: a journal of a few thousand events)

from lockerd.cli_journal import CELL_MAX, history_table


def row(seq: int, ts: str, kind: str, data: dict, **kw: object) -> dict:
    return {"seq": seq, "ts": ts, "kind": kind, "compartment": kw.get("compartment"), "dossier": kw.get("dossier"),
            "people": list(kw.get("people", [])), "data": data}


def test_times_are_the_stations_local_time_with_the_zone_in_the_header() -> None:
    out = history_table([row(7, "2026-11-22T07:03:12.345Z", "scan", {"scanner": "front", "code": "D-1"},
                             compartment="d01", dossier="D-1")], ZoneInfo("Europe/Stockholm"))
    header, rule, line = out.splitlines()
    assert header.split()[:3] == ["seq", "time", "(CET)"] and set(rule) <= {"-", " "}
    assert "2026-11-22 08:03:12" in line  # 07:03 UTC is 08:03 in Stockholm in November
    assert "scanner: front; code: D-1" in line


def test_values_read_as_words_and_long_ones_are_cut_with_a_marker() -> None:
    long = "x" * 500
    out = history_table([row(9, "2026-11-22T07:03:12Z", "access.granted",
                             {"items": {"D-2026-0417": "deposit"}, "pulse": True, "no_pulse": None,
                              "people_seen": ["berg", "lind"], "reason": long}, people=["berg"])],
                        ZoneInfo("UTC"))
    line = out.splitlines()[2]
    assert "items: D-2026-0417 deposit" in line and "pulse: yes" in line and "people seen: berg, lind" in line
    assert "no pulse" not in line and "{" not in line and "'" not in line
    assert line.endswith("x…") and "x" * CELL_MAX not in line  # cut, and said to be


def test_the_last_line_says_how_many_older_events_were_left_out(journal: Path) -> None:  # noqa: F811
    r = subprocess.run([sys.executable, "-m", "lockerd", "history", "--journal", str(journal), "--limit", "5"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    total = len(subprocess.run([sys.executable, "-m", "lockerd", "history", "--journal", str(journal), "--limit",
                                "100000", "--json"], capture_output=True, text=True, timeout=60).stdout.splitlines())
    assert len(lines) == 2 + 5 + 1
    assert lines[-1] == f"({total - 5} older events not shown: raise --limit, or narrow with --since, --kind, " \
                        "--dossier, --compartment or --person)"


def test_log_lines_carry_syslog_prefixes_only_for_the_journal(tmp_path: Path) -> None:
    code = "import logging; from lockerd.daemon import setup_logging; setup_logging('INFO'); " \
           "logging.getLogger('lockerd').warning('board-a offline')"
    on_terminal = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                                 env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"})
    assert on_terminal.stderr == "lockerd: board-a offline\n"
    with (tmp_path / "journal-stream").open("w") as stream:
        st = os.fstat(stream.fileno())
        subprocess.run([sys.executable, "-c", code], stderr=stream, timeout=60,
                       env=os.environ | {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, check=True)
    assert (tmp_path / "journal-stream").read_text() == "<4>lockerd: board-a offline\n"
