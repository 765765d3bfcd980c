"""``yujing load``: a bounded load generator for a running service (loopback only).

It simulates ``--devices`` phones (a million is fine) without a million connections: their
messages are multiplexed over ``--connections`` MQTT (or NATS) connections, which the server
cannot tell from real devices sharing a gateway, because every message carries its own
device pseudonym and cell (:mod:`yujing.protocol`). What they send, in real time:

- **a connect phase** first (``--no-connect`` skips it): every device sends the heartbeat a
  phone sends when it connects, at the rate cap, and with ``--api`` the run starts once the
  server has taken them all, so that the run meets a server that knows the quiet phones
  around, as in the field (not counted in the run's figures; reported apart);
- **heartbeats**: each device once every ``--heartbeat-s`` (600 s: 1,667 messages/s for a
  million devices), at its own seeded phase;
- **false triggers**: ``--trigger-rate-per-device-day`` per device per day (1: 11.6/s for
  a million), at random times, with the human-motion amplitudes of the simulator's false
  triggers (one onset message each, no amplitude updates);
- **an earthquake** (``--quake luding2022``, any :mod:`yujing.scenarios` key) whose origin
  is ``--quake-at-s`` seconds into the run: every trigger and amplitude update the
  simulator says the same devices send (:func:`~yujing.sources.simulator.simulate`,
  :func:`~yujing.sources.wire_feed.scenario_wire`), shifted to happen now; or, with
  ``--burst N``, a load shape instead: N onset triggers from the N devices the P wave
  reaches first, sent evenly over ``--burst-s`` (the issue's "50,000 triggers in 10 s").
  A burst's onsets keep the P wave's order, not its speed.

The devices are placed by the scenario simulator (people in GeoNames towns within 500 km
of the epicentre of ``--quake``, or of ``--region`` without a quake), so the topics' cells
are real; everything is seeded (``--seed``). Messages are valid protocol messages: a
server that decodes them counts no reject. They are signed (:mod:`yujing.security`): with
``--api`` the phones that will speak are enrolled first (``POST /api/enrol``, 2,000 a
request) and each signs with its credential; without ``--api`` they go unsigned, which
only a development server (``allow_unsigned``) takes. Enrolled with the operator key of
``--api-key-file`` they are vouched for; without it they are new devices, which do not
count toward announcing a quake for the server's ``new_device_s`` (docs/security.md), and
the server enrols at most ``--enrol-per-address`` of them a day from one address.

``--subscribers N`` holds N alert subscribers (raw MQTT connections, or NATS
subscriptions), each on the alert topic of a random device's resolution-3 cell, and reports
when the alerts reached them: from the alert's ``issued_at_s`` (the server's delivery) and
from the first trigger of the quake (the whole chain). ``--api`` reads the server's
``/health`` and ``/metrics`` before and after, so the report says whether the server
received every message sent (``/metrics`` needs an operator key: ``--api-key-file``).

Bounds, so that this cannot be pointed at anyone: loopback addresses only; at most
``MAX_DURATION_S`` (the run stops by itself, then waits ``--drain-s`` for late alerts); at
most ``--max-rate`` messages per second (hard limit ``MAX_RATE``), sent late rather than
faster; at most ``MAX_DEVICES`` devices, ``MAX_CONNECTIONS`` connections and
``MAX_SUBSCRIBERS`` subscribers.

    yujing load --mqtt tcp://127.0.0.1:1883 --devices 1000000 --duration-s 60 \\
        --quake luding2022 --quake-at-s 20 --subscribers 2000 --api http://127.0.0.1:8000 \\
        --api-key-file yujing.db.operator-key
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import heapq
import ipaddress
import json
import logging
import math
import socket
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlparse

log = logging.getLogger(__name__)

MAX_DURATION_S = 600.0
MAX_RATE = 100_000.0  # messages per second, all connections together
MAX_DEVICES = 2_000_000
MAX_CONNECTIONS = 64
MAX_SUBSCRIBERS = 20_000
MAX_BURST = 500_000
FLUSH_TIMEOUT_S = 10.0
ENROL_RETRIES = 100  # an enrolment request refused by the API's rate limit (429) is sent again this often
CONNECT_SETTLE_MAX_S = 180.0  # how long the server may take to work off the connect storm


class LoadError(ValueError):
    """A load run that is refused (bad target, over a bound) or cannot start."""


@dataclass
class LoadOptions:
    mqtt: str | None = None  # tcp://127.0.0.1:PORT
    nats: str | None = None  # nats://127.0.0.1:PORT
    devices: int = 100_000
    connections: int = 8
    duration_s: float = 60.0
    heartbeat_s: float = 600.0
    # every device first connects and sends its connect heartbeat (the protocol's), before
    # the measured run: the server then knows the quiet phones around, as it does in the
    # field; False starts the run on a server that has heard from nobody (a cold start)
    connect: bool = True
    trigger_rate_per_device_day: float = 1.0
    quake: str | None = None
    quake_at_s: float = 10.0
    burst: int = 0
    burst_s: float = 10.0
    region: str = "luding2022"
    subscribers: int = 0
    qos: int = 0
    max_rate: float = 50_000.0
    drain_s: float = 5.0
    seed: int = 0
    api: str | None = None
    api_key: str | None = None  # an operator key: /metrics needs one
    client_prefix: str = "yjload"


# ------------------------------------------------------------------------ bounds


def loopback_target(url: str, schemes: tuple[str, ...]) -> tuple[str, int]:
    """``scheme://host:port`` -> (host, port), refusing any host that is not this
    machine: a load generator, not an attack tool."""
    u = urlparse(url)
    if u.scheme not in schemes or not u.hostname:
        raise LoadError(f"{url!r}: expected {schemes[0]}://127.0.0.1:PORT")
    host = u.hostname
    try:
        addrs = {ipaddress.ip_address(host)}
    except ValueError:
        try:
            addrs = {ipaddress.ip_address(ai[4][0]) for ai in socket.getaddrinfo(host, None)}
        except OSError as exc:
            raise LoadError(f"{url!r}: cannot resolve {host!r} ({exc})") from None
    if not addrs or not all(a.is_loopback for a in addrs):
        raise LoadError(f"{url!r}: yujing load only sends to this machine (127.0.0.1, ::1, localhost); "
                        f"{host} is not a loopback address")
    default = {"tcp": 1883, "mqtt": 1883, "nats": 4222, "http": 80}[u.scheme]
    return host, u.port or default


def check(o: LoadOptions) -> None:
    """Raise :class:`LoadError` for a run outside the bounds (see the module docstring)."""
    if (o.mqtt is None) == (o.nats is None):
        raise LoadError("give exactly one target: --mqtt tcp://127.0.0.1:PORT or --nats nats://127.0.0.1:PORT")
    if o.mqtt is not None:
        loopback_target(o.mqtt, ("tcp", "mqtt"))
    else:
        loopback_target(o.nats, ("nats",))
    if o.api is not None:
        loopback_target(o.api, ("http",))
    if not 0 < o.duration_s <= MAX_DURATION_S:
        raise LoadError(f"--duration-s {o.duration_s}: must be within (0, {MAX_DURATION_S:.0f}]")
    if not 0 <= o.drain_s <= 60:
        raise LoadError(f"--drain-s {o.drain_s}: must be within [0, 60]")
    if not 1 <= o.devices <= MAX_DEVICES:
        raise LoadError(f"--devices {o.devices}: must be within 1-{MAX_DEVICES:,}")
    if not 1 <= o.connections <= MAX_CONNECTIONS:
        raise LoadError(f"--connections {o.connections}: must be within 1-{MAX_CONNECTIONS}")
    if not 0 <= o.subscribers <= MAX_SUBSCRIBERS:
        raise LoadError(f"--subscribers {o.subscribers}: must be within 0-{MAX_SUBSCRIBERS:,}")
    if not 0 < o.max_rate <= MAX_RATE:
        raise LoadError(f"--max-rate {o.max_rate}: must be within (0, {MAX_RATE:,.0f}] messages/s")
    from .protocol import HEARTBEAT_EVERY_RANGE_S

    lo, hi = HEARTBEAT_EVERY_RANGE_S
    if not lo <= o.heartbeat_s <= hi:
        raise LoadError(f"--heartbeat-s {o.heartbeat_s}: the protocol allows {lo:g}-{hi:g} s (HeartbeatMsg.every_s)")
    if not 0 <= o.trigger_rate_per_device_day <= 1000:
        raise LoadError(f"--trigger-rate-per-device-day {o.trigger_rate_per_device_day}: must be within 0-1000")
    bg = o.devices / o.heartbeat_s + o.devices * o.trigger_rate_per_device_day / 86400.0
    if bg > o.max_rate:
        raise LoadError(f"the background alone asks {bg:,.0f} messages/s, over --max-rate {o.max_rate:,.0f}; "
                        "fewer devices, a longer --heartbeat-s, or a higher --max-rate")
    if o.qos not in (0, 1):
        raise LoadError("--qos must be 0 or 1")
    if not 0 <= o.burst <= min(MAX_BURST, o.devices):
        raise LoadError(f"--burst {o.burst}: must be within 0 and the number of devices (at most {MAX_BURST:,})")
    if o.burst and not o.quake:
        raise LoadError("--burst needs --quake (the burst is that quake's triggers)")
    if not 0.1 <= o.burst_s <= 600:
        raise LoadError(f"--burst-s {o.burst_s}: must be within 0.1-600 s")
    from . import scenarios

    for key in (o.quake, o.region):
        if key and key not in scenarios.SCENARIOS:
            raise LoadError(f"unknown scenario {key!r}; one of {', '.join(sorted(scenarios.SCENARIOS))}")
    if o.quake and not 0 <= o.quake_at_s < o.duration_s:
        raise LoadError(f"--quake-at-s {o.quake_at_s}: must be within the run (0 to --duration-s {o.duration_s})")


# ------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    """Everything to send, prepared before the clock starts (times relative to it)."""

    net: object  # SimulatedNetwork: where the devices are, and the quake
    day: str  # UTC day of the pseudonyms
    hb_t: object  # np.ndarray, s after start
    hb_phone: object
    ft_t: object
    ft_phone: object
    ft_pga: object
    burst_t: object = None
    burst_phone: object = None
    sub_topics: list = field(default_factory=list)
    creds: dict = field(default_factory=dict)  # pseudonym -> security.Credential (enrolled)


def speakers(o: "LoadOptions", plan: Plan) -> list[str]:
    """The pseudonyms of the phones that will send anything in the run (to enrol)."""
    import numpy as np

    if o.connect:
        return sorted(plan.net.device_ids(list(range(o.devices)), plan.day))
    phones = [plan.hb_phone, plan.ft_phone]
    if o.quake and o.burst:
        phones.append(plan.burst_phone)
    ph = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in phones]))
    ids = set(plan.net.device_ids(ph.tolist(), plan.day)) if len(ph) else set()
    if o.quake and not o.burst:
        ids.update(m.device_id for m in plan.net.messages(heartbeats="none"))
    return sorted(ids)


def enrol(api: str, pseudonyms: list[str], chunk: int = 2000, api_key: str | None = None) -> dict:
    """Enrol ``pseudonyms`` at the server's API (``POST /api/enrol``); returns pseudonym ->
    Credential. LoadError if the server refuses any (enrolled before: another run of
    the same seed the same day). With an operator ``api_key`` the server takes the phones
    as vouched for; without it they enrolled themselves a moment ago and their triggers do
    not count toward announcing a quake until ``new_device_s`` has passed (docs/security.md)."""
    from .security import Credential

    creds = {}
    for i in range(0, len(pseudonyms), chunk):
        body = json.dumps({"pseudonyms": pseudonyms[i : i + chunk]}).encode()
        headers = {"Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        req = urllib.request.Request(api.rstrip("/") + "/api/enrol", data=body, method="POST", headers=headers)
        for attempt in range(ENROL_RETRIES + 1):
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    got = json.loads(r.read())
                break
            except urllib.error.HTTPError as exc:
                # the API's rate limit (a million phones are 500 requests): wait as told
                if exc.code != 429 or attempt == ENROL_RETRIES:
                    raise
                time.sleep(min(float(exc.headers.get("Retry-After") or 1), 30.0))
        if got["refused"]:
            raise LoadError(f"the server refused to enrol {len(got['refused'])} phones, e.g. {got['refused'][0]} "
                            "(pseudonyms are first come: use another --seed; past the server's --enrol-per-address "
                            "a day, enrol them with an operator key: --api-key-file)")
        kid = bytes.fromhex(got["kid"])
        for c in got["credentials"]:
            creds[c["device"]] = Credential(c["device"], bytes.fromhex(c["key"]), kid)
    return creds


def prepare(o: LoadOptions) -> Plan:
    """Place the devices and draw the background schedule (seeded; runs in a thread)."""
    import numpy as np

    from . import scenarios
    from .sources.simulator import SimSettings, simulate

    sc = scenarios.get(o.quake or o.region)
    base = SimSettings()
    # the background's false triggers and heartbeats are drawn here, at the asked rates;
    # the simulator's own would come twice (one heartbeat each keeps its arrays small)
    s = SimSettings(false_triggers_per_day_moving=0.0, false_triggers_per_day_stationary=0.0,
                    heartbeat_interval_s=base.pre_s + base.post_s)
    net = simulate(sc, o.devices, seed=o.seed, settings=s)
    day = datetime.fromtimestamp(sc.origin_time_s, tz=timezone.utc).strftime("%Y-%m-%d")
    rng = np.random.default_rng(np.random.SeedSequence([o.seed, 0x10AD]))
    n, d = o.devices, o.duration_s
    phase = rng.uniform(0.0, o.heartbeat_s, n)
    ts, ps = [], []
    for m in range(int(math.ceil(d / o.heartbeat_s))):
        t = phase + m * o.heartbeat_s
        sel = np.flatnonzero(t < d)
        ts.append(t[sel])
        ps.append(sel.astype(np.int64))
    hb_t, hb_phone = np.concatenate(ts), np.concatenate(ps)
    order = np.argsort(hb_t, kind="stable")
    nf = int(rng.poisson(n * o.trigger_rate_per_device_day / 86400.0 * d))
    ft_t = np.sort(rng.uniform(0.0, d, nf))
    ft_phone = rng.integers(0, n, nf)
    ft_pga = base.false_pga_gal * np.exp(0.5 * rng.standard_normal(nf))
    plan = Plan(net, day, hb_t[order], hb_phone[order], ft_t, ft_phone, ft_pga)
    if o.burst:
        # the devices the P wave reaches first, one onset each, evenly over burst_s
        first = np.argsort(net.p_arrival_s, kind="stable")[: o.burst]
        plan.burst_phone = first
        plan.burst_t = o.quake_at_s + np.arange(o.burst) * (o.burst_s / o.burst)
    if o.subscribers:
        import h3

        from . import protocol

        who = rng.choice(n, size=o.subscribers, replace=o.subscribers > n)
        plan.sub_topics = [protocol.alert_topic(h3.cell_to_parent(net.cell_str(int(c)), protocol.ALERT_CELL_RES))
                           for c in net.cell[who].tolist()]
    return plan


class _Messages:
    """Turns the plan into ``(t_rel, conn key, topic, payload, kind)`` in time order."""

    def __init__(self, o: LoadOptions, plan: Plan, t0_wall: float):
        from .sources.simulator import SimSettings

        self.o, self.p, self.t0 = o, plan, t0_wall
        self.ids: dict[int, str] = {}
        self.cells: dict[int, tuple[str, str]] = {}
        from .security import Signer

        # one signer for every stream: a phone's heartbeats, false triggers and quake
        # triggers share its seq (the server refuses a seq seen before)
        self.signer = Signer(creds=plan.creds)
        self.s = SimSettings()
        self.first_quake_sent_wall: float | None = None
        self.quake_cut = 0

    def _dev(self, ph: int) -> tuple[str, str, str]:
        from . import protocol

        dev = self.ids.get(ph)
        if dev is None:
            dev = self.ids[ph] = self.p.net.device_ids([ph], self.p.day)[0]
        cc = self.cells.get(ph)
        if cc is None:
            cell = self.p.net.cell_str(int(self.p.net.cell[ph]))
            cc = self.cells[ph] = (cell, protocol.topic_cell(cell))
        return dev, cc[0], cc[1]

    def _hb(self):
        from . import protocol

        root = protocol.TOPIC_ROOT
        for t, ph in zip(self.p.hb_t.tolist(), self.p.hb_phone.tolist()):
            dev, cell, tcell = self._dev(ph)
            msg = protocol.HeartbeatMsg(device=dev, cell=cell, sent_s=self.t0 + t, ready=True, every_s=self.o.heartbeat_s)
            yield t, ph, f"{root}/hb/{tcell}", self.signer.payload(f"{root}/hb/{tcell}", msg), "hb"

    def connect_beats(self):
        """Every device's connect heartbeat, device by device (sent when it is sent)."""
        from . import protocol

        root = protocol.TOPIC_ROOT
        every = self.o.heartbeat_s
        for ph in range(self.o.devices):
            dev, cell, tcell = self._dev(ph)
            msg = protocol.HeartbeatMsg(device=dev, cell=cell, sent_s=time.time(), ready=True, every_s=every)
            yield ph, f"{root}/hb/{tcell}", self.signer.payload(f"{root}/hb/{tcell}", msg)

    def _false(self):
        from . import protocol

        s = self.s
        root = protocol.TOPIC_ROOT
        w = 2.0 * math.pi * s.false_frequency_hz
        for t, ph, pga in zip(self.p.ft_t.tolist(), self.p.ft_phone.tolist(), self.p.ft_pga.tolist()):
            dev, cell, tcell = self._dev(ph)
            f = float(self.p.net.device_factor[ph])
            sent = self.t0 + t
            msg = protocol.TriggerMsg(
                device=dev, cell=cell, sent_s=sent, onset_s=sent - s.trigger_window_s, window_s=s.trigger_window_s,
                pga_gal=max(pga, s.noise_pga_gal * f), pgv_cm_s=pga / w, pd_cm=max(pga / w**2, s.noise_pd_cm * f),
                tau_c_s=1.0 / s.false_frequency_hz, snr=max(pga / (s.noise_pga_gal * f), 1.0),
                noise_pd_cm=s.noise_pd_cm * f, noise_pga_gal=s.noise_pga_gal * f,
                wa_horizontal_nm=max(pga / w**2 * 1e7, s.noise_wa_nm * f), wa_vertical_nm=max(pga / w**2 * 1e7, s.noise_wa_nm * f),
                noise_wa_nm=s.noise_wa_nm * f)
            yield t, ph, f"{root}/trig/{tcell}", self.signer.payload(f"{root}/trig/{tcell}", msg), "trig_false"

    def _quake(self):
        from . import scenarios
        from .sources.wire_feed import scenario_wire

        sc = scenarios.get(self.o.quake)
        shift = self.t0 + self.o.quake_at_s - sc.origin_time_s
        for arr, topic, payload in scenario_wire(self.p.net, heartbeats=False, time_shift_s=shift, signer=self.signer):
            t = arr - self.t0
            if t < 0:
                continue  # before the run: history, not news
            if t >= self.o.duration_s:
                self.quake_cut += 1
                continue  # counted, not sent: the run ends first
            yield t, zlib.crc32(topic.encode()), topic, payload, "trig_quake"

    def _burst(self):
        from . import protocol

        s, net = self.s, self.p.net
        root = protocol.TOPIC_ROOT
        for t, ph in zip(self.p.burst_t.tolist(), self.p.burst_phone.tolist()):
            if t >= self.o.duration_s:
                self.quake_cut += 1
                continue
            dev, cell, tcell = self._dev(ph)
            f = float(net.device_factor[ph])
            sent = self.t0 + t
            pga = max(s.p_to_s_pga * float(net.pga_gal[ph]), s.noise_pga_gal * f)
            msg = protocol.TriggerMsg(
                device=dev, cell=cell, sent_s=sent, onset_s=sent - s.trigger_window_s, window_s=s.trigger_window_s,
                pga_gal=pga, pgv_cm_s=0.1 * float(net.pgv_cm_s[ph]), pd_cm=max(float(net.pd3_cm[ph]), s.noise_pd_cm * f),
                snr=max(pga / (s.noise_pga_gal * f), 1.0), noise_pd_cm=s.noise_pd_cm * f,
                noise_pga_gal=s.noise_pga_gal * f, noise_wa_nm=s.noise_wa_nm * f,
                wa_horizontal_nm=max(0.1 * float(net.wa_nm[ph]), s.noise_wa_nm * f),
                wa_vertical_nm=max(0.1 * float(net.wa_nm[ph]), s.noise_wa_nm * f))
            yield t, ph, f"{root}/trig/{tcell}", self.signer.payload(f"{root}/trig/{tcell}", msg), "trig_quake"

    def __iter__(self):
        streams = [self._hb(), self._false()]
        if self.o.quake:
            streams.append(self._burst() if self.o.burst else self._quake())
        return heapq.merge(*streams, key=lambda m: m[0])


