"""The GPIO lock/sensor board and LED/buzzer feedback on gpiozero's mock pins, with a hand-driven clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from gpiozero import OutputDevice
from gpiozero.pins.mock import MockFactory
from hwconfig import load
from lockerd.drivers.base import DoorChange, DoorState, PowerBudget
from lockerd.drivers.gpio import GpioBoard, GpioFeedback, make_pin_factory

from lockerd.clock import Clock, ManualClock
from lockerd.errors import DriverError, DriverUnavailable
from lockerd.hardware import build_hardware

WAIT = 2.0


def board_options(**over: Any) -> dict[str, Any]:
    """The pins of the test bench; every other option is the driver's own default."""
    return {"locks": (17, 27, 22), "sensors": (5, 6)} | over


def feedback_options(**over: Any) -> dict[str, Any]:
    return {"accept_pin": 23, "refuse_pin": 24, "buzzer_pin": 25} | over


@pytest.fixture
def factory():
    f = MockFactory()
    yield f
    f.reset()  # drop pins and reservations so the next test starts clean


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest_asyncio.fixture
async def make_board(factory, clock):
    boards: list[GpioBoard] = []

    async def make(budget: PowerBudget | None = None, start: bool = True, **over: Any) -> GpioBoard:
        board = GpioBoard("gpio-a", clock, budget or PowerBudget(2, 5.0), board_options(**over), factory=factory)
        boards.append(board)
        if start:
            await board.start()
        return board

    yield make
    for b in boards:
        await b.close()


class Doors:
    """Collects a board's door changes; tests wait for the next one with a timeout."""

    def __init__(self, board: GpioBoard):
        self.queue: asyncio.Queue[DoorChange] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(board.door_changes()))

    async def _run(self, changes: AsyncIterator[DoorChange]) -> None:
        async for change in changes:
            self.queue.put_nowait(change)

    async def next(self) -> DoorChange:
        return await asyncio.wait_for(self.queue.get(), WAIT)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


# -- locks ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_pulse_drives_pin_high_then_low_after_the_pulse(make_board, factory, clock) -> None:
    board = await make_board()
    pin = factory.pin(17)
    assert pin.state is False
    await board.pulse(17, 500)
    assert pin.state is True
    assert factory.pin(27).state is False  # only the pulsed channel
    await clock.advance(0.499)
    assert pin.state is True
    await clock.advance(0.001)
    assert pin.state is False
    assert board.energised == set()


@pytest.mark.asyncio
async def test_active_low_relay_is_driven_low_for_the_pulse(make_board, factory, clock) -> None:
    board = await make_board(active_high=False)
    pin = factory.pin(17)
    assert pin.state is True  # de-energised means high on an active-low relay board
    await board.pulse(17, 300)
    assert pin.state is False
    await clock.advance(0.3)
    assert pin.state is True


@pytest.mark.asyncio
async def test_power_budget_is_respected_across_channels(make_board, factory, clock) -> None:
    budget = PowerBudget(2, 5.0)
    board = await make_board(budget=budget)
    await board.pulse(17, 500)
    await clock.advance(0.1)
    await board.pulse(27, 500)
    third = asyncio.create_task(board.pulse(22, 500))
    await clock.settle()
    assert not third.done()
    assert [factory.pin(p).state for p in (17, 27, 22)] == [True, True, False]
    await clock.advance(0.4)  # 17 switches off, freeing a slot for 22
    await asyncio.wait_for(third, WAIT)
    assert [factory.pin(p).state for p in (17, 27, 22)] == [False, True, True]
    await clock.advance(0.5)
    assert [factory.pin(p).state for p in (17, 27, 22)] == [False, False, False]
    assert budget.peak == 2
    assert budget.in_use == 0


@pytest.mark.asyncio
async def test_budget_shared_between_two_boards(factory, clock) -> None:
    budget = PowerBudget(1, 5.0)
    a = GpioBoard("a", clock, budget, board_options(locks=(17,), sensors=()), factory=factory)
    b = GpioBoard("b", clock, budget, board_options(locks=(27,), sensors=()), factory=factory)
    await a.start()
    await b.start()
    try:
        await a.pulse(17, 200)
        waiting = asyncio.create_task(b.pulse(27, 200))
        await clock.settle()
        assert factory.pin(27).state is False and not waiting.done()
        await clock.advance(0.2)
        await asyncio.wait_for(waiting, WAIT)
        assert (factory.pin(17).state, factory.pin(27).state) == (False, True)
        await clock.advance(0.2)
        assert budget.peak == 1
    finally:
        await a.close()
        await b.close()


