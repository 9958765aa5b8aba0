"""Station test kit: a real Mosquitto, controllers (journal + link), and a plain paho subscriber.

``Mosquitto(dir)`` writes its own config (free loopback port, persistence,
a queue limit high enough that nothing is dropped for a slow subscriber),
starts it, stops it (SIGTERM: it saves sessions) or kills it.
``Recorder`` is an independent paho client (its own network thread) that
records every message per topic, with a persistent session.

Run as a script, it is the producer of the kill tests:
``python tests/broker.py produce CONFIG COUNT`` opens the journal, runs the
station link and appends COUNT events (forever with COUNT 0), printing each
seq once durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lockerd import config as cfg
from lockerd.clock import Clock
from lockerd.errors import CommandError
from lockerd.journal import Journal
from lockerd.station.contract import COMMAND_AUTHORITY
from lockerd.station.gate import Vetting

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port that nothing is bound to now, below the kernel's ephemeral range.

    A port from bind(0) is an ephemeral one, which every outgoing connection
    also draws from: a client's source port (other test runs share the
    machine) could take it before mosquitto binds it, or while a killed
    broker is down before it binds it again.
    """
    low = _ephemeral_low()
    if low > 12000:
        for _ in range(200):
            port = random.randrange(10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until something accepts connections on the port (and ``proc``, the server meant to, still runs)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise TimeoutError(f"the server for 127.0.0.1:{port} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s") from None
            time.sleep(0.02)


class Mosquitto:
    """One mosquitto process with its own config, data and log in ``dir``."""

    def __init__(self, dir: Path, *, port: int | None = None, password_file: Path | None = None,
                 tls: dict[str, Path] | None = None, extra: str = "", name: str = "broker"):
        self.dir = Path(dir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.conf = self.dir / "mosquitto.conf"
        self.log = self.dir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "persistence true",
            f"persistence_location {self.dir}/",
            # Nothing-lost tests need the broker to queue, not drop, for a
            # slow or absent subscriber (the default 1000 drops silently).
            "max_queued_messages 1000000",
            "max_queued_bytes 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
        ]
        if os.geteuid() == 0:
            # Started as root, mosquitto drops to user "mosquitto", which
            # cannot write its log and sessions into our tmp dir.
            lines.append("user root")
        if password_file is not None:
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines += ["allow_anonymous true"]
        if tls is not None:
            lines += [f"cafile {tls['ca']}", f"certfile {tls['cert']}", f"keyfile {tls['key']}",
                      "require_certificate false"]
        self.conf.write_text("\n".join(lines) + "\n" + extra)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        try:
            wait_port(self.port, proc=self.proc)
        except TimeoutError:
            self.proc.kill()
            err = self.proc.communicate()[1].decode(errors="replace")
            raise RuntimeError(f"mosquitto did not start: {err}\n{self.log_text()}") from None
        return self

    def stop(self) -> None:
        """SIGTERM: mosquitto saves persistent sessions and their queues."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def make_password_file(path: Path, user: str, password: str) -> Path:
    path.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.chmod(path, 0o600)
    return path


def make_test_ca(dir: Path) -> dict[str, Path]:
    """A CA and a server certificate for 127.0.0.1/localhost, made with openssl."""
    dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (dir / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))
    ext = dir / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=lockerd test CA",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
        "-extfile", str(ext), "-out", str(cert))
    os.chmod(key, 0o644)
    return {"ca": ca, "cert": cert, "key": key}


class Recorder:
    """A plain paho subscriber (its own thread) that records what arrives."""

    def __init__(self, port: int, topics: list[str], client_id: str = "recorder", **auth: Any):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.messages: list[tuple[str, bytes, bool]] = []
        self.parsed: list[tuple[str, Any]] = []
        self.seqs: dict[str, set[int]] = {}
        self.cond = threading.Condition()
        self.topics = topics
        self.subscribed = threading.Event()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5)
        c.reconnect_delay_set(0.05, 0.5)
        if auth.get("username"):
            c.username_pw_set(auth["username"], auth.get("password"))
        if auth.get("ca"):
            c.tls_set(ca_certs=str(auth["ca"]))
        c.on_connect = self._on_connect
        c.on_message = self.on_message
        self._sub_mid: int | None = None  # the SUBSCRIBE whose acknowledgement means "subscribed"
        c.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self._props = props
        self.client = c
        c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
        c.loop_start()
        if not self.subscribed.wait(30):  # a safety net: it is set as soon as the broker has acknowledged
            self.close()
            raise TimeoutError("recorder did not subscribe")

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if not reason.is_failure:
            # One SUBSCRIBE for every topic: "subscribed" means all of them, not the first one acknowledged.
            self._sub_mid = client.subscribe([(t, 1) for t in self.topics])[1]

    def _on_subscribe(self, _client: Any, _userdata: Any, mid: int, *_rest: Any) -> None:
        if mid == self._sub_mid:  # both run on paho's network thread, the acknowledgement after the send
            self.subscribed.set()

    def on_message(self, _client: Any, _userdata: Any, msg: Any) -> None:
        """paho's on_message; public so that a benchmark can wrap it to time arrivals."""
        payload = bytes(msg.payload)
        try:
            body = json.loads(payload)
        except (ValueError, RecursionError):  # commands sent by the tests may be hostile
            body = None
        with self.cond:
            self.messages.append((msg.topic, payload, bool(msg.retain)))
            self.parsed.append((msg.topic, body))
            if isinstance(body, dict) and isinstance(body.get("seq"), int):
                self.seqs.setdefault(msg.topic, set()).add(body["seq"])
            self.cond.notify_all()

    def on(self, suffix: str) -> list[Any]:
        """JSON payloads of messages whose topic ends with ``suffix``, in arrival order."""
        with self.cond:
            return [b for t, b in self.parsed if t.endswith(suffix)]

    def seqs_on(self, suffix: str) -> set[int]:
        """Distinct event seqs received on topics ending with ``suffix`` (cheap: kept as they arrive)."""
        with self.cond:
            out: set[int] = set()
            for t, seqs in self.seqs.items():
                if t.endswith(suffix):
                    out |= seqs
            return out

    def wait(self, predicate: Callable[[Recorder], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("condition not met in time")
                self.cond.wait(left)

    def close(self) -> None:
        self.client.loop_stop()
        with contextlib.suppress(Exception):
            self.client.disconnect()


def check_stream(received: list[dict[str, Any]], journal_events: list[dict[str, Any]]) -> dict[str, int]:
    """Every journal event arrived, first arrivals in seq order, duplicates identical.

    Returns counts: events, messages, duplicates. Raises AssertionError otherwise.
    """
    by_seq = {e["seq"]: e for e in journal_events}
    seen: dict[int, dict[str, Any]] = {}
    last_first = 0
    dups = 0
    for msg in received:
        seq = msg["seq"]
        assert seq in by_seq, f"seq {seq} is not in the journal"
        assert msg == by_seq[seq], f"seq {seq} differs from the journal: {msg} != {by_seq[seq]}"
        if seq in seen:
            dups += 1
            continue
        assert seq == last_first + 1, f"gap or reorder: seq {seq} arrived first after {last_first}"
        seen[seq] = msg
        last_first = seq
    missing = sorted(set(by_seq) - set(seen))
    assert not missing, f"{len(missing)} events never arrived, first {missing[:5]}"
    return {"events": len(by_seq), "messages": len(received), "duplicates": dups}


STATION_TOML = """
[controller]
site = "{site}"
node = "{node}"
control_socket = "lockerd.sock"
[journal]
path = "{journal}"
[drivers.sim]
type = "sim"
channels = 4
[cabinets.d]
kind = "dossier"
lock_driver = "sim"
count = 4
[station]
{station}
"""


# The station users the test configs trust: "desk" may order everything,
# "watch" is the second signer of an emergency open. Seeds are fixed so a
# test can sign as either (tests/test_station_commands.Station does).
SIGNER_SEEDS = {name: bytes(range(32 * i, 32 * i + 32))
                for i, name in enumerate(("desk", "watch", "intruder", "clerk", "chief"))}
SIGNER_ROLES = {"desk": ["open", "custody", "evidence", "people", "authority", "emergency"], "watch": ["emergency"]}


def public_key(signer: str) -> str:
    import nacl.signing

    return bytes(nacl.signing.SigningKey(SIGNER_SEEDS[signer]).verify_key).hex()


def signers_toml(roles: dict[str, list[str]] | None = None) -> str:
    """[station.signers.*] sections for the test signers (default: desk and watch)."""
    return "".join(f'\n[station.signers.{name}]\npublic_key = "{public_key(name)}"\nroles = {json.dumps(r)}\n'
                   for name, r in (roles if roles is not None else SIGNER_ROLES).items())


def station_config(dir: Path, brokers: list[str], *, site: str = "test-site", node: str = "node-1",
                   journal: str = "journal.db", signers: dict[str, list[str]] | None = None,
                   **station: Any) -> Path:
    """Write a minimal controller config with a [station] section and the test signers; return its path.

    The test brokers listen on loopback without TLS, so the link is allowed
    plaintext unless a test says otherwise (allow_plaintext=False).
    """
    opts = {"brokers": brokers, "allow_plaintext": True, **station}
    body = "\n".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in opts.items())
    body += signers_toml(signers)
    path = Path(dir) / f"{node}.toml"
    path.write_text(STATION_TOML.format(site=site, node=node, journal=journal, station=body))
    return path


# -- a controller's journal + link, and small doubles of our own interfaces --

class Handler:
    """Records calls: a stand-in for the daemon's StationHandler (our interface, not a protocol peer)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def vet(self, name: str, args: dict[str, Any]) -> Vetting:
        return Vetting(COMMAND_AUTHORITY[name], journaled_args=args)

    async def handle(self, name: str, args: dict[str, Any], meta: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((name, args, meta))
        if name == "open" and args["compartment"] == "d-4":
            raise CommandError("compartment d-4 is in fault")
        return {"done": name}


class States:
    """A state source with two compartments whose state a test can change."""

    def __init__(self) -> None:
        self._states = {
            cid: {"compartment": cid, "cabinet": "d", "kind": "dossier", "door": "closed", "lock": "locked",
                  "items": [], "faults": [], "alarm": None}
            for cid in ("d-1", "d-2")
        }
        self._listeners: list[Any] = []

    def states(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._states.items()}

    def on_state(self, cb: Any) -> None:
        self._listeners.append(cb)

    def set(self, cid: str, **changes: Any) -> None:
        self._states[cid].update(changes)
        for cb in self._listeners:
            cb(dict(self._states[cid]))


class Node:
    """One controller: its journal and station link."""

    def __init__(self, dir: Path, brokers: list[str], node: str = "node-1", handler: Any = None,
                 states: Any = None, **station: Any):
        self.path = station_config(dir, brokers, node=node, journal=f"{node}.db", **station)
        self.config = cfg.load(self.path)
        self.handler = handler
        self.states = states
        self.journal: Journal | None = None
        self.link: Any = None

    async def start(self) -> Node:
        from lockerd.station import StationLink

        self.journal = Journal(self.config.journal_path, Clock())
        assert self.journal.open(), self.journal.error
        self.link = StationLink(self.config, self.journal, Clock(), commands=self.handler, states=self.states)
        await self.link.start()
        return self

    async def stop(self) -> None:
        if self.link is not None:
            await self.link.stop()
        if self.journal is not None:
            self.journal.close()

    async def append(self, n: int, kind: str = "test.tick") -> None:
        assert self.journal is not None
        for i in range(n):
            self.journal.append(kind, n=i)
        await self.journal.append_durable(kind, n=n)

    def events(self) -> list[dict[str, Any]]:
        assert self.journal is not None
        return [e.as_dict() for e in self.journal.read(0, 10**9)]

    async def delivered(self, timeout_s: float = 20.0) -> None:
        """Wait until the saved cursor covers the whole journal."""
        assert self.link is not None and self.link.outbox is not None and self.journal is not None
        await asyncio.wait_for(self.link.outbox.wait_saved(self.journal.last_seq), timeout_s)


async def arrived(rec: Recorder, node: Node, timeout_s: float = 20.0, suffix: str = "/events") -> dict[str, int]:
    """Wait until every journal event reached the recorder, then check the stream (up to the last seq awaited:
    the journal may have grown meanwhile, e.g. by a snapshot written once the burst was over)."""
    events = node.events()
    want = {e["seq"] for e in events}
    base = f"{node.config.site}/{node.config.node}{suffix}"

    def done(r: Recorder) -> bool:
        return want <= r.seqs_on(base)

    try:
        await asyncio.to_thread(rec.wait, done, timeout_s)
    except TimeoutError:
        got = rec.seqs_on(base)
        missing = sorted(want - got)
        link = node.link
        raise AssertionError(f"{len(missing)} of {len(want)} events missing after {timeout_s} s (first {missing[:5]}, "
                             f"last {missing[-1]}, got {len(rec.messages)} messages, max {max(got, default=0)}); "
                             f"link connected={link.connected} acked={link.outbox.acked} "
                             f"published={link.outbox.published} inflight={link.outbox.inflight} "
                             f"{_paho_state(link)}") from None
    last = max(want, default=0)
    return check_stream([m for m in rec.on(base) if m["seq"] <= last], events)


async def until(pred: Callable[[], bool]) -> None:
    """Wait until ``pred()`` holds; the link's state lives on this loop, so check it each turn."""
    while not pred():
        await asyncio.sleep(0.01)


async def outages_mid_burst(node: Node, broker: Mosquitto, take_down: Callable[[], None], count: int = 3,
                            moving: int = 100) -> None:
    """Append events as fast as the loop allows while the broker is taken down and restarted ``count`` times.

    Each outage waits until the link is connected and ``moving`` more events
    were acknowledged; at the end the link is connected again, the burst is
    over and a last ``test.end`` event is durable.
    """
    assert node.journal is not None and node.link is not None
    stop = asyncio.Event()

    async def burst() -> None:
        i = 0
        while not stop.is_set():
            node.journal.append("test.tick", n=i)
            i += 1
            if i % 50 == 0:
                await asyncio.sleep(0.002)

    producer = asyncio.create_task(burst())
    link = node.link
    try:
        for _ in range(count):
            target = link.outbox.acked + moving
            await asyncio.wait_for(until(lambda t=target: link.connected and link.outbox.acked > t), 10)
            await asyncio.to_thread(take_down)
            await asyncio.wait_for(until(lambda: not link.connected), 10)
            await asyncio.to_thread(broker.start)
        await asyncio.wait_for(until(lambda: link.connected), 10)
    finally:
        stop.set()
        await producer
    await node.journal.append_durable("test.end")


async def wait_for(rec: Recorder, pred: Any, timeout_s: float = 10.0) -> None:
    await asyncio.to_thread(rec.wait, pred, timeout_s)


def _paho_state(link: Any) -> str:
    c = link.conn.client
    if c is None:
        return "no client"
    return (f"want_write={c.want_write()} writing={link.conn._writing} out_packets={len(c._out_packet)} "
            f"out_messages={len(c._out_messages)} paho_inflight={c._inflight_messages} sock={c.socket()}")


async def _produce(config_path: str, count: int) -> None:
    from lockerd.station import StationLink

    conf = cfg.load(config_path)
    journal = Journal(conf.journal_path, Clock())
    if not journal.open():
        raise SystemExit(journal.error)
    link = StationLink(conf, journal, Clock())
    await link.start()
    i = 0
    while count == 0 or i < count:
        ev = await journal.append_durable("test.tick", n=i)
        print(ev.seq, flush=True)
        i += 1
        if i % 20 == 0:
            await asyncio.sleep(0.001)
    # Clean finish: wait until the broker has every event.
    assert link.outbox is not None
    await asyncio.wait_for(link.outbox.wait_saved(journal.last_seq), 30)
    await link.stop()
    journal.close()
    print("done", flush=True)


if __name__ == "__main__" and sys.argv[1:2] == ["produce"]:
    asyncio.run(_produce(sys.argv[2], int(sys.argv[3])))


class DroppingProxy:
    """A broker that accepts a client and drops it at once: a TCP front that passes CONNECT and CONNACK through
    to a real broker, then closes both sides (what a cluster node does to a session it cannot host)."""

    def __init__(self, upstream_port: int, hold_s: float = 0.0):
        self.upstream = upstream_port
        self.hold_s = hold_s
        self.port = free_port()
        self.accepts: list[float] = []  # monotonic time of each connection taken
        self.server: asyncio.Server | None = None

    async def start(self) -> DroppingProxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepts.append(time.monotonic())
        up_writer = None
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream)
            up_writer.write(await reader.read(65536))  # CONNECT (one segment on loopback)
            await up_writer.drain()
            writer.write(await up_reader.read(65536))  # CONNACK
            await writer.drain()
            await asyncio.sleep(self.hold_s)
        except OSError:
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.close()