# ------------------------------------------------------------------------ publishers


class _MqttPub(asyncio.Protocol):
    """One multiplexing MQTT connection (many devices' messages). Writes pause when the
    socket's buffer is full (``resume`` is then awaited), so a slow server slows the
    sender down instead of filling its memory."""

    def __init__(self):
        from .bus.mqtt_codec import Framer

        self.framer = Framer()
        self.tr = None
        self.connack: asyncio.Future = asyncio.get_running_loop().create_future()
        self.resume = asyncio.Event()
        self.resume.set()
        self.lost = False
        self.acked = 0

    def connection_made(self, tr):
        self.tr = tr

    def connection_lost(self, exc):
        self.lost = True
        self.resume.set()
        if not self.connack.done():
            self.connack.set_exception(ConnectionError(f"connection lost before CONNACK: {exc}"))

    def pause_writing(self):
        self.resume.clear()

    def resume_writing(self):
        self.resume.set()

    def data_received(self, data):
        from .bus.mqtt_codec import CONNACK, PUBACK

        for b0, body in self.framer.feed(data):
            t = b0 >> 4
            if t == PUBACK:
                self.acked += 1
            elif t == CONNACK and not self.connack.done():
                self.connack.set_result(body[1])


class MqttTarget:
    """``--connections`` raw MQTT connections, each multiplexing many devices. Unlike a
    device's client (:class:`yujing.bus.mqtt.MqttClient` with an outbox) they hold nothing
    and never reconnect: the load generator measures the server, so a connection it loses
    is a figure of the run (``connections_lost``; each message it could not take is
    counted as a publish error), not something to make up for later by sending late."""

    def __init__(self, url: str, n: int, qos: int, prefix: str):
        self.host, self.port = loopback_target(url, ("tcp", "mqtt"))
        self.n, self.qos, self.prefix = n, qos, prefix
        self.conns: list[_MqttPub] = []
        self.pid = 0

    async def connect(self) -> None:
        from .bus.mqtt_codec import connect_packet

        loop = asyncio.get_running_loop()
        for i in range(self.n):
            try:
                _, p = await asyncio.wait_for(loop.create_connection(_MqttPub, self.host, self.port), 10)
            except (OSError, asyncio.TimeoutError) as exc:
                raise ConnectionError(f"cannot reach the MQTT broker at {self.host}:{self.port}: {exc}") from None
            p.tr.write(connect_packet(f"{self.prefix}-{i}", keepalive_s=0))
            rc = await asyncio.wait_for(p.connack, 10)
            if rc != 0:
                raise ConnectionError(f"MQTT broker at {self.host}:{self.port} refused connection {i} (CONNACK {rc})")
            self.conns.append(p)

    def send(self, key: int, topic: str, payload: bytes) -> asyncio.Event | None:
        """Write one message; returns an event to await when that connection is full,
        raises ConnectionError when it is gone."""
        from .bus.mqtt_codec import publish_packet

        c = self.conns[key % self.n]
        if c.lost:
            raise ConnectionError("connection lost")
        if self.qos:
            self.pid = self.pid % 65535 + 1
            c.tr.write(publish_packet(topic, payload, 1, False, self.pid))
        else:
            c.tr.write(publish_packet(topic, payload))
        return None if c.resume.is_set() else c.resume

    async def flush(self, sent_ok: int) -> dict:
        """Wait until every socket buffer is empty (and, at QoS 1, every PUBACK is in)."""
        t = time.monotonic()
        while time.monotonic() - t < FLUSH_TIMEOUT_S:
            buffered = sum(c.tr.get_write_buffer_size() for c in self.conns if not c.lost)
            acked = sum(c.acked for c in self.conns)
            if buffered == 0 and (not self.qos or acked >= sent_ok):
                break
            await asyncio.sleep(0.02)
        return {"acked": sum(c.acked for c in self.conns) if self.qos else None,
                "connections_lost": sum(c.lost for c in self.conns)}

    async def close(self) -> None:
        from .bus.mqtt_codec import DISCONNECT_PKT

        for c in self.conns:
            if not c.lost:
                c.tr.write(DISCONNECT_PKT)
                c.tr.close()
        await asyncio.sleep(0)