@pytest.mark.parametrize(("active_high", "left", "safe"), [(True, True, False), (False, False, True)])
@pytest.mark.asyncio
async def test_all_off_at_start_even_if_a_pin_was_left_energised(
    make_board, factory, active_high: bool, left: bool, safe: bool
) -> None:
    for p in (17, 27, 22):
        pin = factory.pin(p)
        pin.function = "output"
        pin.state = left  # energised, as a crash might have left it
    board = await make_board(active_high=active_high)
    assert [factory.pin(p).state for p in (17, 27, 22)] == [safe, safe, safe]
    assert board.online is True


@pytest.mark.asyncio
async def test_unknown_channel_is_refused_and_frees_the_budget(make_board) -> None:
    budget = PowerBudget(1, 5.0)
    board = await make_board(budget=budget)
    with pytest.raises(DriverError, match="not one of the lock pins"):
        await board.pulse(4, 500)
    assert budget.in_use == 0
    assert board.lock_channels() == frozenset({17, 27, 22})
    assert board.sensor_channels() == frozenset({5, 6})


@pytest.mark.asyncio
async def test_pin_in_use_leaves_board_offline_without_raising(make_board, factory) -> None:
    squatter = OutputDevice(27, pin_factory=factory)
    try:
        board = await make_board()  # start() must not raise
        assert board.online is False
        assert "GPIO unavailable" in board.detail
        with pytest.raises(DriverUnavailable):
            await board.pulse(17, 100)
    finally:
        squatter.close()


@pytest.mark.asyncio
async def test_close_switches_off_and_releases_the_pins(make_board, factory, clock) -> None:
    board = await make_board()
    budget = board.budget
    await board.pulse(17, 5000)
    assert factory.pin(17).state is True
    await board.close()
    assert factory.pin(17).state is False
    assert (board.energised, budget.in_use) == (set(), 0)  # the running pulse ended with it
    await asyncio.wait_for(board.wait_pulses(), WAIT)
    # Released: the pins can be claimed again.
    again = OutputDevice(17, pin_factory=factory)
    again.close()


# -- sensors -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sensor_edges_become_door_changes(make_board, factory) -> None:
    board = await make_board()  # pull_up, open_level 1: the pulled-up idle pin reads open
    assert (board.door(5), board.door(6)) == (DoorState.OPEN, DoorState.OPEN)
    doors = Doors(board)
    try:
        factory.pin(5).drive_low()
        change = await doors.next()
        assert (change.driver, change.channel, change.state) == ("gpio-a", 5, DoorState.CLOSED)
        factory.pin(6).drive_low()
        assert ((c := await doors.next()).channel, c.state) == (6, DoorState.CLOSED)
        factory.pin(5).drive_high()
        assert ((c := await doors.next()).channel, c.state) == (5, DoorState.OPEN)
        assert board.door(5) is DoorState.OPEN and board.door(6) is DoorState.CLOSED
    finally:
        await doors.close()


@pytest.mark.asyncio
async def test_open_level_inverted(make_board, factory) -> None:
    board = await make_board(open_level=0)
    assert board.door(5) is DoorState.CLOSED  # pulled up = high = closed
    doors = Doors(board)
    try:
        factory.pin(5).drive_low()
        assert ((c := await doors.next()).channel, c.state) == (5, DoorState.OPEN)
    finally:
        await doors.close()


@pytest.mark.asyncio
async def test_pull_down_sensor_reads_its_level(make_board, factory) -> None:
    board = await make_board(pull_up=False)
    assert board.door(5) is DoorState.CLOSED  # pulled down = low, open_level 1
    doors = Doors(board)
    try:
        factory.pin(5).drive_high()
        assert ((c := await doors.next()).channel, c.state) == (5, DoorState.OPEN)
    finally:
        await doors.close()


@pytest.mark.asyncio
async def test_edges_from_another_thread_reach_the_loop(make_board, factory) -> None:
    """Real pin libraries call back on their own thread; the change must land on the loop."""
    board = await make_board()
    doors = Doors(board)
    try:
        await asyncio.to_thread(factory.pin(6).drive_low)
        change = await doors.next()
        assert (change.channel, change.state) == (6, DoorState.CLOSED)
        assert board.door(6) is DoorState.CLOSED
    finally:
        await doors.close()


@pytest.mark.asyncio
async def test_every_sensor_is_read_at_start(make_board) -> None:
    board = await make_board(start=False)
    assert (board.door(5), board.door(6)) == (DoorState.UNKNOWN, DoorState.UNKNOWN)
    await board.start()
    # No edge happened: the states come from reading the pins at start.
    assert (board.door(5), board.door(6)) == (DoorState.OPEN, DoorState.OPEN)


