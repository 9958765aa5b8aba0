"""The property-room wall board: every compartment, what is overdue and how far it escalated, open alarms,
and today's activity, from one controller's journal or from a room's controllers on their station broker.

Compartments, items, deadlines and people come from the journal's state
tables (written in the same transaction as the event that changed them, so
they are what the chain says); today's activity counts the day's events in
the station's time zone. A room's board (``room_board``) is built from what
the broker says instead: each controller's presence and compartments, and
the events and reminders heard since the display started.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, time
from typing import Any

from lockerd.clock import iso_utc, parse_time
from lockerd.config import Config
from lockerd.display.i18n import N_, Lang, Text
from lockerd.display.room import RoomSource
from lockerd.display.source import JournalSource
from lockerd.display.texts import ALARMS, DOORS, FAULTS, RECIPIENTS
from lockerd.journal import Event

# What "today's activity" counts, and the words for it.
ACTIVITY: dict[str, Text] = {
    "access.granted": N_("doors opened"),
    "access.denied": N_("scans refused"),
    "dossier.deposited": N_("dossiers deposited"),
    "dossier.checked_out": N_("dossiers taken out"),
    "dossier.returned": N_("dossiers returned"),
    "evidence.deposited": N_("evidence deposited"),
    "evidence.retrieved": N_("evidence retrieved"),
    "reminder.due": N_("reminders sent"),
    "reminder.escalated": N_("reminders escalated"),
    "alarm.forced": N_("doors forced"),
}

RECENT: dict[str, Text] = {
    "access.granted": N_("{compartment} opened: {item}"),
    "access.denied": N_("refused at {scanner}: {item}"),
    "dossier.deposited": N_("{item} deposited in {compartment}"),
    "dossier.checked_out": N_("{item} taken out of {compartment}"),
    "dossier.returned": N_("{item} returned to {compartment}"),
    "evidence.deposited": N_("{item} deposited in {compartment}"),
    "evidence.retrieved": N_("{item} retrieved from {compartment}"),
    "evidence.released": N_("{item} released from {compartment}"),
    "alarm.forced": N_("{compartment} forced open"),
    "alarm.acknowledged": N_("alarm acknowledged"),
    "reminder.due": N_("reminder: {item} overdue"),
    "reminder.escalated": N_("reminder escalated: {item}"),
}


class Today:
    """The day's counts and last events, kept as events come."""

    def __init__(self, cfg: Config):
        self.tz = cfg.calendar.tz
        self.day = ""
        self.counts: Counter[str] = Counter()
        self.recent: list[Event] = []
        self.room = False  # events from the broker: their boot names their controller
        # Room only: the newest reminder of each (node, deadline, item) not cleared since, heard live.
        self.reminders: dict[tuple[str, str, str], Event] = {}

    def start_of_day(self, now: float) -> float:
        local = datetime.fromtimestamp(now, self.tz)
        return datetime.combine(local.date(), time(0), self.tz).timestamp()

    def load(self, source: JournalSource, now: float) -> None:
        self.day = iso_utc(self.start_of_day(now))
        self.counts.clear()
        self.recent.clear()
        self.add(source.since(self.day))

    def reset(self, now: float) -> None:
        """A new day with nothing counted yet (the room's events are heard live, not read back)."""
        self.day = iso_utc(self.start_of_day(now))
        self.counts.clear()
        self.recent.clear()

    def node_of(self, e: Event) -> str:
        return e.boot if self.room else ""

    def add(self, events: list[Event]) -> None:
        for e in events:
            if self.room and e.dossier and isinstance(e.data.get("deadline"), str):
                key = (e.boot, e.data["deadline"], e.dossier)
                if e.kind in ("reminder.due", "reminder.escalated") and isinstance(e.data.get("due"), str):
                    self.reminders[key] = e
                elif e.kind == "reminder.cleared":
                    self.reminders.pop(key, None)
            if e.ts < self.day:
                continue
            if e.kind in ACTIVITY:
                self.counts[e.kind] += 1
            if e.kind in RECENT:
                self.recent.append(e)
        del self.recent[:-12]


