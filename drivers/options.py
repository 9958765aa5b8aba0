"""What a driver accepts from its config section, declared beside the driver.

Each driver class lists its options (type, default, bounds, a line of doc)
as an :class:`Opt` table; :mod:`lockerd.config` checks a file against these
tables and hands the driver the checked values in a :class:`Section`. A
default is written here and nowhere else: a driver built without a config
(tests, benchmarks) fills what it was not given with :func:`with_defaults`.

This module imports nothing of lockerd: every layer may use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final


class _Missing:
    """The value of a required option nobody gave."""

    def __repr__(self) -> str:
        return "(missing)"


MISSING: Final[Any] = _Missing()

# The kinds an option can be: str, int, float, bool, path, id, list-str,
# list-int, list-id, table (see lockerd.config for what each accepts).


@dataclass(frozen=True)
class Opt:
    """One option: its type, bounds and default (none: the option is required)."""

    kind: str
    default: Any = MISSING
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    doc: str = ""

    @property
    def required(self) -> bool:
        return self.default is MISSING


Spec = Mapping[str, Opt]

# What a board's options say about one role's channels ("lock" or "sensor"):
# a range, the pins listed, or None when the options are too broken to say.
Channels = range | tuple[int, ...]

# A mistake that one option's own bounds cannot see: (option, value, what was expected).
Problem = tuple[str, Any, str]

# Serial line speeds a scanner or an RS-485 line may be set to.
BAUD_RATES = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)


def with_defaults(spec: Spec, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` completed with the default of every optional option it leaves out."""
    return {key: opt.default for key, opt in spec.items() if not opt.required} | dict(given)


def count_channels(n: Any) -> Channels | None:
    """Channels 0 to n-1, when ``n`` is a checked count."""
    return range(n) if isinstance(n, int) else None


@dataclass(frozen=True)
class Section:
    """A named driver, bus, scanner, feedback or camera section: its type and checked options."""

    name: str
    type: str
    options: dict[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.options[key]