# -- feedback ------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def feedback(factory, clock):
    fb = GpioFeedback("panel", clock, feedback_options(), factory=factory)
    await fb.start()
    yield fb
    await fb.close()


def lights(factory: MockFactory) -> tuple[bool, bool, bool]:
    return factory.pin(23).state, factory.pin(24).state, factory.pin(25).state


@pytest.mark.asyncio
async def test_accepted_lights_green_with_one_short_beep(feedback, factory, clock) -> None:
    assert lights(factory) == (False, False, False)
    await feedback.show("front", accepted=True, message="opened D-01")
    assert lights(factory) == (True, False, False)  # the LED at once; the beep from its task
    await clock.settle()
    assert lights(factory) == (True, False, True)
    await clock.advance(0.1)
    assert lights(factory) == (True, False, False)
    await clock.advance(0.85)
    assert lights(factory) == (True, False, False)
    await clock.advance(0.05)
    assert lights(factory) == (False, False, False)


@pytest.mark.asyncio
async def test_refused_lights_red_with_two_beeps(feedback, factory, clock) -> None:
    await feedback.show("front", accepted=False, message="unknown code")
    await clock.settle()
    seen = [lights(factory)]
    for _ in range(3):
        await clock.advance(0.1)
        seen.append(lights(factory))
    assert seen == [
        (False, True, True),
        (False, True, False),
        (False, True, True),
        (False, True, False),
    ]
    await clock.advance(0.7)
    assert lights(factory) == (False, False, False)


@pytest.mark.asyncio
async def test_new_outcome_replaces_the_previous_one(feedback, factory, clock) -> None:
    await feedback.show("front", accepted=False, message="refused")
    await clock.advance(0.5)
    await feedback.show("front", accepted=True, message="accepted")
    await clock.settle()
    assert lights(factory) == (True, False, True)
    await clock.advance(1.0)
    assert lights(factory) == (False, False, False)


@pytest.mark.asyncio
async def test_missing_pins_are_skipped(factory, clock) -> None:
    fb = GpioFeedback("panel", clock, feedback_options(refuse_pin=-1, buzzer_pin=-1, accept_pin=0), factory=factory)
    await fb.start()
    try:
        await fb.show("front", accepted=False, message="refused")  # nothing fitted for it: quietly nothing
        await fb.show("front", accepted=True, message="accepted")
        await clock.settle()
        assert factory.pin(0).state is True  # pin 0 is a real pin, not "none"
        await clock.advance(1.0)
        assert factory.pin(0).state is False
    finally:
        await fb.close()


@pytest.mark.asyncio
async def test_show_never_raises(feedback, factory, clock, caplog) -> None:
    feedback._devs["accept"].close()  # the LED's device is gone underneath
    await feedback.show("front", accepted=True, message="accepted")
    await clock.advance(1.0)
    assert any("could not switch accept" in r.getMessage() for r in caplog.records)
    unstarted = GpioFeedback("other", clock, feedback_options())
    await unstarted.show("front", accepted=True, message="accepted")  # never started: no pins, no error


# -- wiring --------------------------------------------------------------------------------


def test_pin_factory_from_environment(monkeypatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    assert isinstance(make_pin_factory(""), MockFactory)
    with pytest.raises(DriverUnavailable, match="no gpiozero pin factory"):
        make_pin_factory("nonesuch")


@pytest.mark.asyncio
async def test_build_hardware_makes_gpio_board_and_feedback(tmp_path: Path) -> None:
    body = """
[drivers.pins]
type = "gpio"
pin_factory = "mock"
locks = [17, 27]
sensors = [5, 6]
[feedback.panel]
type = "gpio"
pin_factory = "mock"
accept_pin = 23
buzzer_pin = 25
[cabinets.cab-a]
kind = "dossier"
lock_driver = "pins"
[[cabinets.cab-a.compartments]]
id = "c1"
lock = 17
sensor = 5
[scanners.front]
type = "sim"
cabinets = ["cab-a"]
feedback = "panel"
"""
    hw = build_hardware(load(tmp_path, body), Clock())
    board = hw.lock_bank("pins")
    assert isinstance(board, GpioBoard) and hw.sensors("pins") is board
    assert isinstance(hw.feedback["panel"], GpioFeedback)
    await hw.start()
    try:
        assert board.online and hw.feedback["panel"].online
        assert isinstance(board.factory, MockFactory)
        await board.pulse(17, 20)
        assert board.factory.pin(17).state is True
        await board.wait_pulses()
        assert board.factory.pin(17).state is False
    finally:
        await hw.close()
