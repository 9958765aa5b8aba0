"""Drain a 100,000-event backlog to a local Mosquitto, beside a plain paho publisher.

    .venv/bin/python bench/outbox_drain.py [--events 100000] [--batch 200]

Starts its own Mosquitto on a free port. First a plain paho publisher (its
own network thread, QoS 1) pushes the same messages, pre-encoded; then the
station link drains the journal (read from SQLite, encoded, published in
seq order, cursor saved as PUBACKs arrive). Prints events/s for both, the
ratio, and the process RSS growth during the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import paho.mqtt.client as paho
from broker import Mosquitto, station_config
from paho.mqtt.enums import CallbackAPIVersion

from lockerd import config as cfg
from lockerd.clock import Clock
from lockerd.journal import Journal
from lockerd.station import StationLink
from lockerd.station.outbox import encode_event


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def plain_paho(port: int, topic: str, payloads: list[bytes], window: int) -> float:
    """Seconds for a plain paho client to get every message PUBACKed.

    It keeps ``window`` messages outstanding, like the link's batch_size:
    handing paho 100,000 at once makes it rescan its whole queue on every
    PUBACK (quadratic), which would flatter the comparison.
    """
    done = threading.Event()
    room = threading.Semaphore(window)
    acked = 0

    def on_publish(*_):
        nonlocal acked
        acked += 1
        room.release()
        if acked == len(payloads):
            done.set()

    c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-plain", protocol=paho.MQTTv5)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t0 = time.perf_counter()
    for p in payloads:
        room.acquire()
        c.publish(topic, p, qos=1)
    if not done.wait(600):
        raise TimeoutError(f"plain paho: {acked} of {len(payloads)} acknowledged")
    dt = time.perf_counter() - t0
    c.disconnect()
    c.loop_stop()
    return dt


async def main(events: int, batch: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="lockerd-drain-"))
    broker = Mosquitto(tmp).start()
    try:
        conf = cfg.load(station_config(tmp, [f"127.0.0.1:{broker.port}"], batch_size=batch))
        journal = Journal(conf.journal_path, Clock())
        assert journal.open(), journal.error
        t0 = time.perf_counter()
        last = None
        for i in range(events):
            last = journal.append("bench.tick", compartment="d-1", people=["p-1"], n=i, code=f"D{i:06d}")
        await last
        print(f"journal: {events} events written in {time.perf_counter() - t0:.1f} s")

        payloads = [encode_event(e) for e in journal.read(0, events)]
        size = sum(map(len, payloads)) / len(payloads)
        dt_plain = await asyncio.to_thread(plain_paho, broker.port, "bench/plain", payloads, batch)
        del payloads
        plain_rate = events / dt_plain
        print(f"plain paho publisher: {plain_rate:,.0f} msg/s ({dt_plain:.2f} s, {size:.0f} bytes/msg)")

        rss0 = rss_mb()
        peak = rss0
        link = StationLink(conf, journal, Clock())
        t0 = time.perf_counter()
        await link.start()
        assert link.outbox is not None
        done = asyncio.ensure_future(link.outbox.wait_saved(journal.last_seq))
        while not done.done():
            peak = max(peak, rss_mb())
            await asyncio.wait([done], timeout=0.1)
        dt_link = time.perf_counter() - t0
        link_rate = events / dt_link
        print(f"station link drain:   {link_rate:,.0f} events/s ({dt_link:.2f} s, batch_size {batch}, "
              f"{link.outbox.published} published, cursor {link.outbox.delivered})")
        print(f"ratio: {100 * link_rate / plain_rate:.0f} % of plain paho (target >= 50 %)")
        print(f"RSS: {rss0:.1f} MB before, peak {peak:.1f} MB, growth {peak - rss0:.1f} MB (target <= 20 MB)")
        await link.stop()
        journal.close()
    finally:
        broker.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=200)
    a = ap.parse_args()
    asyncio.run(main(a.events, a.batch))
