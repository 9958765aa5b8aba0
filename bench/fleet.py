"""Many simulated controllers against one Mosquitto: delivered, lost, duplicated, latency.

    .venv/bin/python bench/fleet.py [--nodes 10 50 100] [--events 200] [--rate 20]

Each controller is in-process with its own journal (its own writer thread)
and its own StationLink on the shared loop, appending ``--events`` events at
``--rate`` events/s. An independent paho subscriber (its own thread)
records every event; the report compares it with every journal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from broker import Mosquitto, Node, Recorder

from lockerd.clock import parse_time


async def run(n: int, events: int, rate: float) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix=f"lockerd-fleet-{n}-"))
    broker = Mosquitto(tmp).start()
    rec = Recorder(broker.port, ["lockerd/+/+/events"], client_id=f"fleet-{n}")
    arrivals: list[float] = []
    rec.client.on_message = _stamping(rec, arrivals)
    nodes = []
    try:
        for i in range(n):
            nodes.append(await Node(tmp, [f"127.0.0.1:{broker.port}"], node=f"n{i:04d}").start())

        async def produce(node: Node) -> None:
            for k in range(events):
                node.journal.append("bench.tick", n=k)
                await asyncio.sleep(1 / rate)
            await node.journal.append_durable("bench.end")

        t0 = time.perf_counter()
        await asyncio.gather(*(produce(x) for x in nodes))
        want = {(x.config.node, e["seq"]) for x in nodes for e in x.events()}

        def complete(r: Recorder) -> bool:
            return sum(len(s) for s in r.seqs.values()) >= len(want)

        with contextlib.suppress(TimeoutError):  # what is missing then is reported as lost
            await asyncio.to_thread(rec.wait, complete, 60)
        dt = time.perf_counter() - t0
        got: dict[tuple[str, int], int] = {}
        latencies = []
        with rec.cond:
            for (topic, body), at in zip(rec.parsed, arrivals, strict=True):
                key = (topic.split("/")[2], body["seq"])
                got[key] = got.get(key, 0) + 1
                if got[key] == 1:
                    latencies.append(at - parse_time(body["ts"]))
        lost = len(want - set(got))
        dups = sum(c - 1 for c in got.values())
        lat = sorted(latencies) or [0.0]
        return {"nodes": n, "events": len(want), "delivered": len(set(got) & want), "lost": lost,
                "duplicated": dups, "p50_ms": 1000 * statistics.median(lat),
                "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "seconds": dt}
    finally:
        for x in nodes:
            await x.stop()
        rec.close()
        broker.kill()


def _stamping(rec: Recorder, arrivals: list[float]):
    inner = rec.on_message

    def on_message(client, userdata, msg):
        with rec.cond:
            arrivals.append(time.time())
            inner(client, userdata, msg)

    return on_message


async def main(sizes: list[int], events: int, rate: float) -> None:
    print(f"{'nodes':>6} {'events':>8} {'delivered':>9} {'lost':>5} {'dups':>5} {'p50 ms':>7} {'p99 ms':>7} {'s':>6}")
    for n in sizes:
        r = await run(n, events, rate)
        print(f"{r['nodes']:>6} {r['events']:>8} {r['delivered']:>9} {r['lost']:>5} {r['duplicated']:>5} "
              f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['seconds']:>6.1f}", flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 50, 100])
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--rate", type=float, default=20.0)
    a = ap.parse_args()
    asyncio.run(main(a.nodes, a.events, a.rate))
