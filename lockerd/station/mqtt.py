"""paho-mqtt 2.x driven by the daemon's asyncio loop (no network thread).

paho's socket is watched with ``loop.add_reader``/``add_writer`` and a task
calls ``loop_misc()`` every second for keepalive, so every paho callback
runs on the loop thread. paho does not reconnect when driven this way: this
module does, over the broker list, forever. A refused or unreachable broker,
and one that accepts and then drops the connection within STABLE_S, is a
failed attempt: the next broker is tried, and after a full round the link
waits, doubling with jitter up to ``reconnect_max_s``. Each change of state
is logged once per outage, the repeats at debug level. Only the blocking
TCP/TLS connect runs in a one-thread executor, so an unreachable broker
never stalls the loop; the socket is registered with the loop after that
connect returns, on the loop thread.

A fresh paho client is made for each connection: messages in flight belong
to the outbox, which re-sends from its cursor after a reconnect, so paho's
own resend queue must not add a second copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

CONNACK_TIMEOUT_S = 10.0
# On a clean stop, how long to read what the broker still sends before closing (see _linger).
STOP_LINGER_S = 2.0
FIRST_RETRY_S = 0.25
# A connection that ends sooner than this after its CONNACK counts as a failed attempt, and backs off.
STABLE_S = 10.0


@dataclass(frozen=True)
class Settings:
    """What a connection needs, taken from the [station] section."""

    brokers: tuple[tuple[str, int], ...]
    client_id: str
    protocol: str = "5"  # "5" or "3.1.1"
    keepalive_s: int = 30
    username: str = ""
    password: str | None = None
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    session_expiry_s: int = 86400
    reconnect_max_s: float = 30.0
    connect_timeout_s: float = 5.0

    @classmethod
    def from_station(cls, st: dict[str, Any], default_client_id: str) -> Settings:
        brokers = []
        for b in st["brokers"]:
            host, _, port = b.rpartition(":")
            brokers.append((host.strip("[]"), int(port)))
        password = None
        if st.get("password_file"):
            # Read at start so a rotated password takes effect on restart; a
            # trailing newline from an editor is not part of the password.
            password = Path(st["password_file"]).read_text().rstrip("\r\n")
        return cls(
            brokers=tuple(brokers),
            client_id=st.get("client_id") or default_client_id,
            protocol=st.get("protocol", "5"),
            keepalive_s=st.get("keepalive_s", 30),
            username=st.get("username") or "",
            password=password,
            tls=bool(st.get("tls")),
            ca_file=str(st.get("ca_file") or ""),
            cert_file=str(st.get("cert_file") or ""),
            key_file=str(st.get("key_file") or ""),
            session_expiry_s=st.get("session_expiry_s", 86400),
            reconnect_max_s=st.get("reconnect_max_s", 30.0),
        )


class Backoff:
    """Exponential delays with jitter, capped: first, 2 x first, ... up to cap, each times 0.5 to 1.5."""

    def __init__(self, first: float, cap: float):
        self.first, self.cap = first, cap
        self.delay = first

    def next(self) -> float:
        # Wide jitter: a fleet that lost its broker at one instant spreads out within a few rounds.
        out = min(self.delay * random.uniform(0.5, 1.5), self.cap)
        self.delay = min(self.delay * 2, self.cap)
        return out

    def reset(self) -> None:
        self.delay = self.first


Will = tuple[str, Callable[[], bytes]]  # topic, payload factory (called at each connect)


class Connection:
    """One logical MQTT connection that keeps itself up.

    Callbacks (all on the loop): ``on_connect(session_present)``,
    ``on_disconnect()``, ``on_message(msg)``, ``on_publish(mid, refused)`` (the
    broker's reason when its PUBACK carries a failure code, else None).
    """

    def __init__(self, settings: Settings, *, will: Will | None = None,
                 on_connect: Callable[[bool], None] | None = None,
                 on_disconnect: Callable[[], None] | None = None,
                 on_message: Callable[[paho.MQTTMessage], None] | None = None,
                 on_publish: Callable[[int, str | None], None] | None = None):
        self.settings = settings
        self.will = will
        self.on_connect = on_connect or (lambda _sp: None)
        self.on_disconnect = on_disconnect or (lambda: None)
        self.on_message = on_message or (lambda _m: None)
        self.on_publish = on_publish or (lambda _mid, _refused: None)
        self.client: paho.Client | None = None
        self.connected = False
        self.broker: tuple[str, int] | None = None
        self.connects = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = -1
        self._in_callbacks = 0  # inside paho's on_connect/on_message/on_publish (see publish)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mqtt-connect")
        self._task: asyncio.Task | None = None
        self._misc: asyncio.Task | None = None
        self._sock: Any = None
        self._writing = False
        self._connack: asyncio.Future[bool] | None = None
        self._lost = asyncio.Event()
        self._stopping = False
        self.last_error = ""
        self._said: set[str] = set()  # the state changes logged in this outage (see _say)

    # -- life ---------------------------------------------------------------------

    def start(self) -> None:
        """Start connecting in the background; never raises for an absent broker."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._run(), name="mqtt-connection")

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Disconnect cleanly (no last will) and stop reconnecting."""
        self._stopping = True
        client = self.client
        if client is not None and self.connected:
            client.disconnect()
            # Let the DISCONNECT reach the broker; the broker closing the
            # socket (or our own close) ends the wait.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._lost.wait(), timeout_s)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._drop()
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        brokers = self.settings.brokers
        backoff = Backoff(FIRST_RETRY_S, self.settings.reconnect_max_s)
        i = failed = 0
        while not self._stopping:
            host, port = brokers[i % len(brokers)]
            if await self._connect_once(host, port):
                lasted = await self._hold(backoff)
                if self._stopping:
                    return
                if lasted >= STABLE_S:
                    self._say(f"lost {host}:{port}", f"connection to {host}:{port} lost; reconnecting")
                    # The broker that worked is tried first again, after a
                    # short pause so a fleet does not return in lockstep.
                    failed = 0
                    await asyncio.sleep(random.uniform(0, FIRST_RETRY_S))
                    continue
                # Accepted, then dropped at once (a session the node cannot
                # host, a node without quorum, a client id taken over): a
                # failed attempt like a refusal, or the link would hammer it.
                self._say(f"unstable {host}:{port}",
                          f"{host}:{port} closed the connection {lasted:.1f} s after accepting it; trying the "
                          f"other brokers and backing off (up to {self.settings.reconnect_max_s:g} s)")
            else:
                self._drop()
            i += 1
            failed += 1
            if failed % len(brokers) == 0:
                # A full round failed: back off, with jitter so a fleet does
                # not reconnect in lockstep after a broker restart.
                await asyncio.sleep(backoff.next())

    async def _hold(self, backoff: Backoff) -> float:
        """Stay connected until the connection is lost; how long it lasted."""
        up_since = time.monotonic()
        lost = asyncio.ensure_future(self._lost.wait())
        try:
            done, _ = await asyncio.wait({lost}, timeout=STABLE_S)
            if not done:
                # Stable: the next failure starts a fresh outage, said afresh.
                backoff.reset()
                if any(k.startswith("unstable ") for k in self._said) and self.broker is not None:
                    log.info("station: connection to %s:%d stable for %g s", *self.broker, STABLE_S)
                self._said.clear()
                await lost
        finally:
            lost.cancel()
        self._drop()
        return time.monotonic() - up_since

    def _say(self, key: str, msg: str, level: int = logging.WARNING) -> None:
        """Log a change of the link's state once: repeats within one outage go to debug.

        A flapping broker or a dead one in the list is then one line, not one
        per attempt; what was said is forgotten once a connection is stable.
        """
        if key in self._said:
            log.debug("station: %s", msg)
        else:
            self._said.add(key)
            log.log(level, "station: %s", msg)

    def _make_client(self) -> paho.Client:
        s = self.settings
        c = new_client(s, s.client_id, clean=False, connect_timeout=s.connect_timeout_s)
        if self.will is not None:
            topic, payload = self.will
            c.will_set(topic, payload(), qos=1, retain=True)
        c.on_socket_open = self._on_socket_open
        c.on_socket_close = self._on_socket_close
        c.on_socket_register_write = self._on_register_write
        c.on_socket_unregister_write = self._on_unregister_write
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        return c

    async def _connect_once(self, host: str, port: int) -> bool:
        assert self._loop is not None
        self._lost = asyncio.Event()
        client = self._make_client()
        self.client = client
        self._connack = self._loop.create_future()
        kw: dict[str, Any] = {}
        if self.settings.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.settings.session_expiry_s
            kw = {"clean_start": False, "properties": props}
        call = functools.partial(client.connect, host, port, self.settings.keepalive_s, **kw)
        try:
            fut = self._loop.run_in_executor(self._executor, call)
            rc = await asyncio.shield(fut)
        except asyncio.CancelledError:
            fut.add_done_callback(lambda _f: _close_quietly(client))
            raise
        except (OSError, ssl.SSLError, ValueError) as e:
            self._note_failure(f"cannot connect to {host}:{port}: {e}")
            return False
        if rc != paho.MQTT_ERR_SUCCESS:
            self._note_failure(f"cannot connect to {host}:{port}: {paho.error_string(rc)}")
            return False
        # Back on the loop thread: now the socket may be watched.
        sock = client.socket()
        if sock is None:
            return False
        # paho leaves Nagle on: a reply or event written right after another
        # small packet would wait for the broker's delayed ACK (~40 ms).
        with contextlib.suppress(OSError, AttributeError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._loop.add_reader(sock, self._readable)
        if client.want_write():
            self._writing = True
            self._loop.add_writer(sock, self._writable)
        self._misc = self._loop.create_task(self._misc_loop(client), name="mqtt-misc")
        try:
            ok = await asyncio.wait_for(asyncio.shield(self._connack), CONNACK_TIMEOUT_S)
        except TimeoutError:
            self._note_failure(f"no CONNACK from {host}:{port} within {CONNACK_TIMEOUT_S:g} s")
            return False
        if not ok:
            return False
        self.broker = (host, port)
        return True

    def _note_failure(self, msg: str) -> None:
        # Log a failing broker once per outage, then quietly.
        self._say(f"failed {msg}", msg)
        self.last_error = msg

    def _drop(self) -> None:
        """Forget the current client: unwatch and close its socket."""
        was = self.connected
        self.connected = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        client, self.client = self.client, None
        self._unwatch()
        if client is not None:
            _close_quietly(client)
        if was:
            self.on_disconnect()

    def _unwatch(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock)
            self._loop.remove_writer(self._sock)
        self._sock = None
        self._writing = False

    async def _misc_loop(self, client: paho.Client) -> None:
        while True:
            await asyncio.sleep(1.0)
            if client is not self.client:
                return
            client.loop_misc()

    # -- socket events (loop thread) ------------------------------------------------

    def _readable(self) -> None:
        client = self.client
        if client is None:
            return
        client.loop_read()
        # A TLS socket can hold decrypted bytes the kernel no longer reports
        # as readable: drain them now or they wait for the next packet.
        sock = client.socket()
        while client is self.client and sock is not None and getattr(sock, "pending", lambda: 0)() > 0:
            client.loop_read()
            sock = client.socket()

    def _writable(self) -> None:
        client = self.client
        if client is not None:
            client.loop_write()

    # -- paho callbacks ----------------------------------------------------------------

    def _on_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # Called inside connect(), in the executor: registration waits for
        # connect() to return (see _connect_once).
        pass

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if client is self.client and self._on_thread():
            self._unwatch()
            if self._stopping:
                _linger(sock, STOP_LINGER_S)

    def _on_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if client is self.client and self._on_thread() and self._sock is not None and not self._writing:
            self._writing = True
            assert self._loop is not None
            self._loop.add_writer(self._sock, self._writable)

    def _on_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if client is self.client and self._on_thread() and self._sock is not None and self._writing:
            self._writing = False
            assert self._loop is not None
            self._loop.remove_writer(self._sock)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self.client:
            return
        host, port = client.host, client.port
        if reason.is_failure:
            self._note_failure(f"{host}:{port} refused the connection: {reason}")
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(False)
            return
        self.connected = True
        self.connects += 1
        self.last_error = ""
        self._say(f"connected {host}:{port}",
                  f"connected to {host}:{port} (session present: {flags.session_present})", logging.INFO)
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(True)
        with self._in_callback():
            try:
                self.on_connect(bool(flags.session_present))
            except Exception:
                log.exception("station: on_connect failed")

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self.client:
            return
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(False)
        if not self._stopping:
            log.debug("station: disconnected: %s", reason)
        self._lost.set()

    def _on_message(self, client: paho.Client, userdata: Any, msg: paho.MQTTMessage) -> None:
        if client is not self.client:
            return
        with self._in_callback():
            try:
                self.on_message(msg)
            except Exception:
                log.exception("station: message on %s failed", msg.topic)

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        if client is not self.client:
            return
        # MQTT v5 only: a 3.1.1 broker acknowledges a publish its ACL drops.
        refused = str(reason) if reason is not None and getattr(reason, "is_failure", False) else None
        with self._in_callback():
            self.on_publish(mid, refused)

    @contextlib.contextmanager
    def _in_callback(self) -> Iterator[None]:
        self._in_callbacks += 1
        try:
            yield
        finally:
            self._in_callbacks -= 1

    # -- use -------------------------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int | None:
        """Queue a message; its mid, or None when not connected."""
        client = self.client
        if client is None or not self.connected:
            return None
        info = client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            return None
        if not self._in_callbacks and self._on_thread():
            # Driven by our loop, paho only asks for the socket's writability,
            # so the packet waited a loop pass behind every callback ready
            # then: 0.5 ms at p50 for a command's reply. Written now, as paho
            # writes when it runs its own loop; never from inside one of its
            # callbacks, where paho holds the lock its write path takes again.
            client.loop_write()
        return info.mid

    def subscribe(self, topic: str, qos: int = 1) -> None:
        client = self.client
        if client is None or not self.connected:
            return
        if self.settings.protocol == "5":
            # Retain As Published: a retained message forwarded live keeps its
            # flag, so a retained command is recognised (and refused) even
            # when it arrives while we are subscribed, not only on subscribe.
            client.subscribe(topic, options=SubscribeOptions(qos=qos, retainAsPublished=True))
        else:
            client.subscribe(topic, qos=qos)



def new_client(s: Settings, client_id: str, *, clean: bool, connect_timeout: float) -> paho.Client:
    """A paho client with the station's protocol, credentials and TLS (MQTT 3.1.1: ``clean`` session or not)."""
    v5 = s.protocol == "5"
    kw: dict[str, Any] = {"client_id": client_id, "protocol": paho.MQTTv5 if v5 else paho.MQTTv311}
    if not v5:
        kw["clean_session"] = clean
    c = paho.Client(CallbackAPIVersion.VERSION2, **kw)
    c.connect_timeout = connect_timeout
    if s.username:
        c.username_pw_set(s.username, s.password)
    if s.tls:
        c.tls_set(ca_certs=s.ca_file or None, certfile=s.cert_file or None, keyfile=s.key_file or None,
                  cert_reqs=ssl.CERT_REQUIRED)
    return c


def _linger(sock: Any, timeout: float) -> None:
    """After our DISCONNECT, before paho closes the socket: end our side and read until the broker ends its own.

    Closing a socket with bytes unread (the PUBACK of the offline presence,
    a command) makes the kernel answer with a reset, and a busy broker that
    has not yet read the DISCONNECT may then lose it and publish the last
    will: "offline, not clean" after a clean stop. Called only when stopping.
    """
    deadline = time.monotonic() + timeout
    with contextlib.suppress(OSError, ValueError):
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                return


def _close_quietly(client: paho.Client) -> None:
    sock = client.socket()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
