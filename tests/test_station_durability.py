"""Nothing lost when the producer is killed mid-burst; TLS with a password; a bridge to a central broker."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from broker import (
    Mosquitto,
    Node,
    Recorder,
    arrived,
    check_stream,
    make_password_file,
    make_test_ca,
    outages_mid_burst,
    station_config,
    until,
    wait_for,
)

from lockerd import config as cfg
from lockerd.clock import iso_utc
from lockerd.journal import Journal

PRODUCER = Path(__file__).parent / "broker.py"


def _wait_lines(proc: subprocess.Popen, count: int, timeout: float = 20.0) -> int:
    """Read the producer's durable seqs until ``count`` more arrived; return the last."""
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    last, seen = 0, 0
    import time

    deadline = time.monotonic() + timeout
    while seen < count:
        if not sel.select(max(0.0, deadline - time.monotonic())):
            raise TimeoutError(f"producer printed {seen} of {count} seqs")
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"producer exited: {proc.stderr.read().decode(errors='replace')}")
        last, seen = int(line), seen + 1
    return last


@pytest.mark.asyncio
async def test_producer_killed_mid_burst_loses_nothing(tmp_path: Path, mosquitto: Mosquitto,
                                                       recorders: list[Recorder]) -> None:
    rec = Recorder(mosquitto.port, ["lockerd/+/+/events"])
    recorders.append(rec)
    conf = station_config(tmp_path, [f"127.0.0.1:{mosquitto.port}"], journal="producer.db", batch_size=50)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, str(PRODUCER), "produce", str(conf), "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            await asyncio.to_thread(_wait_lines, proc, 1500)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    # A last clean run delivers the rest and exits once the broker has it all.
    proc = subprocess.run([sys.executable, str(PRODUCER), "produce", str(conf), "10"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    journal = Journal(cfg.load(conf).journal_path)
    await asyncio.sleep(0)  # Journal.open wants a running loop
    assert journal.open()
    try:
        events = [e.as_dict() for e in journal.read(0, 10**9)]
    finally:
        journal.close()
    assert len(events) >= 4500
    want = {e["seq"] for e in events}
    await asyncio.to_thread(rec.wait, lambda r: want <= r.seqs_on("/events"), 20)
    stats = check_stream(rec.on("/events"), events)
    assert stats["events"] == len(events)


@pytest.mark.asyncio
async def test_broker_sigkilled_mid_burst_and_restarted(tmp_path: Path, recorders: list[Recorder]) -> None:
    # A PUBACK only says the broker has the event: killed, it loses what it
    # acknowledged but had not forwarded or saved. The link re-sends what was
    # acknowledged shortly before a lost connection, so the stream alone is
    # complete. The broker saves its sessions every second (as the station
    # guide advises), so the subscriber's subscription survives the crash.
    broker = Mosquitto(tmp_path, extra="autosave_interval 1\n").start()
    rec = Recorder(broker.port, ["lockerd/+/+/events"])
    recorders.append(rec)
    await asyncio.to_thread(_wait_file, broker.dir / "mosquitto.db")
    node = await Node(tmp_path, [f"127.0.0.1:{broker.port}"], batch_size=100).start()
    try:
        await outages_mid_burst(node, broker, broker.kill, moving=300)  # SIGKILL: nothing saved at exit
        stats = await arrived(rec, node, timeout_s=30)
        assert node.link.conn.connects >= 4
        assert node.link.outbox.rewound > 0
        assert stats["events"] > 1000
    finally:
        await node.stop()
        broker.kill()


@pytest.mark.asyncio
async def test_events_refused_by_the_broker_are_held_not_skipped(tmp_path: Path, recorders: list[Recorder]) -> None:
    # The broker's ACL lets this node publish everything but events: under
    # MQTT v5 each event's PUBACK says "Not authorized".
    acl = tmp_path / "acl"
    allow = "topic readwrite lockerd/#\n"
    acl.write_text("topic read lockerd/test-site/node-1/events\n"
                   + "".join(f"topic readwrite lockerd/test-site/node-1/{t}\n"
                             for t in ("presence", "info", "reply", "replay", "state/+", "cmd/+")))
    broker = Mosquitto(tmp_path, extra=f"acl_file {acl}\n").start()
    rec = Recorder(broker.port, ["lockerd/+/+/events"])
    recorders.append(rec)
    node = await Node(tmp_path, [f"127.0.0.1:{broker.port}"]).start()
    try:
        await node.append(20)
        outbox = node.link.outbox
        await asyncio.wait_for(until(lambda: outbox.refusals >= 2), 10)
        # Held at the first event, nothing marked delivered, said once in the journal.
        assert outbox.refused is not None and outbox.refused[0] == 1
        assert "authori" in outbox.refused[1].lower()
        assert outbox.acked == 0 and outbox.delivered == 0
        refusals = [e for e in node.events() if e["kind"] == "station.refused"]
        assert len(refusals) == 1, refusals
        assert refusals[0]["data"] == {"topic": "lockerd/test-site/node-1/events", "event_seq": 1,
                                       "reason": outbox.refused[1]}
        # No busy loop: the first burst, then one probe per backoff step.
        assert outbox.published <= node.journal.last_seq + 1
        assert outbox.refusals == 2 and outbox._hold is not None
        assert not rec.seqs_on("/events")
        # The ACL is fixed and reloaded: the held event goes, and the rest after it, in order.
        acl.write_text(allow)
        broker.proc.send_signal(signal.SIGHUP)
        stats = await arrived(rec, node, timeout_s=15)
        assert stats["events"] == node.journal.last_seq
        assert outbox.refused is None
    finally:
        await node.stop()
        broker.kill()


def _wait_file(path: Path, timeout: float = 5.0) -> None:
    """Wait until the broker (another process) has written ``path``."""
    import time

    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written in {timeout} s")
        time.sleep(0.02)


@pytest.mark.asyncio
async def test_tls_with_password_and_mqtt_311(tmp_path: Path, recorders: list[Recorder]) -> None:
    tls = make_test_ca(tmp_path / "ca")
    pw = make_password_file(tmp_path / "passwd", "node-1", "s3cret")
    broker = Mosquitto(tmp_path, password_file=pw, tls=tls).start()
    try:
        rec = Recorder(broker.port, ["lockerd/#"], username="node-1", password="s3cret", ca=tls["ca"])
        recorders.append(rec)
        secret = tmp_path / "node.pw"
        secret.write_text("s3cret\n")
        for protocol in ("5", "3.1.1"):
            node = await Node(tmp_path, [f"localhost:{broker.port}"], node="node-1", tls=True,
                              ca_file=tls["ca"], username="node-1", password_file=secret, protocol=protocol).start()
            try:
                await node.append(100)
                await arrived(rec, node)
            finally:
                await node.stop()
        # A wrong password is refused by the broker; the link keeps trying and never raises.
        secret.write_text("wrong\n")
        node = await Node(tmp_path, [f"localhost:{broker.port}"], node="node-1", tls=True,
                          ca_file=tls["ca"], username="node-1", password_file=secret).start()
        try:
            await node.append(5)
            await asyncio.wait_for(until(lambda: node.link.conn.last_error != ""), 10)
            assert "refused" in node.link.conn.last_error or "not authorized" in node.link.conn.last_error.lower()
            assert not node.link.connected
        finally:
            await node.stop()
    finally:
        broker.kill()


class SessionRecorder(Recorder):
    """Subscribes at its first connection only: after a broker's crash, what it receives comes from the session
    the broker saved, and each reconnection notes whether the broker still had that session."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        self.sessions_present: list[bool] = []
        super().__init__(*args, **kw)

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self.subscribed.is_set():
            if not reason.is_failure:
                self.sessions_present.append(bool(flags.session_present))
            return
        super()._on_connect(client, userdata, flags, reason, props)


@pytest.mark.asyncio
@pytest.mark.parametrize("killed", ["station", "central"])
async def test_bridge_from_station_broker_to_central(tmp_path: Path, recorders: list[Recorder], killed: str) -> None:
    # Both brokers as docs/scaling.md configures them: persistence, a 5 s
    # autosave, queues that do not drop.
    durable = "autosave_interval 5\n"
    central = Mosquitto(tmp_path, name="central", extra=durable).start()
    # The station broker forwards its controllers' topics to the central one,
    # QoS 1, with its own persistent bridge session; commands come back down.
    bridge = (
        "connection central\n"
        f"address 127.0.0.1:{central.port}\n"
        "clientid bridge-test-site\n"
        "cleansession false\n"
        "bridge_protocol_version mqttv311\n"
        "topic lockerd/test-site/+/events out 1\n"
        "topic lockerd/test-site/+/replay out 1\n"
        "topic lockerd/test-site/+/presence out 1\n"
        "topic lockerd/test-site/+/state/+ out 1\n"
        "topic lockerd/test-site/+/reply out 1\n"
        "topic lockerd/test-site/+/cmd/+ in 1\n"
        "restart_timeout 1\n"
        "max_queued_messages 1000000\n"
    )
    station = Mosquitto(tmp_path, name="station", extra=durable + bridge).start()
    victim = station if killed == "station" else central
    try:
        rec = SessionRecorder(central.port, ["lockerd/+/+/events", "lockerd/+/+/replay"])
        recorders.append(rec)
        nodes = [await Node(tmp_path, [f"127.0.0.1:{station.port}"], node=f"node-{i}").start() for i in (1, 2)]
        try:
            await asyncio.gather(*(n.append(300) for n in nodes))
            for n in nodes:
                await arrived(rec, n)
            # A station that has run for longer than an autosave interval: both brokers have saved the
            # sessions (SIGUSR1 saves now, instead of waiting 5 s for the autosave).
            for b in (station, central):
                b.proc.send_signal(signal.SIGUSR1)
            await asyncio.to_thread(_wait_file, central.dir / "mosquitto.db")
            await asyncio.to_thread(_wait_file, station.dir / "mosquitto.db")
            await _kill_mid_burst(nodes, rec, victim)
            for n in nodes:
                if killed == "station":
                    # The controllers re-send what the dead broker had acknowledged: the stream alone is whole.
                    stats = await arrived(rec, n, timeout_s=30)
                else:
                    stats = await _repaired(rec, n)
                    # What the central broker had acknowledged and not yet delivered died with it.
                    assert stats["lost_at_central"] > 0
                assert stats["events"] > 600
            # The station server's session outlived the crash: it was never subscribed again.
            assert rec.sessions_present == ([True] if killed == "central" else [])
            if killed == "station":
                assert all(n.link.conn.connects >= 2 for n in nodes)
        finally:
            for n in nodes:
                await n.stop()
    finally:
        station.kill()
        central.kill()


async def _kill_mid_burst(nodes: list[Node], rec: Recorder, victim: Mosquitto) -> None:
    """SIGKILL ``victim`` while both controllers append (1,000 events/s each) and the central side receives;
    restart it, let the burst run on for a second, then end it with a durable event on each controller."""
    stop = asyncio.Event()

    async def burst(node: Node) -> None:
        assert node.journal is not None
        i = 0
        while not stop.is_set():
            node.journal.append("test.tick", n=i)
            i += 1
            if i % 10 == 0:
                await asyncio.sleep(0.01)

    producers = [asyncio.create_task(burst(n)) for n in nodes]
    try:
        target = len(rec.messages) + 500
        await wait_for(rec, lambda r: len(r.messages) >= target)
        await asyncio.to_thread(_stalled_then_killed, rec, victim)
        await asyncio.sleep(0.3)
        await asyncio.to_thread(victim.start)
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await asyncio.gather(*producers)
    for n in nodes:
        assert n.journal is not None
        await n.journal.append_durable("test.end")


def _stalled_then_killed(rec: Recorder, victim: Mosquitto) -> None:
    """The station server stalls for half a second (its message handler waits on the recorder's lock), so the
    central broker holds a backlog for it when the victim is killed, as it does under load."""
    with rec.cond:
        time.sleep(0.5)
        victim.kill()


async def _repaired(rec: Recorder, node: Node) -> dict[str, int]:
    """What the station server does after the central broker crashed: the events it had acknowledged to the
    bridge but not yet delivered or saved are gone (the bridge does not send them again, the controllers never
    lost their own broker), so it finds the gaps in each controller's seqs and asks the controller to replay
    them. Then every event arrived once at least, identical to the journal, and the live stream's first
    arrivals are in seq order around the gaps."""
    events = node.events()
    base = f"test-site/{node.config.node}"
    last = events[-1]["seq"]
    try:
        await wait_for(rec, lambda r: last in r.seqs_on(f"{base}/events"), 30)
    except TimeoutError:
        got = rec.seqs_on(f"{base}/events")
        raise AssertionError(f"{base}: seq {last} never arrived live ({len(got)} did, up to {max(got)}; "
                             f"sessions present at reconnections: {rec.sessions_present})") from None
    missing = sorted({e["seq"] for e in events} - rec.seqs_on(f"{base}/events"))
    if missing:
        cmd = {"id": uuid.uuid4().hex, "ts": iso_utc(time.time()), "requested_by": "station-server",
               "args": {"from_seq": missing[0], "to_seq": missing[-1]}}
        rec.client.publish(f"lockerd/{base}/cmd/replay", json.dumps(cmd), qos=1)
        try:
            await wait_for(rec, lambda r: set(missing) <= r.seqs_on(f"{base}/replay") | r.seqs_on(f"{base}/events"),
                           20)
        except TimeoutError:
            raise AssertionError(f"{base}: {len(missing)} events lost at the central broker, not all replayed: "
                                 f"{sorted(set(missing) - rec.seqs_on(f'{base}/replay'))[:5]}") from None
    live = [m for m in rec.on(f"{base}/events") if m["seq"] <= last]
    journal = {e["seq"]: e for e in events}
    for m in live + rec.on(f"{base}/replay"):
        assert m == journal[m["seq"]], f"seq {m['seq']} differs from the journal"
    firsts = list(dict.fromkeys(m["seq"] for m in live))
    assert firsts == sorted(firsts), "the live stream's first arrivals are out of seq order"
    return {"events": len(events), "lost_at_central": len(missing)}
