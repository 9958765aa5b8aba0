"""Modbus relay boards, over RTU (RS-485) or TCP: the names the rest of lockerd uses.

The parts live in their own modules, each depending only on those below it:

- :mod:`modbus_board`: a relay board at one unit id (locks on coils, door
  sensors on inputs), its options and its poll bookkeeping;
- :mod:`modbus_bus`: one bus and the task that owns it, its options;
- :mod:`modbus_request`: a request, how its outcome is judged, and
  ``Polled``, what the bus needs from a board;
- :mod:`modbus_rtu`: the RTU client and its line thread;
- :mod:`modbus_frame`: the RTU frame codec;
- :mod:`modbus_tcp`: the TCP client.

:mod:`lockerd.needs` imports this module to tell whether the Modbus drivers
can be loaded.
"""

from __future__ import annotations

from lockerd.drivers.modbus_board import WAVESHARE_FLASH_OFF, WAVESHARE_FLASH_ON, ModbusBoard, waveshare_flash_units
from lockerd.drivers.modbus_bus import RTU_OPTIONS, TCP_OPTIONS, ModbusBus
from lockerd.drivers.modbus_frame import rtu_frame_gap_ms
from lockerd.drivers.modbus_request import DriverRefused

__all__ = [
    "RTU_OPTIONS",
    "TCP_OPTIONS",
    "WAVESHARE_FLASH_OFF",
    "WAVESHARE_FLASH_ON",
    "DriverRefused",
    "ModbusBoard",
    "ModbusBus",
    "rtu_frame_gap_ms",
    "waveshare_flash_units",
]
