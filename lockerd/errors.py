"""The one small error hierarchy of lockerd.

Each error also inherits the builtin that fits, so callers that only know
the standard library (``except TimeoutError``) still catch it.
"""

from __future__ import annotations


class LockerdError(Exception):
    """Base of every error lockerd raises on purpose."""


class ConfigError(LockerdError, ValueError):
    """The configuration is invalid; ``problems`` lists every mistake found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in the configuration"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class DriverError(LockerdError, OSError):
    """A hardware driver could not do what was asked."""


class DriverTimeout(DriverError, TimeoutError):
    """The device did not answer in time."""


class DriverUnavailable(DriverError, ConnectionError):
    """The device is offline, unplugged or was never found."""


class JournalError(LockerdError, OSError):
    """The journal cannot record events; the controller must not unlock."""


class CommandError(LockerdError, ValueError):
    """A command (from the CLI, the control socket or the station) is invalid."""
