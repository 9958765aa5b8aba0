"""The lockerd command line: run the daemon, check a config, read the journal, act on the sim.

The commands live in groups, each adding its own to the parser:
:mod:`lockerd.cli_journal` (read the journal), :mod:`lockerd.cli_daemon`
(act through the running daemon), :mod:`lockerd.cli_audit` (audit reports
and exports). What they share is in :mod:`lockerd.cli_support`.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
from pathlib import Path

from lockerd import __version__, cli_audit, cli_daemon, cli_journal
from lockerd.cli_support import load_runnable_config, with_config


def cmd_run(a: argparse.Namespace) -> int:
    gc.disable()  # until the daemon is ready: see lockerd.daemon.settle_heap
    cfg = load_runnable_config(a.config)
    from lockerd.daemon import run

    return run(cfg)


def cmd_check_config(a: argparse.Namespace) -> int:
    cfg = load_runnable_config(a.file)
    kinds: dict[str, int] = {}
    for c in cfg.compartments.values():
        kinds[c.kind] = kinds.get(c.kind, 0) + 1
    print(f"{cfg.path}: OK: site {cfg.site}, node {cfg.node}, {len(cfg.cabinets)} cabinet(s), "
          + ", ".join(f"{n} {k} compartments" for k, n in sorted(kinds.items()))
          + f", {len(cfg.scanners)} scanner(s), drivers: "
          + ", ".join(f"{n} ({d.type})" for n, d in cfg.drivers.items())
          + "".join(f", camera {n} ({c.type}) on cabinet(s) "
                    + (", ".join(cab.id for cab in cfg.cabinets.values() if cab.camera == n) or "none")
                    for n, c in cfg.cameras.items()))
    return 0


def cmd_demo(a: argparse.Namespace) -> int:
    from lockerd.demo import main as demo_main

    return demo_main(a.config, folder=a.dir, keep=a.keep)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lockerd", description="Controller daemon for smart dossier and evidence lockers.")
    p.add_argument("--version", action="version", version=f"lockerd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = with_config(sub.add_parser("run", help="run the daemon"))
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("check-config", help="check a config file; exit 2 if invalid")
    sp.add_argument("file")
    sp.set_defaults(func=cmd_check_config)

    # In this order: `lockerd --help` lists the commands as they are added.
    cli_journal.add_commands(sub)
    cli_daemon.add_commands(sub)
    cli_audit.add_commands(sub)

    sp = sub.add_parser("demo", help="run the demo station and play a short shift")
    where = sp.add_mutually_exclusive_group()
    where.add_argument("--dir", type=Path, help="the demo station's folder (default: var/demo in a checkout, "
                                                "else ~/.local/state/lockerd-demo)")
    where.add_argument("-c", "--config", help="run this config instead of the demo station's own")
    sp.add_argument("--keep", action="store_true", help="keep the previous demo journal")
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader went away (`lockerd history | head`): stop quietly, as Unix tools do on SIGPIPE. The
        # interpreter's own flush at exit would hit the closed pipe again, so stdout now points nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    return code


if __name__ == "__main__":
    raise SystemExit(main())
