"""Locks, door sensors and cabinet feedback on the board's own GPIO pins (gpiozero).

Channel numbers are BCM pin numbers. Lock relays are ``OutputDevice`` s that
start de-energised; door switches are ``DigitalInputDevice`` s whose edges
gpiozero reports on its own thread and which are handed to the event loop
with ``call_soon_threadsafe``. The pin factory comes from the ``pin_factory``
option, else the ``GPIOZERO_PIN_FACTORY`` environment variable, else
gpiozero's own choice (lgpio on a Pi 5); ``"mock"`` gives mock pins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Any, ClassVar

from lockerd.drivers.base import DoorSensors, DoorState, Feedback, LockBank, Parts, PowerBudget
from lockerd.drivers.options import Channels, Opt, Problem, Spec, with_defaults

from lockerd.clock import Clock
from lockerd.errors import DriverError, DriverUnavailable

log = logging.getLogger(__name__)

# Real pin factories own a chip handle: one per kind, shared by every board
# and feedback in the process. Mock factories are made per board.
_shared_factories: dict[str, Any] = {}

# The pin_factory option, shared by boards and feedback.
PIN_FACTORY = Opt("str", "", choices=("", "lgpio", "rpigpio", "pigpio", "native", "mock"))


def make_pin_factory(kind: str) -> Any:
    """The gpiozero pin factory for a config's ``pin_factory`` option ("" = environment or default)."""
    name = kind or os.environ.get("GPIOZERO_PIN_FACTORY", "")
    if name == "mock":
        from gpiozero.pins.mock import MockFactory

        return MockFactory()
    if name in _shared_factories:
        return _shared_factories[name]
    if name:
        from importlib.metadata import entry_points

        eps = [ep for ep in entry_points(group="gpiozero_pin_factories") if ep.name == name.lower()]
        if not eps:
            raise DriverUnavailable(f"no gpiozero pin factory called {name!r}")
        factory = eps[0].load()()
    else:
        from gpiozero import Device

        # gpiozero's own preference order (lgpio first), without setting its global
        # Device.pin_factory as its public ensure_pin_factory() would: nothing public
        # gives the one without the other.
        factory = Device._default_pin_factory()  # noqa: SLF001
    _shared_factories[name] = factory
    return factory


