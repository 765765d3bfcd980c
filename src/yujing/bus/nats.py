"""NATS JetStream plumbing of the scale-out (:mod:`yujing.scaleout` is the logic).

Names on the NATS side
======================

=====================  ==========================================  ==========================
name                   what                                        written by
=====================  ==========================================  ==========================
stream ``YJ_IN``       device messages, ``yj.v1.<kind>.<res5>``    devices, over NATS's MQTT
                       (trig, pkt, hb, hello, consent); file       listener (``yj/v1/...``
                       storage, R3 on a cluster, 1 h               topics become these
                                                                   subjects)
stream ``YJ_OUT``      announced event updates and alerts, JSON:   the announcing worker only
                       ``yj.event.<id>``, ``yj.alert.<id>``
KV ``YJ_LEASES``       ``worker.<id>`` (alive), ``region.<cell>``  every worker, renewed every 
                       (owner); the bucket's max age is the lease  ``ttl/4``
                       TTL: a key not renewed disappears
KV ``YJ_EVENTS``       ``claims`` (recent events, one key so that  the announcing worker
                       a compare-and-set serialises claims),
                       ``ev.<id>`` (announcer, versions sent)
``yj.v1.alert.<res3>`` alerts to devices, retained, published      the announcing worker
                       over MQTT (NATS keeps retained messages
                       only for MQTT publishers)
=====================  ==========================================  ==========================

:class:`StreamReader` reads ``YJ_IN`` in stream order through an ephemeral pull consumer it
re-creates at the next stream sequence when the consumer or its server goes away, so a
reader never skips a message the stream still holds and never sees one twice (messages
deleted or aged out before it got to them are counted in ``missing``) (the client's own "ordered consumer"
gives up when re-creating fails during a leader election; this one retries).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass
from urllib.parse import urlparse

import nats
import nats.errors
import nats.js.errors
from nats.js import api

log = logging.getLogger(__name__)

STREAM_IN = "YJ_IN"
IN_SUBJECTS = [f"yj.v1.{k}.*" for k in ("trig", "pkt", "hb", "hello", "consent")]
STREAM_OUT = "YJ_OUT"
OUT_SUBJECTS = ["yj.event.>", "yj.alert.>"]
KV_LEASES = "YJ_LEASES"
KV_EVENTS = "YJ_EVENTS"
#: Header that, in simulation mode only, carries a message's scripted arrival time (UNIX s)
#: instead of the stream's timestamp: tests replay a quake into the stream at full speed.
ARRIVAL_HEADER = "Yj-Arrival-S"


def _arrival_header(m) -> float | None:
    """The simulation-mode arrival time, or None: anyone who may publish device messages
    can set headers, and a value that is not a number must not stop a reader."""
    hdr = m.headers.get(ARRIVAL_HEADER) if m.headers else None
    if hdr is None:
        return None
    try:
        return float(hdr)
    except ValueError:
        return None


def parse_nats_url(url: str) -> list[str]:
    """``nats://host:port[,host:port...]`` -> ``["nats://host:port", ...]`` (port 4222 by
    default)."""
    if not url.startswith("nats://"):
        raise ValueError(f"--bus {url!r}: expected nats://host:port[,host:port...]")
    out = []
    for part in url[len("nats://"):].split(","):
        part = part.strip()
        if part.startswith("nats://"):
            part = part[len("nats://"):]
        u = urlparse(f"nats://{part}")
        if not u.hostname:
            raise ValueError(f"--bus {url!r}: {part!r} is not host:port")
        out.append(f"nats://{u.hostname}:{u.port or 4222}")
    return out


async def connect(servers: list[str], name: str, connect_timeout_s: float = 5.0):
    """A connection that reconnects forever, quickly (a node lost in a cluster costs a
    fraction of a second, not the default 2 s per attempt), in the order given."""

    async def _err(exc):  # the client logs through this; a dead node is not an error here
        log.debug("nats %s: %s", name, exc)

    try:
        return await nats.connect(
            servers=servers,
            name=name,
            connect_timeout=connect_timeout_s,
            reconnect_time_wait=0.2,
            max_reconnect_attempts=-1,
            dont_randomize=True,
            ping_interval=2,
            max_outstanding_pings=2,
            error_cb=_err,
        )
    except (OSError, nats.errors.NoServersError, asyncio.TimeoutError) as exc:
        raise ConnectionError(f"cannot reach NATS at {', '.join(servers)}: {exc}; is nats-server running with JetStream?") from None


def cluster_size(nc) -> int:
    """Servers in the cluster as the connected server announces them (1 when alone)."""
    info = getattr(nc, "_server_info", {}) or {}
    urls = set(info.get("connect_urls") or [])
    return max(1, len(urls)) if info.get("cluster") else 1


async def wait_ready(js, timeout_s: float = 30.0) -> None:
    """Wait until JetStream answers (a fresh cluster elects its meta leader first)."""
    t0 = asyncio.get_running_loop().time()
    while True:
        try:
            await js.account_info()
            return
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError) as exc:
            if asyncio.get_running_loop().time() - t0 > timeout_s:
                raise ConnectionError(f"JetStream is not available after {timeout_s:.0f} s ({exc}); is nats-server "
                                      "running with a jetstream {} block (and, on a cluster, a quorum of nodes up)?") from None
            await asyncio.sleep(0.2)


async def ensure_jetstream(js, replicas: int, in_max_age_s: float = 3600.0, lease_ttl_s: float = 3.0,
                           out_max_age_s: float = 7 * 86400.0):
    """Create (or keep) the streams and KV buckets; returns ``(leases, events)`` KV handles.
    Idempotent: every worker calls it at start."""
    await wait_ready(js)
    streams = [
        api.StreamConfig(name=STREAM_IN, subjects=IN_SUBJECTS, storage=api.StorageType.FILE, num_replicas=replicas,
                         max_age=in_max_age_s, duplicate_window=60.0),
        api.StreamConfig(name=STREAM_OUT, subjects=OUT_SUBJECTS, storage=api.StorageType.FILE, num_replicas=replicas,
                         max_age=out_max_age_s, duplicate_window=120.0),
    ]
    for cfg in streams:
        try:
            await js.stream_info(cfg.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(cfg)
            except nats.js.errors.BadRequestError as exc:
                if "already in use" not in str(exc):  # another worker created it meanwhile
                    raise
    kvs = []
    for bucket, ttl in ((KV_LEASES, lease_ttl_s), (KV_EVENTS, 86400.0)):
        try:
            kvs.append(await js.key_value(bucket))
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
            kvs.append(await js.create_key_value(api.KeyValueConfig(bucket=bucket, ttl=ttl, history=1, replicas=replicas,
                                                                    storage=api.StorageType.FILE)))
    return kvs[0], kvs[1]


@dataclass(frozen=True, slots=True)
class InMsg:
    """One message of ``YJ_IN``: stream sequence, subject, payload, stream time (UNIX s),
    messages still pending after it, and the simulation arrival header if any."""

    seq: int
    subject: str
    data: bytes
    stream_time_s: float
    pending: int
    arrival_header_s: float | None


class StreamReader:
    """Every message of ``YJ_IN`` from a start time (or sequence) on, in stream order, with
    no gap: see the module docstring. ``await read(batch, timeout_s)`` returns a list (empty
    when nothing came within the timeout)."""

    def __init__(self, js, start_time_s: float | None = None, start_seq: int | None = None, name: str = "yj"):
        self.js = js
        self.next_seq = start_seq
        self.missing = 0  # messages that were gone when the reader got to them
        self.start_time_s = start_time_s
        self.name = name
        self._sub = None
        self.recreated = 0
        self._idle = 0

    async def _open(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
            self._sub = None
        cfg = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, inactive_threshold=30.0, mem_storage=True, num_replicas=1,
                                 max_waiting=8)
        if self.next_seq is not None:
            cfg.deliver_policy, cfg.opt_start_seq = api.DeliverPolicy.BY_START_SEQUENCE, self.next_seq
        elif self.start_time_s is not None:
            cfg.deliver_policy = api.DeliverPolicy.BY_START_TIME
            cfg.opt_start_time = dt.datetime.fromtimestamp(self.start_time_s, tz=dt.timezone.utc)
        else:
            cfg.deliver_policy = api.DeliverPolicy.ALL
        self._sub = await self.js.pull_subscribe("yj.v1.>", stream=STREAM_IN, config=cfg)
        self.recreated += 1

    async def read(self, batch: int = 512, timeout_s: float = 0.1) -> list[InMsg]:
        try:
            if self._sub is None:
                await self._open()
            msgs = await self._sub.fetch(batch, timeout=timeout_s)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            self._idle += 1
            if self._idle % 10 == 0:  # idle for a second: is the consumer still there?
                await self._check()
            return []
        except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
            log.info("stream reader %s: %s; re-creating its consumer", self.name, exc)
            await self._reset()
            return []
        self._idle = 0
        out = []
        for m in msgs:
            md = m.metadata
            seq = md.sequence.stream
            if self.next_seq is not None and seq != self.next_seq:
                if seq < self.next_seq:
                    continue  # already seen (a re-created consumer overlapping)
                # a consumer starts at the first message that exists from next_seq on: a
                # gap means the missing ones are gone (deleted, aged out); re-reading would
                # find the same gap forever
                log.warning("stream reader %s: messages %d-%d are gone from the stream; going on", self.name, self.next_seq, seq - 1)
                self.missing += seq - self.next_seq
            self.next_seq = seq + 1
            out.append(InMsg(seq, m.subject, m.data, md.timestamp.timestamp(), md.num_pending, _arrival_header(m)))
        return out

    async def _check(self) -> None:
        try:
            await self._sub.consumer_info()
        except Exception as exc:
            log.info("stream reader %s: consumer gone (%s); re-creating", self.name, exc)
            await self._reset()

    async def _reset(self) -> None:
        try:
            await self._open()
        except Exception as exc:  # no quorum yet, or our server is the one that died
            log.info("stream reader %s: cannot re-create the consumer yet: %s", self.name, exc)
            self._sub = None
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
