"""A fleet of station links against one Mosquitto: offered and achieved rate, loss, latency, broker cost.

    .venv/bin/python bench/fleet.py [--controllers 250 500 1000 2000] [--procs 4] [--rate 1] [--seconds 30]
                                    [--links lean|real] [--journals /dev/shm] [--keep]

For each fleet size the bench starts a Mosquitto of its own on a free
loopback port (persistence, queues that do not drop, TCP_NODELAY) and
spreads the controllers over ``--procs`` worker processes. Each controller
offers events on a fixed schedule (``--rate`` per second, a random phase
per controller) for ``--seconds``.

``--links real``: each controller is lockerd's own ``StationLink`` with its
own journal (SQLite and its writer thread). Faithful to the last byte, but
one costs its worker 1.2 to 1.4 ms of CPU per event (journal commit, hash
chain, writer thread, paho; idle timers included), so on
two cores the workers, not the broker, set the limit well below 2,000.
``--links lean`` (the default): each controller is ``LeanController``, a
few lines of asyncio that put the link's packets on the wire: one MQTT 5
connection per controller with its session, will, retained presence and
info, a QoS 1 subscription to its commands, each event as a journal record
in JSON at QoS 1 with the link's window of unacknowledged messages. The
broker sees what it would see from the real fleet; only the journal behind
each connection is missing.

A persistent subscriber (clean start false, QoS 1) in this process records
every event. Latency is from the event's ``mono`` field (the journal append,
or the lean publish) to the subscriber's arrival, both on CLOCK_MONOTONIC,
which every process on the machine shares. The broker's CPU and RSS are read
from /proc while the fleet offers its load.

Real links keep their journals on tmpfs by default: in a city every
controller has its own disk and CPU, here they share one VM and one virtual
disk, whose fdatasync per commit would be what the bench measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from broker import Mosquitto, station_config
from cluster import delivered, judge

TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# -- a worker process: a share of the controllers --------------------------------------------------------------

async def ticks(t0: float, rate: float, seconds: float, lags: list[float]) -> AsyncIterator[int]:
    """Tick numbers at ``rate`` per second from ``t0`` (CLOCK_MONOTONIC) for ``seconds``, each at its due
    time, starting at a random phase; how late each came is added to ``lags``."""
    k, phase = 0, random.uniform(0, 1 / rate)
    while (due := t0 + phase + k / rate) < t0 + seconds:
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        lags.append(time.monotonic() - due)
        yield k
        k += 1


async def _work(spec: dict[str, Any]) -> None:
    import logging

    from lockerd import config as cfg
    from lockerd.clock import Clock
    from lockerd.journal import Journal
    from lockerd.station import StationLink

    logging.basicConfig(filename=spec["log"], level=logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    d = Path(spec["dir"])
    links: list[tuple[str, Journal, StationLink]] = []
    for node in spec["nodes"]:
        conf = cfg.load(station_config(d, spec["brokers"], site=spec["site"], node=node, journal=f"{node}.db"))
        journal = Journal(conf.journal_path, Clock())
        if not journal.open():
            raise SystemExit(journal.error)
        link = StationLink(conf, journal, Clock())
        await link.start()
        links.append((node, journal, link))
    while not all(lk.connected for _, _, lk in links):
        await asyncio.sleep(0.05)
    print("started", flush=True)
    # Every worker starts offering at the same instant, which the parent gives on CLOCK_MONOTONIC.
    t0 = float(await asyncio.to_thread(sys.stdin.readline))
    rate, seconds = spec["rate"], spec["seconds"]
    lags: list[float] = []
    cpu0 = time.process_time()

    async def produce(journal: Journal) -> int:
        offered = 0
        async for k in ticks(t0, rate, seconds, lags):
            journal.append("bench.tick", n=k)
            offered += 1
        return offered

    appended = await asyncio.gather(*(produce(j) for _, j, _ in links))
    cpu = time.process_time() - cpu0
    for _, j, _ in links:
        j.append("bench.end")

    done = await asyncio.gather(*(delivered(j, lk, spec["drain_s"]) for _, j, lk in links))
    lags.sort()
    result = {"cpu_s": cpu, "lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
              "lag_max": lags[-1] if lags else 0.0,
              "nodes": {node: {"last_seq": j.last_seq, "ticks": n, "delivered": ok}
                        for (node, j, _), n, ok in zip(links, appended, done, strict=True)}}
    Path(spec["out"]).write_text(json.dumps(result))
    await asyncio.gather(*(lk.stop(flush_s=0.5) for _, _, lk in links))
    for _, j, _ in links:
        j.close()


# -- the lean equivalent: the same packets, a fraction of the CPU ------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _s(text: str | bytes) -> bytes:
    b = text.encode() if isinstance(text, str) else text
    return len(b).to_bytes(2, "big") + b


def _packet(kind: int, body: bytes) -> bytes:
    return bytes([kind]) + _varint(len(body)) + body


class LeanController:
    """What a station link puts on the wire, without its journal: MQTT 5 with clean start false and a session
    expiry, a retained QoS 1 presence will, presence and info retained at connect, a QoS 1 subscription to its
    commands, then each event as the link publishes it (QoS 1, the journal's record as JSON) with at most
    ``window`` unacknowledged (the link's ``batch_size``), and a PINGREQ per keepalive."""

    def __init__(self, site: str, node: str, port: int, window: int = 200, keepalive: int = 30):
        self.base = f"lockerd/{site}/{node}"
        self.site, self.node, self.port, self.window, self.keepalive = site, node, port, window, keepalive
        self.seq, self.mid, self.prev = 0, 0, "0" * 64
        self.unacked: dict[int, bytes] = {}
        self.room = asyncio.Event()
        self.room.set()
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        will = json.dumps({"state": "offline", "clean": False, "ts": _now()}).encode()
        flags = 0x04 | 0x08 | 0x20  # a will, QoS 1, retained; clean start false
        props = b"\x11" + (86400).to_bytes(4, "big")  # session expiry
        body = (_s("MQTT") + bytes([5, flags]) + self.keepalive.to_bytes(2, "big") + _varint(len(props)) + props
                + _s(f"lockerd-{self.site}-{self.node}") + b"\x00" + _s(f"{self.base}/presence") + _s(will))
        self.writer.write(_packet(0x10, body))
        kind, _ = await _read(reader)
        if kind != 0x20:
            raise ConnectionError(f"{self.node}: no CONNACK")
        asyncio.get_running_loop().create_task(self._read(reader))
        self._publish(f"{self.base}/presence", json.dumps({"state": "online", "ts": _now()}).encode(), retain=True)
        self._publish(f"{self.base}/info", json.dumps({"site": self.site, "node": self.node, "version": "bench",
                                                      "started_at": _now()}).encode(), retain=True)
        self.mid += 1
        self.writer.write(_packet(0x82, self.mid.to_bytes(2, "big") + b"\x00" + _s(f"{self.base}/cmd/+") + b"\x01"))

    def _publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        assert self.writer is not None
        self.mid = self.mid % 65535 + 1
        self.unacked[self.mid] = payload
        if len(self.unacked) >= self.window:
            self.room.clear()
        body = _s(topic) + self.mid.to_bytes(2, "big") + b"\x00" + payload
        self.writer.write(_packet(0x32 | int(retain), body))

    async def event(self, kind: str, **data: Any) -> None:
        await self.room.wait()
        self.seq += 1
        record = {"seq": self.seq, "id": os.urandom(16).hex(), "ts": _now(), "mono": round(time.monotonic(), 6),
                  "boot": "bench", "kind": kind, "compartment": None, "dossier": None, "people": [], "data": data,
                  "state": [], "prev": self.prev}
        record["hash"] = self.prev = os.urandom(32).hex()
        self._publish(f"{self.base}/events", json.dumps(record, separators=(",", ":")).encode())

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                kind, body = await asyncio.wait_for(_read(reader), self.keepalive)
                if kind == 0x40:  # PUBACK
                    self.unacked.pop(int.from_bytes(body[:2], "big"), None)
                    if len(self.unacked) < self.window:
                        self.room.set()

    async def ping(self) -> None:
        while self.writer is not None and not self.writer.is_closing():
            await asyncio.sleep(self.keepalive / 2)
            self.writer.write(b"\xc0\x00")

    async def drained(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while self.unacked and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.unacked

    def close(self) -> None:
        if self.writer is not None:
            self.writer.write(b"\xe0\x00")  # DISCONNECT
            self.writer.close()


async def _read(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        digit = (await reader.readexactly(1))[0]
        length |= (digit & 0x7F) << shift
        shift += 7
        if not digit & 0x80:
            break
    return head & 0xF0, await reader.readexactly(length)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + "Z"


async def _work_lean(spec: dict[str, Any]) -> None:
    port = int(spec["brokers"][0].rsplit(":", 1)[1])
    ctrls = [LeanController(spec["site"], node, port) for node in spec["nodes"]]
    for c in ctrls:
        await c.connect()
        await c.event("station.security")
    pings = [asyncio.get_running_loop().create_task(c.ping()) for c in ctrls]
    print("started", flush=True)
    t0 = float(await asyncio.to_thread(sys.stdin.readline))
    rate, seconds = spec["rate"], spec["seconds"]
    lags: list[float] = []
    cpu0 = time.process_time()

    async def produce(c: LeanController) -> int:
        offered = 0
        async for k in ticks(t0, rate, seconds, lags):
            await c.event("bench.tick", n=k)
            offered += 1
        return offered

    appended = await asyncio.gather(*(produce(c) for c in ctrls))
    cpu = time.process_time() - cpu0
    for c in ctrls:
        await c.event("bench.end")
    done = await asyncio.gather(*(c.drained(spec["drain_s"]) for c in ctrls))
    lags.sort()
    result = {"cpu_s": cpu, "lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
              "lag_max": lags[-1] if lags else 0.0,
              "nodes": {c.node: {"last_seq": c.seq, "ticks": n, "delivered": ok}
                        for c, n, ok in zip(ctrls, appended, done, strict=True)}}
    Path(spec["out"]).write_text(json.dumps(result))
    for p in pings:
        p.cancel()
    for c in ctrls:
        c.close()


# -- the station: a persistent subscriber ----------------------------------------------------------------------

class Subscriber:
    """MQTT 5, clean start false, QoS 1: records per controller each seq and its latency as it arrives."""

    def __init__(self, port: int):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.lock = threading.Lock()
        self.arrivals: dict[str, list[int]] = {}
        self.first: dict[tuple[str, int], tuple[float, float]] = {}  # (node, seq) -> (arrived, latency)
        self.subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="fleet-station", protocol=paho.MQTTv5)
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        c.on_connect = lambda cl, _u, _f, rc, _p: None if rc.is_failure else cl.subscribe("lockerd/+/+/events", 1)
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
        c.loop_start()
        self.client = c
        if not self.subscribed.wait(30):
            raise TimeoutError("the subscriber did not subscribe")

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.monotonic()
        body = json.loads(msg.payload)
        node, seq = msg.topic.split("/")[2], body["seq"]
        with self.lock:
            self.arrivals.setdefault(node, []).append(seq)
            if body["kind"] == "bench.tick":
                self.first.setdefault((node, seq), (now, now - body["mono"]))

    def have(self, want: dict[str, int]) -> bool:
        with self.lock:
            return all(len(set(self.arrivals.get(n, ()))) >= last for n, last in want.items())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def broker_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime, stime


def broker_rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(status["VmRSS"].split()[0]) / 1024, int(status["VmHWM"].split()[0]) / 1024


def run(n: int, a: argparse.Namespace) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix=f"lockerd-fleet-{n}-", dir=a.journals))
    # Replies must not wait on Nagle's algorithm (the station guide says so for the station broker too).
    broker = Mosquitto(root, extra="set_tcp_nodelay true\n").start()
    assert broker.proc is not None
    pid = broker.proc.pid
    sub = Subscriber(broker.port)
    workers: list[subprocess.Popen[str]] = []
    try:
        nodes = [f"c{i:04d}" for i in range(n)]
        for w in range(a.procs):
            d = root / f"worker{w}"
            d.mkdir()
            spec = {"dir": str(d), "site": "fleet", "nodes": nodes[w::a.procs],
                    "brokers": [f"127.0.0.1:{broker.port}"], "rate": a.rate, "seconds": a.seconds,
                    "drain_s": 120, "out": str(d / "result.json"), "log": str(d / "link.log")}
            workers.append(subprocess.Popen([sys.executable, __file__, a.links, json.dumps(spec)],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True))
        t_start = time.monotonic()
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "started":
                raise RuntimeError("a worker did not start")
        started_s = time.monotonic() - t_start
        t0 = time.monotonic() + 0.5
        for w in workers:
            assert w.stdin is not None
            w.stdin.write(f"{t0}\n")
            w.stdin.close()
        time.sleep(max(0.0, t0 - time.monotonic()))
        cpu0, load0, sub0 = broker_cpu_s(pid), os.getloadavg(), time.process_time()
        time.sleep(max(0.0, t0 + a.seconds - time.monotonic()))
        cpu1, rss, sub1 = broker_cpu_s(pid), broker_rss_mb(pid), time.process_time()
        for w in workers:
            w.wait()
        results: dict[str, Any] = {}
        work = []
        for w in range(a.procs):
            r = json.loads((root / f"worker{w}" / "result.json").read_text())
            results |= r["nodes"]
            work.append(r)
        want = {node: r["last_seq"] for node, r in results.items()}
        deadline = time.monotonic() + 60
        while not sub.have(want) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1)  # late duplicates, if any
        with sub.lock:
            verdict = judge(sub.arrivals, want)
            first = list(sub.first.values())
        ticks = sum(r["ticks"] for r in results.values())
        in_window = sum(1 for at, _ in first if at <= t0 + a.seconds)
        lat = sorted(x for _, x in first) or [0.0]
        return {
            "controllers": n, "procs": a.procs, "started_s": started_s,
            "offered": n * a.rate, "appended": ticks / a.seconds, "achieved": in_window / a.seconds,
            "drain_s": max(0.0, max((at for at, _ in first), default=t0) - (t0 + a.seconds)),
            "events": sum(v["events"] for v in verdict.values()),
            "lost": sum(v["lost"] for v in verdict.values()),
            "lost_controllers": sum(1 for v in verdict.values() if v["lost"]),
            "duplicated": sum(v["duplicated"] for v in verdict.values()),
            "out_of_order": sum(v["out_of_order"] for v in verdict.values()),
            "undelivered": sum(1 for r in results.values() if not r["delivered"]),
            "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
            "max_ms": 1000 * lat[-1],
            "broker_cpu_pct": 100 * (cpu1 - cpu0) / a.seconds, "broker_rss_mb": rss[0], "broker_hwm_mb": rss[1],
            "workers_cpu_pct": 100 * sum(r["cpu_s"] for r in work) / a.seconds,
            "subscriber_cpu_pct": 100 * (sub1 - sub0) / a.seconds,  # this process: the subscriber's thread
            "lag_p99_ms": 1000 * max(r["lag_p99"] for r in work), "lag_max_ms": 1000 * max(r["lag_max"] for r in work),
            "load": (load0, os.getloadavg()),
        }
    finally:
        sub.close()
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()
        broker.kill()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


