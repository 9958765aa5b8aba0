"""The bench harness: proves every lock, door sensor, board, scanner and the broker link of a cabinet.

Installed as ``lockerd.hil``; the command is ``lockerd-hil`` (see hil/README.md).
"""

from __future__ import annotations

from lockerd.hil.bench import Bench
from lockerd.hil.options import BenchOptions
from lockerd.hil.report import Finding, Report
from lockerd.hil.technician import ConsoleTechnician, Technician, Unattended

__all__ = ["Bench", "BenchOptions", "ConsoleTechnician", "Finding", "Report", "Technician", "Unattended"]
