"""Cameras: one still per custody step, taken off the safety path.

A camera writes one still to the path it is given and raises a DriverError
when it cannot. Two kinds:

- ``command``: runs a capture tool (the board's ``rpicam-still -n -o {path}``
  or anything with the same contract) as a subprocess with a timeout. The
  tool runs in its own process group, so a shell wrapper and whatever it
  started are killed together on timeout.
- ``sim``: writes a small deterministic PNG naming the compartment, the step,
  its seq and the time, for tests and the demo.

What is photographed and when, and how it is journaled, is
``lockerd.photos``; this module only takes pictures.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import signal
import string
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from lockerd.drivers.options import Opt, Problem, Section, Spec, with_defaults

from lockerd.clock import iso_utc
from lockerd.errors import DriverError, DriverTimeout, DriverUnavailable

# What a capture command may ask for in its arguments.
PLACEHOLDERS = frozenset({"path", "compartment", "cabinet", "step", "seq"})


@dataclass(frozen=True, slots=True)
class Shot:
    """What a still is of: which compartment, which step, the seq of that step's event."""

    compartment: str
    cabinet: str
    step: str  # "grant" | "door.closed"
    seq: int
    wall: float  # wall time of the step's event, for the sim's caption


class Camera:
    """Takes a still into a given file; raises DriverError when it cannot."""

    type_name = "abstract"
    extension = "jpg"
    OPTIONS: ClassVar[Spec] = {}

    def __init__(self, name: str):
        self.name = name

    @classmethod
    def build(cls, name: str, _options: Mapping[str, Any], _parts: object = None) -> Camera:
        """Every driver type is built from (name, options, parts); this camera reads neither of the last two."""
        return cls(name)

    async def capture(self, path: Path, shot: Shot) -> None:
        """Write one still to ``path`` (which does not exist yet)."""
        raise NotImplementedError


class CommandCamera(Camera):
    """A capture tool run as a subprocess, with a timeout."""

    type_name = "command"
    OPTIONS: ClassVar[Spec] = {
        "command": Opt("list-str", doc='argv with {path} where the still goes, e.g. ["rpicam-still", "-n", '
                                       '"-o", "{path}"]; also {compartment}, {cabinet}, {step}, {seq}'),
        "timeout_s": Opt("float", 10.0, min=0.1, max=300, doc="kill the capture after this long"),
        "extension": Opt("str", "jpg", doc="file name extension of the stills"),
    }

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], _parts: object = None) -> CommandCamera:
        return cls(name, options)

    @staticmethod
    def problems(options: Mapping[str, Any]) -> list[Problem]:
        """A command that runs a program and says where the still goes; an extension fit for a file name."""
        out: list[Problem] = []
        argv, ext = options["command"], options["extension"]
        if isinstance(argv, tuple):  # else its own check said what is wrong
            out += _command_problems(argv)
        if isinstance(ext, str) and not re.fullmatch(r"[a-z0-9]{1,8}", ext):
            out.append(("extension", ext, "1-8 characters from a-z and 0-9"))
        return out

    def __init__(self, name: str, options: Mapping[str, Any]):
        super().__init__(name)
        options = with_defaults(self.OPTIONS, options)
        self.command: tuple[str, ...] = tuple(options["command"])
        self.timeout_s = float(options["timeout_s"])
        self.extension = str(options["extension"])

    def argv(self, path: Path, shot: Shot) -> list[str]:
        values = {"path": str(path), "compartment": shot.compartment, "cabinet": shot.cabinet,
                  "step": shot.step, "seq": shot.seq}
        return [arg.format(**values) for arg in self.command]

    async def capture(self, path: Path, shot: Shot) -> None:
        argv = self.argv(path, shot)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except FileNotFoundError:
            raise DriverUnavailable(f"camera {self.name}: {argv[0]}: no such program") from None
        except OSError as e:
            raise DriverUnavailable(f"camera {self.name}: cannot run {argv[0]}: {e.strerror or e}") from None
        try:
            # Real time, not the injected clock: the tool runs in real time
            # whatever the controller's clock says.
            _, err = await asyncio.wait_for(proc.communicate(), self.timeout_s)
        except TimeoutError:
            await _kill(proc)
            raise DriverTimeout(f"camera {self.name}: {argv[0]} gave no still within {self.timeout_s:g} s; "
                                "killed") from None
        except BaseException:  # cancelled (daemon stopping): never leave the tool running
            await _kill(proc)
            raise
        if proc.returncode != 0:
            last = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise DriverError(f"camera {self.name}: {argv[0]} exited with status {proc.returncode}"
                              + (f": {last[0][:200]}" if last[0] else ""))
        try:
            # Off the loop, as every file call here: a busy SD card can take milliseconds.
            size = (await asyncio.to_thread(path.stat)).st_size
        except FileNotFoundError:
            raise DriverError(f"camera {self.name}: {argv[0]} succeeded but wrote no file at {path}") from None
        if size == 0:
            raise DriverError(f"camera {self.name}: {argv[0]} wrote an empty file")


def _command_problems(argv: tuple[str, ...]) -> list[Problem]:
    try:
        used = {f for arg in argv for _, f, _, _ in string.Formatter().parse(arg) if f is not None}
    except ValueError:
        return [("command", list(argv), "arguments whose braces are balanced ({path} and the like)")]
    if not argv or not argv[0]:
        return [("command", list(argv), "a program and its arguments")]
    if used - PLACEHOLDERS:
        return [("command", list(argv), "placeholders among {" + "}, {".join(sorted(PLACEHOLDERS)) + "}")]
    if "path" not in used:
        return [("command", list(argv), "an argument with {path}, where the still is written")]
    return []


async def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(proc.wait(), 5.0)


class SimCamera(Camera):
    """Writes a tiny grey PNG whose pixels and caption follow from the shot alone."""

    type_name = "sim"
    extension = "png"
    width, height = 16, 8

    def image(self, shot: Shot) -> bytes:
        caption = (f"lockerd sim camera {self.name}: compartment {shot.compartment} {shot.step} "
                   f"seq {shot.seq} at {iso_utc(shot.wall)}")
        seed = hashlib.sha256(caption.encode()).digest()
        rows = b"".join(b"\x00" + bytes(seed[(y * self.width + x) % len(seed)] for x in range(self.width))
                        for y in range(self.height))
        return (b"\x89PNG\r\n\x1a\n"
                + _chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 0, 0, 0, 0))
                + _chunk(b"tEXt", b"Comment\x00" + caption.encode("latin-1", "replace"))
                + _chunk(b"IDAT", zlib.compress(rows, 9))
                + _chunk(b"IEND", b""))

    async def capture(self, path: Path, shot: Shot) -> None:
        data = self.image(shot)
        try:
            await asyncio.to_thread(_write_new, path, data)
        except OSError as e:
            raise DriverError(f"camera {self.name}: cannot write {path}: {e.strerror or e}") from None


def _write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, which must not exist yet: a still is never written over."""
    with open(path, "xb") as f:
        f.write(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


CAMERA_TYPES: dict[str, type[Camera]] = {"command": CommandCamera, "sim": SimCamera}


def create_camera(section: Section) -> Camera:
    """The camera a [cameras.NAME] section describes."""
    return CAMERA_TYPES[section.type].build(section.name, section.options)