class GpioBoard(LockBank, DoorSensors):
    """Lock relays and door switches wired straight to GPIO pins."""

    type_name = "gpio"
    OPTIONS: ClassVar[Spec] = {
        "pin_factory": PIN_FACTORY,
        "locks": Opt("list-int", (), min=0, max=53, doc="BCM pins driving lock relays"),
        "sensors": Opt("list-int", (), min=0, max=53, doc="BCM pins reading door switches"),
        "active_high": Opt("bool", default=True, doc="relay energised when the pin is high"),
        "pull_up": Opt("bool", default=True),
        "bounce_ms": Opt("int", 20, min=0, max=1000),
        "open_level": Opt("int", 1, min=0, max=1, doc="pin level that means the door is open"),
    }

    def __init__(
        self, name: str, clock: Clock, budget: PowerBudget, options: Mapping[str, Any], *, factory: Any = None
    ):
        super().__init__(name, clock, budget=budget)
        options = with_defaults(self.OPTIONS, options)
        self.lock_pins = tuple(options["locks"] or ())
        self.sensor_pins = tuple(options["sensors"] or ())
        self.active_high = bool(options["active_high"])
        self.pull_up = bool(options["pull_up"])
        self.bounce_s = options["bounce_ms"] / 1000 if options["bounce_ms"] else None
        self.open_level = int(options["open_level"])
        self.factory_kind = str(options["pin_factory"] or "")
        self.factory = factory  # injected by tests; else made at start
        self._outputs: dict[int, Any] = {}
        self._inputs: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], parts: Parts) -> GpioBoard:
        return cls(name, parts.clock, parts.budget, options)

    @staticmethod
    def offered(options: Mapping[str, Any], role: str) -> Channels | None:
        """The channels are the BCM pins listed for the role."""
        pins = options.get("locks" if role == "lock" else "sensors")
        return pins if isinstance(pins, tuple) else None

    @staticmethod
    def problems(options: Mapping[str, Any]) -> list[Problem]:
        locks, sensors = options["locks"], options["sensors"]
        if not isinstance(locks, tuple) or not isinstance(sensors, tuple):
            return []  # their own checks said what is wrong
        both = set(locks) & set(sensors)
        return [("sensors", list(sensors), f"pins not also used as locks ({sorted(both)})")] if both else []

    def lock_channels(self) -> frozenset[int]:
        return frozenset(self.lock_pins)

    def sensor_channels(self) -> frozenset[int]:
        return frozenset(self.sensor_pins)

    # -- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Claim the pins (outputs de-energised first) and read every sensor; never raise."""
        self._loop = asyncio.get_running_loop()
        self._closed = False
        try:
            self._claim()
        except Exception as e:  # noqa: BLE001 - gpiozero and each pin library under it raise their own kinds
            # No GPIO here, a pin busy, a wrong factory: offline, not a crash, and e says which.
            log.error("%s: cannot use the GPIO pins: %s", self.name, e)  # noqa: TRY400
            self._release()
            self.report_status(online=False, detail=f"GPIO unavailable: {e}")
            return
        try:
            await self.all_off()
        except DriverError as e:
            log.error("%s: %s", self.name, e)  # noqa: TRY400 - e names the pins that stayed on and why
            self.report_status(online=False, detail=str(e))
            return
        self._read_all()
        self.report_status(online=True)

    def _claim(self) -> None:
        from gpiozero import DigitalInputDevice, OutputDevice

        if self.factory is None:
            self.factory = make_pin_factory(self.factory_kind)
        for pin in self.lock_pins:
            # initial_value=False: the relay is off from the moment the pin is ours.
            self._outputs[pin] = OutputDevice(
                pin, active_high=self.active_high, initial_value=False, pin_factory=self.factory
            )
        for pin in self.sensor_pins:
            dev = DigitalInputDevice(pin, pull_up=self.pull_up, bounce_time=self.bounce_s, pin_factory=self.factory)
            dev.when_activated = lambda p=pin: self._edge(p, active=True)
            dev.when_deactivated = lambda p=pin: self._edge(p, active=False)
            self._inputs[pin] = dev

    async def close(self) -> None:
        """Everything off, then let go of the pins; pulses still timing out are ended here."""
        self._closed = True
        try:
            if self._outputs:
                await self.all_off()
        finally:
            self._release()
            # One loop turn first: a pulse task cancelled before its first step
            # never runs its finally, and that finally gives the budget back.
            await asyncio.sleep(0)
            for task in list(self._pulses):
                task.cancel()
            await asyncio.gather(*self._pulses, return_exceptions=True)

    def _release(self) -> None:
        for dev in [*self._inputs.values(), *self._outputs.values()]:
            with contextlib.suppress(Exception):
                dev.close()
        self._inputs.clear()
        self._outputs.clear()

    # -- sensors -----------------------------------------------------------------

    def _state_of(self, level: int) -> DoorState:
        return DoorState.OPEN if level == self.open_level else DoorState.CLOSED

    def _read_all(self) -> None:
        for pin, dev in self._inputs.items():
            self._set_door(pin, self._state_of(int(dev.pin.state)))

    def _edge(self, pin: int, *, active: bool) -> None:
        """On gpiozero's thread: hand the new level to the loop."""
        # A pulled-up input is active when low, a pulled-down one when high.
        level = int(active != self.pull_up)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop shutting down
            loop.call_soon_threadsafe(self._set_door, pin, self._state_of(level))

    # -- locks -------------------------------------------------------------------

    def _output(self, channel: int) -> Any:
        dev = self._outputs.get(channel)
        if dev is None:
            if channel not in self.lock_pins:
                raise DriverError(f"{self.name}: pin {channel} is not one of the lock pins {list(self.lock_pins)}")
            raise DriverUnavailable(f"{self.name}: GPIO not available ({self.detail or 'not started'})")
        return dev

    async def _energise(self, channel: int, _ms: int) -> None:
        # The pin stays on until _deenergise: the pulse is timed by LockBank, on the clock.
        dev = self._output(channel)
        try:
            dev.on()
        except Exception as e:
            raise DriverError(f"{self.name}: could not switch pin {channel} on: {e}") from e

    async def _deenergise(self, channel: int) -> None:
        if self._closed:
            return  # switched off and released by close()
        dev = self._output(channel)
        try:
            dev.off()
        except Exception as e:
            raise DriverError(f"{self.name}: could not switch pin {channel} off: {e}") from e

    async def _all_off(self) -> None:
        failed: list[str] = []
        for pin, dev in self._outputs.items():
            try:
                dev.off()
            except Exception as e:  # noqa: BLE001 - one bad pin, whatever it raised, must not leave the others on
                failed.append(f"{pin}: {e}")
        if failed:
            raise DriverError(f"{self.name}: could not switch off pins {'; '.join(failed)}")


