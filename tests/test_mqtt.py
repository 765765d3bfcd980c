"""The embedded MQTT broker and the client against real peers (the embedded broker,
Mosquitto at 127.0.0.1:1883, NATS's MQTT listener started here on its own ports)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid

import h3
import pytest
from hypothesis import given, settings, strategies as st

from conftest import FakeService, embedded_link, nats_server
from yujing import protocol, wire
from yujing.bus.mqtt import MqttClient, MqttLink, parse_mqtt_url
from yujing.bus.mqtt_broker import EmbeddedBroker
from yujing.bus.mqtt_codec import connect_packet, publish_packet, subscribe_packet
from yujing.records import Alert, AlertTier

MOSQUITTO = ("127.0.0.1", 1883)


def _uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _collect(got: list, n: int, timeout_s: float = 5.0) -> list:
    t = time.monotonic()
    while len(got) < n and time.monotonic() - t < timeout_s:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # anything extra that should not have come
    return got


@pytest.fixture(scope="module")
def nats_mqtt(tmp_path_factory):
    """A nats-server with JetStream and its MQTT listener, on ports of its own: (host, port)."""
    with nats_server(tmp_path_factory.mktemp("nats"), mqtt=True) as (_, mqtt_url):
        yield parse_mqtt_url(mqtt_url)


def _broker_peer(kind, nats_mqtt):
    """(host, port, context) for the peer under test."""
    if kind == "mosquitto":
        return MOSQUITTO
    return nats_mqtt


async def _with_embedded(fn):
    b = EmbeddedBroker("127.0.0.1", 0)
    await b.start()
    try:
        return await fn("127.0.0.1", b.port, b)
    finally:
        await b.stop()


@pytest.mark.parametrize("peer", ["embedded", "mosquitto", "nats"])
def test_client_publishes_subscribes_and_gets_retained(peer, nats_mqtt):
    root = _uid("yjt")

    async def body(host, port, broker=None):
        got_a, got_b = [], []
        a = MqttClient(host, port, _uid("a"), on_message=lambda t, p, r: got_a.append((t, p, r)))
        await a.connect()
        assert await a.subscribe([(f"{root}/x/+", 1)]) == [1]
        await asyncio.sleep(0.1)  # NATS sets the subscription up asynchronously
        pub = MqttClient(host, port, _uid("p"))
        await pub.connect()
        await pub.publish(f"{root}/x/1", b"q0", qos=0)
        await pub.publish(f"{root}/x/2", b"q1", qos=1)
        await pub.publish(f"{root}/y/1", b"not for a", qos=1)
        await pub.publish(f"{root}/x/r", b"kept", qos=1, retain=True)
        await _collect(got_a, 3)
        assert sorted(got_a) == [(f"{root}/x/1", b"q0", False), (f"{root}/x/2", b"q1", False), (f"{root}/x/r", b"kept", False)]
        # a client subscribing later gets the retained message, and only what it asked for
        b = MqttClient(host, port, _uid("b"), on_message=lambda t, p, r: got_b.append((t, p, r)))
        await b.connect()
        await b.subscribe([(f"{root}/zz", 1)])
        await b.subscribe([(f"{root}/x/r", 1)])
        await _collect(got_b, 1)
        assert got_b == [(f"{root}/x/r", b"kept", True)]
        # an empty retained message clears it
        await pub.publish(f"{root}/x/r", b"", qos=1, retain=True)
        got_c = []
        c = MqttClient(host, port, _uid("c"), on_message=lambda t, p, r: got_c.append((t, p, r)))
        await c.connect()
        await c.subscribe([(f"{root}/x/r", 1)])
        await _collect(got_c, 1, timeout_s=0.5)
        assert got_c == []
        for cl in (a, b, c, pub):
            await cl.disconnect()

    async def go():
        if peer == "embedded":
            await _with_embedded(body)
        else:
            await body(*_broker_peer(peer, nats_mqtt))

    asyncio.run(go())


def test_broker_survives_garbage_and_counts_it():
    async def body(host, port, broker):
        bad = [
            b"\x30\x03\x00\x01a",  # PUBLISH before CONNECT
            connect_packet("g1") + b"\xf0\x00",  # reserved packet type
            connect_packet("g2") + b"\x30\xff\xff\xff\xff\x7f",  # length longer than 4 bytes
            connect_packet("g3") + b"\x30" + bytes([0x80, 0x80, 0x40]),  # 1 MB packet: over the cap
            connect_packet("g4") + b"\x30\x04\x00\x09ab",  # topic runs past the packet
            connect_packet("g5") + publish_packet("a/#", b"x"),  # wildcard in a PUBLISH topic
        ]
        for data in bad:
            r, w = await asyncio.open_connection(host, port)
            w.write(data)
            await w.drain()
            # the broker closes the connection; it may first send a CONNACK
            rest = await asyncio.wait_for(r.read(), 5)
            assert rest in (b"", b"\x20\x02\x00\x00")
            w.close()
        errors = {k: v for k, v in broker.counts.items() if k.startswith("protocol_error")}
        assert sum(errors.values()) == len(bad), errors
        # and still serves a good client
        got = []
        c = MqttClient(host, port, "good", on_message=lambda t, p, r: got.append(p))
        await c.connect()
        await c.subscribe([("t/1", 0)])
        broker.publish("t/1", b"ok")
        await _collect(got, 1)
        assert got == [b"ok"]
        await c.disconnect()

    asyncio.run(_with_embedded(body))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.binary(min_size=1, max_size=200))
def test_fuzzed_streams_never_break_the_broker(data):
    async def body(host, port, broker):
        r, w = await asyncio.open_connection(host, port)
        w.write(connect_packet("fz") + data)
        await w.drain()
        w.close()
        c = MqttClient(host, port, "after")
        await c.connect()
        await c.disconnect()

    asyncio.run(_with_embedded(body))


def test_take_over_and_will():
    async def body(host, port, broker):
        got = []
        watcher = MqttClient(host, port, "w", on_message=lambda t, p, r: got.append((t, p)))
        await watcher.connect()
        await watcher.subscribe([("will/#", 0)])
        # a raw client with a will that drops without DISCONNECT
        r, w = await asyncio.open_connection(host, port)
        body_ = b"\x00\x04MQTT\x04" + bytes([0x02 | 0x04]) + b"\x00\x3c" + b"\x00\x02d1" + b"\x00\x06will/x" + b"\x00\x04gone"
        w.write(bytes([0x10, len(body_)]) + body_)
        await w.drain()
        assert await r.readexactly(4) == b"\x20\x02\x00\x00"
        w.transport.abort()
        await _collect(got, 1)
        assert got == [("will/x", b"gone")]
        # a second connection with the same id takes over the first
        a = MqttClient(host, port, "same")
        await a.connect()
        b = MqttClient(host, port, "same")
        await b.connect()
        await asyncio.wait_for(a.closed, 5)
        assert broker.clients["same"].tr is b._proto.tr.get_extra_info("socket") or b.connected
        assert len([c for c in broker.conns if c.cid == "same"]) == 1 and b.connected and not a.connected
        for c in (watcher, b):
            await c.disconnect()

    asyncio.run(_with_embedded(body))


def test_slow_consumer_is_cut_off_and_others_still_served():
    async def go():
        broker = EmbeddedBroker("127.0.0.1", 0, max_unsent=64 * 1024)
        await broker.start()
        # a subscriber that never reads: its socket buffers fill, then the broker's
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting, or the kernel ignores it
        sock.connect(("127.0.0.1", broker.port))
        sock.sendall(connect_packet("slow") + subscribe_packet(1, [("big", 0)]))
        got = []
        fast = MqttClient("127.0.0.1", broker.port, "fast", on_message=lambda t, p, r: got.append(len(p)))
        await fast.connect()
        await fast.subscribe([("big", 0)])
        await asyncio.sleep(0.1)
        n = 2000  # 16 MB: more than the kernel's socket buffers hold
        for _ in range(n):
            broker.publish("big", b"x" * 8000)
            await asyncio.sleep(0)
        await _collect(got, n, timeout_s=20)
        assert len(got) == n
        assert broker.counts["slow_consumer_cut"] == 1
        sock.close()
        await fast.disconnect()
        await broker.stop()

    asyncio.run(go())


def _alert(msg_type="alert", version=1, cells=None, alert_id="yja-1"):
    cells = cells if cells is not None else tuple(h3.grid_disk(h3.latlng_to_cell(29.6, 102.1, 5), 8))
    tiers = (AlertTier("be_aware", 3.0, tuple(sorted(cells))),) if msg_type != "cancel" else ()
    return Alert(alert_id=alert_id, event_id="yj-e1", version=version, msg_type=msg_type, issued_at_s=time.time(),
                 origin_time_s=time.time() - 5, latitude=29.6, longitude=102.1, depth_km=10.0, magnitude=6.6,
                 magnitude_sigma=0.3, tiers=tiers, h3_resolution=5, gmpe="bssa14")


_embedded_link = embedded_link


@pytest.mark.parametrize("peer", ["embedded", "mosquitto"])
def test_link_publishes_alerts_per_area_retained_cancels_and_clears(peer):
    async def go():
        broker = None
        if peer == "embedded":
            broker = EmbeddedBroker("127.0.0.1", 0)
            await broker.start()
            host, port = "127.0.0.1", broker.port
        else:
            host, port = MOSQUITTO
        svc = FakeService()
        link = MqttLink(f"tcp://{host}:{port}", svc, retain_s=1.5, broker=broker, client_id=_uid("svc"))
        await link.start()
        a1 = _alert()
        topics = [protocol.alert_topic(c) for c in protocol.alert_cells(a1.tiers[0].cells, 5)]
        assert 3 <= len(topics) <= 30
        here = protocol.alert_topic_for_position(29.6, 102.1)
        assert here in topics
        svc.bus.publish(f"yj.alert.{a1.event_id}", a1)
        await asyncio.sleep(0.5)
        # a phone coming online now gets the retained alert for its area at once
        got = []
        phone = MqttClient(host, port, _uid("phone"), on_message=lambda t, p, r: got.append((t, p, r)))
        await phone.connect()
        await phone.subscribe([(here, 1)])
        await _collect(got, 1)
        assert len(got) == 1 and got[0][2] is True
        assert wire.decode_alert(got[0][1]).alert_id == a1.alert_id
        # a cancel reaches every area the alert went to
        svc.bus.publish(f"yj.alert.{a1.event_id}", _alert("cancel", 2))
        await _collect(got, 2)
        assert wire.decode_alert(got[1][1]).msg_type == "cancel"
        # device messages on the device topics reach the service
        dev = MqttClient(host, port, _uid("dev"))
        await dev.connect()
        cell = h3.latlng_to_cell(29.6, 102.1, 7)
        hb = protocol.encode(protocol.HeartbeatMsg(device="p1", cell=cell, sent_s=time.time()))
        await dev.publish(protocol.topic_for("hb", cell), hb, qos=1)
        t = time.monotonic()
        while not svc.received and time.monotonic() - t < 5:
            await asyncio.sleep(0.01)
        assert svc.received == [(protocol.topic_for("hb", cell), hb)]
        # after retain_s the retained alerts are cleared: a new phone gets nothing
        await asyncio.sleep(2.8)
        late = []
        phone2 = MqttClient(host, port, _uid("late"), on_message=lambda t, p, r: late.append(p))
        await phone2.connect()
        await phone2.subscribe([(here, 1)])
        await _collect(late, 1, timeout_s=0.5)
        assert late == []
        assert link.counts["alert_cleared"] == len(topics)
        for c in (phone, phone2, dev):
            await c.disconnect()
        await link.stop()
        await svc.bus.close()
        if broker is not None:
            await broker.stop()

    asyncio.run(go())


def test_no_client_may_publish_an_alert_through_the_embedded_broker():
    async def go():
        async with _embedded_link() as (broker, svc, link):
            here = protocol.alert_topic_for_position(29.6, 102.1)
            got = []
            phone = MqttClient("127.0.0.1", broker.port, "phone", on_message=lambda t, p, r: got.append(p))
            await phone.connect()
            await phone.subscribe([(here, 1)])
            fake = MqttClient("127.0.0.1", broker.port, "attacker")
            await fake.connect()
            await fake.publish(here, wire.encode_alert(_alert()), qos=1, retain=True)
            await _collect(got, 1, timeout_s=0.5)
            assert got == [] and here not in broker.retained
            assert broker.counts["forbidden_publish"] == 1 and fake.connected
            # the service's own alert goes through
            svc.bus.publish("yj.alert.e", _alert())
            await _collect(got, 1)
            assert len(got) == 1
            for c in (phone, fake):
                await c.disconnect()

    asyncio.run(go())


def test_devices_cannot_leave_an_alert_in_a_will_nor_read_each_other():
    async def go():
        async with _embedded_link() as (broker, svc, link):
            here = protocol.alert_topic_for_position(29.6, 102.1)
            # a will on an alert topic: the CONNECT is refused (code 5), nothing is retained
            r, w = await asyncio.open_connection("127.0.0.1", broker.port)
            wt = here.encode()
            body = b"\x00\x04MQTT\x04" + bytes([0x02 | 0x04 | 0x20]) + b"\x00\x3c" + b"\x00\x02ev" + len(wt).to_bytes(2, "big") + wt + b"\x00\x04fake"
            w.write(bytes([0x10, len(body)]) + body)
            await w.drain()
            assert await r.readexactly(4) == b"\x20\x02\x00\x05"
            w.close()
            assert here not in broker.retained and broker.counts["forbidden_will"] == 1
            # a snoop subscribing to device topics is refused; alert topics are granted
            snoop = MqttClient("127.0.0.1", broker.port, "snoop")
            await snoop.connect()
            assert await snoop.subscribe([("yj/v1/#", 0), ("yj/v1/hb/+", 0), (here, 1)]) == [0x80, 0x80, 1]
            # device messages are never retained
            dev = MqttClient("127.0.0.1", broker.port, "dev")
            await dev.connect()
            cell = h3.latlng_to_cell(29.6, 102.1, 7)
            hb = protocol.encode(protocol.HeartbeatMsg(device="p1", cell=cell, sent_s=time.time()))
            await dev.publish(protocol.topic_for("hb", cell), hb, qos=1, retain=True)
            await asyncio.sleep(0.1)
            assert broker.retained == {} and svc.received == []
            await dev.publish(protocol.topic_for("hb", cell), hb, qos=1)
            await _wait_for(lambda: svc.received)
            assert snoop.received == 0
            for c in (snoop, dev):
                await c.disconnect()

    asyncio.run(go())


async def _wait_for(pred, timeout_s=5.0):
    t = time.monotonic()
    while not pred() and time.monotonic() - t < timeout_s:
        await asyncio.sleep(0.01)
    assert pred()


def test_a_cancel_does_not_replace_a_newer_alert_in_an_area():
    async def go():
        async with _embedded_link() as (broker, svc, link):
            here = protocol.alert_topic_for_position(29.6, 102.1)
            svc.bus.publish("yj.alert.a", _alert(alert_id="A"))
            svc.bus.publish("yj.alert.b", _alert(alert_id="B"))
            svc.bus.publish("yj.alert.a", _alert("cancel", 2, alert_id="A"))  # A was a false event
            await asyncio.sleep(0.3)
            got = []
            late = MqttClient("127.0.0.1", broker.port, "late", on_message=lambda t, p, r: got.append(wire.decode_alert(p)))
            await late.connect()
            await late.subscribe([(here, 1)])
            await _collect(got, 1)
            assert [(a.alert_id, a.msg_type) for a in got] == [("B", "alert")]
            await late.disconnect()

    asyncio.run(go())


def test_a_half_open_broker_connection_is_dropped_not_waited_on():
    async def go():
        # a "broker" that accepts the connection and the CONNECT, then never answers
        async def silent(reader, writer):
            await reader.read(100)
            writer.write(b"\x20\x02\x00\x00")
            await writer.drain()
            await asyncio.sleep(30)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        c = MqttClient("127.0.0.1", port, "c", keepalive_s=2)
        await c.connect()
        with pytest.raises(asyncio.TimeoutError):
            await c.publish("t", b"x", qos=1, timeout_s=0.5)
        await asyncio.wait_for(c.closed, 2)  # aborted: a link would reconnect now
        c2 = MqttClient("127.0.0.1", port, "c2", keepalive_s=2)
        await c2.connect()
        await asyncio.wait_for(c2.closed, 6)  # no PINGRESP within 1.5 keepalives
        server.close()

    asyncio.run(go())


def test_a_packet_sent_a_byte_at_a_time_is_framed():
    from yujing.bus.mqtt_codec import Framer

    big = publish_packet("t/x", b"y" * 200_000)
    f = Framer()
    got = []
    t = time.perf_counter()
    for k in range(len(big)):
        got += list(f.feed(big[k : k + 1]))
    dt = time.perf_counter() - t
    assert len(got) == 1 and bytes(got[0][1])[-5:] == b"yyyyy"
    # two packets and a half in one read: both come out, the half waits
    two = publish_packet("a", b"1") + publish_packet("b", b"2")
    out = list(f.feed(two + big[:10]))
    assert [bytes(b)[-1:] for _, b in out] == [b"1", b"2"]
    assert list(f.feed(big[10:]))[0][1].nbytes == len(big) - 4
    print(f"200 kB a byte at a time: {dt:.2f} s")


# ------------------------------------------------------- a device's outbox and reconnect


def _outbox_client(port: int, got: list | None = None, **kw) -> MqttClient:
    """A device-like client: an outbox, quick seeded reconnects (the test waits on them)."""
    kw = {"outbox": 1000, "reconnect_min_s": 0.05, "reconnect_max_s": 0.2, "seed": 7, **kw}
    on = (lambda t, p, r: got.append((t, p))) if got is not None else None
    return MqttClient("127.0.0.1", port, _uid("dev"), on_message=on, **kw)


async def _broker_with_hook(port: int, seen: list) -> EmbeddedBroker:
    """An embedded broker on ``port`` whose hook notes every client PUBLISH (topic, payload)."""
    b = EmbeddedBroker("127.0.0.1", port, on_message=lambda cid, t, p, q, r: seen.append((t, p)))
    await b.start()
    return b


class _Server:
    """An embedded broker that can die and come back on the same port (a ``yujing serve``
    killed and restarted), with a device-like client connected to it. ``seen``: what the
    brokers got, both lives."""

    def __init__(self):
        self.seen: list = []
        self.broker: EmbeddedBroker | None = None
        self.client: MqttClient | None = None

    async def kill(self) -> None:
        await self.broker.stop()
        await asyncio.wait_for(self.client.closed, 5)  # the client noticed
        assert not self.client.connected

    async def revive(self) -> None:
        self.broker = await _broker_with_hook(self.broker.port, self.seen)


@contextlib.asynccontextmanager
async def _server(got: list | None = None, **kw):
    s = _Server()
    s.broker = await _broker_with_hook(0, s.seen)
    s.client = _outbox_client(s.broker.port, got, **kw)
    await s.client.connect()
    try:
        yield s
    finally:
        await s.client.disconnect()
        await s.broker.stop()


def test_outbox_holds_messages_while_the_broker_is_down_and_sends_them_in_order_after():
    async def go():
        async with _server() as s:
            c = s.client
            for i in range(3):
                c.publish_nowait("yjt/d", b"live-%d" % i, qos=1)
            await _wait_for(lambda: len(s.seen) == 3)
            await s.kill()
            n = 200
            for i in range(n):  # QoS 0 and 1, both calls: nothing raises, all is held
                if i % 3 == 0:
                    await c.publish("yjt/d", b"held-%d" % i, qos=1)
                else:
                    c.publish_nowait("yjt/d", b"held-%d" % i, qos=i % 2)
            assert (c.outbox_size, c.outbox_queued, c.outbox_dropped) == (n, n, 0)
            await asyncio.sleep(0.3)  # a few reconnect attempts fail meanwhile
            assert c.reconnect_failures >= 1 and c.reconnects == 0
            await s.revive()
            await _wait_for(lambda: c.reconnects == 1)
            c.publish_nowait("yjt/d", b"new", qos=1)  # after the held ones
            assert await c.drain(5)
            await _wait_for(lambda: len(s.seen) == 3 + n + 1)
            assert [p for _, p in s.seen] == [b"live-%d" % i for i in range(3)] + [b"held-%d" % i for i in range(n)] + [b"new"]
            assert (c.outbox_flushed, c.outbox_dropped, c.outbox_size, c.inflight, c.reconnects) == (n, 0, 0, 0, 1)
            assert len(c.outbox_wait_s) == n and min(c.outbox_wait_s) >= 0.3

    asyncio.run(go())


def test_a_full_outbox_drops_its_oldest_and_counts_them():
    async def go():
        async with _server(outbox=10) as s:
            c = s.client
            await s.kill()
            for i in range(25):
                c.publish_nowait("yjt/d", b"%d" % i, qos=1)
            assert (c.outbox_size, c.outbox_queued, c.outbox_dropped) == (10, 25, 15)
            await s.revive()
            assert await c.drain(5)
            await _wait_for(lambda: len(s.seen) == 10)
            assert [p for _, p in s.seen] == [b"%d" % i for i in range(15, 25)]  # the newest ten, in order
            assert c.outbox_flushed == 10 and c.outbox_dropped == 15

    asyncio.run(go())


class _Deaf:
    """A server that reads QoS 1 messages and never acknowledges them (CONNACK, then it
    reads everything); :meth:`die` kills it before it handled its socket."""

    async def start(self) -> "_Deaf":
        self.raw: list[bytes] = []
        self.writers = []

        async def deaf(reader, writer):
            self.writers.append(writer)
            await reader.read(100)
            writer.write(b"\x20\x02\x00\x00")
            await writer.drain()
            while chunk := await reader.read(65536):
                self.raw.append(chunk)

        self.server = await asyncio.start_server(deaf, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def die(self) -> None:
        self.server.close()  # the process dies: its listener and its connection
        for w in self.writers:
            w.transport.abort()


def test_unacknowledged_messages_are_sent_again_after_a_reconnect():
    """A server that reads QoS 1 messages and dies before acknowledging them (killed
    before it handled its socket): they go back to the outbox and reach the next server."""
    async def go():
        d = await _Deaf().start()
        port = d.port
        c = _outbox_client(port)
        await c.connect()
        for i in range(5):
            c.publish_nowait("yjt/d", b"m%d" % i, qos=1)
        await _wait_for(lambda: b"m4" in b"".join(d.raw))
        assert c.inflight == 5
        d.die()
        await asyncio.wait_for(c.closed, 5)
        assert (c.inflight, c.outbox_size, c.outbox_requeued) == (0, 5, 5)
        seen: list = []
        b = await _broker_with_hook(port, seen)
        assert await c.drain(5)
        await _wait_for(lambda: len(seen) == 5)
        assert [p for _, p in seen] == [b"m%d" % i for i in range(5)]
        assert c.acked == 5 and c.outbox_flushed == 5
        await c.disconnect()
        await b.stop()

    asyncio.run(go())


def test_subscriptions_are_made_again_after_a_reconnect():
    async def go():
        got: list = []
        async with _server(got) as s:
            c = s.client
            assert await c.subscribe([("yjt/alert/+", 1)]) == [1]
            s.broker.publish("yjt/alert/a", b"before", qos=1)
            await _wait_for(lambda: len(got) == 1)
            await s.kill()
            await s.revive()  # a new broker knows no subscription
            await _wait_for(lambda: c.reconnects == 1)
            s.broker.publish("yjt/alert/b", b"after", qos=1)
            await _wait_for(lambda: len(got) == 2)
            assert got == [("yjt/alert/a", b"before"), ("yjt/alert/b", b"after")]

    asyncio.run(go())


def test_reconnect_backoff_is_capped_exponential_with_seeded_jitter():
    def delays(seed):
        c = MqttClient("127.0.0.1", 1, "x", outbox=10, reconnect_min_s=0.5, reconnect_max_s=8.0, seed=seed)
        return [c.reconnect_delay_s(n) for n in range(8)]

    d = delays(3)
    for n, x in enumerate(d):
        cap = min(8.0, 0.5 * 2**n)  # 0.5, 1, 2, 4, 8, 8, ...
        assert cap / 2 <= x <= cap
    assert d == delays(3) and d != delays(4)  # the same seed, the same delays
    # without an outbox: the old behaviour, no reconnect, a publish while down raises
    assert not MqttClient("127.0.0.1", 1, "y").auto_reconnect
    with pytest.raises(ConnectionError):
        MqttClient("127.0.0.1", 1, "y").publish_nowait("t", b"x")


def test_outbox_client_rides_out_a_dropped_connection_on_mosquitto():
    """Mosquitto cannot be restarted by a test; its session take-over drops a connection
    all the same: another client connects under the device's client id. The device holds
    what it publishes meanwhile, takes its id back, subscribes again and sends in order."""
    async def go():
        root = _uid("yjt")
        got, heard = [], []
        lis = MqttClient(*MOSQUITTO, _uid("lis"), on_message=lambda t, p, r: heard.append(p))
        await lis.connect()
        await lis.subscribe([(f"{root}/d", 1)])
        c = MqttClient(*MOSQUITTO, _uid("dev"), on_message=lambda t, p, r: got.append(p), outbox=100,
                       reconnect_min_s=0.3, reconnect_max_s=0.6, seed=5)
        await c.connect()
        await c.subscribe([(f"{root}/to-dev", 1)])
        await asyncio.sleep(0.1)
        for i in range(3):
            await c.publish(f"{root}/d", b"a%d" % i, qos=1)
        intruder = MqttClient(*MOSQUITTO, c.client_id)
        await intruder.connect()  # Mosquitto drops the device's connection
        await asyncio.wait_for(c.closed, 5)
        for i in range(20):  # within the first backoff (>= 0.15 s): all held
            c.publish_nowait(f"{root}/d", b"b%d" % i, qos=1)
        assert c.outbox_queued == 20 and c.outbox_size == 20
        await _wait_for(lambda: c.reconnects == 1)  # takes its id back: the intruder is dropped
        assert await c.drain(5)
        await _collect(heard, 23)
        assert heard == [b"a%d" % i for i in range(3)] + [b"b%d" % i for i in range(20)]
        await lis.publish(f"{root}/to-dev", b"hello again", qos=1)
        await _collect(got, 1)
        assert got == [b"hello again"] and c.outbox_flushed == 20 and c.outbox_dropped == 0
        for cl in (c, lis):
            await cl.disconnect()
        await asyncio.wait_for(intruder.closed, 5)

    asyncio.run(go())


def test_a_held_message_is_made_when_it_is_sent_not_when_it_is_queued():
    """A payload function runs at the first sending (a device stamps ``sent_s`` and signs
    there): not while the message waits in the outbox, once only."""
    async def go():
        async with _server() as s:
            c = s.client
            await s.kill()
            made = []

            def stamp(i):
                def make():
                    made.append(i)
                    return b"sent-at-%d" % len(made)
                return make

            for i in range(3):
                c.publish_nowait("yjt/d", stamp(i), qos=1)
            c.publish_nowait("yjt/d", lambda: 1 / 0, qos=1)  # a broken one: dropped, counted, the rest go on
            c.publish_nowait("yjt/d", b"plain", qos=1)
            await asyncio.sleep(0.1)
            assert made == []  # held: nothing made yet
            await s.revive()
            assert await c.drain(5)
            await _wait_for(lambda: len(s.seen) == 4)
            assert made == [0, 1, 2] and [p for _, p in s.seen] == [b"sent-at-1", b"sent-at-2", b"sent-at-3", b"plain"]
            assert c.stamp_errors == 1

    asyncio.run(go())


# ------------------------------------------- when the embedded broker acknowledges (PUBACK)


def test_the_broker_acknowledges_when_its_hook_says_and_in_order():
    """The hook's return value says when a QoS 1 PUBLISH is acknowledged: None at once, a
    future when it is done (cancelled: never), False never; acknowledgements go out in the
    order the PUBLISHes came, a due one waiting behind an earlier one that waits."""
    async def go():
        loop = asyncio.get_running_loop()
        f1, f2, f3, f4 = (loop.create_future() for _ in range(4))
        hold = {b"a": f1, b"b": None, b"c": False, b"d": f2, b"f": f3, b"g": None, b"h": f4}
        seen: list = []

        def hook(cid, topic, payload, qos, retain):
            seen.append((payload, qos))
            return hold.get(payload)

        broker = EmbeddedBroker("127.0.0.1", 0, on_message=hook)
        await broker.start()
        acks: list = []
        c = MqttClient("127.0.0.1", broker.port, _uid("dev"), on_ack=lambda t, p: acks.append(p))
        await c.connect()
        for p in (b"a", b"b", b"c", b"d"):
            c.publish_nowait("yjt/d", p, qos=1)
        c.publish_nowait("yjt/d", b"e", qos=0)
        for p in (b"f", b"g"):
            c.publish_nowait("yjt/d", p, qos=1)
        await _wait_for(lambda: len(seen) == 7)
        await asyncio.sleep(0.1)
        assert acks == [] and c.inflight == 6  # b is due, but behind a
        f1.set_result(True)
        await _wait_for(lambda: acks == [b"a", b"b"])
        f2.set_result(False)  # done, whatever its result: acknowledged
        await _wait_for(lambda: acks == [b"a", b"b", b"d"])
        f3.cancel()  # never acknowledged, and g is no longer held behind it
        await _wait_for(lambda: acks == [b"a", b"b", b"d", b"g"])
        await asyncio.sleep(0.1)
        assert acks == [b"a", b"b", b"d", b"g"] and c.inflight == 2  # c and f: never acknowledged
        assert (broker.counts["ack_deferred"], broker.counts["ack_withheld"]) == (3, 2)
        assert seen[4] == (b"e", 0)
        # a connection lost first takes its waiting acknowledgements with it
        c.publish_nowait("yjt/d", b"h", qos=1)
        await _wait_for(lambda: len(seen) == 8)
        await c.disconnect()
        await _wait_for(lambda: broker.connected == 0)
        assert broker.counts["ack_lost"] == 1
        f4.set_result(True)  # nothing to send it on: no error
        await asyncio.sleep(0.05)
        assert acks == [b"a", b"b", b"d", b"g"]
        await broker.stop()

    asyncio.run(go())


def test_a_broker_started_without_serving_refuses_devices_until_it_serves():
    async def go():
        broker = EmbeddedBroker("127.0.0.1", 0)
        await broker.start(serving=False)
        assert broker.port and not broker.serving
        c = MqttClient("127.0.0.1", broker.port, _uid("dev"))
        with pytest.raises(ConnectionError):
            await c.connect(timeout_s=2)
        await broker.serve()
        assert broker.serving
        await broker.serve()  # again: nothing
        await c.connect()
        await c.disconnect()
        await broker.stop()

    asyncio.run(go())


def test_a_message_sent_again_after_a_reconnect_is_made_again_when_asked():
    """A QoS 1 message in flight when the server died (taken, not acknowledged) is sent
    again: its bytes repeated by default, made again by its payload function with
    ``remake_on_resend`` (a device stamps sent_s at its real sending)."""
    async def go():
        out = {}
        for remake in (False, True):
            d = await _Deaf().start()
            port = d.port
            c = _outbox_client(port, remake_on_resend=remake)
            await c.connect()
            calls = []

            def make(i):
                def f():
                    calls.append(i)
                    return b"m%d-made-%d" % (i, calls.count(i))
                return f

            for i in range(2):
                c.publish_nowait("yjt/d", make(i), qos=1)
            await _wait_for(lambda: b"m1-made-1" in b"".join(d.raw))
            d.die()
            await asyncio.wait_for(c.closed, 5)
            seen: list = []
            b = await _broker_with_hook(port, seen)
            assert await c.drain(5)
            await _wait_for(lambda: len(seen) == 2)
            out[remake] = ([p for _, p in seen], list(calls))
            await c.disconnect()
            await b.stop()
        assert out[False] == ([b"m0-made-1", b"m1-made-1"], [0, 1])
        assert out[True] == ([b"m0-made-2", b"m1-made-2"], [0, 1, 0, 1])

    asyncio.run(go())
