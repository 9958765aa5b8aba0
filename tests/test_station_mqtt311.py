"""MQTT 3.1.1 mode (protocol = "3.1.1") on the brokers that speak nothing newer: NATS, and Mosquitto as a control.

RabbitMQ 3.10 takes ~10 s a node to start: bench/cluster.py runs the link on a 3-node cluster instead.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from broker import Mosquitto, Node, States, check_stream, free_port, wait_port
from paho.mqtt.enums import CallbackAPIVersion

NATS = shutil.which("nats-server") or "/usr/sbin/nats-server"


class Nats:
    """A nats-server of our own with JetStream (MQTT sessions and retained messages live there) and MQTT."""

    def __init__(self, dir: Path):
        self.dir = dir / "nats"
        self.dir.mkdir()
        self.port = free_port()
        conf = self.dir / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{free_port()}"\nserver_name: "lockerd-test"\n'
                        f'jetstream {{ store_dir: "{self.dir / "js"}" }}\n'
                        f'mqtt {{ listen: "127.0.0.1:{self.port}" }}\n')
        self.proc = subprocess.Popen([NATS, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port, proc=self.proc)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Recorder311:
    """A station subscriber in MQTT 3.1.1 with a persistent session (clean session false)."""

    def __init__(self, port: int, topics: list[str]):
        self.got: list[tuple[str, Any, bool]] = []
        self.cond = threading.Condition()
        subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id="station-311", protocol=paho.MQTTv311,
                        clean_session=False)
        c.on_connect = lambda cl, _u, _f, rc, _p: None if rc.is_failure else cl.subscribe([(t, 1) for t in topics])
        c.on_subscribe = lambda *_a: subscribed.set()
        c.on_message = self._message
        c.connect("127.0.0.1", port, 30)
        c.loop_start()
        self.client = c
        assert subscribed.wait(10), "not subscribed"

    def _message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.cond:
            self.got.append((msg.topic, json.loads(msg.payload), bool(msg.retain)))
            self.cond.notify_all()

    def on(self, suffix: str) -> list[Any]:
        with self.cond:
            return [b for t, b, _ in self.got if t.endswith(suffix)]

    def wait(self, pred: Any, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self):
                left = deadline - time.monotonic()
                assert left > 0, "condition not met in time"
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture(params=["nats", "mosquitto"])
def broker_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    if request.param == "nats":
        if not Path(NATS).exists():
            pytest.skip("nats-server is not installed")
        nats = Nats(tmp_path)
        yield nats.port
        nats.kill()
    else:
        m = Mosquitto(tmp_path).start()
        yield m.port
        m.kill()


@pytest.mark.asyncio
async def test_the_link_in_mqtt_311_mode(tmp_path: Path, broker_port: int) -> None:
    rec = Recorder311(broker_port, ["lockerd/+/+/events", "lockerd/+/+/snapshot", "lockerd/+/+/presence"])
    node = await Node(tmp_path, [f"127.0.0.1:{broker_port}"], protocol="3.1.1", states=States()).start()
    try:
        await node.append(200)
        await node.delivered(10)
        want = node.journal.last_seq
        await asyncio.to_thread(rec.wait, lambda r: {e["seq"] for e in r.on("/events")} >= set(range(1, want + 1)))
        stats = check_stream([e for e in rec.on("/events") if e["seq"] <= want], node.events()[:want])
        assert stats["events"] == want
        [snap] = rec.on("/snapshot")
        assert [c["compartment"] for c in snap["compartments"]] == ["d-1", "d-2"]
        assert rec.on("/presence")[0]["state"] == "online"
    finally:
        await node.stop()
        rec.close()