class GpioFeedback(Feedback):
    """A green LED, a red LED and a buzzer by the scanner; any of them may be absent (pin -1)."""

    type_name = "gpio"
    beep_s = 0.1
    gap_s = 0.1
    lit_s = 1.0
    OPTIONS: ClassVar[Spec] = {
        "pin_factory": PIN_FACTORY,
        "accept_pin": Opt("int", -1, min=-1, max=53, doc="green LED (-1: none)"),
        "refuse_pin": Opt("int", -1, min=-1, max=53, doc="red LED (-1: none)"),
        "buzzer_pin": Opt("int", -1, min=-1, max=53, doc="buzzer (-1: none)"),
    }

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any], parts: Parts) -> GpioFeedback:
        return cls(name, parts.clock, options)

    def __init__(self, name: str, clock: Clock, options: Mapping[str, Any], *, factory: Any = None):
        super().__init__(name, clock)
        options = with_defaults(self.OPTIONS, options)
        self.pins = {
            "accept": int(options["accept_pin"]),
            "refuse": int(options["refuse_pin"]),
            "buzzer": int(options["buzzer_pin"]),
        }
        self.factory_kind = str(options["pin_factory"] or "")
        self.factory = factory
        self._devs: dict[str, Any] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        try:
            from gpiozero import OutputDevice

            if self.factory is None:
                self.factory = make_pin_factory(self.factory_kind)
            for role, pin in self.pins.items():
                if pin >= 0:  # -1 means not fitted; pin 0 is a real pin
                    self._devs[role] = OutputDevice(pin, initial_value=False, pin_factory=self.factory)
        except Exception as e:  # noqa: BLE001 - gpiozero and each pin library under it raise their own kinds
            # As for the board: offline, not a crash, and e says which.
            log.error("%s: cannot use the feedback pins: %s", self.name, e)  # noqa: TRY400
            self._release()
            self.report_status(online=False, detail=f"GPIO unavailable: {e}")
            return
        self.report_status(online=True)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        self._set_all(on=False)
        self._release()

    def _release(self) -> None:
        for dev in self._devs.values():
            with contextlib.suppress(Exception):
                dev.close()
        self._devs.clear()

    async def show(self, scanner: str, accepted: bool, message: str) -> None:
        """Light the LED and start the beeps; returns at once and never raises."""
        try:
            if self._task is not None:
                self._task.cancel()  # the newest outcome is the one that shows
            self._set_all(on=False)
            self._set("accept" if accepted else "refuse", on=True)
            beeps = 1 if accepted else 2
            self._task = asyncio.create_task(self._pattern(beeps), name=f"feedback-{self.name}")
        except Exception:
            log.exception("%s: feedback for %s failed", self.name, scanner)

    async def _pattern(self, beeps: int) -> None:
        try:
            spent = 0.0
            for i in range(beeps):
                if i:
                    await self.clock.sleep(self.gap_s)
                    spent += self.gap_s
                self._set("buzzer", on=True)
                await self.clock.sleep(self.beep_s)
                spent += self.beep_s
                self._set("buzzer", on=False)
            await self.clock.sleep(max(0.0, self.lit_s - spent))
            self._set_all(on=False)
        except asyncio.CancelledError:
            self._set("buzzer", on=False)
            raise

    def _set(self, role: str, *, on: bool) -> None:
        dev = self._devs.get(role)
        if dev is None:
            return
        try:
            dev.on() if on else dev.off()
        except Exception as e:  # noqa: BLE001 - a dead LED, whatever it raised, must not break the scan path
            log.warning("%s: could not switch %s %s: %s", self.name, role, "on" if on else "off", e)

    def _set_all(self, *, on: bool) -> None:
        for role in self._devs:
            self._set(role, on=on)