class NatsTarget:
    """Native NATS: device messages on ``yj.v1.<kind>.<cell>`` (the MQTT topic with dots,
    as NATS's own MQTT listener maps it)."""

    def __init__(self, url: str, n: int, prefix: str):
        self.host, self.port = loopback_target(url, ("nats",))
        self.url = f"nats://{self.host}:{self.port}"
        self.n, self.prefix = n, prefix
        self.conns: list = []
        self.errors = 0

    async def connect(self) -> None:
        import nats

        async def on_err(exc):
            self.errors += 1

        for i in range(self.n):
            try:
                nc = await nats.connect(self.url, name=f"{self.prefix}-{i}", connect_timeout=5, max_reconnect_attempts=0,
                                        allow_reconnect=False, error_cb=on_err)
            except Exception as exc:
                raise ConnectionError(f"cannot reach NATS at {self.url}: {exc}") from None
            self.conns.append(nc)

    def send(self, key: int, topic: str, payload: bytes):
        """Returns nats-py's publish coroutine: it only appends to the client's buffer,
        unless that is over its pending size, when it waits for a flush (back-pressure)."""
        nc = self.conns[key % self.n]
        if nc.is_closed:
            raise ConnectionError("connection closed")
        return nc.publish(topic.replace("/", "."), payload)

    async def flush(self, sent_ok: int) -> dict:
        for nc in self.conns:
            if not nc.is_closed:
                try:
                    await nc.flush(timeout=FLUSH_TIMEOUT_S)
                except Exception:
                    self.errors += 1
        return {"acked": None, "connections_lost": sum(nc.is_closed for nc in self.conns), "async_errors": self.errors}

    async def close(self) -> None:
        for nc in self.conns:
            if not nc.is_closed:
                await nc.close()


