"""Relay boards for tests and benchmarks: pymodbus's own server, over TCP or RTU on a pty pair.

``RelayPeer`` runs a pymodbus server with one simulated device per unit id
(coils, discrete inputs and input registers in separate bit-addressed blocks,
as on a relay board) and adds the faults a real line has: a board that is
dead (acts on nothing, answers nothing), replies that get lost, slow
answers, and mangled replies (bad CRC, truncated, wrong unit id).

A board with the "waveshare" profile also takes the Waveshare flash-on
command (function 05 at 0x0200 + relay, value = on time in 100 ms units):
pymodbus does not know it, so ``WaveshareBoardRequest`` is a custom request
handler given to the server. It is this module's model of the board, written
from the vendor's protocol description, not the real firmware.

Run as a script it serves boards for the benchmarks in another process and
writes the arrival time of every request it receives to a file at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.framer.rtu import FramerRTU
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.bit_message import WriteSingleCoilRequest
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

FLASH_ON = 0x0200
FLASH_UNIT_S = 0.1


class WaveshareBoardRequest(WriteSingleCoilRequest):
    """Function 05 as a Waveshare relay board reads it: plain coil writes, plus flash-on."""

    function_code = 5
    rtu_frame_size = 8
    peer: RelayPeer | None = None  # set per server class (see RelayPeer)

    def decode(self, data: bytes) -> None:
        self.address, self.value = struct.unpack(">HH", data[:4])
        self.bits = [self.value == 0xFF00]

    def encode(self) -> bytes:
        return struct.pack(">HH", self.address, self.value)

    async def datastore_update(self, context: Any, device_id: int) -> ModbusPDU:
        peer = self.peer
        if peer is None or device_id not in peer.waveshare or not FLASH_ON <= self.address < FLASH_ON + 0x100:
            if self.value not in (0xFF00, 0x0000):
                from pymodbus.pdu import ExceptionResponse

                return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_VALUE)
            return await super().datastore_update(context, device_id)
        relay = self.address - FLASH_ON
        if relay >= peer.coils or self.value == 0:
            from pymodbus.pdu import ExceptionResponse

            return ExceptionResponse(self.function_code, ExcCodes.ILLEGAL_ADDRESS)
        if rc := await context.async_setValues(device_id, 5, relay, [True]):
            from pymodbus.pdu import ExceptionResponse

            return ExceptionResponse(self.function_code, rc)
        peer.flashes.append((device_id, relay, self.value, time.monotonic()))
        peer._timer(self.value * FLASH_UNIT_S, device_id, relay)
        # The board echoes the request, value included.
        reply = WaveshareBoardRequest(dev_id=self.dev_id, transaction_id=self.transaction_id)
        reply.address, reply.value, reply.bits = self.address, self.value, [True]
        return reply


class RelayPeer:
    """A pymodbus server simulating relay boards at ``units``, with fault knobs."""

    def __init__(self, units: list[int], *, coils: int = 16, inputs: int = 16, waveshare: tuple[int, ...] = ()):
        self.units = list(units)
        self.coils = coils
        self.inputs = inputs
        self.waveshare = set(waveshare)
        self.dead: set[int] = set()  # acts on nothing, answers nothing
        self.lose_replies: set[int] = set()  # acts, but its replies are lost
        # Seconds before answering: per unit, or (unit, fc). Over RTU the board acts at once and its reply
        # is held back on the line, so other boards answer meanwhile, as separate boards on a real line do
        # (a delay inside pymodbus's request handling holds up every unit, and can label one unit's reply
        # with another's id). Over TCP the request's handling waits.
        self.delay: dict[int | tuple[int, int], float] = {}
        # (unit, function code) -> manglers applied to that unit's next replies to that function. Keyed by
        # function, not by unit alone: a unit is polled many times a second, and a mangle meant for a
        # coil write must not land on a poll reply that happens to go out first.
        self.mangle: dict[tuple[int, int], list[Callable[[bytes], bytes]]] = {}
        self.refuse: dict[tuple[int, int], ExcCodes] = {}  # (unit, function code) -> exception reply
        # Units whose coil reads answer with the request's arrival number (1, 2, ...) as coils 0-15, set
        # once the delay is over: a reply then says which request it answers.
        self.stamp_reads: set[int] = set()
        self._stamps: Counter[int] = Counter()
        # Doors that a person opens as soon as the latch is released (the coil switched on) and
        # shuts this many seconds after it locks again (the coil off); None: doors move only by pull()/shut().
        self.spring_close_s: float | None = None
        self.requests: Counter[tuple[int, int]] = Counter()  # (unit, function code) -> count
        self.log: list[tuple[int, int, int, int, int]] = []  # (monotonic_ns, unit, fc, address, value)
        self.flashes: list[tuple[int, int, int, float]] = []
        self.server: ModbusTcpServer | ModbusSerialServer | None = None
        self.framer = FramerType.SOCKET
        self.port = 0
        self._changed: asyncio.Condition | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._tasks: set[asyncio.Task] = set()
        # A request class per peer, so that each peer's waveshare handler knows its peer.
        self._request_class = type("PeerWaveshareRequest", (WaveshareBoardRequest,), {"peer": self})

    def _devices(self) -> list[SimDevice]:
        def bits(n: int) -> list[SimData]:
            return [SimData(0, count=max(n, 1), values=False, datatype=DataType.BITS)]

        return [
            SimDevice(
                id=u,
                simdata=(
                    bits(self.coils),
                    bits(self.inputs),
                    [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)],
                    [SimData(0, count=max(self.inputs, 1), values=0, datatype=DataType.REGISTERS)],
                ),
                action=functools.partial(self._action, u),
            )
            for u in self.units
        ]

    # -- start and stop ----------------------------------------------------------

    async def start_tcp(self, host: str = "127.0.0.1", port: int = 0) -> int:
        self._changed = asyncio.Condition()
        self.framer = FramerType.SOCKET
        self.server = ModbusTcpServer(
            self._devices(), address=(host, port), trace_packet=self._trace_packet, trace_pdu=self._trace_pdu,
            custom_pdu=[self._request_class],
        )
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        return self.port

    async def start_rtu(self, device: str, baudrate: int = 115200) -> None:
        self._changed = asyncio.Condition()
        self.framer = FramerType.RTU
        self.server = ModbusSerialServer(
            self._devices(), framer=FramerType.RTU, port=device, baudrate=baudrate,
            trace_packet=self._trace_packet, trace_pdu=self._trace_pdu, custom_pdu=[self._request_class],
        )
        await self.server.serve_forever(background=True)

    async def stop(self) -> None:
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        for t in list(self._tasks):
            t.cancel()
        if self.server is not None:
            await self.server.shutdown()
            self.server = None

    # -- observing and changing the boards -----------------------------------------

    async def coils_of(self, unit: int) -> list[bool]:
        return list(await self.server.async_getValues(unit, 1, 0, self.coils))

    async def set_coils(self, unit: int, values: list[bool]) -> None:
        await self.server.async_setValues(unit, 15, 0, values)

    async def set_input(self, unit: int, channel: int, level: bool) -> None:
        """A door sensor changes (discrete input and the matching input register)."""
        await self.server.async_setValues(unit, 2, channel, [level])
        await self.server.async_setValues(unit, 4, channel, [1 if level else 0])

    async def pull(self, unit: int, channel: int) -> bool:
        """A person pulls door ``channel``: it opens (its input goes to 1) only while its coil is on."""
        if not (await self.coils_of(unit))[channel]:
            return False
        await self.set_input(unit, channel, level=True)
        return True

    async def shut(self, unit: int, channel: int) -> None:
        """A person pushes door ``channel`` shut: its input goes back to 0."""
        await self.set_input(unit, channel, level=False)

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 3.0) -> None:
        """Wait until ``predicate()`` (sync or async) holds; checked after every request and timer."""
        assert self._changed is not None

        async def holds() -> bool:
            r = predicate()
            if asyncio.iscoroutine(r):
                r = await r
            return bool(r)

        # The predicate is checked holding the condition's lock, which every
        # notify takes too: a change between the check and the wait (an async
        # predicate yields) is not missed.
        async with asyncio.timeout(timeout_s), self._changed:
            while not await holds():
                await self._changed.wait()

    def count(self, unit: int, fc: int) -> int:
        return self.requests[(unit, fc)]

    # -- hooks ------------------------------------------------------------------------

    def _notify(self) -> None:
        cond = self._changed
        if cond is None:
            return

        async def notify() -> None:
            async with cond:
                cond.notify_all()

        t = asyncio.get_running_loop().create_task(notify())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _timer(self, delay: float, unit: int, relay: int) -> None:
        loop = asyncio.get_running_loop()

        def fire() -> None:
            self._timers.discard(handle)

            async def off() -> None:
                if self.server is not None:
                    await self.server.async_setValues(unit, 5, relay, [False])
                    self._notify()

            t = loop.create_task(off())
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

        handle = loop.call_later(delay, fire)
        self._timers.add(handle)

    async def _action(self, unit: int, fc: int, _start: int, _address: int, _count: int, _regs: list[int],
                      _values: Any) -> ExcCodes | None:
        if unit in self.dead:
            return ExcCodes.DEVICE_FAILURE  # nothing is applied; the reply is dropped below
        refused = self.refuse.get((unit, fc))
        if refused is not None:
            return refused  # nothing is applied; the board answers with this exception
        stamp = 0
        if fc == 1 and unit in self.stamp_reads:
            self._stamps[unit] += 1
            stamp = self._stamps[unit]
        d = self._delay_of(unit, fc)
        if d > 0 and self.framer != FramerType.RTU:
            await asyncio.sleep(d)
        if stamp:
            _regs[_address // 16 - _start] = stamp  # coils are packed 16 to a register, coil 0 the lowest bit
        return None

    def _delay_of(self, unit: int, fc: int) -> float:
        return self.delay.get((unit, fc), self.delay.get(unit, 0.0))

    def _send_late(self, data: bytes) -> None:
        transport = getattr(self.server, "transport", None)
        if transport is not None:
            transport.write(data)

    def _spring(self, unit: int, channel: int, on: bool) -> None:
        """The door follows the latch: open once released, shut a while after it locks again."""
        delay = 0.0 if on else self.spring_close_s

        async def move() -> None:
            if delay:
                await asyncio.sleep(delay)
            if self.server is not None:
                await self.set_input(unit, channel, on)

        t = asyncio.get_running_loop().create_task(move())  # after this request has updated the coil
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _unit_of(self, frame: bytes) -> int | None:
        if self.framer == FramerType.RTU:
            return frame[0] if frame else None
        return frame[6] if len(frame) > 6 else None

    def _function_of(self, frame: bytes) -> int | None:
        """The reply's function code, exception bit cleared: the request it answers."""
        at = 1 if self.framer == FramerType.RTU else 7
        return frame[at] & 0x7F if len(frame) > at else None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            return data
        unit = self._unit_of(data)
        if unit in self.dead or unit in self.lose_replies:
            return b""
        fc = self._function_of(data)
        queue = self.mangle.get((unit, fc)) if unit is not None else None
        if queue:
            data = queue.pop(0)(data)
        d = self._delay_of(unit, fc) if unit is not None and fc is not None else 0.0
        if d > 0 and self.framer == FramerType.RTU:
            handle = asyncio.get_running_loop().call_later(d, self._send_late, data)
            self._timers.add(handle)
            return b""
        return data

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            value = getattr(pdu, "value", None)
            if value is None:
                value = int(bool(pdu.bits and pdu.bits[0])) if pdu.function_code == 5 else pdu.count
            self.log.append((time.monotonic_ns(), pdu.dev_id, pdu.function_code, pdu.address, value))
            self.requests[(pdu.dev_id, pdu.function_code)] += 1
            if self.spring_close_s is not None and pdu.function_code == 5 and pdu.address < self.inputs:
                self._spring(pdu.dev_id, pdu.address, value == 0xFF00 or value == 1)
            self._notify()
        return pdu


