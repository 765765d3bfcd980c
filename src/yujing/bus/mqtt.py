"""The service's MQTT side: device messages in, alerts out, over any MQTT 3.1.1 broker.

:class:`MqttClient` is a small asyncio client (QoS 0 and 1, subscribe, keepalive) used by
the service's link, the replay control, the scale-out alert link and tests; it talks to the
embedded broker (:mod:`.mqtt_broker`), Mosquitto and NATS's MQTT listener alike (each
tested). For a device it has an opt-in offline outbox with automatic reconnect
(``outbox=N``): what the device publishes while the server is away (a restart mid-quake)
is held and sent, in order, when the connection is back.

:class:`MqttLink` connects a :class:`~yujing.service.Service` to a broker:

- it subscribes to the device topics (``yj/v1/<kind>/+`` for the five device kinds) and
  hands every message to ``Service.receive``; with the embedded broker it takes them from
  the broker's hook in-process instead, one hop fewer, and a QoS 1 message is acknowledged
  to the device only once the service's journal holds it (``Service.journaled``: the
  engine has it at once, the PUBACK waits for the journal batch, ≤ ~0.2 s), so a server
  killed loses no message it acknowledged; after :meth:`MqttLink.stop_input` messages are
  not acknowledged at all (not taken: the device sends them to the next server);
- it publishes every alert message (critical subscriber of ``yj.alert.>`` on the bus) to
  ``yj/v1/alert/<res3 cell>`` for each resolution-3 cell its tiers meet, retained, QoS 1;
  an update also goes to the cells the previous message met and it no longer does (the
  estimate fell: those areas are no longer warned, and their retained warning must not
  outlive it); a cancel goes to every cell the alert was ever sent to; with the embedded broker it
  publishes in-process and the broker refuses alert topics from every client (a device
  must not be able to warn an area; an external broker needs that rule in its ACL);
- ``retain_s`` after an alert's last message it clears the retained messages it left
  (an empty retained publish), so a device coming online later is not warned of an old
  quake; a topic re-used by a newer alert is left alone.

Alerts are published even while the link is reconnecting: they wait in the client's
queue and go out, in order, when the connection is back.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import struct
import time
from collections import Counter, deque
from urllib.parse import urlparse

from .. import protocol
from ..records import Alert
from ..wire import encode_alert
from .mqtt_codec import (
    CONNACK,
    PINGREQ_PKT,
    PUBACK,
    PUBLISH,
    SUBACK,
    DISCONNECT_PKT,
    Framer,
    MqttError,
    connect_packet,
    publish_packet,
    read_str,
    subscribe_packet,
)

log = logging.getLogger(__name__)

DEVICE_FILTERS = [f"{protocol.TOPIC_ROOT}/{k}/+" for k in protocol.KINDS]
RECONNECT_TIMEOUT_S = 5.0  # one reconnect attempt: TCP connect, then CONNACK, each at most this (s)


def parse_mqtt_url(url: str) -> tuple[str, int]:
    """``tcp://host:port`` or ``mqtt://host:port`` -> (host, port); port defaults to 1883."""
    u = urlparse(url)
    if u.scheme not in ("tcp", "mqtt") or not u.hostname:
        raise ValueError(f"MQTT URL {url!r}: expected tcp://host:port (or mqtt://host:port)")
    return u.hostname, u.port or 1883


class _ClientProtocol(asyncio.Protocol):
    def __init__(self, client: "MqttClient"):
        self.c = client
        self.framer = Framer()
        self.tr = None

    def connection_made(self, tr):
        self.tr = tr
        self.c._proto = self  # before any connection_lost can come: _lost knows its connection

    def connection_lost(self, exc):
        self.c._lost(self, exc)

    def data_received(self, data):
        try:
            for b0, body in self.framer.feed(data):
                self.c._packet(b0, body)
        except (MqttError, IndexError, UnicodeDecodeError) as exc:
            log.warning("bad packet from the broker: %s", exc)
            self.tr.abort()


class _Held:
    """One message in the client's outbox or in flight (QoS 1, no PUBACK yet)."""

    __slots__ = ("topic", "payload", "make", "qos", "retain", "sent", "pid", "held_at", "done")

    def __init__(self, topic: str, payload, qos: int, retain: bool, held_at: float | None,
                 done: asyncio.Future | None = None):
        self.topic, self.qos, self.retain = topic, qos, retain
        self.make = payload if callable(payload) else None  # the function making the bytes, if any
        self.payload = payload  # bytes, or a function making them at the first sending
        self.sent = 0  # times written to a connection (a re-send carries the DUP flag)
        self.pid = 0  # packet id of its last sending (QoS 1)
        self.held_at = held_at  # monotonic s it was held because the connection was down, else None
        self.done = done  # publish() waits on it: set at the PUBACK, or once the message is held