# ------------------------------------------------------------------------ alert subscribers


class _AlertSub(asyncio.Protocol):
    __slots__ = ("tr", "framer", "topic", "ready", "got", "cid")

    def __init__(self, cid: str, topic: str, ready: asyncio.Future, got: list):
        from .bus.mqtt_codec import Framer

        self.cid, self.topic, self.ready, self.got = cid, topic, ready, got
        self.framer = Framer()
        self.tr = None

    def connection_made(self, tr):
        from .bus.mqtt_codec import connect_packet

        self.tr = tr
        tr.write(connect_packet(self.cid, keepalive_s=0))

    def connection_lost(self, exc):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"{self.cid}: connection lost ({exc})"))

    def data_received(self, data):
        from .bus.mqtt_codec import CONNACK, PUBLISH, SUBACK, read_str, subscribe_packet

        now = time.time()
        for b0, body in self.framer.feed(data):
            t = b0 >> 4
            if t == PUBLISH:
                qos = (b0 >> 1) & 3
                _, k = read_str(body, 0)
                if qos:
                    self.tr.write(b"\x40\x02" + bytes(body[k : k + 2]))
                    k += 2
                self.got.append((now, bool(b0 & 1), bytes(body[k:])))
            elif t == CONNACK:
                if body[1] != 0:
                    self.ready.set_exception(ConnectionError(f"{self.cid}: CONNACK {body[1]}"))
                    return
                self.tr.write(subscribe_packet(1, [(self.topic, 1)]))
            elif t == SUBACK and not self.ready.done():
                self.ready.set_result(self)


