"""What the station may ask of the controller: the handlers behind MQTT commands.

The station link validates the payload against the contract, journals the
command and deduplicates it by id; these handlers check the business rules
and apply the change (journaled with the command id, so the chain shows who
asked for what).
"""

from __future__ import annotations

from typing import Any

from lockerd.controller import Controller
from lockerd.errors import CommandError


class CommandHandler:
    def __init__(self, controller: Controller):
        self.c = controller

    async def handle(self, name: str, args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        by = {"by": "station", "command_id": meta.get("command_id")}
        c, reg = self.c, self.c.registry
        if name == "assign":
            item = c.check_item(str(args["code"]), str(args.get("kind", "dossier")), args.get("compartment"),
                                str(args.get("case_name", "")), str(args.get("category", "")),
                                str(args.get("officer", "")))
            deadline, data = c.custody.registration(item, args)  # checked before anything is applied
            ev = await c.assign(item, by, data, [deadline.op()] if deadline else [])
            c.custody.registered(deadline)
            c.items_changed({item.compartment} if item.compartment else set())
            return {"seq": ev.seq} | ({"deposit_due": data["deposit_due"]} if data else {})
        if name == "acknowledge":
            ev = await c.custody.acknowledge(str(args["code"]), args.get("deadline"), str(args["person"]),
                                             str(args.get("note", "")), by)
            return {"seq": ev.seq}
        if name == "release":
            return await c.custody.release(str(args["code"]), str(args["person"]), str(args["reason"]), by)
        if name == "unassign":
            ev = await c.unassign(str(args["code"]), by)
            return {"seq": ev.seq}
        if name == "register-person":
            p = reg.check_person(str(args["id"]), str(args["name"]), str(args["role"]))
            ev = await c.journal.record("person.registered", people=(p.id,), name=p.name, role=str(p.role),
                                        **by, state=reg.put_person(p))
            return {"seq": ev.seq}
        if name == "revoke-person":
            ops = reg.revoke_person(str(args["id"]))
            ev = await c.journal.record("person.revoked", people=(args["id"],), **by, state=ops)
            return {"seq": ev.seq}
        if name == "register-badge":
            code, person = str(args["code"]), str(args["person"])
            reg.check_badge(code, person)
            ev = await c.journal.record("badge.registered", people=(person,), badge=code, **by,
                                        state=reg.put_badge(code, person))
            return {"seq": ev.seq}
        if name == "revoke-badge":
            code = str(args["code"])
            person = reg.badges.get(code)
            ops = reg.revoke_badge(code)
            ev = await c.journal.record("badge.revoked", people=(person,) if person else (), badge=code,
                                        **by, state=ops)
            return {"seq": ev.seq}
        if name == "open":
            out = await c.remote_open(str(args["compartment"]), str(meta.get("requested_by") or args.get("person", "")),
                                      str(args.get("reason", "")), str(meta.get("command_id", "")))
            if not out.accepted:
                raise CommandError(out.message)
            return {"compartment": out.compartment, "pulsed": out.pulsed}
        if name == "authorize-retrieval":
            code = str(args["code"])
            ev = await c.authorisations.authorise(reg.items.get(code), code, str(args["reason"]),
                                                  args.get("release") is True, float(args.get("valid_s", 28800)),
                                                  by | {"requested_by": meta.get("requested_by")})
            return {"seq": ev.seq, "until": ev.data["until"]}
        if name == "emergency-open":
            via = {"via": "station", "command_id": meta.get("command_id"), "requested_by": meta.get("requested_by")}
            return await c.overrides.emergency_open(
                list(args["people"]), str(args["reason"]), compartment=args.get("compartment"),
                all_compartments=args.get("all") is True, cabinet=args.get("cabinet"), via=via)
        raise CommandError(f"unknown command {name!r}")
