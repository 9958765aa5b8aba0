"""Packets on loopback, timed by the kernel: where an open's time goes between the processes.

The station bench stamps the on-write when the board process has decoded it.
That board is pymodbus in a Python process on a shared 2-core machine, and
it must be scheduled before it can stamp anything; a relay board's
microcontroller needs no such turn. A capture on ``lo`` shows when each
packet crossed the kernel:

- the station's PUBLISH of the command, on its way to the broker;
- the broker's PUBLISH of it to the daemon;
- the daemon's Modbus write to the board.

So the capture splits an open into the broker's hop, the daemon's own share
(its fsync included) and the board process's wake-up.

Needs tcpdump and the right to capture (root, or CAP_NET_RAW). Reads the
pcap itself: Ethernet framing on ``lo``, IPv4, TCP.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PCAP_NANO = 0xA1B23C4D  # the magic of a pcap whose timestamps are in nanoseconds
ETH_HEADER = 14


@dataclass(frozen=True)
class Segment:
    """One TCP segment with data: kernel time (ns), ports and payload."""

    ns: int
    src: int
    dst: int
    payload: bytes


class Capture:
    """tcpdump on ``lo`` for the given TCP ports, from start() to stop()."""

    def __init__(self, path: Path, ports: list[int]):
        self.path = path
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> str | None:
        """Why a capture cannot run here, or None."""
        return None if shutil.which("tcpdump") else "tcpdump is not installed"

    def start(self) -> Capture:
        expr = " or ".join(f"tcp port {p}" for p in self.ports)
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-s", "0", "-B", "8192", "--time-stamp-precision=nano",
             "-w", str(self.path), expr],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        # It says "listening on lo" once the filter is attached: packets from then on are kept.
        line = self.proc.stderr.readline().decode()
        if "listening" not in line:
            self.proc.kill()
            raise RuntimeError(f"tcpdump did not start: {line.strip()}")
        return self

    def stop(self) -> list[Segment]:
        """End the capture; the segments it kept."""
        time.sleep(0.2)  # -U writes each packet at once; this lets the last ones reach the file
        self.close()
        return read_pcap(self.path)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def read_pcap(path: Path) -> list[Segment]:
    """The TCP segments with data in a nanosecond pcap of ``lo``."""
    raw = path.read_bytes()
    magic, = struct.unpack_from("<I", raw, 0)
    if magic != PCAP_NANO:
        raise ValueError(f"{path}: not a little-endian nanosecond pcap (magic {magic:#x})")
    out: list[Segment] = []
    at = 24
    while at + 16 <= len(raw):
        sec, frac, caplen, _ = struct.unpack_from("<IIII", raw, at)
        frame = raw[at + 16:at + 16 + caplen]
        at += 16 + caplen
        ip = frame[ETH_HEADER:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue  # not IPv4, or not TCP
        total = struct.unpack_from(">H", ip, 2)[0]
        tcp = ip[(ip[0] & 0x0F) * 4:total]
        src, dst = struct.unpack_from(">HH", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            out.append(Segment(sec * 1_000_000_000 + frac, src, dst, payload))
    return out
