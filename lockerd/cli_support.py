"""What every group of lockerd commands shares: the config option, loading the config, finding the journal.

The command groups (:mod:`lockerd.cli_journal`, :mod:`lockerd.cli_daemon`,
:mod:`lockerd.cli_audit`) and :mod:`lockerd.cli` itself import from here and
never from each other, so the command line has no import loop.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from lockerd.errors import ConfigError

DEFAULT_CONFIG = os.environ.get("LOCKERD_CONFIG", "/etc/lockerd/lockerd.toml")


def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command the ``-c/--config`` option."""
    sp.add_argument("-c", "--config", default=DEFAULT_CONFIG, help=f"config file (default {DEFAULT_CONFIG})")
    return sp


def with_journal(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Give a command the ``--journal`` option, for a journal file other than the config's."""
    sp.add_argument("--journal", help="journal file (default: from the config)")
    return sp


def load_config(path: str) -> Any:
    """The config at ``path``; a bad one is said on stderr and ends the command with exit code 2."""
    # Imported here: `lockerd --help` and the commands that need no config stay quick to start.
    from lockerd import config

    try:
        return config.load(path)
    except ConfigError as e:
        print(f"lockerd: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def load_runnable_config(path: str) -> Any:
    """A config whose every needed module imports: the daemon never passes its check and then dies on import."""
    from lockerd.needs import missing

    cfg = load_config(path)
    problems = missing(cfg)
    for p in problems:
        print(f"lockerd: {p}", file=sys.stderr)
    if problems:
        raise SystemExit(2)
    return cfg


def station_zone(a: argparse.Namespace) -> tzinfo:
    """The station's time zone (its config's [calendar]), in which people read and type times; with only
    ``--journal`` given and no config to read, the machine's own zone."""
    if not getattr(a, "journal", None):
        return load_config(a.config).calendar.tz  # type: ignore[no-any-return]
    from lockerd import config

    try:
        return config.load(a.config).calendar.tz  # type: ignore[no-any-return]
    except ConfigError:
        return datetime.now().astimezone().tzinfo or UTC


def journal_path(a: argparse.Namespace, cfg: Any = None) -> Path:
    """The journal ``--journal`` names, else the one the config (``cfg`` if loaded already) names."""
    if getattr(a, "journal", None):
        return Path(a.journal)
    return (cfg or load_config(a.config)).journal_path


def existing_journal(a: argparse.Namespace, cfg: Any = None) -> Path | None:
    """The journal ``--journal`` or the config names (``cfg`` if loaded already); None, said, if it is not there."""
    path = journal_path(a, cfg)
    if not path.exists():
        print(f"lockerd: {path}: no journal there", file=sys.stderr)
        return None
    return path
