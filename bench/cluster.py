"""Real station links on a 3-node RabbitMQ cluster (MQTT plugin, quorum queues), one node SIGKILLed mid-run.

    .venv/bin/python bench/cluster.py [--controllers 150] [--per-process 50] [--rate 2] [--seconds 60]
                                      [--kill-at 20] [--kill-node 0] [--subscriber-node 2] [--keep]

Three RabbitMQ nodes of their own on loopback: node names, AMQP, MQTT and
distribution ports, an epmd port, an Erlang cookie (``HOME``), data and
logs, all under one temporary folder; the machine's own brokers are not
touched. Controllers (each a journal and a lockerd.station.link, MQTT
3.1.1, several per process) append events at ``--rate`` per second, their
first broker spread over the nodes and the other two after it. A
persistent subscriber (clean session false, so a quorum queue of its own)
on another node records every event. At ``--kill-at`` seconds one node is
SIGKILLed; at the end every controller waits until its outbox has the
broker's acknowledgement for its whole journal, and the report counts, per
controller, the events lost, duplicated and out of order.

Starting a RabbitMQ node takes about 10 s: this is a bench, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from broker import free_port, station_config, wait_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = shutil.which("epmd") or "/usr/bin/epmd"

# -- the cluster ----------------------------------------------------------------------------------------------

class RabbitNode:
    """One RabbitMQ node with its own name, ports, config, data and logs under ``root``."""

    def __init__(self, root: Path, index: int, epmd_port: int, peers: list[str]):
        self.name = f"lkbench{index}@localhost"
        self.dir = root / f"node{index}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.amqp, self.dist, self.mqtt = free_port(), free_port(), free_port()
        self.root, self.epmd_port = root, epmd_port
        self.conf = self.dir / "rabbitmq.conf"
        lines = [
            f"listeners.tcp.default = 127.0.0.1:{self.amqp}",
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt}",
            # The MQTT sessions (a clean-session-false client's queue) must outlive the node they were made on.
            "mqtt.durable_queue_type = quorum",
            "mqtt.allow_anonymous = true",
            "loopback_users = none",
            "disk_free_limit.absolute = 50MB",
            "log.file.level = info",
            "cluster_formation.peer_discovery_backend = classic_config",
            *(f"cluster_formation.classic_config.nodes.{i + 1} = {p}" for i, p in enumerate(peers)),
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        (self.dir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return os.environ | {
            "HOME": str(self.root / "home"),  # the Erlang cookie
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),  # not the machine's
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp),
            "RABBITMQ_DIST_PORT": str(self.dist),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(self.conf),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
        }

    def start(self) -> None:
        log = (self.dir / "stdout.log").open("ab")
        self.proc = subprocess.Popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True, cwd=self.dir)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        out = subprocess.run([str(RABBIT_BIN / "rabbitmqctl"), "-n", self.name, *args], env=self.env(),
                             capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} on {self.name}: {out.stderr.strip() or out.stdout}")
        return out.stdout

    def wait_up(self, timeout: float = 120) -> None:
        assert self.proc is not None
        # "wait" waits for the pid file (the VM up and registered), then for the broker to have booted.
        self.ctl("wait", str(self.dir / "rabbit.pid"), "--timeout", str(int(timeout)), timeout=timeout + 10)
        wait_port(self.mqtt, timeout=30, proc=self.proc)

    def kill(self) -> None:
        """SIGKILL the node: the Erlang VM and its helpers, nothing saved."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


