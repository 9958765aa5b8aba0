"""The station link's side of the command registry: what a signed MQTT command needs, and running it.

The station link validates the payload against the contract, checks its
signatures against what ``vet`` says it needs, journals the command and
deduplicates it by id; ``handle`` runs it from lockerd.commands (journaled
with the command id and its signers, so the chain shows who asked for what).
"""

from __future__ import annotations

from typing import Any

from lockerd.commands import COMMANDS, STATION, Context
from lockerd.controller import Controller
from lockerd.errors import CommandError
from lockerd.station.gate import Vetting
from lockerd.station.signing import Authority


class StationHandler:
    def __init__(self, controller: Controller):
        self.controller = controller

    def vet(self, name: str, args: dict[str, Any]) -> Vetting:
        """The authority ``name`` needs with these args, a rule that refuses it outright, its args as journaled."""
        cmd = COMMANDS.get(name)
        need = cmd.authority if cmd is not None else None
        reg = self.controller.registry
        refusal = None
        if name == "open":
            slot = self.controller.slots.get(str(args.get("compartment")))
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
        reg = self.controller.registry
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
        cmd = COMMANDS.get(name)
        if cmd is None or STATION not in cmd.transports:
            raise CommandError(f"unknown command {name!r}")
        via = {"via": "station", "requested_by": meta.get("requested_by")} | {
            k: v for k, v in by.items() if k != "by"}  # an override names the command id and its signers
        ctx = Context(STATION, by=by, via=via, requested_by=meta.get("requested_by"))
        result = await cmd.run(self.controller, args, ctx)
        if change is not None:
            # Who may co-sign evidence or an emergency open changed: the station is told, loudly.
            pid, role = change
            badge = self.controller.registry.badge(args["code"]) if "code" in args else None
            self.controller.journal.append("notice.authority_changed", people=(pid,) if pid else (), action=name,
                                  role=role, badge=badge, **by)
        return result