# -- reply manglers (RTU frames) ---------------------------------------------------------


async def close_line(boards: Iterable[Any], bus: Any, peer: Any, pty: PtyPair | None = None) -> None:
    """Take a test's Modbus line down in the daemon's order: the boards (their relays off), the bus, the peer,
    then the pty."""
    for b in boards:
        await b.close()
    if bus is not None:
        await bus.close()
    await peer.stop()
    if pty is not None:
        pty.stop()


def bad_crc(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


def truncated(frame: bytes) -> bytes:
    return frame[:-3]


def leading_noise(frame: bytes) -> bytes:
    """Line noise (a stray byte, as after a bus turnaround) ahead of a good reply."""
    return b"\x00" + frame


def wrong_unit(frame: bytes) -> bytes:
    body = bytes([(frame[0] % 247) + 1]) + frame[1:-2]
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


# -- pty pairs ------------------------------------------------------------------------------


class PtyPair:
    """Two linked serial ports (socat): the server on one end, our client on the other."""

    def __init__(self, folder: Path):
        self.a = str(folder / "ttyA")  # the client's end
        self.b = str(folder / "ttyB")  # the boards' end
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> PtyPair:
        socat = shutil.which("socat") or "/usr/bin/socat"
        self.proc = subprocess.Popen(
            [socat, f"pty,raw,echo=0,link={self.a}", f"pty,raw,echo=0,link={self.b}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()  # never leave socat running behind a failed test
                raise RuntimeError("socat did not create the pty pair")
            time.sleep(0.01)  # socat is another process: nothing to wait on but the links
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# -- as a script: boards in their own process, for the benchmarks ------------------------


def _parse_units(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


async def _serve(args: argparse.Namespace) -> None:
    peer = RelayPeer(_parse_units(args.units), coils=args.coils, inputs=args.inputs,
                     waveshare=tuple(_parse_units(args.waveshare)) if args.waveshare else ())
    if args.spring_close_ms >= 0:
        peer.spring_close_s = args.spring_close_ms / 1000
    if args.dead:
        peer.dead.update(_parse_units(args.dead))
    for unit in _parse_units(args.slow) if args.slow else ():
        peer.delay[unit] = args.slow_ms / 1000
    if args.rtu:
        await peer.start_rtu(args.rtu, args.baudrate)
    else:
        await peer.start_tcp(port=args.port)
    print(json.dumps({"ready": True, "port": peer.port}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if args.log:
        Path(args.log).write_text(json.dumps(peer.log))
    await peer.stop()


def main() -> None:
    p = argparse.ArgumentParser(description="Simulated Modbus relay boards (pymodbus server)")
    p.add_argument("--units", default="1", help="unit ids, e.g. 1-16 or 1,3,5")
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--inputs", type=int, default=16)
    p.add_argument("--waveshare", default="", help="unit ids that take the flash command")
    p.add_argument("--rtu", default="", help="serial device to serve on (RTU); default TCP")
    p.add_argument("--baudrate", type=int, default=115200)
    p.add_argument("--port", type=int, default=0, help="TCP port (0: any free one, printed at start)")
    p.add_argument("--spring-close-ms", type=float, default=-1,
                   help="doors open when their coil goes on and shut this long after it goes off (-1: never move)")
    p.add_argument("--dead", default="", help="unit ids that act on nothing and answer nothing")
    p.add_argument("--slow", default="", help="unit ids that answer every request late (see --slow-ms)")
    p.add_argument("--slow-ms", type=float, default=300.0, help="how late the --slow units answer")
    p.add_argument("--log", default="", help="write every request's arrival (monotonic ns) here at exit")
    asyncio.run(_serve(p.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
