"""The service's MQTT side: device messages in, alerts out, over any MQTT 3.1.1 broker.

:class:`MqttClient` is a small asyncio client (QoS 0 and 1, subscribe, keepalive) used by
the service's link, the replay control and the load generator; it talks to the embedded
broker (:mod:`.mqtt_broker`), Mosquitto and NATS's MQTT listener alike (each tested).

:class:`MqttLink` connects a :class:`~yujing.service.Service` to a broker:

- it subscribes to the device topics (``yj/v1/<kind>/+`` for the five device kinds) and
  hands every message to ``Service.receive``; with the embedded broker it takes them from
  the broker's hook in-process instead, one hop fewer;
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

    def connection_lost(self, exc):
        self.c._lost(exc)

    def data_received(self, data):
        try:
            for b0, body in self.framer.feed(data):
                self.c._packet(b0, body)
        except (MqttError, IndexError, UnicodeDecodeError) as exc:
            log.warning("bad packet from the broker: %s", exc)
            self.tr.abort()


class MqttClient:
    """One MQTT connection. ``on_message(topic, payload, retain)`` is called for each
    PUBLISH received. Use :meth:`connect` then :meth:`subscribe` / :meth:`publish`."""

    def __init__(self, host: str, port: int, client_id: str, keepalive_s: int = 30, on_message=None,
                 clean: bool = True):
        self.host, self.port = host, port
        self.client_id = client_id
        self.clean = clean  # False: a persistent session (the broker keeps subscriptions and QoS 1 messages)
        self.keepalive_s = keepalive_s
        self.on_message = on_message
        self._proto: _ClientProtocol | None = None
        self._ids = itertools.cycle(range(1, 65536))
        self._waiting: dict[tuple[int, int], asyncio.Future] = {}
        self._connack: asyncio.Future | None = None
        self.closed: asyncio.Future | None = None
        self._ping: asyncio.Task | None = None
        self._last_in = time.monotonic()
        self.received = 0

    async def connect(self, timeout_s: float = 10.0) -> None:
        loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self.closed = loop.create_future()
        try:
            _, self._proto = await asyncio.wait_for(
                loop.create_connection(lambda: _ClientProtocol(self), self.host, self.port), timeout_s
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from None
        self._proto.tr.write(connect_packet(self.client_id, self.keepalive_s, clean=self.clean))
        rc = await asyncio.wait_for(self._connack, timeout_s)
        if rc != 0:
            self._proto.tr.close()
            raise ConnectionError(f"MQTT broker at {self.host}:{self.port} refused the connection (CONNACK code {rc})")
        self._ping = loop.create_task(self._pinger())

    @property
    def connected(self) -> bool:
        return self._proto is not None and not self._proto.tr.is_closing() and self.closed is not None and not self.closed.done()

    async def subscribe(self, filters: list[tuple[str, int]], timeout_s: float = 10.0) -> list[int]:
        pid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._waiting[(SUBACK, pid)] = fut
        self._proto.tr.write(subscribe_packet(pid, filters))
        return await asyncio.wait_for(fut, timeout_s)

    def publish_nowait(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 0: written to the socket at once (no acknowledgement)."""
        if not self.connected:
            raise ConnectionError(f"not connected to {self.host}:{self.port}")
        self._proto.tr.write(publish_packet(topic, payload, 0, retain))

    async def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, timeout_s: float = 10.0) -> None:
        """QoS 1 waits for the broker's PUBACK."""
        if qos == 0:
            self.publish_nowait(topic, payload, retain)
            return
        if not self.connected:
            raise ConnectionError(f"not connected to {self.host}:{self.port}")
        pid = next(self._ids)
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

    async def disconnect(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self._proto is not None and not self._proto.tr.is_closing():
            self._proto.tr.write(DISCONNECT_PKT)
            self._proto.tr.close()
        if self.closed is not None:
            await asyncio.gather(self.closed, return_exceptions=True)

    # internals ------------------------------------------------------------------------
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

    def _lost(self, exc) -> None:
        if self._ping is not None:
            self._ping.cancel()
        err = ConnectionError(f"connection to {self.host}:{self.port} lost: {exc or 'closed'}")
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(err)
        self._waiting.clear()
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
    def _from_broker(self, client_id: str, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._taking_input and topic.startswith(protocol.TOPIC_ROOT) and not topic.startswith(f"{protocol.TOPIC_ROOT}/alert/"):
            self.service.receive(topic, payload)

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
