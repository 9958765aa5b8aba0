"""The station link: presence, info, the event stream, compartment state and commands.

The daemon constructs it and calls ``start()`` and ``stop()``; everything
else happens in the background on the daemon's loop. The daemon never
depends on the link: with no broker, it keeps working and the journal
(the outbox) holds every event until a broker takes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any, Protocol

import paho.mqtt.client as paho

from lockerd import __version__
from lockerd.clock import Clock, iso_utc
from lockerd.config import Config
from lockerd.errors import CommandError, JournalError
from lockerd.journal import Journal
from lockerd.station import contract, discovery, snapshot
from lockerd.station.gate import Gate, Vetting
from lockerd.station.intake import Command, Refused, SeenIds, parse
from lockerd.station.mqtt import Connection, Settings
from lockerd.station.outbox import Outbox, encode_event
from lockerd.station.topics import Topics

log = logging.getLogger(__name__)

COMMAND_QUEUE_MAX = 1000
REPLAY_PAGE = 200


class CommandHandler(Protocol):
    def vet(self, name: str, args: dict[str, Any]) -> Vetting: ...

    async def handle(self, name: str, args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]: ...


class StateSource(Protocol):
    def states(self) -> dict[str, dict[str, Any]]: ...

    def on_state(self, callback: Any) -> None: ...


# Events after which the overdue items may have changed: a reminder fired, a deadline ended or moved.
OVERDUE_KINDS = ("reminder.", "deadline.")


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, default=str).encode()


class StationLink:
    """MQTT link between one controller and the station server."""

    def __init__(self, config: Config, journal: Journal, clock: Clock | None = None, *,
                 commands: CommandHandler | None = None, states: StateSource | None = None):
        self.config = config
        self.journal = journal
        self.clock = clock or Clock()
        self.handler = commands
        self.state_source = states
        st = config.station or {}
        self.enabled = bool(config.station) and st.get("enabled", True)
        self.topics = Topics(st.get("prefix", "lockerd"), config.site, config.node)
        self.max_age_s = float(st.get("command_max_age_s", 60.0))
        self.gate = Gate(st)
        self.seen = SeenIds()
        self.started_at = ""
        self.conn: Connection | None = None
        self.outbox: Outbox | None = None
        self._queue: asyncio.Queue[tuple[str, Command, str]] = asyncio.Queue(COMMAND_QUEUE_MAX)
        self._worker: asyncio.Task | None = None
        self._replay_mids: set[int] = set()
        self._replay_progress = asyncio.Event()
        self._states_due: dict[str, dict[str, Any]] = {}  # compartment -> its state, to publish after this step
        self._stopped = False
        if not self.enabled:
            return
        try:
            settings = Settings.from_station(st, f"lockerd-{config.site}-{config.node}")
        except OSError as e:
            # A missing password file must not stop the daemon: the broker
            # refuses us, which is logged, and the journal keeps everything.
            log.error("station: cannot read password_file: %s", e)  # noqa: TRY400 - e names the file and why
            settings = Settings.from_station(st | {"password_file": ""}, f"lockerd-{config.site}-{config.node}")
        self.conn = Connection(settings, will=(self.topics.presence, self._will),
                               on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                               on_message=self._on_message, on_publish=self._on_publish)
        self.outbox = Outbox(journal, self._publish_event, self.topics.events, int(st.get("batch_size", 200)),
                             connected=lambda: self.connected)

    @property
    def connected(self) -> bool:
        return self.conn is not None and self.conn.connected

    # -- life ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start in the background; never raises for an absent broker."""
        if not self.enabled or self.conn is None or self.outbox is None:
            log.info("station: link disabled")
            return
        self.started_at = iso_utc(self.clock.wall())
        for warning in self.gate.warnings():
            log.warning("station: SECURITY: %s", warning)
        self.journal.append("station.security", **self.gate.posture(), warnings=self.gate.warnings())
        if self.outbox.load() and self.outbox.delivered > self.journal.last_seq:
            self._truncated(self.outbox.delivered)
        try:
            self.seen.load(self.journal)
        except (JournalError, OSError) as e:
            log.warning("station: cannot reload recent command ids: %s", e)
        self.journal.subscribe(self._on_events)
        self.journal.on_outage(self._on_journal_outage)
        if self.state_source is not None:
            self.state_source.on_state(self._on_state)
        self._worker = asyncio.get_running_loop().create_task(self._command_worker(), name="station-commands")
        self.conn.start()

    def _truncated(self, delivered: int) -> None:
        """The station was sent events the journal no longer has: say so, and send what comes from here on.

        The events now taking those seqs are new ones; a station that keeps the hash of each seq (as
        docs/station-server.md asks) sees their prev differ from what it holds.
        """
        assert self.outbox is not None
        last = self.journal.last_seq
        log.error("station: ALARM: the journal ends at seq %d, but seq %d was delivered: rows were deleted", last,
                  delivered)
        self.journal.append("alarm.journal_truncated", reason=f"the journal ends at seq {last}, but the station "
                            f"acknowledged seq {delivered}", delivered_seq=delivered, last_seq=last)
        self.outbox.rewind_to(last)

    async def stop(self, flush_s: float = 2.0) -> None:
        """Deliver what is pending (briefly), say offline (retained), disconnect."""
        if self._stopped or self.conn is None or self.outbox is None:
            return
        self._stopped = True
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self.connected:
            # The last events (daemon.stopped) are worth a short wait.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.outbox.wait_saved(self.journal.last_seq), flush_s)
            self.conn.publish(self.topics.presence, self._presence("offline", clean=True), qos=1, retain=True)
        await self.conn.stop()

    # -- connection events --------------------------------------------------------------

    def _on_connect(self, _session_present: bool) -> None:
        assert self.conn is not None and self.outbox is not None
        self.conn.subscribe(self.topics.commands, qos=1)
        self.conn.publish(self.topics.presence, self._presence("online"), qos=1, retain=True)
        self.conn.publish(self.topics.info, _json(self._info()), qos=1, retain=True)
        states: dict[str, dict[str, Any]] = {}
        if self.state_source is not None:
            try:
                states = self.state_source.states()
            except Exception:
                log.exception("station: cannot read compartment states")
            for state in states.values():
                self._publish_state(state)
        # The same state again in one message that needs no retained store: a station (re)subscribed on any
        # broker rebuilds from it (docs/station-server.md).
        self.conn.publish(self.topics.snapshot, _json(snapshot.build(self.journal, states, self.config.site,
                                                                     self.config.node, self._now())),
                          qos=1, retain=False)
        self._publish_overdue()
        if self.config.station.get("homeassistant_discovery"):
            for topic, payload in discovery.messages(self.topics, sorted(states),
                                                     self.config.station.get("homeassistant_prefix") or
                                                     "homeassistant"):
                self.conn.publish(topic, payload, qos=1, retain=True)
        self.outbox.on_connect()

    def _on_disconnect(self) -> None:
        if self.outbox is not None:
            self.outbox.on_disconnect()
        self._replay_mids.clear()
        self._replay_progress.set()

    def _on_publish(self, mid: int, refused: str | None) -> None:
        if self.outbox is not None and self.outbox.on_publish(mid, refused):
            return
        if mid in self._replay_mids:
            self._replay_mids.discard(mid)
            self._replay_progress.set()

    def _on_events(self, events: list[Any]) -> None:
        if not self._stopped and self.outbox is not None:
            self.outbox.on_events()
        for ev in events:
            if ev.kind == "journal.checkpoint" and self.connected and self.conn is not None:
                self.conn.publish(self.topics.checkpoint, _json(ev.data), qos=1, retain=True)
        if any(ev.kind.startswith(OVERDUE_KINDS) for ev in events):
            self._publish_overdue()

    def _on_journal_outage(self) -> None:
        # The station hears at once that the journal stopped (or started again) taking events: the events
        # themselves cannot tell it, as they wait for the journal.
        if not self._stopped and self.connected and self.conn is not None:
            self.conn.publish(self.topics.info, _json(self._info()), qos=1, retain=True)

    def _on_state(self, state: dict[str, Any]) -> None:
        # Published once the step that changed it has run: a command's reply
        # (queued in that step) goes out first, and a compartment changed
        # twice in one step is published once, as the step left it.
        cid = state.get("compartment")
        if self._stopped or not self.connected or not isinstance(cid, str):
            return
        if not self._states_due:
            asyncio.get_running_loop().call_soon(self._publish_states_due)
        self._states_due[cid] = state

    def _publish_states_due(self) -> None:
        due, self._states_due = self._states_due, {}
        if not self._stopped and self.connected:
            for state in due.values():
                self._publish_state(state)

    # -- payloads ----------------------------------------------------------------------------

    def _now(self) -> str:
        return iso_utc(self.clock.wall())

    def _presence(self, state: str, clean: bool | None = None) -> bytes:
        body: dict[str, Any] = {"state": state, "ts": self._now(), "boot": self.journal.boot}
        if clean is not None:
            body["clean"] = clean
        return _json(body)

    def _will(self) -> bytes:
        return self._presence("offline", clean=False)

    def _info(self) -> dict[str, Any]:
        assert self.conn is not None
        return {"ts": self._now(), "version": __version__, "config": self.config.digest,
                "started_at": self.started_at, "site": self.config.site, "node": self.config.node,
                "boot": self.journal.boot, "client_id": self.conn.settings.client_id,
                "last_seq": self.journal.last_seq,
                "journal": {"writable": self.journal.healthy and not self.journal.held,
                            "error": self.journal.error, "held": self.journal.held}}

    def _publish_overdue(self) -> None:
        """The items overdue now, retained: what a dashboard counts without reading every reminder. Only a state
        source that knows them has an ``overdue()`` (the daemon's controller does; a test's stand-in may not)."""
        overdue = getattr(self.state_source, "overdue", None)
        if overdue is None or self._stopped or not self.connected or self.conn is None:
            return
        try:
            rows = overdue()
        except Exception:
            log.exception("station: cannot read the overdue items")
            return
        items = [{k: r.get(k) for k in ("code", "deadline", "due", "level", "officer", "holder")} for r in rows]
        self.conn.publish(self.topics.overdue, _json({"ts": self._now(), "count": len(items), "items": items}),
                          qos=1, retain=True)

    def _publish_state(self, state: dict[str, Any]) -> None:
        assert self.conn is not None
        cid = state.get("compartment")
        if not isinstance(cid, str):
            return
        self.conn.publish(self.topics.state(cid), _json({**state, "ts": self._now()}), qos=1, retain=True)

    def _publish_event(self, topic: str, payload: bytes) -> int | None:
        assert self.conn is not None
        return self.conn.publish(topic, payload, qos=1, retain=False)

    # -- commands ------------------------------------------------------------------------------

    def _on_message(self, msg: paho.MQTTMessage) -> None:
        name = self.topics.command_name(msg.topic)
        if name is None:
            log.debug("station: ignoring message on %s", msg.topic)
            return
        try:
            cmd = parse(name, msg.payload, retained=bool(msg.retain), site=self.config.site,
                        node=self.config.node, now=self.clock.wall(), max_age_s=self.max_age_s)
            item = ("run", cmd, "")
        except Refused as r:
            item = ("refuse", r.command, r.message)
        except Exception as e:
            # Whatever the bytes do to the parser, the station gets a reply and the journal a record.
            log.exception("station: reading a %s command failed", name)
            item = ("refuse", Command(name), f"command could not be read: {type(e).__name__}")
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("station: command queue full; refusing %s %s", name, item[1].id)
            self.journal.append("command.refused", **self._cmd_fields(item[1]), error="controller busy")
            self._reply(item[1], ok=False, error="controller busy: too many commands queued; send it again later")

    async def _command_worker(self) -> None:
        # One at a time, in arrival order: "assign" then "open" must run in
        # that order, and a duplicate is recognised only after its first
        # copy was recorded.
        while True:
            kind, cmd, message = await self._queue.get()
            try:
                if kind == "refuse":
                    await self._refuse(cmd, message)
                else:
                    await self._run(cmd)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("station: command %s %s failed", cmd.name, cmd.id)

    def _cmd_fields(self, cmd: Command) -> dict[str, Any]:
        fields: dict[str, Any] = {"command_id": cmd.id, "command": cmd.name, "requested_by": cmd.requested_by}
        comp = cmd.args.get("compartment")
        if isinstance(comp, str):
            fields["compartment"] = comp
        code = cmd.args.get("code")
        if isinstance(code, str) and cmd.name in ("assign", "unassign"):
            fields["dossier"] = code
        return fields

    def _vet(self, cmd: Command) -> Vetting:
        need = contract.COMMAND_AUTHORITY.get(cmd.name)
        if self.handler is None or cmd.name in contract.LINK_COMMANDS:
            return Vetting(need, journaled_args=cmd.args)
        return self.handler.vet(cmd.name, cmd.args)

    @staticmethod
    def _proof(cmd: Command) -> dict[str, Any]:
        """What an auditor needs to prove offline who signed the command: the digest and the signatures."""
        if not cmd.signed_by or cmd.digest is None:
            return {}
        return {"signed_by": list(cmd.signed_by), "digest": cmd.digest.hex(), "command_ts": cmd.ts,
                "signatures": cmd.signatures}

    async def _refuse(self, cmd: Command, message: str, **extra: Any) -> None:
        log.warning("station: refused command %s (id %s): %s", cmd.name, cmd.id, message)
        await self._journal_or_log("a refused command", "command.refused", **self._cmd_fields(cmd), error=message,
                                   **extra)
        self._reply(cmd, ok=False, error=message, **extra)

    async def _journal_or_log(self, what: str, kind: str, /, **fields: Any) -> None:
        """Journal a refusal or failure; a journal that cannot take it is logged, the reply goes out regardless."""
        try:
            await self.journal.append_durable(kind, **fields)
        except JournalError as e:
            # One line, no traceback: an unusable journal is an expected state, alarmed on its own, and e says why.
            log.error("station: cannot journal %s: %s", what, e)  # noqa: TRY400

    async def _run(self, cmd: Command) -> None:
        assert cmd.id is not None
        if cmd.id in self.seen:
            # Answer with the first outcome; journal the repeat, apply nothing.
            first = self.seen.reply(cmd.id) or {}
            log.info("station: duplicate command %s (id %s); first outcome: %s", cmd.name, cmd.id, first)
            await self._journal_or_log("a duplicate command", "command.refused", **self._cmd_fields(cmd),
                                       duplicate=True, error="duplicate: this command id was received before")
            self._reply(cmd, ok=bool(first.get("ok", True)), error=first.get("error"), duplicate=True)
            return
        vetting = self._vet(cmd)
        if (problem := self.gate.check(cmd, vetting)) is not None:
            await self._refuse(cmd, problem)
            return
        # The acceptance is queued, not awaited: the journal writes in order,
        # so the handler's own durable record (a grant, before any lock moves)
        # commits it too, and a remote open costs one commit instead of two.
        accepted = self.journal.append("command.accepted", keep=False, **self._cmd_fields(cmd),
                                       args=vetting.journaled_args, **self._proof(cmd))
        if accepted.done() and accepted.exception() is not None:
            self._not_applied(cmd, accepted.exception())
            return
        # Seen from here on: a crash while applying must not let a repeat
        # of this id apply it a second time (the journal has the acceptance).
        self.seen.add(cmd.id, {"command": cmd.name, "ok": True})
        try:
            if cmd.name in contract.LINK_COMMANDS:
                result = await self._link_command(cmd)
            elif self.handler is None:
                raise CommandError("this controller takes no station commands")
            else:
                meta = cmd.meta | ({"signed_by": list(cmd.signed_by)} if cmd.signed_by else {})
                result = await self.handler.handle(cmd.name, dict(cmd.args), meta)
            if not isinstance(result, dict):
                result = {"value": result}
        except Exception as e:
            if not await self._acceptance_durable(cmd, accepted, applied=False):
                return
            if isinstance(e, CommandError):
                await self._failed(cmd, str(e))
            else:
                log.exception("station: command %s (id %s) raised", cmd.name, cmd.id)
                await self._failed(cmd, f"internal error: {type(e).__name__}: {e}")
            return
        await self._acceptance_durable(cmd, accepted, applied=True)
        log.info("station: command %s (id %s) by %s done", cmd.name, cmd.id, cmd.requested_by)
        self._reply(cmd, ok=True, result=result)

    async def _acceptance_durable(self, cmd: Command, accepted: asyncio.Future, applied: bool) -> bool:
        """Wait for the acceptance (already on disk when the handler journaled durably); False if it failed."""
        try:
            await accepted
            return True
        except JournalError as e:
            if applied:
                # Its effect is journaled (the grant carries the command id),
                # only the acceptance row is missing: say so, answer the truth.
                # One line, no traceback: an unusable journal is expected and e says why.
                log.error(  # noqa: TRY400
                    "station: command %s (id %s) applied, but its acceptance was not journaled: %s",
                    cmd.name, cmd.id, e)
                return False
            assert cmd.id is not None
            self.seen.discard(cmd.id)
            self._not_applied(cmd, e)
            return False

    def _not_applied(self, cmd: Command, e: BaseException | None) -> None:
        # Not journaled, not applied: the station may send it again.
        self._reply(cmd, ok=False, error=f"cannot journal the command, not applied: {e}")

    async def _failed(self, cmd: Command, error: str) -> None:
        assert cmd.id is not None
        self.seen.add(cmd.id, {"command": cmd.name, "ok": False, "error": error})
        await self._journal_or_log("a failed command", "command.failed", **self._cmd_fields(cmd), error=error)
        self._reply(cmd, ok=False, error=error)

    def _reply(self, cmd: Command, ok: bool, result: dict[str, Any] | None = None, error: str | None = None,
               duplicate: bool | None = None) -> None:
        if self.conn is None:
            return
        body: dict[str, Any] = {"id": cmd.id, "ts": self._now(), "command": cmd.name, "ok": ok}
        if result is not None:
            body["result"] = result
        if error is not None:
            body["error"] = error
        if duplicate is not None:
            body["duplicate"] = duplicate
        if self.conn.publish(self.topics.reply, _json(body), qos=1, retain=False) is None:
            log.info("station: reply to %s not sent (offline); a repeat of the command gets it", cmd.id)

    # -- commands the link answers ------------------------------------------------------------------

    async def _link_command(self, cmd: Command) -> dict[str, Any]:
        assert self.outbox is not None
        if cmd.name == "ping":
            return {"last_seq": self.journal.last_seq, "delivered": self.outbox.delivered}
        return await self._replay(int(cmd.args["from_seq"]), cmd.args.get("to_seq"))

    async def _replay(self, first: int, last: int | None) -> dict[str, Any]:
        """Re-publish events first..last on the replay topic, paced by PUBACKs."""
        assert self.conn is not None and self.outbox is not None
        cap = first + contract.REPLAY_MAX - 1
        end = min(last if last is not None else cap, cap, self.journal.last_seq)
        after, count = first - 1, 0
        while after < end:
            if not self.connected:
                raise CommandError("connection lost during the replay; ask again")
            events = self.journal.read(after, min(REPLAY_PAGE, end - after))
            if not events:
                break
            for ev in events:
                mid = self.conn.publish(self.topics.replay, encode_event(ev), qos=1, retain=False)
                if mid is None:
                    raise CommandError("connection lost during the replay; ask again")
                self._replay_mids.add(mid)
            after, count = events[-1].seq, count + len(events)
            while len(self._replay_mids) > self.outbox.batch_size and self.connected:
                self._replay_progress.clear()
                await self._replay_progress.wait()
        return {"from_seq": first, "to_seq": max(after, first - 1), "count": count, "topic": self.topics.replay}
