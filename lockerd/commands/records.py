"""The station's case system keeps the records: items, deadlines, people and badges, retrieval authorisations."""

from __future__ import annotations

from typing import Any

from lockerd.commands.spec import Context
from lockerd.controller import Controller


async def assign(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    item = c.registrations.check_item(str(args["code"]), args.get("kind"), args.get("compartment"),
                                      args.get("case_name"), args.get("category"), args.get("officer"))
    deadline, data = c.custody.registration(item, args)  # checked before anything is applied
    if args.get("supervisor") is not None:
        data["supervisor"] = args["supervisor"]  # named in the return reminders too
    ev = await c.registrations.assign(item, ctx.by, data, [deadline.op()] if deadline else [])
    c.custody.registered(deadline)
    c.items_changed({item.compartment} if item.compartment else set())
    return {"seq": ev.seq} | {k: data[k] for k in ("deposit_due", "late", "late_s") if k in data}


async def unassign(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    ev = await c.registrations.unassign(str(args["code"]), ctx.by)
    return {"seq": ev.seq}


async def acknowledge(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    ev = await c.custody.acknowledge(str(args["code"]), args.get("deadline"), str(args["person"]),
                                     str(args.get("note", "")), ctx.by)
    return {"seq": ev.seq}


async def release(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    return await c.custody.release(str(args["code"]), str(args["person"]), str(args["reason"]), ctx.by)


async def register_person(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    reg = c.registry
    p = reg.check_person(str(args["id"]), str(args["name"]), str(args["role"]))
    ev = await c.journal.append_durable("person.registered", people=(p.id,), name=p.name, role=str(p.role),
                                        **ctx.by, state=reg.put_person(p))
    return {"seq": ev.seq}


async def revoke_person(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    ops = c.registry.revoke_person(str(args["id"]))
    ev = await c.journal.append_durable("person.revoked", people=(args["id"],), **ctx.by, state=ops)
    return {"seq": ev.seq}


async def register_badge(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    reg = c.registry
    code, person = str(args["code"]), str(args["person"])
    reg.check_badge(code, person)
    ev = await c.journal.append_durable("badge.registered", people=(person,), badge=reg.badge(code), **ctx.by,
                                        state=reg.put_badge(code, person))
    return {"seq": ev.seq}


async def revoke_badge(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    reg = c.registry
    code = str(args["code"])
    person = reg.badges.get(reg.badge(code))
    ops = reg.revoke_badge(code)
    ev = await c.journal.append_durable("badge.revoked", people=(person,) if person else (), badge=reg.badge(code),
                                        **ctx.by, state=ops)
    return {"seq": ev.seq}


async def authorize_retrieval(c: Controller, args: dict[str, Any], ctx: Context) -> dict[str, Any]:
    code = str(args["code"])
    ev = await c.authorisations.authorise(c.registry.items.get(code), code, str(args["reason"]),
                                          args.get("release") is True, float(args.get("valid_s", 28800)),
                                          ctx.by | {"requested_by": ctx.requested_by})
    return {"seq": ev.seq, "until": ev.data["until"]}