class Cluster:
    def __init__(self, root: Path, size: int = 3):
        self.root = root
        home = root / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie = home / ".erlang.cookie"
        cookie.write_text("".join(random.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(20)))
        cookie.chmod(0o400)
        self.epmd_port = free_port()
        names = [f"lkbench{i}@localhost" for i in range(size)]
        self.nodes = [RabbitNode(root, i, self.epmd_port, names) for i in range(size)]

    def start(self) -> None:
        # Our own epmd on its own port: the machine's Erlang nodes register elsewhere.
        subprocess.run([EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1", "-daemon"], check=True)
        first, *rest = self.nodes
        first.start()
        first.wait_up()
        # The others find the first one running and join it (classic peer discovery).
        for n in rest:
            n.start()
        for n in rest:
            n.wait_up()
        status = json.loads(first.ctl("cluster_status", "--formatter", "json"))
        running = sorted(status.get("running_nodes", []))
        if running != sorted(n.name for n in self.nodes):
            raise RuntimeError(f"the cluster did not form: running {running}")

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        subprocess.run([EPMD, "-port", str(self.epmd_port), "-kill"], check=False, capture_output=True)


# -- controllers: a worker process runs several ---------------------------------------------------------------

async def _work(spec: dict[str, Any]) -> None:
    import logging

    from lockerd import config as cfg
    from lockerd.clock import Clock
    from lockerd.journal import Journal
    from lockerd.station import StationLink

    logging.basicConfig(filename=spec["log"], level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    d = Path(spec["dir"])
    links: list[tuple[str, Journal, StationLink]] = []
    for site, node, brokers in spec["controllers"]:
        # The tests' minimal station config (a sim board, the link in 3.1.1 mode), one file and journal per node.
        conf = cfg.load(station_config(d, brokers, site=site, node=node, journal=f"{node}.db", protocol="3.1.1"))
        journal = Journal(conf.journal_path, Clock())
        if not journal.open():
            raise SystemExit(journal.error)
        link = StationLink(conf, journal, Clock())
        await link.start()
        links.append((node, journal, link))
    print("started", flush=True)
    rate, until = spec["rate"], time.monotonic() + spec["seconds"]

    async def produce(journal: Journal) -> None:
        await asyncio.sleep(random.uniform(0, 1 / rate))
        k = 0
        while time.monotonic() < until:
            journal.append("bench.tick", n=k)
            k += 1
            await asyncio.sleep(1 / rate)
        await journal.append_durable("bench.end", n=k)

    await asyncio.gather(*(produce(j) for _, j, _ in links))

    done = await asyncio.gather(*(delivered(j, lk, spec["drain_s"]) for _, j, lk in links))
    result = {node: {"last_seq": j.last_seq, "delivered": ok, "connects": lk.conn.connects if lk.conn else 0,
                     "broker": list(lk.conn.broker) if lk.conn and lk.conn.broker else None}
              for (node, j, lk), ok in zip(links, done, strict=True)}
    Path(spec["out"]).write_text(json.dumps(result))
    for _, j, lk in links:
        await lk.stop()
        j.close()
    print("done", flush=True)


# -- the station: a persistent subscriber ------------------------------------------------------------------

class Subscriber:
    """MQTT 3.1.1, clean session false: its queue is a quorum queue that outlives any one node."""

    def __init__(self, ports: list[int]):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.ports = ports  # the first is its node; the others, in turn, when that one is gone
        self.tries = 0
        self.arrivals: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.count = 0
        self.subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-station", protocol=paho.MQTTv311,
                        clean_session=False)
        c.reconnect_delay_set(0.5, 5)
        c.on_connect = lambda cl, _u, _f, rc, _p: None if rc.is_failure else cl.subscribe("lockerd/+/+/events", 1)
        c.on_subscribe = lambda *_a: self.subscribed.set()
        c.on_message = self._message
        c.on_disconnect = self._next_node
        c.connect("127.0.0.1", ports[0], 30)
        c.loop_start()
        self.client = c
        if not self.subscribed.wait(30):
            raise TimeoutError("the subscriber did not subscribe")

    def _next_node(self, client: Any, *_a: Any) -> None:
        # paho reconnects to the host it was given: give it the next node of the cluster.
        self.tries += 1
        client.connect_async("127.0.0.1", self.ports[self.tries % len(self.ports)], 30)

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        seq = json.loads(msg.payload)["seq"]
        node = msg.topic.split("/")[2]
        with self.lock:
            self.arrivals.setdefault(node, []).append(seq)
            self.count += 1

    def have(self, want: dict[str, int]) -> bool:
        with self.lock:
            return all(len(set(self.arrivals.get(n, ()))) >= last for n, last in want.items())

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def delivered(journal: Any, link: Any, within_s: float) -> bool:
    """Has the broker acknowledged everything ``journal`` holds, within ``within_s``? (A Journal and its
    StationLink: imported by the worker processes only.)"""
    assert link.outbox is not None
    await journal.flush()
    try:
        await asyncio.wait_for(link.outbox.wait_saved(journal.last_seq), within_s)
    except TimeoutError:
        return False
    return True


def judge(arrivals: dict[str, list[int]], want: dict[str, int]) -> dict[str, dict[str, int]]:
    """Per controller: lost (never arrived), duplicated (arrived again), out of order (first arrival below one
    already seen)."""
    out = {}
    for node, last in want.items():
        seen: set[int] = set()
        top = dup = late = 0
        for seq in arrivals.get(node, ()):
            if seq in seen:
                dup += 1
                continue
            seen.add(seq)
            if seq < top:
                late += 1
            top = max(top, seq)
        out[node] = {"events": last, "lost": len(set(range(1, last + 1)) - seen), "duplicated": dup,
                     "out_of_order": late}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--controllers", type=int, default=150)
    ap.add_argument("--per-process", type=int, default=50)
    ap.add_argument("--rate", type=float, default=2.0, help="events/s per controller")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--kill-at", type=float, default=20.0)
    ap.add_argument("--kill-node", type=int, default=0)
    ap.add_argument("--subscriber-node", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, journals)")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="lockerd-cluster-"))
    print(f"folder: {root}")
    cluster = Cluster(root)
    workers: list[subprocess.Popen[str]] = []
    sub = None
    try:
        t = time.monotonic()
        cluster.start()
        print(f"cluster of {len(cluster.nodes)} up in {time.monotonic() - t:.0f} s: MQTT ports "
              f"{[n.mqtt for n in cluster.nodes]}")
        ports = [n.mqtt for n in cluster.nodes]
        sub = Subscriber(ports[a.subscriber_node:] + ports[:a.subscriber_node])
        controllers = []
        for i in range(a.controllers):
            order = ports[i % len(ports):] + ports[:i % len(ports)]
            controllers.append([f"site-{i // 10:02d}", f"c{i:04d}", [f"127.0.0.1:{p}" for p in order]])
        for w in range(0, a.controllers, a.per_process):
            d = root / f"worker{w // a.per_process}"
            d.mkdir()
            spec = {"dir": str(d), "controllers": controllers[w:w + a.per_process], "rate": a.rate,
                    "seconds": a.seconds, "drain_s": 120, "out": str(d / "result.json"), "log": str(d / "link.log")}
            workers.append(subprocess.Popen([sys.executable, __file__, "worker", json.dumps(spec)],
                                            stdout=subprocess.PIPE, text=True))
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "started":
                raise RuntimeError("a worker did not start")
        t0 = time.monotonic()
        print(f"{a.controllers} controllers in {len(workers)} processes, {a.rate:g} events/s each, "
              f"{a.seconds:g} s")
        time.sleep(max(0.0, a.kill_at - (time.monotonic() - t0)))
        victim = cluster.nodes[a.kill_node]
        victim.kill()
        print(f"t={time.monotonic() - t0:.1f} s: SIGKILLed {victim.name} (MQTT port {victim.mqtt})")
        for w in workers:
            w.wait()
        results: dict[str, Any] = {}
        for w in range(len(workers)):
            results |= json.loads((root / f"worker{w}" / "result.json").read_text())
        want = {n: r["last_seq"] for n, r in results.items()}
        deadline = time.monotonic() + 60
        while not sub.have(want) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)  # late duplicates, if any
        with sub.lock:
            verdict = judge(sub.arrivals, want)
        report(results, verdict, root, victim.mqtt, sub.tries)
    finally:
        if sub is not None:
            sub.close()
        for w in workers:
            if w.poll() is None:
                w.kill()
        cluster.stop()
        if not a.keep:
            shutil.rmtree(root, ignore_errors=True)


def report(results: dict[str, Any], verdict: dict[str, dict[str, int]], root: Path, victim_port: int,
           sub_tries: int) -> None:
    total = Counter[str]()
    for v in verdict.values():
        total.update(v)
    hit = [n for n, r in results.items() if r["connects"] > 1]
    undelivered = [n for n, r in results.items() if not r["delivered"]]
    on_victim = [n for n, r in results.items() if r["broker"] and r["broker"][1] == victim_port]
    print(f"events journaled: {total['events']}; lost {total['lost']}, duplicated {total['duplicated']}, "
          f"out of order {total['out_of_order']}")
    print(f"controllers with a loss: {sum(1 for v in verdict.values() if v['lost'])}, with duplicates: "
          f"{sum(1 for v in verdict.values() if v['duplicated'])}, out of order: "
          f"{sum(1 for v in verdict.values() if v['out_of_order'])}")
    print(f"controllers that reconnected: {len(hit)} (connects per controller: max "
          f"{max(r['connects'] for r in results.values())}); outbox not drained: {len(undelivered)}; "
          f"still on the killed node: {len(on_victim)}")
    lines = Counter[str]()
    for w in sorted(root.glob("worker*/link.log")):
        for line in w.read_text().splitlines():
            if " WARNING " in line or " INFO " in line:
                lines["lost" if "lost; reconnecting" in line else "connected" if "connected to" in line
                      else "cannot connect" if "cannot connect" in line else "other"] += 1
    print(f"the subscriber reconnected {sub_tries} times")
    print(f"link log lines (info and up, all controllers): {dict(lines)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(_work(json.loads(sys.argv[2])))
    else:
        main()
