"""Photographs of each custody step: a still on every grant and every door close.

The photographer is an observer of the journal: it acts on committed events
only, so a capture starts after the grant is durable and, for a pulsed
grant, after the pulse was issued (``lock.pulsed`` is journaled right after
the driver took the pulse). It never delays or refuses an opening: a camera
that is missing, fails, hangs or writes nothing is journaled as
``camera.failed`` and logged, and the custody step stands.

Stills go to ``photos/`` beside the journal file. Each successful still is
fsynced and journaled as ``photo.taken`` with the seq of the step it shows
(``for_seq``), its file name and its SHA-256, so a still can be checked
against the hash-chained journal later.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, BinaryIO

from lockerd.clock import parse_time
from lockerd.config import Config
from lockerd.drivers.camera import Shot, create_camera
from lockerd.errors import DriverError
from lockerd.journal import Event, Journal

log = logging.getLogger(__name__)

# Captures queued per camera beyond the one running; more is a burst the
# camera cannot follow, journaled as a failure rather than piling up.
MAX_WAITING = 8


def photo_dir(journal_path: Path) -> Path:
    """Where the stills of this controller are kept: photos/ beside the journal."""
    return journal_path.parent / "photos"


class Photographer:
    """Takes a still for each grant and door close of a cabinet that has a camera."""

    def __init__(self, config: Config, journal: Journal,
                 spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task]):
        self.journal = journal
        self.dir = photo_dir(config.journal_path)
        self.cameras = {name: create_camera(sec) for name, sec in config.cameras.items()}
        self._camera_of: dict[str, tuple[str, str]] = {}  # compartment -> (camera, cabinet)
        for cab in config.cabinets.values():
            if cab.camera:
                for cid in cab.compartments:
                    self._camera_of[cid] = (cab.camera, cab.id)
                    # A pass-through compartment's rear door is photographed by the same camera.
                    rear = getattr(config.compartments.get(cid), "rear_id", None)
                    if rear is not None:
                        self._camera_of[rear] = (cab.camera, cab.id)
        self._spawn = spawn
        self._locks = {name: asyncio.Lock() for name in self.cameras}
        self._waiting: Counter[str] = Counter()
        self._closed = False
        journal.subscribe(self._on_events)

    def close(self) -> None:
        """Take no new stills (the daemon is stopping)."""
        self._closed = True

    def _on_events(self, events: list[Event]) -> None:
        if self._closed:
            return
        for ev in events:
            shot = self._shot_for(ev)
            if shot is not None:
                camera = self._camera_of[shot.compartment][0]
                self._spawn(self._take(camera, shot, ev.id), f"photo-{shot.compartment}")

    def _shot_for(self, ev: Event) -> Shot | None:
        if ev.compartment not in self._camera_of:
            return None
        if ev.kind == "lock.pulsed" and isinstance(ev.data.get("grant_seq"), int):
            step, seq = "grant", ev.data["grant_seq"]
        elif ev.kind == "access.granted" and ev.data.get("pulse") is False:
            step, seq = "grant", ev.seq  # door already open: no pulse to wait for
        elif ev.kind == "door.closed":
            step, seq = "door.closed", ev.seq
        else:
            return None
        return Shot(ev.compartment, self._camera_of[ev.compartment][1], step, seq, parse_time(ev.ts))

    async def _take(self, name: str, shot: Shot, event_id: str) -> None:
        camera = self.cameras[name]
        where = {"camera": name, "step": shot.step, "for_seq": shot.seq}
        if self._waiting[name] > MAX_WAITING:
            self._failed(shot, where, f"camera {name} busy: {self._waiting[name]} stills already waiting")
            return
        self._waiting[name] += 1
        try:
            async with self._locks[name]:
                step = shot.step.replace(".", "-")
                path = self.dir / f"{shot.seq:08d}-{shot.compartment}-{step}-{event_id[:8]}.{camera.extension}"
                try:
                    self.dir.mkdir(parents=True, exist_ok=True)
                    await camera.capture(path, shot)
                    digest, size = await asyncio.to_thread(_hash_and_sync, path)
                except (DriverError, OSError) as e:
                    self._failed(shot, where, str(e))
                    return
                except Exception as e:  # a bug here must still leave a trace, and never reach the opening
                    log.exception("camera %s failed unexpectedly", name)
                    self._failed(shot, where, f"camera {name}: unexpected error: {e!r}")
                    return
                except asyncio.CancelledError:
                    self._failed(shot, where, f"camera {name}: capture abandoned: the daemon is stopping")
                    raise
                self.journal.append("photo.taken", compartment=shot.compartment,
                                    **where, file=path.name, sha256=digest, bytes=size)
        finally:
            self._waiting[name] -= 1

    def _failed(self, shot: Shot, where: dict[str, Any], error: str) -> None:
        log.warning("no still of %s %s (seq %s): %s", shot.compartment, shot.step, shot.seq, error)
        self.journal.append("camera.failed", compartment=shot.compartment, **where, error=error)


def sha256_of(f: BinaryIO) -> tuple[str, int]:
    """SHA-256 (hex) and size of what is left to read in ``f``."""
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(1 << 16):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size


def _hash_and_sync(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a still, after making it durable (file and folder)."""
    with open(path, "rb") as f:
        digest, size = sha256_of(f)
        os.fsync(f.fileno())
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0:
        raise OSError(f"{path.name}: the still is empty")
    return digest, size
