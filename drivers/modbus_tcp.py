"""What only a Modbus TCP bus needs from pymodbus: its client, its errors and a raw write-coil request.

A serial line is driven by our own RTU client (:mod:`modbus_rtu`), so the
bus imports this module, and with it pymodbus, only for a ``tcp`` bus.
"""

from __future__ import annotations

import struct
from typing import Any

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu.bit_message import WriteSingleCoilRequest

# pymodbus's errors by what they mean for the bus (ModbusException, their base, last).
LOST: tuple[type[Exception], ...] = (ConnectionException,)
GARBLED: tuple[type[Exception], ...] = (ModbusIOException,)
ERRORS: tuple[type[Exception], ...] = (ConnectionException, ModbusIOException, ModbusException)


def client(host: str, port: int, timeout_s: float, name: str) -> Any:
    """A TCP client that never retries or reconnects by itself: the bus task does both."""
    return AsyncModbusTcpClient(host, framer=FramerType.SOCKET, port=port, timeout=max(2 * timeout_s, 1.0),
                                retries=0, reconnect_delay=0, name=name)


class WaveshareFlashRequest(WriteSingleCoilRequest):
    """Function 05 with a raw 16-bit value: the Waveshare flash-on/off command.

    pymodbus's write_coil only sends 0xFF00/0x0000; the flash command puts
    the time in the value field, so it needs its own encoding. The reply is
    decoded by pymodbus as an ordinary write-coil echo.
    """

    function_code = 5
    rtu_frame_size = 8

    def __init__(self, address: int = 0, value: int = 0, dev_id: int = 0, transaction_id: int = 0) -> None:
        super().__init__(address=address, bits=[bool(value)], dev_id=dev_id, transaction_id=transaction_id)
        self.value = value

    def encode(self) -> bytes:
        self.verifyAddress()
        if not 0 <= self.value <= 0xFFFF:
            raise ValueError(f"flash value {self.value} outside 0..65535")
        return struct.pack(">HH", self.address, self.value)

    def decode(self, data: bytes) -> None:
        self.address, self.value = struct.unpack(">HH", data[:4])
        self.bits = [bool(self.value)]
