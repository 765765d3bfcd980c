"""The embedded MQTT 3.1.1 broker of ``yujing serve``: devices connect to the service itself.

Why our own: the one asyncio broker on PyPI (amqtt 0.12.1) was measured here with 10,000
connected devices (docs/brokers.md): 2-3 minutes to connect them, ~550 MB, event-loop
stalls of 3-12 s while they connect and garbage-collection pauses of 2-3 s, and 7 of 24
fan-outs over 2 s; this broker connects them in ~2 s in ~45 MB and delivers an alert to
all 10,000 in ~0.2 s. It shares the loop with the engine, so it must never hold the loop
for long: a fan-out encodes each PUBLISH once and yields every ``FANOUT_CHUNK``
subscribers.

What it does: CONNECT (3.1 and 3.1.1; every session clean), SUBSCRIBE/UNSUBSCRIBE with
``+`` and ``#``, PUBLISH QoS 0 and 1 (QoS 2 is granted as 1), retained messages (an empty
retained payload clears), will messages, PINGREQ, DISCONNECT, keepalive (1.5x), take-over
by client id, a per-connection cap on unsent bytes (a slow consumer is cut off, counted),
a packet size cap. Not here: persistent sessions, QoS 2 flows, MQTT 5, TLS and websockets
(put a TLS-terminating proxy in front, or use an external broker with ``--mqtt``).

In-process hooks: :meth:`EmbeddedBroker.publish` sends as the service;
``on_message(client_id, topic, payload, qos, retain)`` sees every client PUBLISH, and its
return value says when a QoS 1 message is acknowledged (PUBACK; PUBREC for QoS 2):

- ``None`` (anything but the two below): at once;
- a future (``add_done_callback``: an :class:`asyncio.Future`): when it is done — the
  service's journal has written the message (docs/reliability.md); cancelled: never;
- ``False``: never (the message was not taken: the client sends it again on its next
  connection, MQTT-4.4.0-1).

Acknowledgements go out on a connection in the order its PUBLISHes came (MQTT-4.6.0-2): one
that is due waits behind an earlier one still waiting. A connection lost first takes its
waiting acknowledgements with it (the client re-sends those messages).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import Callable

from .mqtt_codec import (
    CONNECT,
    DISCONNECT,
    PINGREQ,
    PINGRESP_PKT,
    PUBACK,
    PUBLISH,
    PUBREL,
    SUBSCRIBE,
    UNSUBSCRIBE,
    Framer,
    MqttError,
    filter_matches,
    publish_header,
    read_str,
    remaining_length,
    valid_filter,
)

log = logging.getLogger(__name__)

FANOUT_CHUNK = 500  # subscribers written per loop slice
MAX_UNSENT = 1 << 20  # bytes a connection may have unsent before it is cut off
CONNECT_TIMEOUT_S = 10.0
SWEEP_S = 2.0


class _Conn(asyncio.Protocol):
    def __init__(self, broker: "EmbeddedBroker"):
        self.b = broker
        self.tr: asyncio.Transport | None = None
        self.framer = Framer(broker.max_packet)
        self.cid: str | None = None
        self.keepalive_s = 0
        self.subs: dict[str, int] = {}
        self.will: tuple[str, bytes, int, bool] | None = None
        self.pid = 0
        self.t0 = self.last = time.monotonic()
        # acknowledgements not sent yet, in the order of their PUBLISHes: (packet, future
        # it waits for, or None: due)
        self.acks: deque[tuple[bytes, object]] = deque()

    # transport ------------------------------------------------------------------------
    def connection_made(self, tr):
        self.tr = tr
        self.b.conns.add(self)

    def connection_lost(self, exc):
        b = self.b
        b.conns.discard(self)
        if self.acks:
            b.counts["ack_lost"] += len(self.acks)  # never sent: the client sends those messages again
            self.acks.clear()
        if self.cid is not None and b.clients.get(self.cid) is self:
            del b.clients[self.cid]
        for f in self.subs:
            b._unsub(f, self)
        self.subs.clear()
        if self.will is not None:
            b.publish(*self.will)
            self.will = None

    def send(self, data: bytes) -> None:
        tr = self.tr
        if tr is None or tr.is_closing():
            return
        if tr.get_write_buffer_size() > self.b.max_unsent:
            self.b.counts["slow_consumer_cut"] += 1
            log.warning("cutting off slow consumer %s", self.cid)
            tr.abort()
            return
        tr.write(data)

    def data_received(self, data):
        self.last = time.monotonic()
        try:
            for b0, body in self.framer.feed(data):
                self._packet(b0, body)
                if self.tr.is_closing():
                    return
        except (MqttError, IndexError, UnicodeDecodeError) as exc:
            reason = exc.reason if isinstance(exc, MqttError) else "malformed"
            self.b.counts[f"protocol_error:{reason}"] += 1
            log.info("MQTT protocol error from %s: %s", self.cid or self.tr.get_extra_info("peername"), exc)
            self.tr.abort()

    # packets --------------------------------------------------------------------------
    def _packet(self, b0: int, p: memoryview) -> None:
        t = b0 >> 4
        if self.cid is None and t != CONNECT:
            raise MqttError("not_connected", "first packet is not CONNECT")
        if t == PUBLISH:
            self._publish(b0, p)
        elif t == PUBACK:
            pass  # clean sessions: nothing kept in flight
        elif t == SUBSCRIBE:
            self._subscribe(p)
        elif t == UNSUBSCRIBE:
            self._unsubscribe(p)
        elif t == PINGREQ:
            self.tr.write(PINGRESP_PKT)
        elif t == DISCONNECT:
            self.will = None
            self.tr.close()
        elif t == CONNECT:
            self._connect(p)
        elif t == PUBREL:
            self.tr.write(b"\x70\x02" + bytes(p[:2]))  # PUBCOMP: a QoS 2 sender is let finish
        else:
            raise MqttError("unexpected_packet", f"packet type {t} not expected from a client")

    def _connect(self, p: memoryview) -> None:
        if self.cid is not None:
            raise MqttError("second_connect", "second CONNECT on one connection")
        name, k = read_str(p, 0)
        level, flags = p[k], p[k + 1]
        keepalive = (p[k + 2] << 8) | p[k + 3]
        k += 4
        if name not in (b"MQTT", b"MQIsdp") or level not in (3, 4):
            self.tr.write(b"\x20\x02\x00\x01")  # unacceptable protocol version
            self.tr.close()
            return
        raw, k = read_str(p, k)
        cid = raw.decode()
        if not cid:
            if not flags & 0x02:
                self.tr.write(b"\x20\x02\x00\x02")  # identifier rejected
                self.tr.close()
                return
            cid = f"auto-{id(self):x}"
        will = None
        if flags & 0x04:
            wt, k = read_str(p, k)
            wm, k = read_str(p, k)
            will = (wt.decode(), wm, min((flags >> 3) & 3, 1), bool(flags & 0x20))
            if not will[0] or "+" in will[0] or "#" in will[0]:
                raise MqttError("bad_will", f"will topic {will[0]!r}")
            if not self.b.may_publish("", will[0], will[3]):
                # a will is a publish the broker makes later on the client's behalf: the
                # same rule applies, or a client could leave a fake alert behind it
                self.b.counts["forbidden_will"] += 1
                self.tr.write(b"\x20\x02\x00\x05")  # not authorised
                self.tr.close()
                return
        user = pw = None
        if flags & 0x80:
            user, k = read_str(p, k)
        if flags & 0x40:
            pw, k = read_str(p, k)
        if not self.b.authenticate(cid, user, pw):
            self.b.counts["auth_refused"] += 1
            self.tr.write(b"\x20\x02\x00\x05")
            self.tr.close()
            return
        old = self.b.clients.get(cid)
        if old is not None:  # take-over (MQTT-3.1.4-2)
            old.will = None
            old.connection_lost(None)
            old.tr.close()
        self.cid, self.keepalive_s, self.will = cid, keepalive, will
        self.b.clients[cid] = self
        self.b.counts["connects"] += 1
        self.tr.write(b"\x20\x02\x00\x00")

    def _publish(self, b0: int, p: memoryview) -> None:
        qos = (b0 >> 1) & 3
        retain = bool(b0 & 1)
        raw, k = read_str(p, 0)
        topic = raw.decode()
        if not topic or "+" in topic or "#" in topic or qos == 3:
            raise MqttError("bad_publish", f"PUBLISH to {topic!r} at QoS {qos}")
        ack = None
        if qos:
            ack = (b"\x40\x02" if qos == 1 else b"\x50\x02") + bytes(p[k : k + 2])  # PUBACK / PUBREC
            k += 2
            qos = 1
        payload = bytes(p[k:])
        if not self.b.may_publish(self.cid, topic, retain):
            # a device must not speak for the service (a fake alert to a whole area);
            # the message is dropped, counted, acknowledged (sending it again changes
            # nothing), and the connection kept
            self.b.counts["forbidden_publish"] += 1
            if ack is not None:
                self._acknowledge(ack, None)
            return
        self.b.counts["publish_in"] += 1
        hold = None
        if self.b.on_message is not None:
            try:
                hold = self.b.on_message(self.cid, topic, payload, qos, retain)
            except Exception:
                self.b.counts["on_message_error"] += 1
                log.exception("on_message hook failed")
        self.b.publish(topic, payload, qos, retain)
        if ack is not None:
            self._acknowledge(ack, hold)

    def _acknowledge(self, pkt: bytes, hold) -> None:
        """Send ``pkt`` (a PUBACK or PUBREC) when ``hold`` says (module docstring), after
        every acknowledgement of this connection still waiting."""
        if hold is False:
            self.b.counts["ack_withheld"] += 1
            return
        if not hasattr(hold, "add_done_callback"):
            hold = None
        q = self.acks
        if hold is None and not q:
            self.tr.write(pkt)
            self.b.counts["ack_sent"] += 1
            return
        if hold is not None:
            self.b.counts["ack_deferred"] += 1
            # one callback per run of messages waiting for the same future (a journal
            # batch holds hundreds): it sends every acknowledgement that is due by then
            if not hold.done() and (not q or q[-1][1] is not hold):
                hold.add_done_callback(self._acks_due)
        q.append((pkt, hold))
        self._send_acks()

    def _acks_due(self, _fut=None) -> None:
        self._send_acks()

    def _send_acks(self) -> None:
        q = self.acks
        out = []
        while q:
            pkt, hold = q[0]
            if hold is not None:
                if not hold.done():
                    break
                if hold.cancelled():
                    q.popleft()
                    self.b.counts["ack_withheld"] += 1
                    continue
            out.append(pkt)
            q.popleft()
        if not out:
            return
        tr = self.tr
        if tr is not None and not tr.is_closing():
            tr.write(b"".join(out))
            self.b.counts["ack_sent"] += len(out)
        else:
            self.b.counts["ack_lost"] += len(out)  # the connection is closing: the client sends them again

    def _subscribe(self, p: memoryview) -> None:
        pid = bytes(p[:2])
        k = 2
        codes = bytearray()
        granted = []
        while k < len(p):
            raw, k = read_str(p, k)
            q = p[k]
            k += 1
            f = raw.decode()
            if valid_filter(f) and q <= 2 and self.b.may_subscribe(self.cid, f):
                q = min(q, 1)
                self.subs[f] = q
                self.b._sub(f, self, q)
                codes.append(q)
                granted.append((f, q))
            else:
                if valid_filter(f) and q <= 2:
                    self.b.counts["forbidden_subscribe"] += 1
                codes.append(0x80)
        if not codes:
            raise MqttError("bad_subscribe", "SUBSCRIBE without a filter")
        self.tr.write(bytes([0x90]) + remaining_length(2 + len(codes)) + pid + codes)
        # retained messages matching the new filters (MQTT-3.3.1-6), and only those
        for f, q in granted:
            flv = f.split("/")
            for topic, (payload, rq) in self.b.retained.items():
                if filter_matches(flv, topic.split("/")):
                    self.deliver(topic.encode(), payload, min(q, rq), True)

    def _unsubscribe(self, p: memoryview) -> None:
        pid = bytes(p[:2])
        k = 2
        while k < len(p):
            raw, k = read_str(p, k)
            f = raw.decode()
            if self.subs.pop(f, None) is not None:
                self.b._unsub(f, self)
        self.tr.write(b"\xb0\x02" + pid)

    def deliver(self, topic: bytes, payload: bytes, qos: int, retain: bool) -> None:
        if qos:
            self.pid = self.pid % 65535 + 1
        self.send(publish_header(topic, len(payload), qos, retain, self.pid if qos else 0) + payload)


class EmbeddedBroker:
    """See the module docstring. ``port`` 0 picks a free port (read :attr:`port` after
    :meth:`start`). ``authenticate(client_id, username, password) -> bool``;
    ``may_publish(client_id, topic, retain) -> bool`` decides which client PUBLISHes (and
    wills) are taken, ``may_subscribe(client_id, topic_filter) -> bool`` which filters are
    granted (the in-process :meth:`publish` is always allowed)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        authenticate: Callable[[str, bytes | None, bytes | None], bool] | None = None,
        on_message: Callable[[str, str, bytes, int, bool], None] | None = None,
        may_publish: Callable[[str, str, bool], bool] | None = None,
        may_subscribe: Callable[[str, str], bool] | None = None,
        max_packet: int = 256 * 1024,
        max_unsent: int = MAX_UNSENT,
    ):
        self.host = host
        self.port = port
        self.authenticate = authenticate or (lambda cid, user, pw: True)
        self.on_message = on_message
        self.may_publish = may_publish or (lambda client_id, topic, retain: True)
        self.may_subscribe = may_subscribe or (lambda client_id, topic_filter: True)
        self.max_packet = max_packet
        self.max_unsent = max_unsent
        self.conns: set[_Conn] = set()
        self.clients: dict[str, _Conn] = {}
        self.exact: dict[str, dict[_Conn, int]] = {}
        self.wild: dict[str, tuple[list[str], dict[_Conn, int]]] = {}
        self.retained: dict[str, tuple[bytes, int]] = {}
        self.counts: Counter[str] = Counter()
        self._queue: deque = deque()
        self._wake: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self, serving: bool = True) -> None:
        """Bind the port (an error here names what is wrong) and, with ``serving``, accept
        connections. ``serving=False``: bound but not listening (a device's connection is
        refused, and it tries again) until :meth:`serve` — for a service that must set
        the hooks first."""
        loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        try:
            self._server = await loop.create_server(lambda: _Conn(self), self.host, self.port, reuse_address=True, backlog=4096,
                                                    start_serving=serving)
        except OSError as exc:
            raise OSError(
                f"the embedded MQTT broker cannot listen on {self.host}:{self.port} ({exc.strerror}); "
                f"another broker may be running there: use it with --mqtt tcp://{self.host}:{self.port}, "
                "or pick another port with --mqtt-port"
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks = [loop.create_task(self._fanout(), name="mqtt-fanout"), loop.create_task(self._sweep(), name="mqtt-sweep")]

    async def serve(self) -> None:
        """Accept connections (after ``start(serving=False)``; nothing if it already does)."""
        if self._server is not None and not self._server.is_serving():
            await self._server.start_serving()

    @property
    def serving(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for c in list(self.conns):
            c.will = None
            if c.tr is not None:
                c.tr.abort()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    @property
    def connected(self) -> int:
        return len(self.clients)

    @property
    def acks_waiting(self) -> int:
        """QoS 1 acknowledgements not sent yet, on every connection (waiting for the
        journal, or behind one that does). Counted in :attr:`counts`: ``ack_sent``,
        ``ack_deferred`` (waited for the hook's future), ``ack_lost`` (their connection closed
        first: the client sends those messages again), ``ack_withheld`` (never: not taken)."""
        return sum(len(c.acks) for c in self.conns)

    # subscriptions --------------------------------------------------------------------
    def _sub(self, f: str, c: _Conn, q: int) -> None:
        if "+" in f or "#" in f:
            self.wild.setdefault(f, (f.split("/"), {}))[1][c] = q
        else:
            self.exact.setdefault(f, {})[c] = q

    def _unsub(self, f: str, c: _Conn) -> None:
        for index in (self.exact, self.wild):
            if f in index:
                d = index[f] if index is self.exact else index[f][1]
                d.pop(c, None)
                if not d:
                    del index[f]

    def targets(self, topic: str) -> dict[_Conn, int]:
        """Connections subscribed to ``topic``, each once at its highest QoS."""
        d = self.exact.get(topic)
        if not self.wild:
            return d or {}
        out = dict(d) if d else {}
        tlv = topic.split("/")
        for flv, subs in self.wild.values():
            if filter_matches(flv, tlv):
                for c, q in subs.items():
                    if q > out.get(c, -1):
                        out[c] = q
        return out

    # publishing -----------------------------------------------------------------------
    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        """Queue a message for every subscriber (returns at once; the fan-out runs in its
        own task). ``retain`` with an empty payload clears the topic's retained message."""
        if retain:
            if payload:
                self.retained[topic] = (payload, min(qos, 1))
            else:
                # clears the topic, and is still delivered like any message (MQTT-3.3.1-10)
                self.retained.pop(topic, None)
        self._queue.append((topic, payload, min(qos, 1)))
        if self._wake is not None:
            self._wake.set()

    async def _fanout(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                topic, payload, qos = self._queue.popleft()
                tb = topic.encode()
                pkt0 = publish_header(tb, len(payload), 0, False) + payload
                n = 0
                for c, sq in list(self.targets(topic).items()):
                    if c.cid is None:
                        continue
                    if min(qos, sq) == 0:
                        c.send(pkt0)
                    else:
                        c.deliver(tb, payload, 1, False)
                    n += 1
                    if n % FANOUT_CHUNK == 0:
                        await asyncio.sleep(0)
                self.counts["publish_out"] += n

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for c in list(self.conns):
                idle = now - c.last
                if (c.cid is None and now - c.t0 > CONNECT_TIMEOUT_S) or (c.keepalive_s and idle > 1.5 * c.keepalive_s):
                    self.counts["keepalive_timeout"] += 1
                    if c.tr is not None:
                        c.tr.abort()  # connection_lost sends the will
