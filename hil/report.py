"""What a bench run found: the result records, the JSON report and the HTML page.

The JSON is for machines (CI, the station's records); the HTML page is for
the technician at the cabinet: a pass/fail grid laid out like each cabinet,
the findings in plain sentences, and timing histograms, all in one file with
no external assets (it is opened on a laptop with no network, or mailed).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, UNTESTED = "pass", "fail", "untested"


@dataclass
class Finding:
    """One fault found: ``kind`` is a fixed word, ``subject`` the compartment, board, scanner or broker."""

    kind: str
    subject: str
    message: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.kind, self.subject


# Every finding kind, with the short label shown in a grid cell.
FINDING_LABELS = {
    "crossed": "crossed wiring",
    "wrong-sensor": "opens another door",
    "extra-sensor": "also moves another sensor",
    "lock-not-released": "lock does not release",
    "sensor-dead": "sensor never changes",
    "no-change": "nothing moved",
    "not-closed": "still reads open",
    "open-before": "open before the test",
    "sensor-unknown": "sensor unreadable",
    "relay-stuck": "relay stays on",
    "pulse-failed": "pulse refused",
    "unexplained-opening": "opened with no pulse",
    "board-offline": "board not answering",
    "board-unreliable": "board misses replies",
    "board-slow": "board answers too late",
    "scanner-silent": "no scan",
    "scanner-bad-read": "unreadable scan",
    "scanner-wrong-code": "wrong code",
    "scanner-offline": "scanner offline",
    "broker-unreachable": "broker unreachable",
}


@dataclass
class CompartmentResult:
    id: str
    cabinet: str
    lock_driver: str
    lock: int
    sensor_driver: str
    sensor: int
    status: str = UNTESTED
    doors: str = ""  # "spring" or "manual": how the door was opened
    open_ms: float | None = None  # pulse start to the expected sensor reading open
    closed: bool | None = None
    moved: list[str] = field(default_factory=list)  # "driver:channel" of every sensor that opened after the pulse
    problems: list[str] = field(default_factory=list)  # finding kinds that concern this compartment
    note: str = ""


@dataclass
class BoardResult:
    name: str
    bus: str
    unit: int
    requests: int = 0
    answered: int = 0
    refused: int = 0
    silent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    error: str = ""
    # Seen answering after the request timeout: about how late (ms), and that timeout; late replies are
    # dropped, never counted as answers to later reads.
    late_ms: int | None = None
    timeout_ms: int | None = None

    @property
    def rate(self) -> float:
        return self.answered / self.requests if self.requests else 0.0


@dataclass
class ScannerResult:
    name: str
    status: str = UNTESTED
    code: str | None = None
    after_s: float | None = None
    error: str = ""


@dataclass
class BrokerResult:
    broker: str
    ok: bool = False
    latency_ms: float | None = None
    error: str = ""


@dataclass
class Report:
    config: str
    site: str
    node: str
    started: str
    finished: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    layout: dict[str, dict[str, Any]] = field(default_factory=dict)  # cabinet -> {"rows", "compartments"}
    compartments: list[CompartmentResult] = field(default_factory=list)
    boards: list[BoardResult] = field(default_factory=list)
    scanners: list[ScannerResult] = field(default_factory=list)
    brokers: list[BrokerResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    # Door openings no pulse explains (a forced door, a key, a person): {"sensor", "compartment", "during"}.
    unexplained: list[dict[str, str]] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)  # what the technician must do now (cut a board's power)
    interrupted: str = ""

    @property
    def passed(self) -> bool:
        return not self.findings and not self.interrupted

    def finding_keys(self) -> set[tuple[str, str]]:
        return {f.key for f in self.findings}

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passed"] = self.passed
        for b, raw in zip(self.boards, d["boards"], strict=True):
            raw["rate"] = round(b.rate, 4)
            raw.update(_stats(b.latencies_ms))
        return d

    def write(self, folder: Path, stem: str = "bench") -> tuple[Path, Path]:
        """Write ``<stem>.json`` and ``<stem>.html`` into ``folder``; return both paths."""
        folder.mkdir(parents=True, exist_ok=True)
        js, page = folder / f"{stem}.json", folder / f"{stem}.html"
        js.write_text(json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        page.write_text(render_html(self), encoding="utf-8")
        return js, page


def _percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    k = max(0, math.ceil(p / 100 * len(sorted_values)) - 1)
    return sorted_values[k]


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_ms": None, "p95_ms": None, "max_ms": None}
    v = sorted(values)
    return {"p50_ms": round(_percentile(v, 50), 3), "p95_ms": round(_percentile(v, 95), 3), "max_ms": round(v[-1], 3)}


# ---------------------------------------------------------------------------
# The HTML page

CSS = """
body{font:15px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{margin:0 0 .2em}h2{margin:1.4em 0 .4em;font-size:1.2em}
.verdict{display:inline-block;padding:.4em 1em;border-radius:6px;font-weight:700;font-size:1.3em;color:#fff}
.verdict.pass{background:#1b8a3a}.verdict.fail{background:#c62828}
.meta{color:#555;font-size:.9em}
.cabinets{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start}
.cabinet{border:6px solid #555;border-radius:6px;padding:6px;background:#ddd}
.cabinet h3{margin:0 0 6px;text-align:center}
.grid{display:grid;grid-auto-flow:column;gap:5px}
.cell{width:9.6em;height:6.7em;overflow:hidden;border-radius:4px;padding:4px 6px;box-sizing:border-box;
 border:2px solid #0003;
 font-size:.8em;display:flex;flex-direction:column}
.cell b{font-size:1.35em}
.cell.pass{background:#43a047;color:#fff}.cell.fail{background:#e53935;color:#fff}
.cell.untested{background:#bdbdbd;color:#333;
 background-image:repeating-linear-gradient(45deg,#0000 0 6px,#0001 6px 12px)}
.cell .why{font-weight:700}.cell .ch{margin-top:auto;opacity:.8;font-size:.9em;white-space:nowrap}
.legend span{display:inline-block;width:1em;height:1em;border-radius:3px;vertical-align:middle;margin:0 .3em 0 1em}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
td.pass{color:#1b8a3a;font-weight:700}td.fail{color:#c62828;font-weight:700}
.action{background:#ffebee;border-left:.4em solid #b71c1c;padding:.4em .6em}
ul.findings li{margin:.2em 0}.kind{font-family:monospace;background:#eee;padding:0 .3em;border-radius:3px}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{background:#fff;border:1px solid #ccc;padding:6px}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def _cell(c: CompartmentResult) -> str:
    lines = [f"<b>{_e(c.id)}</b>"]
    if c.problems:
        labels = (c.note if p == "crossed" and c.note else FINDING_LABELS.get(p, p) for p in c.problems)
        lines.append(f'<span class="why">{_e(", ".join(labels))}</span>')
    elif c.note:
        lines.append(f'<span class="why">{_e(c.note)}</span>')
    if c.open_ms is not None:
        lines.append(f'<span class="ms">{c.open_ms:.0f} ms to open</span>')
    lines.append(f'<span class="ch">lock {_e(c.lock)} · sensor {_e(c.sensor)}</span>')
    title = f"{c.id}: lock {c.lock_driver}:{c.lock}, sensor {c.sensor_driver}:{c.sensor}: " + (
        ", ".join(c.problems) or c.note or "passed")
    return (f'<div class="cell {c.status}" id="cell-{_e(c.id)}" data-status="{c.status}" '
            f'title="{_e(title)}">{"".join(lines)}</div>')


def _cabinet(cab: str, rows: int, comps: list[CompartmentResult]) -> str:
    n_pass = sum(1 for c in comps if c.status == PASS)
    cells = "".join(_cell(c) for c in comps)
    return (f'<div class="cabinet" id="cabinet-{_e(cab)}"><h3>cabinet {_e(cab)} · {n_pass}/{len(comps)} pass</h3>'
            f'<div class="grid" style="grid-template-rows:repeat({rows},auto)">{cells}</div></div>')


def svg_histogram(values: list[float], title: str, unit: str = "ms", bins: int = 12,
                  width: int = 360, height: int = 170) -> str:
    """An inline SVG bar chart of how ``values`` are distributed."""
    head = (f'<svg width="{width}" height="{height}" role="img" aria-label="{_e(title)}">'
            f"<title>{_e(title)}</title>")
    top = f'<text x="6" y="14" font-size="12" font-weight="bold">{_e(title)}</text>'
    if not values:
        return head + top + f'<text x="6" y="{height // 2}" font-size="12">no data</text></svg>'
    lo, hi = min(values), max(values)
    if hi - lo < 1e-9:
        hi = lo + 1.0
    step = (hi - lo) / bins
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int((v - lo) / step))] += 1
    left, bottom, plot_h = 30, height - 24, height - 24 - 22
    bar_w = (width - left - 8) / bins
    peak = max(counts)
    parts = [head, top,
             f'<line x1="{left}" y1="{bottom}" x2="{width - 6}" y2="{bottom}" stroke="#444"/>',
             f'<text x="{left - 4}" y="{bottom - plot_h + 4}" font-size="10" text-anchor="end">{peak}</text>',
             f'<text x="{left - 4}" y="{bottom}" font-size="10" text-anchor="end">0</text>']
    for i, n in enumerate(counts):
        h = plot_h * n / peak
        x = left + i * bar_w
        parts.append(f'<rect class="bar" x="{x + 1:.1f}" y="{bottom - h:.1f}" width="{bar_w - 2:.1f}" '
                     f'height="{h:.1f}" fill="#1e88e5"><title>{lo + i * step:.1f}-{lo + (i + 1) * step:.1f} '
                     f'{unit}: {n}</title></rect>')
    parts.append(f'<text x="{left}" y="{height - 8}" font-size="10">{lo:.1f}</text>')
    parts.append(f'<text x="{width - 6}" y="{height - 8}" font-size="10" text-anchor="end">{hi:.1f} {unit}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _table(tid: str, heading: str, columns: list[str], rows: list[list[str | tuple[str, str]]]) -> str:
    """A titled table; a cell given as (class, text) is coloured pass/fail. Nothing at all when there are no rows."""
    if not rows:
        return ""
    head = "".join(f"<th>{c}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f'<td class="{c[0]}">{c[1]}</td>' if isinstance(c, tuple) else f"<td>{c}</td>" for c in row)
        + "</tr>" for row in rows)
    return f"<h2>{heading}</h2><table id={tid}><tr>{head}</tr>{body}</table>"


def render_html(r: Report) -> str:
    """The whole report as one self-contained HTML page."""
    verdict = "pass" if r.passed else "fail"
    words = ("PASS: every lock, sensor, board, scanner and broker checked works" if r.passed
             else f"FAIL: {len(r.findings)} finding{'s' if len(r.findings) != 1 else ''}"
             + (f" (run interrupted: {r.interrupted})" if r.interrupted else ""))
    by_cab: dict[str, list[CompartmentResult]] = {}
    for c in r.compartments:
        by_cab.setdefault(c.cabinet, []).append(c)
    out = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f"<title>lockerd bench: {_e(r.site)}/{_e(r.node)}: {verdict.upper()}</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>Bench report: {_e(r.site)} / {_e(r.node)}</h1>",
        f'<p class="meta">config {_e(r.config)} · started {_e(r.started)} · finished {_e(r.finished)}</p>',
        f'<p><span class="verdict {verdict}" id="verdict">{_e(words)}</span></p>',
        *(f'<p class="action" id="action-{i}"><b>Now: {_e(a)}</b></p>' for i, a in enumerate(r.actions)),
        '<h2>Compartments</h2><p class="legend">compartments numbered top to bottom, column by column'
        '<span style="background:#43a047"></span>pass<span style="background:#e53935"></span>fail'
        '<span style="background:#bdbdbd"></span>not tested</p><div class="cabinets">',
    ]
    for cab, comps in by_cab.items():
        rows = int(r.layout.get(cab, {}).get("rows", len(comps)))
        out.append(_cabinet(cab, rows, comps))
    out.append("</div>")

    out.append("<h2>Findings</h2>")
    if r.findings:
        out.append('<ul class="findings">')
        for f in r.findings:
            out.append(f'<li data-kind="{_e(f.kind)}"><span class="kind">{_e(f.kind)}</span> '
                       f'<b>{_e(f.subject)}</b>: {_e(f.message)}</li>')
        out.append("</ul>")
    else:
        out.append("<p>None.</p>")

    def ms(v: float | None) -> str:
        return f"{v:.1f} ms" if v is not None else "-"

    boards = []
    for b in r.boards:
        st = _stats(b.latencies_ms)
        ok = PASS if b.requests and b.answered == b.requests else FAIL
        boards.append([_e(b.name), _e(b.bus), str(b.unit), (ok, f"{b.answered}/{b.requests} ({b.rate:.0%})"),
                       ms(st["p50_ms"]), ms(st["p95_ms"]), ms(st["max_ms"]), _e(b.error)])
    out.append(_table("boards", "Modbus boards", ["board", "bus", "unit", "answered", "p50", "p95", "max", "note"],
                      boards))
    out.append(_table("scanners", "Scanners", ["scanner", "result", "code", "after", "note"], [
        [_e(x.name), (x.status, x.status), _e(x.code or "-"), f"{x.after_s:.1f} s" if x.after_s is not None else "-",
         _e(x.error)] for x in r.scanners]))
    out.append(_table("brokers", "Station broker", ["broker", "result", "connect", "note"], [
        [_e(b.broker), (PASS, "connected") if b.ok else (FAIL, "failed"), ms(b.latency_ms), _e(b.error)]
        for b in r.brokers]))

    out.append('<h2>Timing</h2><div class="charts">')
    opens = [c.open_ms for c in r.compartments if c.open_ms is not None]
    out.append(f'<div class="chart">{svg_histogram(opens, "pulse to door open (all compartments)")}</div>')
    for b in r.boards:
        out.append(f'<div class="chart">{svg_histogram(b.latencies_ms, f"board {b.name}: reply latency")}</div>')
    out.append("</div></body></html>\n")
    return "\n".join(out)
