"""The person at the cabinet: what the bench asks of them and how they answer.

The bench talks to a :class:`Technician`. :class:`ConsoleTechnician` prompts
on the terminal; :class:`Unattended` is the non-interactive mode (CI, a
spring-loaded fixture): it answers nothing, so faults that need a pair of
eyes are reported as such. Tests give the bench a technician that plays the
person on simulated hardware.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from typing import TextIO

from lockerd.config import Compartment
from lockerd.hardware import Hardware


class Technician:
    """The non-interactive base: says what happens, asks nothing."""

    interactive = False

    def attach(self, hw: Hardware) -> None:
        """Called once the hardware is built, before anything moves."""
        self.hw = hw

    def say(self, text: str) -> None:
        """Progress for the person (and the log)."""

    async def before_pulse(self, comp: Compartment, manual: bool) -> None:
        """The lock is about to be pulsed. For a door without a spring the person pulls its handle now."""

    async def close_door(self, comp: Compartment) -> None:
        """The door should be shut again (the bench then waits for its sensor)."""

    async def saw_open(self, comp: Compartment) -> bool | None:
        """No sensor moved after the pulse: did the door open? None when nobody can say."""
        return None

    async def scan_card(self, scanner: str, card: str | None) -> bool:
        """The person should scan the test card on ``scanner``; False when nobody will."""
        return False


class Unattended(Technician):
    """Non-interactive mode: prints progress, asks nothing, answers nothing."""

    def __init__(self, out: TextIO | None = None):
        self.out = out

    def say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)


class ConsoleTechnician(Unattended):
    """Prompts on the terminal and reads answers from stdin without blocking the loop.

    Lines are read by a daemon thread and handed to the loop, so a Ctrl-C at
    a prompt cancels the run at once (and the bench switches every relay
    off); a blocked ``input()`` in an executor would hold the exit instead.
    """

    interactive = True

    def __init__(self, out: TextIO | None = None, inp: TextIO | None = None):
        super().__init__(out or sys.stdout)
        self.inp = inp or sys.stdin
        self._lines: asyncio.Queue[str | None] | None = None

    def _ensure_reader(self) -> asyncio.Queue[str | None]:
        if self._lines is None:
            loop = asyncio.get_running_loop()
            q: asyncio.Queue[str | None] = asyncio.Queue()

            def read() -> None:
                for line in self.inp:
                    loop.call_soon_threadsafe(q.put_nowait, line.rstrip("\r\n"))
                loop.call_soon_threadsafe(q.put_nowait, None)  # end of input

            threading.Thread(target=read, name="bench-stdin", daemon=True).start()
            self._lines = q
        return self._lines

    async def ask(self, prompt: str) -> str | None:
        """Print ``prompt`` and wait for a line; None at end of input."""
        self.say(prompt)
        return await self._ensure_reader().get()

    async def before_pulse(self, comp: Compartment, manual: bool) -> None:
        if manual:
            await self.ask(f"Compartment {comp.id}: pull its door handle and keep pulling, then press Enter "
                           "(the lock clicks).")

    async def close_door(self, comp: Compartment) -> None:
        self.say(f"Compartment {comp.id}: close the door now.")

    async def saw_open(self, comp: Compartment) -> bool | None:
        while True:
            answer = await self.ask(f"Compartment {comp.id}: no door sensor changed. Did its door open? [y/n]")
            if answer is None:
                return None
            if answer.strip().lower() in ("y", "yes"):
                return True
            if answer.strip().lower() in ("n", "no"):
                return False

    async def scan_card(self, scanner: str, card: str | None) -> bool:
        what = f"the test card ({card})" if card else "the test card"
        self.say(f"Scanner {scanner}: scan {what} now.")
        return True


class SimTechnician(Technician):
    """Plays the person at simulated boards; defers to ``fallback`` for real hardware.

    On a simulated cabinet nobody can pull a handle or shut a door, so this
    does it through the simulator's person-side actions, and answers "did
    the door open?" from the simulated door itself. It is what makes a bench
    run on the demo station (and in CI) meaningful end to end.
    """

    def __init__(self, fallback: Technician | None = None):
        self.fallback = fallback or Unattended()
        self.interactive = self.fallback.interactive

    def attach(self, hw: Hardware) -> None:
        super().attach(hw)
        self.fallback.attach(hw)

    def _sim(self, comp: Compartment):  # -> SimBoard | None
        from lockerd.drivers.sim import SimBoard

        board = self.hw.drivers.get(comp.lock_driver)
        return board if isinstance(board, SimBoard) else None

    def say(self, text: str) -> None:
        self.fallback.say(text)

    async def before_pulse(self, comp: Compartment, manual: bool) -> None:
        board = self._sim(comp)
        if board is None:
            return await self.fallback.before_pulse(comp, manual)
        if manual:
            board.pull(comp.lock, wait_s=5.0)  # keeps pulling until the latch releases

    async def close_door(self, comp: Compartment) -> None:
        board = self._sim(comp)
        if board is None:
            return await self.fallback.close_door(comp)
        for ch, door in enumerate(board.doors):  # shut whatever opened, as a person would
            if door.open:
                board.close_door(ch)

    async def saw_open(self, comp: Compartment) -> bool | None:
        board = self._sim(comp)
        if board is None:
            return await self.fallback.saw_open(comp)
        return any(d.open for d in board.doors)

    async def scan_card(self, scanner: str, card: str | None) -> bool:
        from lockerd.drivers.sim import SimScanner

        s = self.hw.scanners.get(scanner)
        if isinstance(s, SimScanner):
            s.inject(card or "BENCH-TEST-CARD")
            return True
        return await self.fallback.scan_card(scanner, card)
