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
from lockerd.station import contract
from lockerd.station.gate import Vetting
from lockerd.station.signing import Authority


class CommandHandler:
    def __init__(self, controller: Controller):
        self.c = controller

    def vet(self, name: str, args: dict[str, Any]) -> Vetting:
        """The authority ``name`` needs with these args, a rule that refuses it outright, its args as journaled."""
        need = contract.COMMAND_AUTHORITY.get(name)
        reg = self.c.registry
        refusal = None
        if name == "open":
            slot = self.c.slots.get(str(args.get("compartment")))
            if slot is not None and slot.cfg.kind == "evidence":
                refusal = (f"compartment {slot.cfg.id} holds evidence: it never opens on a station command alone "
                           "(the officer and the case manager badge at the cabinet, or two signers order an "
                           "emergency-open)")
        if need is Authority.PEOPLE and self._authority_change(name, args) is not None:
            need = Authority.AUTHORITY
        journaled = args
        if name in ("register-badge", "revoke-badge") and isinstance(args.get("code"), str):
            journaled = args | {"code": reg.badge(args["code"])}  # the code itself is never journaled
        return Vetting(need, refusal, journaled)

    PEOPLE_COMMANDS = ("register-person", "revoke-person", "register-badge", "revoke-badge")

    def _authority_change(self, name: str, args: dict[str, Any]) -> tuple[str | None, str] | None:
        """(person, role) when a people or badge command touches a supervisor or a case manager (an authority
        change), judged before the change: the role asked for, or the one the person has."""
        if name not in self.PEOPLE_COMMANDS:
            return None
        reg = self.c.registry
        if name == "revoke-badge":
            pid = reg.badges.get(reg.badge(str(args.get("code"))))
        else:
            pid = args.get("person") if name == "register-badge" else args.get("id")
        pid = str(pid) if pid is not None else None
        role = reg.authority_role(pid, str(args.get("role")) if name == "register-person" else None)
        return (pid, role) if role is not None else None

    async def handle(self, name: str, args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        by = {"by": "station", "command_id": meta.get("command_id")} | (
            {"signed_by": meta["signed_by"]} if meta.get("signed_by") else {})
        change = self._authority_change(name, args)
        result = await self._apply(name, args, meta, by)
        if change is not None:
            # Who may co-sign evidence or an emergency open changed: the station is told, loudly.
            pid, role = change
            badge = self.c.registry.badge(args["code"]) if "code" in args else None
            self.c.journal.append("notice.authority_changed", people=(pid,) if pid else (), action=name,
                                  role=role, badge=badge, **by)
        return result

    async def _apply(self, name: str, args: dict[str, Any], meta: dict[str, Any], by: dict[str, Any]
                     ) -> dict[str, Any]:
        c, reg = self.c, self.c.registry
        if name == "assign":
            item = c.check_item(str(args["code"]), args.get("kind"), args.get("compartment"),
                                args.get("case_name"), args.get("category"), args.get("officer"))
            deadline, data = c.custody.registration(item, args)  # checked before anything is applied
            if args.get("supervisor") is not None:
                data["supervisor"] = args["supervisor"]  # named in the return reminders too
            ev = await c.assign(item, by, data, [deadline.op()] if deadline else [])
            c.custody.registered(deadline)
            c.items_changed({item.compartment} if item.compartment else set())
            return {"seq": ev.seq} | {k: data[k] for k in ("deposit_due", "late", "late_s") if k in data}
        if name == "acknowledge-alarm":
            return await c.acknowledge_alarm(str(args["compartment"]), str(args["person"]), str(args.get("note", "")),
                                             by)
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
            ev = await c.journal.record("badge.registered", people=(person,), badge=reg.badge(code), **by,
                                        state=reg.put_badge(code, person))
            return {"seq": ev.seq}
        if name == "revoke-badge":
            code = str(args["code"])
            person = reg.badges.get(reg.badge(code))
            ops = reg.revoke_badge(code)
            ev = await c.journal.record("badge.revoked", people=(person,) if person else (), badge=reg.badge(code),
                                        **by, state=ops)
            return {"seq": ev.seq}
        if name == "open":
            out = await c.remote_open(str(args["compartment"]), str(args.get("reason", "")),
                                      by | {"requested_by": meta.get("requested_by")})
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
            via = {"via": "station", "requested_by": meta.get("requested_by")} | {
                k: v for k, v in by.items() if k != "by"}  # the command id and its signers
            return await c.overrides.emergency_open(
                list(args["people"]), str(args["reason"]), compartment=args.get("compartment"),
                all_compartments=args.get("all") is True, cabinet=args.get("cabinet"), via=via)
        raise CommandError(f"unknown command {name!r}")