class Subscribers:
    """Alert subscribers: raw MQTT connections (one per subscriber, as phones hold them)
    or NATS subscriptions (spread over a few connections)."""

    def __init__(self, o: LoadOptions, topics: list[str]):
        self.o, self.topics = o, topics
        self.got: list[list] = [[] for _ in topics]
        self.conns: list = []
        self.connect_s = 0.0

    async def open(self) -> None:
        t = time.perf_counter()
        if self.o.mqtt:
            await self._open_mqtt()
        else:
            await self._open_nats()
        self.connect_s = time.perf_counter() - t

    async def _open_mqtt(self) -> None:
        import resource

        host, port = loopback_target(self.o.mqtt, ("tcp", "mqtt"))
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        need = len(self.topics) + self.o.connections + 256
        if soft < need:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
            if need > hard:
                raise LoadError(f"--subscribers {len(self.topics)} needs {need} file descriptors; the limit is {hard}")
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(256)

        async def one(i: int):
            async with sem:
                fut = loop.create_future()
                cid = f"{self.o.client_prefix}-sub-{i}"
                await loop.create_connection(lambda: _AlertSub(cid, self.topics[i], fut, self.got[i]), host, port)
                self.conns.append(await asyncio.wait_for(fut, 30))

        await asyncio.gather(*(one(i) for i in range(len(self.topics))))

    async def _open_nats(self) -> None:
        import nats

        host, port = loopback_target(self.o.nats, ("nats",))
        n_conn = max(1, min(len(self.topics) // 1000 + 1, 16))
        for i in range(n_conn):
            self.conns.append(await nats.connect(f"nats://{host}:{port}", name=f"{self.o.client_prefix}-sub-{i}"))
        for i, topic in enumerate(self.topics):
            got = self.got[i]

            async def cb(msg, got=got):
                got.append((time.time(), False, msg.data))

            await self.conns[i % n_conn].subscribe(topic.replace("/", "."), cb=cb)
        for nc in self.conns:
            await nc.flush()

    async def close(self) -> None:
        from .bus.mqtt_codec import DISCONNECT_PKT

        for c in self.conns:
            if isinstance(c, _AlertSub):
                if c.tr is not None and not c.tr.is_closing():
                    c.tr.write(DISCONNECT_PKT)
                    c.tr.close()
            elif not c.is_closed:
                await c.close()

    def report(self, t0_wall: float, first_trigger_wall: float | None, origin_wall: float | None) -> dict:
        """Delivery of the alerts issued during the run (retained ones from before are
        counted apart): per subscriber the first, and every message."""
        from .wire import decode_alert

        decoded: dict[bytes, object] = {}
        old = clears = bad = 0
        first_issued, first_trig, first_origin, all_issued = [], [], [], []
        alerted = 0
        for got in self.got:
            first = None
            for t, retained, payload in got:
                if not payload:
                    clears += 1
                    continue
                a = decoded.get(payload)
                if a is None:
                    try:
                        a = decoded[payload] = decode_alert(payload)
                    except ValueError:
                        bad += 1
                        continue
                if a.issued_at_s < t0_wall:
                    old += 1
                    continue
                all_issued.append(t - a.issued_at_s)
                if first is None:
                    first = (t, a)
            if first is not None:
                alerted += 1
                t, a = first
                first_issued.append(t - a.issued_at_s)
                if first_trigger_wall is not None:
                    first_trig.append(t - first_trigger_wall)
                if origin_wall is not None:
                    first_origin.append(t - origin_wall)
        return {
            "subscribers": len(self.got),
            "connect_s": round(self.connect_s, 3),
            "alerted": alerted,
            "alert_messages": len(all_issued),
            "old_retained": old,
            "retained_clears": clears,
            "undecodable": bad,
            "alerts_seen": len({(a.alert_id, a.version) for a in decoded.values() if a.issued_at_s >= t0_wall}),
            "first_alert_from_issued_s": _dist(first_issued),
            "first_alert_from_first_trigger_s": _dist(first_trig),
            "first_alert_from_origin_s": _dist(first_origin),
            "every_alert_from_issued_s": _dist(all_issued),
        }


def _dist(xs: list[float]) -> dict | None:
    if not xs:
        return None
    xs = sorted(xs)
    q = lambda f: round(xs[min(len(xs) - 1, int(f * (len(xs) - 1) + 0.5))], 4)  # noqa: E731
    return {"n": len(xs), "min": round(xs[0], 4), "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": round(xs[-1], 4)}


# ------------------------------------------------------------------------ the server's view


def _get(url: str, timeout_s: float = 5.0, key: str | None = None) -> bytes:
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=timeout_s) as r:  # noqa: S310 (loopback, checked)
        return r.read()


async def server_view(api: str, key: str | None = None) -> dict:
    """The server's ``/health`` and the ``yujing_*`` samples of its ``/metrics`` (which
    needs an operator ``key``)."""
    base = api.rstrip("/")
    try:
        health = json.loads(await asyncio.to_thread(_get, base + "/health"))
        text = (await asyncio.to_thread(_get, base + "/metrics", 5.0, key)).decode()
    except OSError as exc:
        return {"error": f"{base}: {exc}"}
    metrics = {}
    for line in text.splitlines():
        if line.startswith("yujing_"):
            name, _, value = line.rpartition(" ")
            try:
                metrics[name] = float(value)
            except ValueError:
                pass
    return {"health": health, "metrics": metrics}


# ------------------------------------------------------------------------ the run


async def run(o: LoadOptions, plan: Plan | None = None, progress=None) -> dict:
    """One bounded run; returns the report (see :func:`format_report`)."""
    check(o)
    t_prep = time.perf_counter()
    if plan is None:
        plan = await asyncio.to_thread(prepare, o)
    if o.api and not plan.creds:
        # the phones that will speak enrol first, as real ones would each morning
        plan.creds = await asyncio.to_thread(enrol, o.api, await asyncio.to_thread(speakers, o, plan), 2000, o.api_key)
    prep_s = time.perf_counter() - t_prep
    target = MqttTarget(o.mqtt, o.connections, o.qos, o.client_prefix) if o.mqtt else NatsTarget(o.nats, o.connections, o.client_prefix)
    subs = Subscribers(o, plan.sub_topics) if plan.sub_topics else None
    before = await server_view(o.api, o.api_key) if o.api else None
    sent: Counter = Counter()
    errors: Counter = Counter()
    conn: dict = {}
    late = {"over_1s": 0, "max_s": 0.0, "backpressure_waits": 0, "backpressure_s": 0.0}
    try:
        await target.connect()
        if subs is not None:
            await subs.open()
        msgs = _Messages(o, plan, time.time())
        if o.connect:
            conn = await _connect(o, msgs, target, errors, progress)
            if o.api:
                # the measured run starts once the server has taken the connect storm
                tw = time.monotonic()
                await _settled_view(o.api, before, conn["sent"], timeout_s=CONNECT_SETTLE_MAX_S, key=o.api_key)
                conn["server_settled_s"] = round(time.monotonic() - tw, 2)
                before = await server_view(o.api, o.api_key)
        t0_wall = time.time()
        t0 = time.monotonic()
        msgs.t0 = t0_wall
        origin_wall = t0_wall + o.quake_at_s if o.quake else None
        n = 0
        # a watchdog: whatever happens, the sender stops (duration + a margin)
        async with asyncio.timeout(o.duration_s + 30.0):
            for t, key, topic, payload, kind in msgs:
                now = time.monotonic() - t0
                if now >= o.duration_s:
                    break
                # rate cap: never faster than max_rate on average over the run
                wait = max(t - now, n / o.max_rate - now)
                if wait > 0.002:
                    await asyncio.sleep(wait)
                    now = time.monotonic() - t0
                lag = now - t
                if lag > late["max_s"]:
                    late["max_s"] = lag
                if lag > 1.0:
                    late["over_1s"] += 1
                try:
                    full = target.send(key, topic, payload)
                    if full is not None and not isinstance(full, asyncio.Event):
                        await full  # NATS: the publish coroutine
                        full = None
                except Exception as exc:  # a lost connection, a NATS error: counted
                    errors[kind] += 1
                    if errors[kind] == 1:
                        log.warning("publish failed: %s", exc)
                    continue
                if kind == "trig_quake" and msgs.first_quake_sent_wall is None:
                    msgs.first_quake_sent_wall = time.time()
                sent[kind] += 1
                n += 1
                if full is not None:
                    tw = time.monotonic()
                    await full.wait()
                    late["backpressure_waits"] += 1
                    late["backpressure_s"] += time.monotonic() - tw
                elif n % 256 == 0:
                    await asyncio.sleep(0)
                if progress is not None and n % 20_000 == 0:
                    progress(n, now)
        send_s = time.monotonic() - t0
        flush = await target.flush(sum(sent.values()) + conn.get("sent", 0))
        if flush.get("async_errors"):
            errors["nats_async"] = flush["async_errors"]
        if o.qos and flush["acked"] is not None:
            errors["unacked"] = max(0, sum(sent.values()) + conn.get("sent", 0) - flush["acked"])
        # late alerts: the quake's last messages were just sent
        if subs is not None and o.drain_s:
            await asyncio.sleep(o.drain_s)
    finally:
        await target.close()
        if subs is not None:
            await subs.close()
    after = None
    if o.api:
        after = await _settled_view(o.api, before, sum(sent.values()), key=o.api_key)
    total = sum(sent.values())
    asked = (len(plan.hb_t) + len(plan.ft_t)) / o.duration_s
    rep = {
        "target": o.mqtt or o.nats,
        "options": asdict(o),
        "prepare_s": round(prep_s, 2),
        "send_s": round(send_s, 2),
        "sent": dict(sent),
        "sent_total": total,
        "rate_achieved_per_s": round(total / send_s, 1) if send_s else None,
        "background_rate_asked_per_s": round(asked, 1),
        "background_rate_achieved_per_s": round((sent["hb"] + sent["trig_false"]) / min(send_s, o.duration_s), 1),
        "late": {"over_1s": late["over_1s"], "max_s": round(late["max_s"], 3),
                 "backpressure_waits": late["backpressure_waits"], "backpressure_s": round(late["backpressure_s"], 3)},
        "publish_errors": dict(errors),
        "publish_errors_total": sum(errors.values()),
        "connections_lost": flush["connections_lost"],
        "quake_messages_cut_by_duration": msgs.quake_cut,
        "first_quake_trigger_after_start_s": (round(msgs.first_quake_sent_wall - t0_wall, 3)
                                              if msgs.first_quake_sent_wall else None),
        "devices_heard": len(msgs.ids),
        "connect": conn,
    }
    if subs is not None:
        rep["alerts"] = subs.report(t0_wall, msgs.first_quake_sent_wall, origin_wall)
    if o.api:
        rep["server"] = _server_delta(before, after, total)
    return rep


async def _connect(o: LoadOptions, msgs: _Messages, target, errors: Counter, progress=None) -> dict:
    """Every device's connect heartbeat, at the rate cap, before the measured run."""
    t0 = time.monotonic()
    n = 0
    async with asyncio.timeout(o.devices / o.max_rate + 60.0):
        for key, topic, payload in msgs.connect_beats():
            wait = n / o.max_rate - (time.monotonic() - t0)
            if wait > 0.002:
                await asyncio.sleep(wait)
            try:
                full = target.send(key, topic, payload)
                if full is not None and not isinstance(full, asyncio.Event):
                    await full
                    full = None
            except Exception as exc:
                errors["hb_connect"] += 1
                if errors["hb_connect"] == 1:
                    log.warning("publish failed: %s", exc)
                continue
            n += 1
            if full is not None:
                await full.wait()
            elif n % 256 == 0:
                await asyncio.sleep(0)
            if progress is not None and n % 100_000 == 0:
                progress(n, time.monotonic() - t0)
    await target.flush(n)
    return {"sent": n, "send_s": round(time.monotonic() - t0, 2)}


async def _settled_view(api: str, before: dict, sent: int, timeout_s: float = 15.0, key: str | None = None) -> dict:
    """The server's view once it has taken what was sent (or stopped changing)."""
    want = before.get("health", {}).get("received", 0) + sent
    last, same_since = None, time.monotonic()
    t = time.monotonic()
    while True:
        v = await server_view(api, key)
        h = v.get("health", {})
        if "error" in v or (h.get("received", 0) >= want and h.get("queue", 0) == 0):
            return v
        rec = h.get("received")
        if rec != last:
            last, same_since = rec, time.monotonic()
        if time.monotonic() - same_since > 2.0 or time.monotonic() - t > timeout_s:
            return v
        await asyncio.sleep(0.1)


def _server_delta(before: dict, after: dict, sent: int) -> dict:
    if "error" in before or "error" in after:
        return {"error": before.get("error") or after.get("error")}
    hb, ha = before["health"], after["health"]
    mb, ma = before["metrics"], after["metrics"]
    return {
        "received": ha["received"] - hb["received"],
        "rejected": ha["rejected"] - hb["rejected"],
        "received_equals_sent": ha["received"] - hb["received"] == sent,
        "alerts_issued": ha["alerts"] - hb["alerts"],
        "events": ha["events"],
        "devices_online": ha["devices_online"],
        "queue": ha["queue"],
        "alert_latency_p50_ms": ha.get("alert_latency_p50_ms"),
        "status": ha["status"],
        "metrics_delta": {k: round(v - mb.get(k, 0.0), 6) for k, v in ma.items()
                          if math.isfinite(v) and math.isfinite(mb.get(k, 0.0)) and v != mb.get(k, 0.0)},
        "health_after": ha,
    }


def format_report(r: dict) -> str:
    L = []
    o = r["options"]
    L.append(f"yujing load -> {r['target']}: {o['devices']:,} devices over {o['connections']} connections, "
             f"{o['duration_s']:g} s{', quake ' + o['quake'] + ' at ' + format(o['quake_at_s'], 'g') + ' s' if o['quake'] else ''}"
             f"{', burst ' + format(o['burst'], ',') + ' in ' + format(o['burst_s'], 'g') + ' s' if o['burst'] else ''}")
    L.append(f"  prepared in {r['prepare_s']:.1f} s; sent for {r['send_s']:.1f} s")
    c = r.get("connect") or {}
    if c:
        L.append(f"  connect phase (before the run): {c['sent']:,} heartbeats in {c['send_s']:.1f} s"
                 + (f"; the server took them {c['server_settled_s']:.1f} s later" if "server_settled_s" in c else ""))
    s = r["sent"]
    L.append(f"  sent: {r['sent_total']:,} messages ({', '.join(f'{k} {v:,}' for k, v in sorted(s.items()))})")
    L.append(f"  rate: {r['rate_achieved_per_s']:,.0f}/s overall; background {r['background_rate_achieved_per_s']:,.1f}/s "
             f"achieved vs {r['background_rate_asked_per_s']:,.1f}/s asked; late > 1 s: {r['late']['over_1s']:,} "
             f"(max {r['late']['max_s']:.3f} s); waited {r['late']['backpressure_s']:.1f} s on full sockets "
             f"({r['late']['backpressure_waits']:,} times: the server reading slower than asked)")
    L.append(f"  publish errors: {r['publish_errors_total']:,} {r['publish_errors'] or ''}; connections lost: {r['connections_lost']}")
    if o["quake"]:
        L.append(f"  quake: first trigger sent {r['first_quake_trigger_after_start_s']} s into the run; "
                 f"{r['quake_messages_cut_by_duration']:,} quake messages after the end not sent")
    a = r.get("alerts")
    if a:
        L.append(f"  subscribers: {a['subscribers']:,} connected in {a['connect_s']:.2f} s; {a['alerted']:,} alerted, "
                 f"{a['alert_messages']:,} alert messages of {a['alerts_seen']} alert versions "
                 f"({a['old_retained']} old retained, {a['retained_clears']} clears ignored)")
        for key, label in (("first_alert_from_issued_s", "first alert, from its issued time"),
                           ("first_alert_from_first_trigger_s", "first alert, from the quake's first trigger sent"),
                           ("first_alert_from_origin_s", "first alert, from the quake's origin"),
                           ("every_alert_from_issued_s", "every alert message, from issued")):
            d = a.get(key)
            if d:
                L.append(f"    {label}: p50 {d['p50']:.3f} s, p90 {d['p90']:.3f} s, max {d['max']:.3f} s (n={d['n']:,})")
    sv = r.get("server")
    if sv:
        if "error" in sv:
            L.append(f"  server: {sv['error']}")
        else:
            ok = "== sent" if sv["received_equals_sent"] else f"!= sent {r['sent_total']:,}"
            L.append(f"  server: received {sv['received']:,} ({ok}), rejected {sv['rejected']:,}, alerts issued "
                     f"{sv['alerts_issued']}, events {sv['events']}, devices online {sv['devices_online']:,}, "
                     f"queue {sv['queue']}, status {sv['status']}, alert latency p50 {sv['alert_latency_p50_ms']} ms")
    return "\n".join(L)


# ------------------------------------------------------------------------ command line


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``yujing load`` to the ``yujing`` command's subparsers."""
    p = subparsers.add_parser(
        "load",
        help="bounded load generator: N simulated devices, background traffic and a quake, against a local server",
        description=(
            "Simulate N devices (a million is fine) over a few MQTT or NATS connections against a server on this "
            "machine: heartbeats, false triggers and, optionally, a simulated earthquake, in real time; optionally hold "
            "alert subscribers and time the alerts. Loopback only; stops by itself after --duration-s (at most "
            f"{MAX_DURATION_S:.0f} s)."
        ),
    )
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--mqtt", metavar="tcp://127.0.0.1:PORT", help="an MQTT broker on this machine (yujing serve's, Mosquitto, NATS's MQTT listener)")
    t.add_argument("--nats", metavar="nats://127.0.0.1:PORT", help="NATS on this machine: subjects yj.v1.<kind>.<cell>")
    p.add_argument("--devices", type=int, default=100_000, help=f"simulated devices (default 100,000; at most {MAX_DEVICES:,})")
    p.add_argument("--connections", type=int, default=8, help=f"connections the devices share (default 8; at most {MAX_CONNECTIONS})")
    p.add_argument("--duration-s", type=float, default=60.0, help=f"length of the run, s (default 60; at most {MAX_DURATION_S:.0f})")
    p.add_argument("--heartbeat-s", type=float, default=600.0, help="each device's heartbeat period, s (default 600; the protocol allows 10-3600)")
    p.add_argument("--no-connect", dest="connect", action="store_false",
                   help="skip the connect phase (by default every device first sends its connect heartbeat, at the rate cap, "
                        "and with --api the run starts once the server has taken them): the run then meets a server that "
                        "has heard from nobody, a cold start")
    p.add_argument("--trigger-rate-per-device-day", type=float, default=1.0, help="false triggers per device per day (default 1)")
    p.add_argument("--quake", metavar="SCENARIO", help="a scenario key (e.g. luding2022): its triggers and updates, shifted to now")
    p.add_argument("--quake-at-s", type=float, default=10.0, help="the quake's origin, s into the run (default 10)")
    p.add_argument("--burst", type=int, default=0, metavar="N",
                   help="instead of the simulated quake messages: N onset triggers from the devices nearest in P time, over --burst-s")
    p.add_argument("--burst-s", type=float, default=10.0, help="length of the burst, s (default 10)")
    p.add_argument("--region", default="luding2022", help="scenario whose region holds the devices when there is no --quake")
    p.add_argument("--subscribers", type=int, default=0, help=f"alert subscribers to hold and time (default 0; at most {MAX_SUBSCRIBERS:,})")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1), help="device messages' QoS on MQTT (1 counts PUBACKs; default 0)")
    p.add_argument("--max-rate", type=float, default=50_000.0, help=f"messages per second at most (default 50,000; hard limit {MAX_RATE:,.0f})")
    p.add_argument("--drain-s", type=float, default=5.0, help="wait after the run for late alerts, s (default 5)")
    p.add_argument("--seed", type=int, default=0, help="seed of placement, schedule and quake (default 0)")
    p.add_argument("--api", metavar="http://127.0.0.1:PORT", help="the server's HTTP API: report its /health and /metrics")
    p.add_argument("--api-key-file", metavar="PATH",
                   help="file holding an operator key (e.g. yujing.db.operator-key, which yujing serve writes): for "
                        "/metrics, and to vouch for the phones it enrols (without it they are new devices, whose "
                        "triggers do not announce a quake for the server's new_device_s)")
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")
    p.add_argument("--quiet", "-q", action="store_true", help="only the report")
    p.set_defaults(func=main)
    return p


