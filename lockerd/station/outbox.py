"""The durable outbox: the journal itself, published in seq order from a cursor.

``outbox.delivered`` (in the journal database) is the highest seq the
broker has acknowledged with everything before it. After a connect the
outbox publishes from the event after it, keeps up to ``batch_size`` events
handed to paho, and moves the cursor as PUBACKs arrive (one UPDATE per
burst of acknowledgements, never one per event). Nothing is held only in
memory: a kill at any instant loses no event, and at worst re-sends the
events after the last saved cursor (same id and seq: a redelivery).

A PUBACK means the broker has the message, not that a subscriber got it: a
broker that crashes (power cut, OOM kill) loses what it acknowledged but had
not yet forwarded or saved. So after a lost connection the outbox also
re-sends the events acknowledged in the ``REWIND_S`` seconds before the
broker was last heard (its last PUBACK, or the loss itself if that came
first): a broker that dies silently (a power cut, no RST) is noticed only
when the keepalive runs out, a minute or more after the acknowledgements it
may have lost. These are redeliveries (same id and seq); anything older
that a broker lost, the station finds by seq and asks for with a replay.
What a station sees twice after a broker crash is more than this window:
the broker, restarted, also delivers again what its last save of the
subscriber's queue still held (up to its ``autosave_interval``).

A broker that refuses an event (an MQTT v5 PUBACK with a failure reason
code: an ACL, a quota) never makes the outbox skip it: the stream holds at
that event, the refusal is logged and journaled once (``station.refused``),
and only that event is offered again, after 1 s, then 2, 4 ... up to 60 s,
until the broker takes it; then the stream goes on from there.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from lockerd.errors import JournalError
from lockerd.journal import Event, Journal

log = logging.getLogger(__name__)

CURSOR_SQL = "UPDATE outbox SET delivered = ? WHERE id = 1"
READ_PAGE = 500
# Acknowledged this shortly before a lost connection: sent again after it.
REWIND_S = 10.0
ACK_NOTE_S = 0.1  # how finely the history of acknowledgements is kept
REFUSED_FIRST_S = 1.0
REFUSED_MAX_S = 60.0


def encode_event(ev: Event) -> bytes:
    return json.dumps(ev.as_dict(), separators=(",", ":"), ensure_ascii=False).encode()


class Outbox:
    """Moves journal events to the broker, in order, at least once."""

    def __init__(self, journal: Journal, publish: Callable[[str, bytes], int | None], topic: str,
                 batch_size: int, connected: Callable[[], bool], clock: Callable[[], float] = time.monotonic):
        self.journal = journal
        self._now = clock  # monotonic seconds
        self.publish = publish
        self.topic = topic
        self.batch_size = batch_size
        self.connected = connected
        self.loaded = False
        self.delivered = 0  # saved in the journal
        self.acked = 0  # acknowledged with all before it (may be ahead of delivered)
        self.next_seq = 1
        self.published = 0  # messages handed to paho, redeliveries included
        self._inflight: dict[int, int] = {}  # paho mid -> seq
        self._acked_above: set[int] = set()
        self._scheduled = False
        self._saving = False
        self._save_error = ""
        self._waiters: list[tuple[int, Any]] = []
        self._acks: deque[tuple[float, int]] = deque()  # (monotonic, acked) each time acked moved
        self._ack_floor = 0  # acked before the oldest entry of _acks
        self._lost_at: float | None = None  # when the broker was last heard before the connection was lost
        self._heard_at: float | None = None  # the broker's last PUBACK
        self.rewound = 0  # events re-sent because a connection was lost after their PUBACK
        self.refused: tuple[int, str] | None = None  # (seq, reason) while the broker refuses the stream
        self.refusals = 0  # refusals in a row of the held event
        self._hold: asyncio.TimerHandle | None = None

    def load(self) -> bool:
        """Read the saved cursor; False while the journal cannot be read."""
        try:
            rows = self.journal.query("SELECT delivered FROM outbox WHERE id = 1")
        except (JournalError, OSError) as e:
            log.warning("station: outbox cursor unreadable: %s", e)
            return False
        self._set_cursor(int(rows[0][0]) if rows else 0)
        self.loaded = True
        return True

    def _set_cursor(self, seq: int) -> None:
        """Everything up to ``seq`` counts as delivered; the next to send is the one after."""
        self.delivered = self.acked = self._ack_floor = seq
        self._acks.clear()
        self.next_seq = seq + 1

    def rewind_to(self, seq: int) -> None:
        """Deliver from ``seq + 1`` on (after the journal lost its tail) and save that as the cursor."""
        self._set_cursor(seq)
        self.journal.execute(CURSOR_SQL, seq)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- triggers --------------------------------------------------------------------

    def on_connect(self) -> None:
        self._inflight.clear()
        self._acked_above.clear()
        if not self.loaded and not self.load():
            return
        # Everything not acknowledged is sent again, from the first gap, and
        # so is what was acknowledged just before the connection was lost.
        self.next_seq = self._rewind_point() + 1
        self.rewound += self.acked + 1 - self.next_seq
        if self.next_seq <= self.acked:
            log.info("station: re-sending events %d..%d, acknowledged in the %g s before the broker was last heard",
                     self.next_seq, self.acked, REWIND_S)
        self.schedule()

    def on_disconnect(self) -> None:
        self._inflight.clear()
        self._acked_above.clear()
        if self._lost_at is None:
            now = self._now()
            self._lost_at = now if self._heard_at is None else min(now, self._heard_at)

    def _rewind_point(self) -> int:
        """The acknowledged seq as it stood ``REWIND_S`` before the broker was last heard."""
        lost, self._lost_at = self._lost_at, None
        if lost is None:
            return self.acked
        i = bisect.bisect_right([t for t, _ in self._acks], lost - REWIND_S)
        return self._acks[i - 1][1] if i > 0 else self._ack_floor

    def on_events(self) -> None:
        """New events were journaled: send them (the outbox reads them from the journal, in seq order)."""
        if not self.loaded and self.connected():
            # The journal could not be read when the link connected (unusable at start): it can now.
            self.on_connect()
            return
        self.schedule()

    def on_publish(self, mid: int, refused: str | None) -> bool:
        """A PUBACK (``refused``: the broker's reason, or None); False when the mid is not one of ours."""
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return False
        self._heard_at = self._now()
        if refused is not None:
            self._on_refused(seq, refused)
            return True
        if self.refused is not None and seq == self.refused[0]:
            log.warning("station: the broker takes events on %s again (from seq %d)", self.topic, seq)
            self.refused, self.refusals = None, 0
        if seq <= self.acked:
            self.schedule()  # a re-sent event, acknowledged again
            return True
        self._acked_above.add(seq)
        moved = False
        while self.acked + 1 in self._acked_above:
            self._acked_above.remove(self.acked + 1)
            self.acked += 1
            moved = True
        if moved:
            self._note_ack()
            self._save()
        self.schedule()
        return True

    def _on_refused(self, seq: int, reason: str) -> None:
        if self._hold is not None:
            return  # refused in the same burst: they wait with the held event
        if self.refused is not None and seq > self.refused[0]:
            return  # offered while the held event's probe was out
        self.refusals += 1
        delay = min(REFUSED_FIRST_S * 2 ** (self.refusals - 1), REFUSED_MAX_S)
        first = self.refused is None or self.refused[1] != reason
        self.refused = (seq, reason)
        if first:
            log.error("station: the broker refused event seq %d on %s (%s); the stream holds there and "
                      "offers it again after %g s, backing off to %g s", seq, self.topic, reason, delay, REFUSED_MAX_S)
            self.journal.append("station.refused", topic=self.topic, event_seq=seq, reason=reason)
        else:
            log.debug("station: event seq %d refused again (%s); next try in %g s", seq, reason, delay)
        self._hold = asyncio.get_running_loop().call_later(delay, self._release)

    def _release(self) -> None:
        self._hold = None
        # From the held event (or from further back, if a reconnect rewound).
        self.next_seq = min(self.next_seq, self.acked + 1)
        self.schedule()

    def _note_ack(self) -> None:
        now = self._now()
        if self._acks and now - self._acks[-1][0] < ACK_NOTE_S:
            return  # a missed move only makes a rewind reach further back
        self._acks.append((now, self.acked))
        # Older moves only matter as the value they left behind.
        while self._acks[0][0] < now - 2 * REWIND_S:
            self._ack_floor = self._acks.popleft()[1]

    def schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            # One loop turn later than call_soon: a grant's commit wakes the
            # pulse and this pump together, and the relay write goes out first.
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, self._pump)

    # -- the pump --------------------------------------------------------------------------

    def _pump(self) -> None:
        self._scheduled = False
        if not self.loaded or not self.connected() or self._hold is not None:
            return
        # While the broker refuses, only the held event goes out, as a probe.
        room = 1 - len(self._inflight) if self.refused is not None else self.batch_size - len(self._inflight)
        while room > 0:
            try:
                events = self.journal.read(self.next_seq - 1, min(room, READ_PAGE))
            except (JournalError, OSError) as e:
                log.warning("station: cannot read the journal for the outbox: %s", e)
                return
            if not events:
                return
            for ev in events:
                mid = self.publish(self.topic, encode_event(ev))
                if mid is None:
                    return  # connection gone; on_connect starts again from the cursor
                self._inflight[mid] = ev.seq
                self.next_seq = ev.seq + 1
                self.published += 1
            room -= len(events)

    def _save(self) -> None:
        if self._saving or self.acked <= self.delivered:
            return
        self._saving = True
        target = self.acked
        # Not flushed on its own: a cursor a power cut sets back re-sends some events, with the same ids.
        fut = self.journal.execute(CURSOR_SQL, target, durable=False)
        fut.add_done_callback(lambda f: self._saved(f, target))

    def _saved(self, fut: Any, target: int) -> None:
        self._saving = False
        exc = None if fut.cancelled() else fut.exception()
        if fut.cancelled() or exc is not None:
            msg = f"cannot save the outbox cursor: {exc}"
            if msg != self._save_error:
                log.warning("station: %s", msg)
                self._save_error = msg
            return  # the next acknowledgement tries again
        self._save_error = ""
        self.delivered = target
        for waiter in [w for w in self._waiters if w[0] <= target]:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(None)
        self._save()

    async def wait_saved(self, seq: int) -> None:
        """Wait until the saved cursor reaches ``seq``."""
        if self.delivered >= seq:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append((seq, fut))
        await fut
