"""The flow rig with a station calendar, short reminder ladders and the station's command handler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rig import DATA, TOML, Rig, close_rig, make_rig

from lockerd.clock import ManualClock, parse_time
from lockerd.journal import Event
from lockerd.station_handler import StationHandler

# Monday 21 December 2026, 05:00 in Berlin (UTC+1); Friday the 25th is a holiday.
MONDAY_0500 = parse_time("2026-12-21T04:00:00Z")
HOUR = 3600.0

CUSTODY = """
[calendar]
timezone = "Europe/Berlin"
working_days = ["mon", "tue", "wed", "thu", "fri"]
holidays = ["2026-12-25"]
[[calendar.shifts]]
name = "early"
start = "06:00"
end = "14:00"
[[calendar.shifts]]
name = "late"
start = "14:00"
end = "22:00"
[custody]
deposit_within_h = 24
tick_s = 600
[custody.deposit]
levels = ["officer", "supervisor", "legal"]
after_s = [0, 3600, 7200]
ack_pause_s = 5400
[custody.return]
levels = ["officer", "supervisor", "legal"]
after_s = [0, 1800, 3600]
ack_pause_s = 2700
[custody.evidence_deposit]
levels = ["officer", "supervisor"]
after_s = [600, 1800]
ack_pause_s = 1800
"""

PEOPLE = DATA["people"] + [{"id": "chief", "name": "Ruth Adler", "role": "supervisor"}]
CUSTODY_DATA = DATA | {"people": PEOPLE}

REMINDERS = ("reminder.due", "reminder.escalated", "reminder.acknowledged", "reminder.cleared", "deadline.closed")


async def custody_rig(tmp: Path, clock: ManualClock | None = None, data: dict | None = CUSTODY_DATA,
                      extra: str = CUSTODY) -> Rig:
    return await make_rig(tmp, TOML + extra, data=data, clock=clock or ManualClock(wall=MONDAY_0500))


async def restart(rig: Rig, tmp: Path) -> Rig:
    """Stop the controller and start a new one on the same journal and clock (a new boot)."""
    await close_rig(rig)
    return await custody_rig(tmp, clock=rig.clock, data=None)


async def command(rig: Rig, name: str, **args: Any) -> dict[str, Any]:
    """Run a station command through the daemon's handler, as the link does after its checks."""
    return await StationHandler(rig.c).handle(name, args, {"command_id": f"c-{name}-{rig.journal.last_seq}"})


async def reminders(rig: Rig, code: str | None = None, after: int = 0) -> list[Event]:
    return [e for e in await rig.events(after) if e.kind in REMINDERS and (code is None or e.dossier == code)]


def ladder(events: list[Event]) -> list[tuple[str, int, str]]:
    """(kind, level, to) of the reminders sent."""
    return [(e.kind, e.data["level"], e.data["to"]) for e in events if e.kind in ("reminder.due", "reminder.escalated")]


async def deposit(rig: Rig, code: str, channel: int) -> None:
    """Scan a dossier, open its door, close it: a deposit (or return, or checkout, by its state)."""
    out = await rig.scan(code)
    assert out.accepted and out.pulsed, out
    assert await rig.pull(rig.d, channel)
    await rig.close(rig.d, channel)
    await rig.flush()
