"""What people do at the locker: open, acknowledge an alarm, an emergency, a technician's work, the status."""

from __future__ import annotations

from typing import Any

from lockerd import importer
from lockerd.commands.spec import Context
from lockerd.controller import Controller
from lockerd.errors import CommandError


async def remote_open(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    out = await c.remote_open(str(args["compartment"]), str(args.get("reason", "")),
                              ctx.by | {"requested_by": ctx.requested_by})
    if not out.accepted:
        raise CommandError(out.message)
    return {"compartment": out.compartment, "pulsed": out.pulsed}


async def acknowledge_alarm(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await c.alarms.acknowledge(str(args.get("compartment")), str(args.get("person")),
                                           str(args.get("note") or ""), ctx.by)


async def emergency_open(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await c.overrides.emergency_open(
        list(args.get("people") or []), str(args.get("reason") or ""), compartment=args.get("compartment"),
        all_compartments=args.get("all") is True, cabinet=args.get("cabinet"), via=ctx.via)


async def status(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {
        "site": c.config.site, "node": c.config.node,
        "journal": {"healthy": c.journal.healthy, "error": c.journal.error, "last_seq": c.journal.last_seq},
        "drivers": {n: {"online": d.online, "detail": d.detail} for n, d in c.hw.drivers.items()},
        "scanners": {n: {"online": d.online, "detail": d.detail} for n, d in c.hw.scanners.items()},
        "compartments": c.states(),
        "alarms": c.alarms.waiting(),
    }


async def import_file(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    data = importer.parse(args["text"], bool(args.get("csv")), args.get("name", "import"))
    return {"imported": await importer.apply(c, data, str(args.get("by", "cli")), **ctx.via)}


async def clear_fault(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return {"cleared": c.doors.clear_faults(args["compartment"], args.get("person", "technician"), ctx.via)}


async def maintenance(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    action, person = args.get("action"), args.get("person")
    if action == "on":
        return await c.overrides.maintenance_on(person, args.get("reason", ""), ctx.via)
    if action == "off":
        return await c.overrides.maintenance_off(person, args.get("reason") or "", ctx.via)
    if action == "open":
        return await c.overrides.maintenance_open(args.get("compartment"), person, ctx.via,
                                                  witness=args.get("witness"))
    raise CommandError(f"maintenance: unknown action {action!r} (expected on, off or open)")
