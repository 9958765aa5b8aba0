"""``lockerd-hil``: run the bench against the configured cabinet and write the report."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from lockerd.hil.bench import Bench
from lockerd.hil.options import BenchOptions
from lockerd.hil.report import FINDING_LABELS, Report
from lockerd.hil.technician import ConsoleTechnician, SimTechnician, Unattended

from lockerd import config as config_mod
from lockerd.cli_support import DEFAULT_CONFIG
from lockerd.errors import ConfigError
from lockerd.hwlock import HardwareBusy

# Exit codes: 0 all passed, 1 faults found, 2 bad config or arguments, 3 hardware busy, 130 interrupted.
EXIT_FAULTS, EXIT_CONFIG, EXIT_BUSY, EXIT_INTERRUPTED = 1, 2, 3, 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lockerd-hil",
        description="Bench harness: pulse every lock, watch every door sensor, test the Modbus boards, "
                    "the scanners and the station broker; write a JSON and an HTML report.")
    p.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"the daemon's config (default {DEFAULT_CONFIG})")
    p.add_argument("-o", "--out", default="bench-report", help="folder for bench.json and bench.html")
    p.add_argument("--non-interactive", action="store_true",
                   help="ask nothing (CI, spring-loaded doors): faults that need eyes are reported as such")
    p.add_argument("--doors", choices=("auto", "spring", "manual"), default="auto",
                   help="spring: doors pop open by themselves; manual: you pull each one "
                        "(auto: simulated boards by their config, others manual when interactive)")
    p.add_argument("--pulse-ms", type=int, help="pulse length (default: [timing] pulse_ms)")
    p.add_argument("--open-timeout", type=float, help="seconds a door may take to open (default: [timing])")
    p.add_argument("--close-timeout", type=float, default=30.0, help="seconds to wait for a door to close")
    p.add_argument("--requests", type=int, default=50, help="reads per Modbus board (default 50)")
    p.add_argument("--test-card", help="the code on the test card (default: any readable code passes)")
    p.add_argument("--scan-timeout", type=float, default=30.0, help="seconds to scan the test card")
    p.add_argument("--only", nargs="+", default=(), metavar="COMPARTMENT", help="test only these compartments")
    p.add_argument("--rows", action="append", default=[], metavar="CABINET=N",
                   help="compartments per column of a cabinet, for the report's grid")
    p.add_argument("--skip", action="append", default=[], choices=("boards", "scanners", "broker"))
    p.add_argument("-v", "--verbose", action="store_true")
    return p


async def _run(bench: Bench) -> Report:
    """Run the bench; the first Ctrl-C (or SIGTERM/SIGHUP) stops it, later ones cannot cut the switch-off short."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    hits = 0

    def stop() -> None:
        nonlocal hits
        hits += 1
        if hits == 1:
            task.cancel()
        else:
            print("lockerd-hil: switching every relay off first, please wait", file=sys.stderr, flush=True)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop)
    try:
        return await bench.run()
    except asyncio.CancelledError:
        if hits:
            raise KeyboardInterrupt from None
        raise


def _say_actions(report: Report) -> None:
    """What must be done now (a relay the bench could not switch off): the last thing the technician reads."""
    for action in report.actions:
        print(f"NOW: {action}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if a.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        cfg = config_mod.load(a.config)
    except ConfigError as e:
        print(f"lockerd-hil: {e}", file=sys.stderr)
        return EXIT_CONFIG
    rows: dict[str, int] = {}
    for spec in a.rows:
        cab, _, n = spec.partition("=")
        if cab not in cfg.cabinets or not n.isdigit() or int(n) < 1:
            print(f"lockerd-hil: --rows {spec!r}: expected CABINET=N with a cabinet of the config "
                  f"({', '.join(cfg.cabinets)}) and N >= 1", file=sys.stderr)
            return EXIT_CONFIG
        rows[cab] = int(n)
    unknown = [c for c in a.only if c not in cfg.compartments]
    if unknown:
        print(f"lockerd-hil: --only: no compartment {', '.join(unknown)} in {cfg.path}", file=sys.stderr)
        return EXIT_CONFIG
    opts = BenchOptions(pulse_ms=a.pulse_ms, open_timeout_s=a.open_timeout, close_timeout_s=a.close_timeout,
                        doors=a.doors, modbus_requests=a.requests, scan_timeout_s=a.scan_timeout,
                        test_card=a.test_card, compartments=tuple(a.only), rows=rows,
                        skip_boards="boards" in a.skip, skip_scanners="scanners" in a.skip,
                        skip_broker="broker" in a.skip)
    # Simulated boards are played by the bench itself; real ones by the person (or nobody).
    tech = SimTechnician(Unattended(sys.stdout) if a.non_interactive else ConsoleTechnician())
    bench = Bench(cfg, tech, opts)
    try:
        report = asyncio.run(_run(bench))
    except HardwareBusy as e:
        print(f"lockerd-hil: {e}. Stop the service first (systemctl stop lockerd) and run the bench again.",
              file=sys.stderr)
        return EXIT_BUSY
    except KeyboardInterrupt:
        print("lockerd-hil: interrupted; every relay was switched off", file=sys.stderr)
        _say_actions(bench.report)
        if bench.report.compartments:
            bench.report.write(Path(a.out))
        return EXIT_INTERRUPTED
    js, page = report.write(Path(a.out))
    for f in report.findings:
        print(f"FAULT  {f.subject:<12} {FINDING_LABELS.get(f.kind, f.kind)}: {f.message}")
    tested = sum(1 for c in report.compartments if c.status != "untested")
    print(("PASS" if report.passed else f"FAIL ({len(report.findings)} findings)")
          + f": {tested} compartment(s) tested; report {page} and {js}")
    _say_actions(report)
    return 0 if report.passed else EXIT_FAULTS


if __name__ == "__main__":
    raise SystemExit(main())