class MqttClient:
    """One MQTT connection. ``on_message(topic, payload, retain)`` is called for each
    PUBLISH received. Use :meth:`connect` then :meth:`subscribe` / :meth:`publish`.

    By default (``outbox=0``) a publish while the connection is down raises
    ``ConnectionError`` and a lost connection stays lost: the service's link and the
    scale-out alert link reconnect themselves, with a new client, and keep their own queue.

    ``outbox=N`` (messages, > 0) is what a device wants: its messages must outlive a broker
    or server restart (``yujing serve`` with its embedded broker dies and comes back in
    seconds, mid-quake). Then

    - while the connection is down, :meth:`publish_nowait` and :meth:`publish` (QoS 0 and 1)
      put the message in the outbox instead of raising; when the outbox holds ``N`` the
      **oldest** is dropped and counted (:attr:`outbox_dropped`): the newest data of a
      device tells the most (its latest amplitudes), and memory stays bounded;
    - a QoS 1 message written but not acknowledged when the connection drops goes back to
      the front of the outbox (re-sent with the DUP flag: the server refuses the copy of a
      message it did take, as ``replayed``). A QoS 0 message written into a socket the peer
      never read is gone: a device that must not lose a message publishes it at QoS 1;
    - the client reconnects by itself: the n-th attempt (n = 0, 1, ...) after a loss waits
      ``min(reconnect_max_s, reconnect_min_s * 2**n)`` times a uniform jitter in [0.5, 1]
      (devices that lost the same server do not all come back in the same instant; ``seed``
      makes the jitter reproducible);
    - on reconnect it subscribes again to every filter it had, then sends the outbox in
      order, oldest first, before any message published later; at most ``max_inflight``
      QoS 1 messages are unacknowledged at a time (packet ids are 16 bits);
    - a payload may be a function, called when the message is first written, so that a
      held message is stamped (``sent_s``) and signed when it is really sent; with
      ``remake_on_resend`` it is called again when the message is sent again after a
      reconnect (it was in flight when the connection dropped: a server killed before
      acknowledging it), so the copy too says when it was sent — the function must then
      keep the message's ``seq`` (the server refuses a copy of what it took as
      ``replayed``; a new ``seq`` would be taken twice). Off, a re-send repeats the bytes;
    - counters: :attr:`outbox_queued` (held because the connection was down),
      :attr:`outbox_requeued` (in flight when it dropped, held again),
      :attr:`outbox_flushed` (held messages sent after a reconnect), :attr:`outbox_dropped`,
      :attr:`reconnects`, :attr:`reconnect_failures`, :attr:`acked` (PUBACKs),
      :attr:`inflight_max` (most unacknowledged at once: a server that acknowledges only
      once a message is journaled, ``yujing serve``, keeps ~0.2 s of messages in flight); the seconds
      each flushed message waited in the outbox are in :attr:`outbox_wait_s`.

    :meth:`drain` waits until the outbox is empty and every QoS 1 message acknowledged;
    :meth:`disconnect` does not wait for it (what it still holds is :attr:`outbox_size`).
    """

    def __init__(self, host: str, port: int, client_id: str, keepalive_s: int = 30, on_message=None,
                 clean: bool = True, outbox: int = 0, reconnect: bool | None = None,
                 reconnect_min_s: float = 0.2, reconnect_max_s: float = 5.0, seed: int | None = None,
                 max_inflight: int = 1000, on_ack=None, remake_on_resend: bool = False):
        self.host, self.port = host, port
        self.client_id = client_id
        self.clean = clean  # False: a persistent session (the broker keeps subscriptions and QoS 1 messages)
        self.keepalive_s = keepalive_s
        self.on_message = on_message
        # on_ack(topic, payload): a QoS 1 message sent with publish_nowait or an outbox was
        # acknowledged (a device keeping messages on disk deletes it there)
        self.on_ack = on_ack
        self.remake_on_resend = remake_on_resend
        self._proto: _ClientProtocol | None = None
        self._ids = itertools.cycle(range(1, 65536))
        self._waiting: dict[tuple[int, int], asyncio.Future] = {}
        self._connack: asyncio.Future | None = None
        self.closed: asyncio.Future | None = None
        self._ping: asyncio.Task | None = None
        self._last_in = time.monotonic()
        self.received = 0
        # the outbox (see the class docstring); 0 = none, the behaviour of old
        if outbox < 0 or max_inflight < 1 or max_inflight > 65000:
            raise ValueError("outbox must be >= 0 messages and max_inflight in 1..65000")
        if reconnect_min_s <= 0 or reconnect_max_s < reconnect_min_s:
            raise ValueError("reconnect delays: 0 < reconnect_min_s <= reconnect_max_s (s)")
        self.outbox_max = outbox
        self.auto_reconnect = outbox > 0 if reconnect is None else reconnect
        self.reconnect_min_s, self.reconnect_max_s = reconnect_min_s, reconnect_max_s
        self.max_inflight = max_inflight
        self._rng = random.Random(seed)
        self._outbox: deque[_Held] = deque()
        self._inflight: dict[int, _Held] = {}  # packet id -> QoS 1 message written, no PUBACK yet
        self._subs: dict[str, int] = {}  # filter -> QoS: subscribed again after a reconnect
        self._online = False  # CONNACK in, subscriptions re-made: the outbox may go out
        self._stopping = False
        self._reconnector: asyncio.Task | None = None
        self.outbox_queued = 0
        self.outbox_requeued = 0
        self.outbox_flushed = 0
        self.outbox_dropped = 0
        self.reconnects = 0
        self.reconnect_failures = 0
        self.acked = 0
        self.inflight_max = 0  # most QoS 1 messages unacknowledged at once
        self.connected_at_s: float | None = None  # UNIX s of the newest CONNACK (wall clock: for reports)
        self.stamp_errors = 0  # messages whose payload function raised (dropped, logged)
        self.unacked_lost = 0  # QoS 1 messages in flight when the connection dropped, no outbox to hold them
        self.outbox_wait_s: deque[float] = deque(maxlen=100_000)

    @property
    def outbox_size(self) -> int:
        """Messages waiting in the outbox (not counting those in flight)."""
        return len(self._outbox)

    @property
    def inflight(self) -> int:
        """QoS 1 messages written and not acknowledged yet."""
        return len(self._inflight)

    def stats(self) -> dict:
        """The outbox and reconnect counters, one dict (for logs and reports)."""
        return {"outbox_queued": self.outbox_queued, "outbox_requeued": self.outbox_requeued,
                "outbox_flushed": self.outbox_flushed, "outbox_dropped": self.outbox_dropped,
                "outbox_size": len(self._outbox), "inflight": len(self._inflight), "acked": self.acked,
                "inflight_max": self.inflight_max,
                "reconnects": self.reconnects, "reconnect_failures": self.reconnect_failures,
                "unacked_lost": self.unacked_lost, "stamp_errors": self.stamp_errors}

    async def connect(self, timeout_s: float = 10.0) -> None:
        """Open the connection (raises ``ConnectionError`` if the broker cannot be reached
        or refuses). With reconnecting on, the client keeps it open from then on, until
        :meth:`disconnect`."""
        self._stopping = False
        await self._open(timeout_s)
        if self.auto_reconnect and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_loop(), name=f"mqtt-reconnect-{self.client_id}")

    async def _open(self, timeout_s: float) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self.closed = loop.create_future()
        try:
            _, self._proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(self), self.host, self.port), timeout_s
            )
        except (OSError, asyncio.TimeoutError) as exc:
            self.closed.set_result(exc)  # no connection: nothing to wait for (disconnect() awaits it)
            raise ConnectionError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from None
        tr = self._proto.tr
        tr.write(connect_packet(self.client_id, self.keepalive_s, clean=self.clean))
        try:
            rc = await asyncio.wait_for(self._connack, timeout_s)
        except (ConnectionError, asyncio.TimeoutError) as exc:
            tr.abort()
            raise ConnectionError(f"no CONNACK from the MQTT broker at {self.host}:{self.port}: {exc or 'timeout'}") from None
        if rc != 0:
            tr.close()
            raise ConnectionError(f"MQTT broker at {self.host}:{self.port} refused the connection (CONNACK code {rc})")
        self.connected_at_s = time.time()
        self._ping = loop.create_task(self._pinger())
        sub = None
        if self._subs:
            # subscriptions first: TCP keeps the order, so the broker has them before the
            # held messages (and before anything it would send us on them)
            pid = self._next_pid()
            sub = self._waiting[(SUBACK, pid)] = loop.create_future()
            tr.write(subscribe_packet(pid, list(self._subs.items())))
        self._online = True
        self._pump()
        if sub is not None:
            try:
                codes = await asyncio.wait_for(sub, timeout_s)
            except (ConnectionError, asyncio.TimeoutError) as exc:
                tr.abort()  # connection_lost: held messages in flight go back to the outbox
                raise ConnectionError(f"no SUBACK from {self.host}:{self.port} for the subscriptions again: {exc or 'timeout'}") from None
            if any(c == 0x80 for c in codes):
                log.warning("MQTT broker at %s:%s refused some subscriptions again: %s", self.host, self.port,
                            dict(zip(self._subs, codes)))

    @property
    def connected(self) -> bool:
        return self._proto is not None and not self._proto.tr.is_closing() and self.closed is not None and not self.closed.done()

    async def subscribe(self, filters: list[tuple[str, int]], timeout_s: float = 10.0) -> list[int]:
        """Subscribe; returns the granted QoS per filter (0x80: refused). The filters are
        remembered and subscribed again after a reconnect."""
        if not self.connected:
            raise ConnectionError(f"not connected to {self.host}:{self.port}")
        pid = self._next_pid()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[(SUBACK, pid)] = fut
        self._proto.tr.write(subscribe_packet(pid, filters))
        codes = await asyncio.wait_for(fut, timeout_s)
        for (f, q), c in zip(filters, codes):
            if c != 0x80:
                self._subs[f] = q
        return codes

    def publish_nowait(self, topic: str, payload, retain: bool = False, qos: int = 0) -> None:
        """Write one message at once, without waiting for anything. QoS 0 by default; QoS 1
        is acknowledged later (:attr:`acked`; with an outbox it is re-sent if the
        connection drops first). Without an outbox, raises ``ConnectionError`` when not
        connected; with one, the message waits in the outbox.

        ``payload``: bytes, or a function returning them, called when the message is first
        written: a device that signs there gives a held message the ``sent_s`` of its real
        sending (docs/protocol.md, "Connection"); a re-send repeats the same bytes (or, with
        ``remake_on_resend``, calls it again)."""
        if qos not in (0, 1):
            raise ValueError("QoS 0 or 1")
        if self.outbox_max:
            self._hold(_Held(topic, payload, qos, retain, None))
            return
        if not self.connected:
            raise ConnectionError(f"not connected to {self.host}:{self.port}")
        if callable(payload):
            payload = payload()
        if qos:
            pid = self._next_pid()
            self._inflight[pid] = _Held(topic, payload, 1, retain, None)
            self.inflight_max = max(self.inflight_max, len(self._inflight))
            self._proto.tr.write(publish_packet(topic, payload, 1, retain, pid))
        else:
            self._proto.tr.write(publish_packet(topic, payload, 0, retain))

    async def publish(self, topic: str, payload, qos: int = 0, retain: bool = False, timeout_s: float = 10.0) -> None:
        """QoS 1 waits for the broker's PUBACK (``timeout_s``, s); ``payload`` as for
        :meth:`publish_nowait`. With an outbox it never
        raises for a connection down: it returns at the PUBACK, or once the message is held
        in the outbox (the connection is down, or dropped before the PUBACK: it will be
        sent again), and a missing PUBACK drops the connection (the message goes back to
        the outbox) instead of raising."""
        if qos == 0:
            self.publish_nowait(topic, payload, retain)
            return
        if self.outbox_max:
            m = _Held(topic, payload, 1, retain, None, asyncio.get_running_loop().create_future())
            self._hold(m)
            try:
                await asyncio.wait_for(asyncio.shield(m.done), timeout_s)
            except asyncio.TimeoutError:
                if m.sent and self._inflight.get(m.pid) is m:  # written, not acknowledged: half-open
                    self._abort("no PUBACK within %.0f s" % timeout_s)
            return
        if not self.connected:
            raise ConnectionError(f"not connected to {self.host}:{self.port}")
        if callable(payload):
            payload = payload()
        pid = self._next_pid()
        fut = asyncio.get_running_loop().create_future()
        self._waiting[(PUBACK, pid)] = fut
        self._proto.tr.write(publish_packet(topic, payload, 1, retain, pid))
        try:
            await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            # no PUBACK: the connection is half-open (a dead peer or a stalled route that
            # TCP takes ~15 min to notice); drop it so the link reconnects and resends
            self._waiting.pop((PUBACK, pid), None)
            self._abort("no PUBACK within %.0f s" % timeout_s)
            raise

    async def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait (at most ``timeout_s``, s) until the outbox is empty and no QoS 1 message
        is unacknowledged; returns whether it is."""
        t = time.monotonic()
        while self._outbox or self._inflight:
            if time.monotonic() - t > timeout_s:
                return False
            await asyncio.sleep(0.01)
        return True

    async def disconnect(self) -> None:
        """Close the connection (a DISCONNECT first) and stop reconnecting. Messages
        still in the outbox stay there (:attr:`outbox_size`); :meth:`drain` first to
        send them."""
        self._stopping = True
        self._online = False
        if self._reconnector is not None:
            self._reconnector.cancel()
            await asyncio.gather(self._reconnector, return_exceptions=True)
            self._reconnector = None
        if self._ping is not None:
            self._ping.cancel()
        if self._proto is not None and not self._proto.tr.is_closing():
            self._proto.tr.write(DISCONNECT_PKT)
            self._proto.tr.close()
        if self.closed is not None:
            await asyncio.gather(self.closed, return_exceptions=True)

    # internals ------------------------------------------------------------------------
    def _next_pid(self) -> int:
        # skip ids still in use (a QoS 1 message unacknowledged, a SUBACK awaited)
        while True:
            pid = next(self._ids)
            if pid not in self._inflight and (PUBACK, pid) not in self._waiting and (SUBACK, pid) not in self._waiting:
                return pid

    def _hold(self, m: _Held) -> None:
        """Append to the outbox (dropping the oldest when full), then send what may go."""
        if not self._online:
            m.held_at = time.monotonic()
            self.outbox_queued += 1
            if m.done is not None and not m.done.done():
                m.done.set_result(None)  # publish() returns: the message is in the outbox
        self._outbox.append(m)
        self._trim()
        self._pump()

    def _trim(self) -> None:
        while len(self._outbox) > self.outbox_max:
            old = self._outbox.popleft()
            self.outbox_dropped += 1
            if old.done is not None and not old.done.done():
                old.done.set_result(None)
            if self.outbox_dropped in (1, 10, 100) or self.outbox_dropped % 1000 == 0:
                log.warning("MQTT outbox of %s full (%d messages): %d oldest dropped so far", self.client_id,
                            self.outbox_max, self.outbox_dropped)

    def _pump(self) -> None:
        """Write the outbox, oldest first, while the connection is up and the in-flight
        window has room (called on a new message, a PUBACK and a reconnect)."""
        if not self._online or not self._outbox:
            return
        tr = self._proto.tr
        now = time.monotonic()
        ob, inflight = self._outbox, self._inflight
        while ob and len(inflight) < self.max_inflight:
            m = ob.popleft()
            if m.held_at is not None:
                self.outbox_flushed += 1
                self.outbox_wait_s.append(now - m.held_at)
                m.held_at = None
            if m.make is not None and (not m.sent or self.remake_on_resend):
                # made now, at its first sending (a device signs here: sent_s is when it was
                # sent, not when it was queued); a re-send repeats these bytes (same seq),
                # or is made again (remake_on_resend)
                try:
                    m.payload = bytes(m.make())
                except Exception:
                    self.stamp_errors += 1
                    if not m.sent:
                        log.exception("MQTT message for %s could not be made; dropped", m.topic)
                        continue
                    log.exception("MQTT message for %s could not be made again; its first bytes are sent", m.topic)
            if m.qos:
                pid = self._next_pid()
                inflight[pid] = m
                m.pid = pid
                if len(inflight) > self.inflight_max:
                    self.inflight_max = len(inflight)
                pkt = publish_packet(m.topic, m.payload, 1, m.retain, pid)
                if m.sent:
                    pkt = bytes([pkt[0] | 0x08]) + pkt[1:]  # DUP: this message was sent before
            else:
                pkt = publish_packet(m.topic, m.payload, 0, m.retain)
            m.sent += 1
            tr.write(pkt)

    def reconnect_delay_s(self, n: int) -> float:
        """Seconds to wait before reconnect attempt ``n`` (0 = the first after a loss):
        capped exponential backoff, ``min(reconnect_max_s, reconnect_min_s * 2**n)``, times
        a jitter drawn uniformly in [0.5, 1] (from the client's own generator: ``seed``)."""
        d = min(self.reconnect_max_s, self.reconnect_min_s * 2 ** min(n, 30))
        return d * (0.5 + 0.5 * self._rng.random())

    async def _reconnect_loop(self) -> None:
        while not self._stopping:
            if self.closed is not None and not self.closed.done():
                await asyncio.shield(self.closed)
            if self._stopping:
                return
            n = 0
            while not self._stopping:
                await asyncio.sleep(self.reconnect_delay_s(n))
                if self._stopping:
                    return
                try:
                    await self._open(RECONNECT_TIMEOUT_S)
                except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                    self.reconnect_failures += 1
                    n += 1
                    log.debug("MQTT reconnect to %s:%s failed (%d): %s", self.host, self.port, n, exc)
                    continue
                self.reconnects += 1
                log.info("MQTT reconnected to %s:%s after %d failed attempts; outbox %d", self.host, self.port, n,
                         len(self._outbox))
                break

    async def _pinger(self) -> None:
        self._last_in = time.monotonic()
        while True:
            await asyncio.sleep(max(1.0, self.keepalive_s / 2))
            if not self.connected:
                continue
            if time.monotonic() - self._last_in > 1.5 * self.keepalive_s:
                self._abort(f"nothing from the broker for {1.5 * self.keepalive_s:.0f} s (PINGRESP missing)")
                continue
            self._proto.tr.write(PINGREQ_PKT)

    def _abort(self, why: str) -> None:
        log.warning("MQTT connection to %s:%s dropped: %s", self.host, self.port, why)
        if self._proto is not None and self._proto.tr is not None:
            self._proto.tr.abort()  # connection_lost follows: waiters fail, the link reconnects

    def _lost(self, proto: _ClientProtocol, exc) -> None:
        if proto is not self._proto:
            return  # an older connection's late close: this one's state is not its to clear
        self._online = False
        if self._ping is not None:
            self._ping.cancel()
        err = ConnectionError(f"connection to {self.host}:{self.port} lost: {exc or 'closed'}")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
        if self._inflight:
            # written, never acknowledged: the peer may not have taken them (a server killed
            # before reading its socket). With an outbox they go back to its front, in the
            # order they were first sent; without one they are counted as lost.
            held = list(self._inflight.values())
            self._inflight.clear()
            if self.outbox_max:
                now = time.monotonic()
                for m in held:
                    m.held_at = now
                    if m.done is not None and not m.done.done():
                        m.done.set_result(None)
                self._outbox.extendleft(reversed(held))
                self.outbox_requeued += len(held)
                self._trim()
            else:
                self.unacked_lost += len(held)
        if self.outbox_max:
            # messages waiting for room in the window now wait for the connection: publish()
            # returns for them (held), and they count as held
            now = time.monotonic()
            for m in self._outbox:
                if m.held_at is None:
                    m.held_at = now
                    self.outbox_queued += 1
                    if m.done is not None and not m.done.done():
                        m.done.set_result(None)
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(err)
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(exc)

    def _packet(self, b0: int, p: memoryview) -> None:
        self._last_in = time.monotonic()
        t = b0 >> 4
        if t == PUBLISH:
            qos = (b0 >> 1) & 3
            raw, k = read_str(p, 0)
            if qos:
                self._proto.tr.write(b"\x40\x02" + bytes(p[k : k + 2]))
                k += 2
            self.received += 1
            if self.on_message is not None:
                self.on_message(raw.decode(), bytes(p[k:]), bool(b0 & 1))
        elif t == CONNACK:
            if not self._connack.done():
                self._connack.set_result(p[1])
        elif t in (PUBACK, SUBACK):
            pid = struct.unpack_from("!H", p, 0)[0]
            if t == PUBACK:
                m = self._inflight.pop(pid, None)
                if m is not None:
                    self.acked += 1
                    if self.on_ack is not None:
                        self.on_ack(m.topic, m.payload)
                    if m.done is not None and not m.done.done():
                        m.done.set_result(None)
                    self._pump()  # room in the window
                    return
            fut = self._waiting.pop((t, pid), None)
            if fut is not None and not fut.done():
                fut.set_result(list(p[2:]) if t == SUBACK else None)


ALERT_PREFIX = f"{protocol.TOPIC_ROOT}/alert/"


def _device_may_publish(client_id: str, topic: str, retain: bool) -> bool:
    """Rule of the embedded broker for clients (devices, anyone who can reach the port):
    only the service speaks on alert topics (it publishes in-process), and device
    messages are never retained (the broker would keep one device's data for the next
    subscriber, without bound)."""
    return not topic.startswith(ALERT_PREFIX) and not retain


def _device_may_subscribe(client_id: str, topic_filter: str) -> bool:
    """Clients may subscribe to alert topics only: device messages go to the service
    through the broker's hook, and nobody else may read them (a trace per pseudonym)."""
    return topic_filter.startswith(ALERT_PREFIX)


class MqttLink:
    """Joins a service to a broker; see the module docstring. ``broker`` is the embedded
    broker when the service runs one (device messages then come from its hook)."""

    def __init__(self, url: str, service, retain_s: float = 600.0, broker=None, client_id: str = "yujing-service"):
        self.host, self.port = parse_mqtt_url(url)
        self.service = service
        self.retain_s = retain_s
        self.broker = broker
        self.client_id = client_id
        self.client: MqttClient | None = None
        self._device_client: MqttClient | None = None
        self._outbox: asyncio.Queue = asyncio.Queue()
        self._topics_of: dict[str, set[str]] = {}  # alert_id -> topics it was sent to
        self._current_of: dict[str, set[str]] = {}  # alert_id -> topics its last message reached
        self._owner: dict[str, tuple[str, float]] = {}  # topic -> (alert_id, clear at, monotonic s)
        self._tasks: list[asyncio.Task] = []
        self._taking_input = True
        self.counts: Counter[str] = Counter()
        self.publish_latency_s: deque[float] = deque(maxlen=100_000)  # alert issued -> PUBACK, s

    async def start(self, ready=None) -> None:
        """Connect and start. ``ready()``, if given, is called once alerts are subscribed
        and before any device message is taken (a restarted service publishes what its
        previous life left unsent there, ahead of anything new)."""
        loop = asyncio.get_running_loop()
        self.service.bus.subscribe("yj.alert.>", self._on_alert, critical=True)
        if ready is not None:
            ready()
        if self.broker is not None:
            self.broker.on_message = self._from_broker
            self.broker.may_publish = _device_may_publish
            self.broker.may_subscribe = _device_may_subscribe
            # a broker started without accepting (yujing serve) accepts devices from now
            # on, with the hooks in place: no message taken before the service sees it,
            # no client publishing under the open default rules
            await self.broker.serve()
        await self._connect()
        self._tasks = [loop.create_task(self._sender(), name="mqtt-alerts"),
                       loop.create_task(self._keep_connected(), name="mqtt-link"),
                       loop.create_task(self._expire(), name="mqtt-expire")]

    async def _connect(self) -> None:
        # an external broker: a persistent session (clean_session 0, QoS 1 subscriptions),
        # so the broker queues device messages while the service is away (a restart) and
        # delivers them when it is back. The embedded broker dies with the service.
        self.client = MqttClient(self.host, self.port, self.client_id, on_message=self._from_client,
                                 clean=self.broker is not None)
        await self.client.connect()
        if self.broker is None:
            codes = await self.client.subscribe([(f, 1) for f in DEVICE_FILTERS])
            if any(c == 0x80 for c in codes):
                raise ConnectionError(f"the broker at {self.host}:{self.port} refused a device topic subscription")
        self.counts["connects"] += 1

    async def _keep_connected(self) -> None:
        delay = 0.2
        while True:
            await self.client.closed
            self.counts["disconnects"] += 1
            log.warning("MQTT link to %s:%s lost; reconnecting", self.host, self.port)
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._connect()
                    delay = 0.2
                    break
                except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                    log.warning("MQTT reconnect failed: %s", exc)
                    delay = min(delay * 2, 5.0)

    # device messages in ---------------------------------------------------------------
    def _from_broker(self, client_id: str, topic: str, payload: bytes, qos: int, retain: bool):
        """The embedded broker's hook; its return value is when the broker acknowledges a
        QoS 1 message (see :mod:`.mqtt_broker`)."""
        if not self._taking_input:
            return False  # stopping: not taken, so not acknowledged (the device sends it again)
        if topic.startswith(protocol.TOPIC_ROOT) and not topic.startswith(f"{protocol.TOPIC_ROOT}/alert/"):
            self.service.receive(topic, payload)
            if qos:
                # once everything the service took so far is journaled: this message if it
                # was taken, or the first copy of one refused as a re-send (replayed); None:
                # nothing waits (no journal, all written): at once
                return self.service.journaled()
        return None

    def _from_client(self, topic: str, payload: bytes, retain: bool) -> None:
        if self._taking_input and self.broker is None and not topic.startswith(f"{protocol.TOPIC_ROOT}/alert/"):
            self.service.receive(topic, payload)

    async def publish_device(self, topic: str, payload: bytes) -> None:
        """Publish as a device would (the replay control): over a client connection of
        its own, so the message takes the devices' path through the broker."""
        c = self._device_client
        if c is None or not c.connected:
            c = self._device_client = MqttClient(self.host, self.port, f"{self.client_id}-replay")
            await c.connect()
        c.publish_nowait(topic, payload)

    # alerts out -----------------------------------------------------------------------
    def resume(self, alerts: list[Alert], now_s: float) -> None:
        """A restarted service: take up the areas its previous life's alerts (all stored
        messages of the recent ones, oldest first) went to, without sending anything, so
        that an update tells the areas it no longer reaches, a cancel reaches every area,
        and retained messages an external broker still holds are cleared on time."""
        for a in alerts:
            for t, _ in self._route(a):
                aid, _at = self._owner.get(t, (a.alert_id, 0.0))
                # clear it retain_s after the message that set it, as the old life would have
                self._owner[t] = (aid, time.monotonic() + max(0.0, self.retain_s - (now_s - a.issued_at_s)))

    def _on_alert(self, subject: str, a: Alert) -> None:
        payload = encode_alert(a)
        for t, retain in self._route(a):
            self._outbox.put_nowait((t, payload, a.issued_at_s, retain))

    def _route(self, a: Alert) -> list[tuple[str, bool]]:
        """The topics an alert message goes to, each with its retain flag; notes them."""
        topics = set()
        for tier in a.tiers:
            topics.update(protocol.alert_topic(c) for c in protocol.alert_cells(tier.cells, a.h3_resolution))
        sent = self._topics_of.setdefault(a.alert_id, set())
        if a.msg_type == "cancel":
            # a retraction reaches every area the alert ever went to
            topics, dropped = set(), set(sent)
            self._topics_of.pop(a.alert_id, None)
            self._current_of.pop(a.alert_id, None)
        else:
            # an update replaces the last message in full: areas it no longer reaches get it
            # too (their devices see that they are no longer warned, and the obsolete
            # warning retained there is replaced at once)
            dropped = self._current_of.get(a.alert_id, set()) - topics
            self._current_of[a.alert_id] = topics
            sent |= topics
            self.counts["alert_area_dropped"] += len(dropped)
        clear_at = time.monotonic() + self.retain_s
        out = []
        for t in sorted(topics | dropped):
            owner = self._owner.get(t)
            # an area's retained message is its newest alert; a cancel, or an update that no
            # longer reaches the area, of an older alert there goes to the devices listening
            # now but must not replace the newer alert's warning
            retain = t in topics or owner is None or owner[0] == a.alert_id
            if retain:
                self._owner[t] = (a.alert_id, clear_at)
            out.append((t, retain))
        return out

    async def _sender(self) -> None:
        while True:
            topic, payload, issued, retain = await self._outbox.get()
            if self.broker is not None:
                self.broker.publish(topic, payload, qos=1, retain=retain)
            else:
                while True:
                    try:
                        await self.client.publish(topic, payload, qos=1, retain=retain)
                        break
                    except (ConnectionError, asyncio.TimeoutError):
                        self.counts["alert_publish_retry"] += 1
                        await asyncio.sleep(0.2)  # the link reconnects meanwhile; order is kept
            if payload:
                self.counts["alert_publish"] += 1
                self.publish_latency_s.append(self.service.clock() - issued)
            self._outbox.task_done()

    async def _expire(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for topic, (aid, at) in list(self._owner.items()):
                if at <= now:
                    del self._owner[topic]
                    self._outbox.put_nowait((topic, b"", self.service.clock(), True))
                    self.counts["alert_cleared"] += 1

    # stopping -------------------------------------------------------------------------
    async def stop_input(self) -> None:
        """Take no more device messages (the service then finishes what it has)."""
        self._taking_input = False

    async def stop(self) -> None:
        """Send the alerts still queued, then disconnect."""
        try:
            await asyncio.wait_for(self._outbox.join(), 10.0)
        except asyncio.TimeoutError:
            log.error("%d alert messages could not be published before shutdown", self._outbox.qsize())
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for c in (self.client, self._device_client):
            if c is not None:
                await c.disconnect()