def keeps_up(r: dict[str, Any]) -> bool:
    """Achieved within 1 % of offered, nothing lost or out of order, the backlog gone within a second."""
    return (r["achieved"] >= 0.99 * r["offered"] and r["lost"] == 0 and r["out_of_order"] == 0
            and r["undelivered"] == 0 and r["drain_s"] < 1.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controllers", type=int, nargs="+", default=[250, 500, 1000, 2000])
    ap.add_argument("--procs", type=int, default=4, help="worker processes the controllers are split among")
    ap.add_argument("--rate", type=float, default=1.0, help="events/s per controller")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long each fleet offers events")
    ap.add_argument("--links", choices=["lean", "real"], default="lean",
                    help="lean: the link's packets from a few lines of asyncio; "
                         "real: lockerd's station link and journal")
    ap.add_argument("--journals", default="/dev/shm" if Path("/dev/shm").is_dir() else None,
                    help="where the journals go (default tmpfs, see above)")
    ap.add_argument("--keep", action="store_true", help="keep the folder (journals, broker and link logs)")
    a = ap.parse_args()
    # Every controller holds a socket and its journal's files open, in the broker and in the workers.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    print(f"{os.cpu_count()} CPUs; {a.links} links in {a.procs} worker processes; {a.rate:g} events/s per "
          f"controller for {a.seconds:g} s; journals in {a.journals or tempfile.gettempdir()}")
    print(f"{'ctrls':>6} {'offered/s':>9} {'appended/s':>10} {'achieved/s':>10} {'drain s':>7} {'events':>8} "
          f"{'lost':>5} {'dups':>5} {'ooo':>4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'broker cpu':>10} "
          f"{'rss MB':>7} {'bench cpu':>9} {'sub cpu':>7} {'lag p99':>7} {'load':>11}  verdict")
    limit = None
    for n in a.controllers:
        r = run(n, a)
        ok = keeps_up(r)
        if not ok and limit is None:
            limit = r
        print(f"{n:>6} {r['offered']:>9.0f} {r['appended']:>10.1f} {r['achieved']:>10.1f} {r['drain_s']:>7.2f} "
              f"{r['events']:>8} {r['lost']:>5} {r['duplicated']:>5} {r['out_of_order']:>4} {r['p50_ms']:>7.1f} "
              f"{r['p99_ms']:>7.1f} {r['max_ms']:>7.0f} {r['broker_cpu_pct']:>9.1f}% {r['broker_rss_mb']:>7.1f} "
              f"{r['workers_cpu_pct']:>8.0f}% {r['subscriber_cpu_pct']:>6.0f}% {r['lag_p99_ms']:>7.1f} "
              f"{r['load'][0][0]:>5.2f}/{r['load'][1][0]:<5.2f}  {'keeps up' if ok else 'FALLS BEHIND'}",
              flush=True)
    if limit is None:
        print(f"the broker kept up at every size, up to {a.controllers[-1] * a.rate:g} events/s")
    else:
        print(f"the limit: {limit['controllers']} controllers ({limit['offered']:g} events/s offered, "
              f"{limit['achieved']:.0f} achieved)")


if __name__ == "__main__" and sys.argv[1:2] == ["real"]:
    asyncio.run(_work(json.loads(sys.argv[2])))
elif __name__ == "__main__" and sys.argv[1:2] == ["lean"]:
    asyncio.run(_work_lean(json.loads(sys.argv[2])))
elif __name__ == "__main__":
    main()
