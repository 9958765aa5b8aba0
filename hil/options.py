"""How a bench run goes: its options, and the grid it draws each cabinet in."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class BenchOptions:
    """How the bench runs; None means "as the config says"."""

    pulse_ms: int | None = None
    open_timeout_s: float | None = None
    settle_s: float = 0.3  # after the expected door opened, keep watching this long for other sensors
    close_timeout_s: float = 30.0
    doors: str = "auto"  # "spring", "manual", or "auto" (sim: its spring option; else manual when attended)
    modbus_requests: int = 50
    modbus_give_up_after: int = 5  # silent replies in a row before a board counts as gone
    scan_timeout_s: float = 30.0
    test_card: str | None = None
    broker_timeout_s: float = 5.0
    compartments: tuple[str, ...] = ()  # only these (default: all)
    rows: dict[str, int] | None = None  # cabinet -> compartments per column, for the grid
    skip_boards: bool = False
    skip_scanners: bool = False
    skip_broker: bool = False


def default_rows(count: int) -> int:
    """Compartments per column when the layout is not given: cabinets are taller than wide."""
    if count <= 4:
        return count
    return 4 if count <= 8 else 6