def board(cfg: Config, source: JournalSource, today: Today, lang: Lang, now: float) -> dict[str, Any]:
    """The wall board in one language."""
    people = {p["id"]: p for p in source.table("people")}

    def who(pid: str | None) -> str:
        return (people.get(pid or "") or {}).get("name") or pid or ""

    rows = {r["id"]: r for r in source.table("compartments")}
    inside: dict[str, list[dict[str, Any]]] = {}
    for item in source.table("items"):
        if item.get("state") == "in" and item.get("compartment"):
            inside.setdefault(item["compartment"], []).append(item)
    cabinets = []
    alarms: list[dict[str, str]] = []
    for cab_id, cab in cfg.cabinets.items():
        cells = []
        for cid in cab.compartments:
            r = rows.get(cid) or {}
            faults = list((r.get("faults") or {}).keys()) if isinstance(r.get("faults"), dict) else []
            alarm = list(r.get("alarm") or [])
            cells.append(_cell(lang, cid, r.get("door"), faults, alarm, [i["code"] for i in inside.get(cid, [])],
                               N_("lock fault") if "lock" in faults else N_("locked")))
            alarms += _alarms(lang, cid, alarm)
        cabinets.append({"id": cab_id, "title": lang.text(N_("Cabinet {name}", name=cab_id)),
                         "kind": cab.kind, "cells": cells})
    overdue = []
    for dl in sorted(source.table("deadlines"), key=lambda r: r.get("due_ts") or 0):
        due = dl.get("due_ts")
        if due is None or due > now:
            continue
        level = int(dl.get("level") or 0)
        ladder = cfg.custody.ladders.get(dl.get("kind") or "")
        to = ladder.steps[level - 1].to if ladder and 0 < level <= len(ladder.steps) else ""
        responsible = dl.get("holder") or dl.get("officer")
        since = parse_time(dl["since"]) if dl.get("since") else None
        overdue.append({
            "item": dl.get("code"),
            "level": level,
            "level_text": lang.text(N_("level {level}: {to}", level=level, to=RECIPIENTS[to]) if to
                                    else N_("not yet reminded")),
            "responsible": who(responsible),
            "since": lang.when(since) if since else "",
            "due": lang.when(due),
            "late": lang.text(N_("{h} h {m} min late", h=int((now - due) // 3600), m=int((now - due) % 3600 // 60))),
        })
    return {
        **_frame(lang, today, now),
        "controllers": [{"node": cfg.node, "site": cfg.site, "online": True,
                         "text": lang.text(N_("{node}: this controller", node=cfg.node))}],
        "cabinets": cabinets, "overdue": overdue, "alarms": alarms,
    }


def _cell(lang: Lang, cid: str, door: str | None, faults: list[str], alarm: list[str], items: list[str],
          lock: Text, key: str = "") -> dict[str, Any]:
    door = door if door in DOORS else "unknown"
    return {
        "id": cid, "key": key or cid, "door": door, "door_text": lang.text(DOORS[door]), "lock": lang.text(lock),
        "items": items,
        "faults": [lang.text(FAULTS.get(f, N_("{reason}", reason=f))) for f in faults],
        "alarm": [lang.text(ALARMS.get(a, N_("{reason}", reason=a))) for a in alarm],
    }


def _alarms(lang: Lang, cid: str, alarm: list[str]) -> list[dict[str, str]]:
    if "forced" in alarm:
        return [{"compartment": cid, "text": lang.text(N_(
            "{compartment}: forced open, waiting for a supervisor or case manager to acknowledge",
            compartment=cid))}]
    if alarm:
        return [{"compartment": cid, "text": lang.text(N_("{compartment}: door held open", compartment=cid))}]
    return []


def _frame(lang: Lang, today: Today, now: float) -> dict[str, Any]:
    """What every wall board has: its title, clock, labels and today's activity."""
    activity = [{"what": lang.text(text), "count": today.counts.get(kind, 0)} for kind, text in ACTIVITY.items()]
    recent = []
    for e in reversed(today.recent):
        item = e.dossier or ", ".join((e.data.get("items") or {}).keys())
        compartment = f"{today.node_of(e)}/{e.compartment}" if today.node_of(e) and e.compartment else e.compartment
        recent.append({"time": lang.time(parse_time(e.ts)), "text": lang.text(
            (RECENT[e.kind][0], {"compartment": compartment or "", "item": item or "-",
                                 "scanner": e.data.get("scanner") or ""}))})
    return {
        "title": lang.text(N_("Property room")),
        "clock": lang.when(now), "zone": lang.zone(),
        "labels": {k: lang.text(v) for k, v in {
            "compartments": N_("Compartments"), "overdue": N_("Overdue"), "alarms": N_("Open alarms"),
            "today": N_("Today"), "none_overdue": N_("Nothing overdue"), "no_alarms": N_("No open alarms"),
            "item": N_("Item"), "level": N_("Escalation"), "responsible": N_("Responsible"), "since": N_("Since"),
            "due": N_("Due"), "late": N_("Late"), "controllers": N_("Controllers"),
        }.items()},
        "activity": activity, "recent": recent,
    }


PRESENCE: dict[str, Text] = {
    "online": N_("{node}: online since {since}"),
    "offline": N_("{node}: offline since {since}"),
    "": N_("{node}: not heard from yet"),
}


def room_board(room: RoomSource, today: Today, lang: Lang, now: float) -> dict[str, Any]:
    """The wall board of every controller the station broker tells of, in one language."""
    controllers, cabinets = [], []
    alarms: list[dict[str, str]] = []
    for node in sorted(room.controllers):
        c = room.controllers[node]
        since = lang.when(parse_time(c.since)) if c.since else ""
        controllers.append({"node": node, "site": room.site, "online": c.presence == "online",
                            "text": lang.text((PRESENCE[c.presence][0], {"node": node, "since": since}))})
        by_cabinet: dict[str, list[dict[str, Any]]] = {}
        for cid in sorted(c.compartments):
            by_cabinet.setdefault(str(c.compartments[cid].get("cabinet") or "-"), []).append(c.compartments[cid])
        for cab_id, states in sorted(by_cabinet.items()):
            cells = []
            for st in states:
                cid = st["compartment"]
                # A state message says "kind: why" for each fault; the board shows the kind, in words.
                faults = [str(f).partition(":")[0] for f in st.get("faults") or []]
                alarm = [str(st["alarm"])] if st.get("alarm") else []
                lock = N_("lock fault") if "lock" in faults else (
                    N_("released") if st.get("lock") == "released" else N_("locked"))
                cells.append(_cell(lang, cid, st.get("door"), faults, alarm, [str(i) for i in st.get("items") or []],
                                   lock, key=f"{node}-{cid}"))
                alarms += _alarms(lang, f"{node}/{cid}", alarm)
            cabinets.append({"id": f"{node}-{cab_id}", "kind": states[0].get("kind") or "",
                             "title": lang.text(N_("{node}: cabinet {name}", node=node, name=cab_id))})
            cabinets[-1]["cells"] = cells
    overdue = []
    for (node, _kind, item), e in sorted(today.reminders.items(), key=lambda kv: str(kv[1].data.get("due"))):
        due = parse_time(str(e.data["due"]))
        level = int(e.data.get("level") or 0)
        to = str(e.data.get("to") or "")
        overdue.append({
            "item": f"{node}: {item}", "level": level,
            "level_text": lang.text(N_("level {level}: {to}", level=level, to=RECIPIENTS[to]) if to in RECIPIENTS
                                    else N_("not yet reminded")),
            "responsible": str(e.data.get("holder") or e.data.get("officer") or ""),
            "since": "", "due": lang.when(due),
            "late": lang.text(N_("{h} h {m} min late", h=int((now - due) // 3600), m=int((now - due) % 3600 // 60))),
        })
    return {**_frame(lang, today, now), "controllers": controllers, "cabinets": cabinets, "overdue": overdue,
            "alarms": alarms}
