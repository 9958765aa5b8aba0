"""What the daemon journals, said for people: actions, roles and refusal reasons as catalog messages.

The daemon journals its reasons in English sentences for the audit trail;
the screens match the ones people meet at a cabinet and translate them. A
reason not matched here is shown as journaled rather than hidden.
"""

from __future__ import annotations

import re

from lockerd.display.i18n import N_, Text

ACTIONS: dict[str, Text] = {
    "deposit": N_("deposit"),
    "checkout": N_("checkout"),
    "return": N_("return"),
    "retrieve": N_("retrieval"),
    "release": N_("release"),
}

ROLES: dict[str, Text] = {
    "officer": N_("officer"),
    "case_manager": N_("case manager"),
    "supervisor": N_("supervisor"),
    "technician": N_("technician"),
    "clerk": N_("clerk"),
}

RECIPIENTS: dict[str, Text] = {
    "officer": N_("the officer"),
    "supervisor": N_("the supervisor"),
    "legal": N_("the legal section"),
}

DOORS: dict[str, Text] = {"open": N_("open"), "closed": N_("closed"), "unknown": N_("unknown")}

FAULTS: dict[str, Text] = {
    "lock": N_("lock fault"),
    "relay": N_("relay stuck"),
    "sensor": N_("sensor fault"),
    "jam": N_("jammed"),
    "wiring": N_("crossed wiring"),
}

ALARMS: dict[str, Text] = {"forced": N_("forced open"), "held-open": N_("held open")}

_REASONS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^unknown code$"), N_("unknown code")[0]),
    (re.compile(r"^belongs to cabinet (?P<cabinet>\S+), not served by this scanner$"),
     N_("belongs in cabinet {cabinet}")[0]),
    (re.compile(r"^badge revoked or its holder inactive$"), N_("badge revoked or its holder inactive")[0]),
    (re.compile(r"^no badge before the dossier$"), N_("scan your badge, then the dossier")[0]),
    (re.compile(r"^not assigned to a compartment$"), N_("not assigned to a compartment")[0]),
    (re.compile(r"^malformed input"), N_("the scanner read a damaged code: scan again")[0]),
    (re.compile(r"^needs an officer's and a case manager's badge"),
     N_("needs an officer's and a case manager's badge")[0]),
    (re.compile(r"^needs a case manager's badge"), N_("waiting for the case manager's badge")[0]),
    (re.compile(r"^needs an officer's badge"), N_("waiting for an officer's badge")[0]),
    (re.compile(r"^needs a reason card"), N_("reason card needed")[0]),
    (re.compile(r"^evidence rule not met within (?P<s>[\d.]+) s"), N_("time ran out ({s} s): start again")[0]),
    (re.compile(r"^a (?P<kind>\w+) assigned to \w+ compartment (?P<compartment>\S+)$"),
     N_("assigned to compartment {compartment}, which does not take it")[0]),
    (re.compile(r"journal unavailable"), N_("the journal cannot be written: no door opens")[0]),
    (re.compile(r"maintenance"), N_("the cabinet is in maintenance")[0]),
]


def reason(text: str | None) -> Text:
    """A journaled reason as a catalog message (with its fields), or the text itself when not known."""
    text = text or ""
    for part in text.split("; "):
        for pattern, msgid in _REASONS:
            m = pattern.search(part)
            if m:
                rest = [reason(p) for p in text.split("; ") if p != part]
                if rest:
                    return N_("{first}; {rest}", first=(msgid, m.groupdict()), rest=rest[0])
                return msgid, m.groupdict()
    return N_("{reason}", reason=text)


def action(name: str) -> Text:
    return ACTIONS.get(name, N_("{reason}", reason=name))