def options_from_args(a) -> LoadOptions:
    return LoadOptions(mqtt=a.mqtt, nats=a.nats, devices=a.devices, connections=a.connections, duration_s=a.duration_s,
                       heartbeat_s=a.heartbeat_s, connect=a.connect, trigger_rate_per_device_day=a.trigger_rate_per_device_day,
                       quake=a.quake, quake_at_s=a.quake_at_s, burst=a.burst, burst_s=a.burst_s, region=a.region,
                       subscribers=a.subscribers, qos=a.qos, max_rate=a.max_rate, drain_s=a.drain_s, seed=a.seed,
                       api=a.api, api_key=Path(a.api_key_file).read_text().strip() if a.api_key_file else None)


def main(args) -> int:
    """``yujing load``: 0 when every message was sent, 1 on publish errors, 2 refused."""
    o = options_from_args(args)
    try:
        check(o)
    except LoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    def progress(n, t):
        if not args.quiet:
            print(f"  {t:6.1f} s  {n:,} messages sent", file=sys.stderr)

    if not args.quiet:
        print(f"preparing {o.devices:,} devices...", file=sys.stderr)
    try:
        rep = asyncio.run(run(o, progress=progress))
    except (ConnectionError, LoadError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(rep))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1, default=str)
    return 1 if rep["publish_errors_total"] else 0


def _cli(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m yujing.load")
    sub = ap.add_subparsers(dest="command", required=True)
    add_parser(sub)
    a = ap.parse_args(["load", *(sys.argv[1:] if argv is None else argv)])
    return a.func(a)


if __name__ == "__main__":
    raise SystemExit(_cli())
