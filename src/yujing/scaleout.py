"""Scale-out over NATS JetStream: engine workers that own regions, and announce once.

The flow (docs/scale-out.md has the why and the figures):

1. Devices publish over MQTT to NATS's MQTT listener; ``yj/v1/<kind>/<res5>`` becomes
   ``yj.v1.<kind>.<res5>``, kept by the stream ``YJ_IN`` (:mod:`yujing.bus.nats`). A
   message's arrival time is the stream's timestamp of it, so a worker that reads the
   stream again after a restart sees the same arrival times: a replay is deterministic.
2. A *region* is an H3 cell of resolution ``region_res`` (1: ~600,000 km^2). Each region
   has one owner at a time, a lease ``region.<cell>`` in the KV bucket ``YJ_LEASES``
   whose max age is the lease TTL: a worker renews its leases every TTL/4; a dead
   worker's leases vanish and the desired owner among the live workers (a worker that
   lists the region as home, else rendezvous hashing) takes them.
3. A worker runs its engine(s) in *shards*: one :class:`~yujing.service.Service` each,
   reading ``YJ_IN`` in stream order (:class:`~yujing.bus.nats.StreamReader`) and keeping
   the messages whose subject cell lies in the shard's *view* = its regions plus a halo
   of neighbouring regions at least ``halo_km`` wide (filtered on the subject's cell
   token, the payload is not decoded). Regions taken over later get a new shard that
   starts ``lookback_s`` back in the stream, so the taker rebuilds the state of the
   region from the durable stream while its other shards carry on live.
4. Announcing: every shard that sees an event decides through ``YJ_EVENTS``: the key
   ``claims`` lists recent events (epicentre, origin time, global id); a compare-and-set
   on that one key serialises claims, so of two workers that detect one quake near a
   border, the second finds the first's claim (within ``match_km`` and ``match_s``) and
   follows. A worker claims at once when it owns the region of its epicentre (or nobody
   does); otherwise it waits ``defer_s`` of engine time for the owner's claim first
   (two engines can put one epicentre on both sides of a border). ``ev.<id>`` names the
   announcer and counts the versions sent; every announcement is a compare-and-set on
   it, so a worker that was taken for dead and comes back cannot announce over the new
   announcer. When the announcer's worker key lapses, a follower takes over under the
   same ids and re-sends the last alert (at least once to devices on a takeover).
5. Announcements go to the stream ``YJ_OUT`` (``yj.event.<id>``, ``yj.alert.<id>``, with
   a ``Nats-Msg-Id`` so a retried publish is stored once) and, for alerts, over MQTT to
   ``yj/v1/alert/<res3>``, retained (NATS keeps retained messages only for MQTT
   publishers: a plain NATS publish on ``yj.v1.alert.<res3>`` reaches connected phones
   but not one that subscribes later).

Why ids need the claims: an engine names an event after the second of its first origin
time estimate (:meth:`yujing.associate.Associator._new_id`); two engines that see different
subsets of the triggers can put that estimate on either side of a second, and a second
event in the same second gets a letter. The global id is the id of the first claim.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import h3
import msgspec
import nats.errors
import nats.js.api
import nats.js.errors

from .bus import nats as ynats
from .bus.memory import MemoryBus
from .bus.mqtt import MqttClient, MqttLink, parse_mqtt_url
from .geo import distance_km
from .records import Alert, EventUpdate
from .security import Issuer, local_issuer
from .service import ManualClock, Service, ServiceConfig
from .settings import Settings

log = logging.getLogger(__name__)

_JSON = msgspec.json.Encoder()
_KV_ERRORS = (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError, OSError)


@dataclass(frozen=True)
class WorkerConfig:
    """One engine worker. Times in seconds, distances in km."""

    worker_id: str
    home_regions: tuple[str, ...] = ()  # regions this worker owns whenever it is alive
    region_res: int = 1  # H3 resolution of a region
    halo_km: float = 300.0  # a shard sees at least this far beyond its regions
    lease_ttl_s: float = 3.0  # a silent worker loses its regions after this long
    lookback_s: float = 300.0  # a new shard starts this far back in the stream
    defer_s: float = 1.0  # engine time a non-owner waits for the owner's claim
    match_km: float = 100.0  # two workers' events closer than this ...
    match_s: float = 20.0  # ... and this in origin time are one quake
    arrival: str = "stream"  # "stream": the stream's timestamp; "header": ARRIVAL_HEADER (simulation)
    live_grace_s: float = 0.25  # the engine clock trails the wall clock this much when idle
    replicas: int | None = None  # streams and buckets; None: 3 on a cluster, 1 alone
    nats_retry_s: float = 30.0  # a KV or stream call retried this long, then the step gives up (counted)
    stop_timeout_s: float = 10.0  # crash()/stop() wait this long for tasks, the MQTT link and NATS
    # enrolments are shared through the KV bucket YJ_ENROL (first come across the
    # deployment); its entries live this long at most: the retention period (a retention
    # purge of the worker lowers it to the period it applies, see SharedIssuer.forget_before)
    enrol_ttl_s: float = 7 * 86400.0
    enrol_timeout_s: float = 5.0  # an enrolment request waits this long for the bucket, then fails closed


def config_from_env(env=os.environ, worker_id: str | None = None) -> WorkerConfig:
    """``YJ_WORKER_ID`` (default: host-pid), ``YJ_REGIONS`` (comma-separated H3 cells),
    ``YJ_REGION_RES``, ``YJ_HALO_KM``, ``YJ_LEASE_TTL_S``: until the CLI has flags."""
    wid = worker_id or env.get("YJ_WORKER_ID") or f"{os.uname().nodename}-{os.getpid()}"
    regions = tuple(r.strip() for r in env.get("YJ_REGIONS", "").split(",") if r.strip())
    res = int(env.get("YJ_REGION_RES", "1"))
    for r in regions:
        if not h3.is_valid_cell(r) or h3.get_resolution(r) != res:
            raise ValueError(f"YJ_REGIONS: {r!r} is not an H3 cell of resolution {res} (YJ_REGION_RES)")
    ttl = float(env.get("YJ_ENROL_TTL_S", str(7 * 86400.0)))
    if not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"YJ_ENROL_TTL_S must be a positive number of seconds, got {ttl!r}")
    return WorkerConfig(worker_id=_safe_id(wid), home_regions=regions, region_res=res,
                        halo_km=float(env.get("YJ_HALO_KM", "300")), lease_ttl_s=float(env.get("YJ_LEASE_TTL_S", "3")),
                        enrol_ttl_s=ttl)


def _safe_id(s: str) -> str:
    """KV keys and subjects take [-_A-Za-z0-9]."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in s)


# ----------------------------------------------------------------------------- regions


def halo_rings(res: int, halo_km: float) -> int:
    """Rings of neighbours (``grid_disk`` k) that reach at least ``halo_km``: a ring is at
    least one cell across, and the smallest H3 cells are ~0.6x the average edge."""
    width_km = math.sqrt(3.0) * h3.average_hexagon_edge_length(res, unit="km") * 0.6
    return max(1, math.ceil(halo_km / width_km))


def halo(regions, res: int, halo_km: float) -> frozenset[str]:
    k = halo_rings(res, halo_km)
    out: set[str] = set()
    for r in regions:
        out.update(h3.grid_disk(r, k))
    return frozenset(out)


def rendezvous(region: str, workers) -> str | None:
    """The worker that should own ``region`` among ``workers`` (highest random weight:
    a worker leaving moves only its own regions)."""
    best, owner = b"", None
    for w in sorted(workers):
        h = hashlib.blake2b(f"{w}|{region}".encode(), digest_size=8).digest()
        if h > best:
            best, owner = h, w
    return owner


# ----------------------------------------------------------------------------- enrolments

#: KV buckets of the device credentials: the enrolled pseudonyms (entries expire with the
#: retention period) and the deployment's record (key id of the master, grace period).
KV_ENROL = "YJ_ENROL"
#: each worker's count of enrolments per client address and UTC day (api.auth.DailyQuota),
#: under "<what>.<keyed hash of the address prefix>.<day>.<worker id, hex>"; kept two days
KV_QUOTA = "YJ_QUOTA"
_QUOTA_PERSON = b"yj-quota-kv"
KV_CREDS = "YJ_CREDS"
_DEPLOYMENT_KEY = "deployment"
_KV_PERSON = b"yj-enrol-kv"

# The pseudonyms one enrolment request enrolled and has not yet put into the bucket. The
# API enrols a request's pseudonyms (Issuer.enrol, on the event loop) and then calls
# Issuer.flush_log (in a worker thread, asyncio.to_thread) before any key leaves: that
# thread runs in a copy of the request's context, so it shares exactly its own request's
# pseudonyms, never another's.
_BATCH: contextvars.ContextVar["_Batch | None"] = contextvars.ContextVar("yj_enrol_batch", default=None)


class _Batch:
    __slots__ = ("items", "done")

    def __init__(self):
        self.items: list[str] = []
        self.done = False


try:  # the API turns it into its HTTP answer (409, 503) rather than a 500
    from starlette.exceptions import HTTPException as _HTTPError
except ImportError:  # pragma: no cover - the API's dependencies are installed with the package
    class _HTTPError(Exception):
        def __init__(self, status_code: int, detail: str):
            super().__init__(detail)
            self.status_code, self.detail = status_code, detail


class EnrolmentNotShared(_HTTPError):
    """An enrolment request whose pseudonyms could not all be created in the deployment's
    bucket (another worker enrolled one of them at the same moment, or NATS did not
    answer): none of its keys may leave, and none of its pseudonyms stays enrolled.
    ``status_code`` 409 (first come lost) or 503 (NATS), ``detail`` says which."""

    def __init__(self, status_code: int, detail: str):
        super().__init__(status_code, detail)

    def __str__(self) -> str:
        return f"{self.status_code}: {self.detail}"


class SharedIssuer(Issuer):
    """An :class:`~yujing.security.Issuer` whose enrolments hold across the workers of a
    scale-out. Every worker of a deployment has the same master (the same credentials
    file: a device's key is derived from it, so any worker verifies any device); the
    enrolled set is shared through the KV bucket ``YJ_ENROL``:

    * an enrolment is a ``create`` of the pseudonym's key (keyed BLAKE2b of the pseudonym
      under the master, so subject names say nothing) with ``{"p": pseudonym, "t":
      enrolled at, "v": vouched}`` as its value. ``create`` fails when the key exists:
      first come holds across workers, atomically;
    * every worker watches the bucket and imports its entries (``enrolled``, ``vouched``),
      so :meth:`is_new` answers the same on each (the engine's defence against enrolled
      fakes); a worker that starts later imports what is there before it takes devices;
    * the bucket's max age is the retention period: entries expire as the enrolled set
      does (:meth:`forget_before` lowers it to the period a retention purge applies).

    :meth:`enrol` (on the event loop, per pseudonym) only reserves the pseudonym; the
    request's :meth:`flush_log` (in a worker thread, before the keys leave, as the API
    calls it) creates the request's keys in the bucket. If one of them exists already
    (another worker was faster, by the few ms its entry takes to arrive here) or NATS does
    not answer within ``timeout_s``, the request's keys that were created are deleted again,
    nothing of it stays enrolled and :class:`EnrolmentNotShared` is raised (an HTTP 409 or
    503 through the API): no key leaves for a pseudonym this worker did not win. Without a
    bucket (not started) it is a plain Issuer."""

    def __init__(self, master: bytes | None = None, max_enrolled: int = 5_000_000):
        super().__init__(master, max_enrolled)
        self.kv = None  # the YJ_ENROL bucket, once the worker has started
        self.loop: asyncio.AbstractEventLoop | None = None
        self.timeout_s = 5.0
        self.closed = False  # the worker stopped: enrolments are refused (never made here alone)
        self.clock = time.time  # the retention purge's clock (server UNIX s)
        self.ttl_s: float | None = None  # the bucket's max age, as last seen or set
        self._reserved: dict[str, tuple[float, bool]] = {}  # enrolled here, not yet in the bucket
        self._recent: OrderedDict[str, str] = OrderedDict()  # bucket key -> pseudonym, for deletes
        self._cutoff = -math.inf  # the newest retention cut-off applied
        self._collect: set[str] | None = None  # while a worker starts: the pseudonyms imported
        self.counts = {"shared": 0, "imported": 0, "lost_race": 0, "not_shared": 0, "removed": 0}

    def kv_key(self, pseudonym: str) -> str:
        """The bucket key of ``pseudonym``: keyed BLAKE2b under the master (hex), so that
        the stream's subject names (listed to anyone who may read stream info) name no
        pseudonym, and any characters a pseudonym has are fine."""
        return hashlib.blake2b(pseudonym.encode(), key=self.master[:64], digest_size=16, person=_KV_PERSON).hexdigest()

    def enrol(self, pseudonym: str, now_s: float, vouched: bool = False):
        if self.closed:
            raise ValueError("this worker is stopping: enrol through another")
        if self.kv is None:
            return super().enrol(pseudonym, now_s, vouched)
        if not isinstance(pseudonym, str) or not 1 <= len(pseudonym) <= 64:
            raise ValueError("a pseudonym is 1-64 characters")
        if pseudonym in self.enrolled or pseudonym in self._reserved:
            raise ValueError(f"pseudonym {pseudonym!r} is enrolled already (pseudonyms are first come)")
        # stamped with the server's clock, not ``now_s``: the API passes its Service's clock,
        # which on a worker is a shard's engine clock (message time: 0 before the shard's
        # first step, minutes back while it catches up), and an enrolment stamped 0 would
        # never count as new and be purged at once
        self._reserved[pseudonym] = (self.clock(), bool(vouched))
        b = _BATCH.get()
        if b is None or b.done:
            b = _Batch()
            _BATCH.set(b)
        b.items.append(pseudonym)
        return self.credential(pseudonym)

    def flush_log(self) -> None:
        b = _BATCH.get()
        if b is not None and not b.done and b.items and self.loop is not None:
            b.done = True
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self.loop:
                # blocking here would stop the loop that must run the creates
                self._drop([p for p in b.items])
                raise RuntimeError("SharedIssuer.flush_log after enrol must run in a worker thread (asyncio.to_thread)")
            fut = asyncio.run_coroutine_threadsafe(self.share(b.items), self.loop)
            fut.result(self.timeout_s + 5.0)
        super().flush_log()

    def _drop(self, pseudonyms) -> None:
        for p in pseudonyms:
            self._reserved.pop(p, None)

    async def share(self, pseudonyms: list[str]) -> None:
        """Create the bucket keys of ``pseudonyms`` (reserved by :meth:`enrol`); all are
        enrolled here then, or none (:class:`EnrolmentNotShared`). On the event loop."""
        items = [(p, *self._reserved[p]) for p in pseudonyms if p in self._reserved]
        kv = self.kv

        async def create(p, t, v):
            body = json.dumps({"p": p, "t": t, "v": v}).encode()
            return await kv.create(self.kv_key(p), body)

        tasks = [asyncio.ensure_future(create(*it)) for it in items]
        done, pending = await asyncio.wait(tasks, timeout=self.timeout_s) if tasks else (set(), set())
        for t in pending:
            t.cancel()
        lost, failed, made = [], [], []
        for (p, t, v), task in zip(items, tasks):
            if task in pending or task.cancelled():
                failed.append(p)
            elif isinstance(task.exception(), nats.js.errors.KeyWrongLastSequenceError):
                lost.append(p)
            elif task.exception() is not None:
                failed.append(p)
            else:
                made.append((p, task.result()))
        if not lost and not failed:
            for p, t, v in items:
                self._reserved.pop(p, None)
                # Issuer.enrol: the table's size bound and the log record (the worker's own file)
                self.enrolled.pop(p, None)
                Issuer.enrol(self, p, t, v)
            self.counts["shared"] += len(items)
            return
        # all or nothing: the keys this request created go again, none of its keys leaves
        self._drop(pseudonyms)
        self.counts["lost_race" if lost else "not_shared"] += 1
        for p, rev in made:
            try:
                await asyncio.wait_for(kv.delete(self.kv_key(p), last=rev), self.timeout_s)
            except (nats.js.errors.KeyWrongLastSequenceError,) + _KV_ERRORS as exc:
                # left in the bucket: that pseudonym stays enrolled (burnt for the day) in the deployment
                log.error("enrolment rollback: could not delete a bucket entry (%s); its pseudonym stays enrolled", exc)
        for p in lost:  # the winner's entry: refuse the pseudonym here at once (its watch event may still be on its way)
            try:
                self._import(self.kv_key(p), (await kv.get(self.kv_key(p))).value)
            except (nats.js.errors.KeyNotFoundError,) + _KV_ERRORS:
                pass
        if lost:
            raise EnrolmentNotShared(409, f"{len(lost)} of the request's pseudonyms were enrolled through another worker "
                                          f"at the same moment (first come); nothing of this request was enrolled")
        raise EnrolmentNotShared(503, f"the deployment's enrolment bucket did not answer for {len(failed)} pseudonyms "
                                      f"within {self.timeout_s:.0f} s; nothing of this request was enrolled, try again")

    def watched(self, key: str, value: bytes | None, operation: str | None) -> None:
        """An event of the worker's watch on the bucket."""
        if operation in ("DEL", "PURGE"):
            self._removed(key)
        else:
            self._import(key, value)

    def _import(self, key: str, value: bytes | None) -> None:
        """An entry of the bucket (a put from any worker, this one's included)."""
        if value is None:
            return
        try:
            d = json.loads(value)
            p, t, v = d["p"], float(d["t"]), bool(d["v"])
        except (ValueError, KeyError, TypeError):
            log.warning("enrolment bucket: an entry that is not an enrolment (%d bytes); ignored", len(value))
            return
        if not isinstance(p, str) or t < self._cutoff or p in self._reserved:
            return  # older than retention keeps; or this worker's own, not yet shared
        if self._collect is not None:
            self._collect.add(p)
        self._recent[key] = p
        if len(self._recent) > 100_000:
            self._recent.popitem(last=False)
        if self.enrolled.get(p) != t:
            self.enrolled[p] = t
            self.counts["imported"] += 1
        if v:
            self.vouched.add(p)
        else:
            self.vouched.discard(p)

    def _removed(self, key: str) -> None:
        """A delete in the bucket (an enrolment rolled back by the worker that made it)."""
        p = self._recent.pop(key, None)
        if p is not None and p not in self._reserved and p in self.enrolled:
            del self.enrolled[p]
            self.vouched.discard(p)
            self.counts["removed"] += 1

    def forget_before(self, t_s: float) -> int:
        """Drop enrolments older than ``t_s`` here, and make the bucket keep its entries no
        longer than the period this purge applies (``clock() - t_s``): the shortest period
        of any worker wins, the direction that keeps no pseudonym too long."""
        self._cutoff = max(self._cutoff, t_s)
        n = super().forget_before(t_s)
        period = self.clock() - t_s
        if self.kv is not None and self.loop is not None and period > 0 and (self.ttl_s is None or period < self.ttl_s * 0.999):
            self.ttl_s = period
            coro = _set_max_age(self.kv, period)
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is self.loop:
                self.loop.create_task(coro)
            else:
                asyncio.run_coroutine_threadsafe(coro, self.loop)
        return n


async def _set_max_age(kv, max_age_s: float) -> None:
    """Lower the max age of a KV bucket's stream (entries older go at once)."""
    js, name = kv._js, kv._stream
    try:
        info = await js.stream_info(name)
        cfg = info.config
        if cfg.max_age is None or cfg.max_age == 0 or cfg.max_age > max_age_s:
            cfg.max_age = max_age_s
            # the duplicate window may not exceed the max age
            if cfg.duplicate_window and cfg.duplicate_window > max_age_s:
                cfg.duplicate_window = max_age_s
            await js.update_stream(cfg)
            log.info("enrolment bucket %s: entries now kept %.0f s (the retention period)", name, max_age_s)
    except _KV_ERRORS as exc:
        log.error("enrolment bucket %s: could not set its max age to %.0f s: %s", name, max_age_s, exc)


# ----------------------------------------------------------------------------- shards


class Shard:
    """One engine over the messages of its view, driven on message time (see the module
    docstring). ``regions`` are the regions it was made for (owned while leased)."""

    def __init__(self, worker: "Worker", name: str, regions: set[str], start_time_s: float | None):
        self.w = worker
        self.name = name
        self.regions = set(regions)
        self.view = halo(regions, worker.cfg.region_res, worker.cfg.halo_km) if regions else frozenset()
        self.clock = ManualClock()
        self.svc = Service(worker.settings, MemoryBus(), None, config=worker.service_config, clock=self.clock,
                           issuer=worker.issuer)
        self.reader = ynats.StreamReader(worker.js, start_time_s=start_time_s, name=f"{worker.cfg.worker_id}/{name}")
        self.t: float | None = None  # engine time, s
        self.next_tick: float | None = None
        self.live = False
        self.live_from_s = -math.inf  # updates issued before this are history (catch-up)
        self.fed = 0
        self.late = 0
        self.task: asyncio.Task | None = None
        self.local_gid: dict[str, str] = {}  # local event id -> global id
        self.pending: dict[str, float] = {}  # local event id -> engine time first seen unclaimed

    def covers(self, region: str) -> bool:
        return halo([region], self.w.cfg.region_res, self.w.cfg.halo_km) <= self.view

    async def run(self) -> None:
        self.svc.bus.subscribe("yj.>", self._on_output, critical=True)
        step = self.svc.config.step_s
        header = self.w.cfg.arrival == "header"
        slice_s = 0.02  # the engine yields the loop this often: leases and announcements must not wait
        while True:
            msgs = await self.reader.read()
            t_yield = time.perf_counter()
            for m in msgs:
                if time.perf_counter() - t_yield > slice_s:
                    await asyncio.sleep(0)
                    t_yield = time.perf_counter()
                token = m.subject.rsplit(".", 1)[-1]
                region = self.w.region_of_token(token)
                if region not in self.view:
                    continue
                arr = m.arrival_header_s if header and m.arrival_header_s is not None else m.stream_time_s
                if self.t is not None and arr < self.t:
                    self.late += 1  # stamped before our clock moved on (clock steps between servers)
                    arr = self.t
                try:
                    self._advance(arr, step)
                    self.svc.receive(m.subject, m.data, arr)
                except Exception:
                    # the shard must outlive any one message or step (as the single
                    # engine's loop does), or its regions go silent while leased
                    self.w.errors += 1
                    log.exception("shard %s: engine step failed", self.name)
                self.fed += 1
            if msgs:
                try:
                    self.svc.process_queue()
                except Exception:
                    self.w.errors += 1
                    log.exception("shard %s: engine step failed", self.name)
                if not self.live and msgs[-1].pending == 0:
                    self._go_live()
            elif not self.live:
                self._go_live()
            elif not header:
                # nothing new: the engine clock follows the wall clock (a little behind, so
                # a message stamped just before a step is not taken after it)
                now = time.time() - self.w.cfg.live_grace_s
                if self.t is None or now > self.t:
                    self._advance(now, step)
            if self.pending:
                try:
                    await self.w.resolve_pending(self)
                except _KV_ERRORS as exc:
                    # NATS unreachable for longer than the retry bound: the events stay
                    # pending and are tried again next round; the shard goes on reading
                    self.w.errors += 1
                    log.warning("shard %s: resolving pending events failed (%s)", self.name, exc)
            await asyncio.sleep(0)

    def _advance(self, t: float, step: float) -> None:
        if self.next_tick is None:
            self.next_tick = t + step
        while self.next_tick <= t:
            self.clock.t_s = self.next_tick
            self.svc.process_queue()
            self.svc.fire_timer()
            self.next_tick += step
        self.t = t
        self.clock.t_s = t

    def _go_live(self) -> None:
        self.live = True
        self.live_from_s = self.t if self.t is not None else -math.inf
        log.info("shard %s/%s live after %d messages", self.w.cfg.worker_id, self.name, self.fed)
        self.w.spawn(self.w.sweep(self))

    async def _on_output(self, subject: str, obj) -> None:
        if isinstance(obj, EventUpdate):
            await self.w.on_update(self, obj)
        elif isinstance(obj, Alert):
            await self.w.on_alert(self, obj)


# ----------------------------------------------------------------------------- announcing


class _NullService:
    """What :class:`MqttLink` needs of a service, for a link that only sends alerts."""

    def __init__(self, bus: MemoryBus, clock):
        self.bus = bus
        self.clock = clock

    def receive(self, topic, payload, arrival_s=None) -> bool:
        return False


class AlertLink(MqttLink):
    """An :class:`MqttLink` that sends announced alerts (retained, per area) and takes no
    device messages (those come from the stream), over the first reachable of several
    MQTT listeners (the nodes of the NATS cluster)."""

    def __init__(self, urls: list[str], bus: MemoryBus, retain_s: float, client_id: str):
        super().__init__(urls[0], _NullService(bus, time.time), retain_s=retain_s, client_id=client_id)
        self.urls = [parse_mqtt_url(u) for u in urls]
        self._next = 0

    async def _connect(self) -> None:
        last = None
        for _ in range(len(self.urls)):
            self.host, self.port = self.urls[self._next % len(self.urls)]
            self.client = MqttClient(self.host, self.port, self.client_id)
            try:
                await self.client.connect(timeout_s=2.0)
                self.counts["connects"] += 1
                return
            except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
                last = exc
                self._next += 1
        raise ConnectionError(f"no MQTT listener reachable: {last}")


@dataclass
class _Announcing:
    shard: Shard
    local_id: str
    rec: dict
    rev: int
    sent_u: int = 0  # updates this worker announced since it became the announcer
    sent_a: int = 0  # alerts likewise
    last_u: EventUpdate | None = None  # the engine's record last announced (identity: never twice)
    last_a: Alert | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one announcement of an event at a time


@dataclass
class Announcement:
    """What a worker announced (for tests and metrics)."""

    kind: str  # "event" or "alert"
    obj: EventUpdate | Alert
    worker: str
    wall_s: float


class Worker:
    """An engine worker: regions, shards, leases, announcements. ``servers``: NATS URLs;
    ``mqtt_urls``: the cluster's MQTT listeners, for alerts to devices (None: no MQTT)."""

    def __init__(self, servers: list[str], cfg: WorkerConfig, settings: Settings | None = None,
                 service_config: ServiceConfig | None = None, mqtt_urls: list[str] | None = None, store=None,
                 on_announce: Callable[[Announcement], None] | None = None):
        self.servers = servers
        self.cfg = cfg
        self.settings = settings or Settings()
        cfg_svc = service_config or ServiceConfig()
        # one issuer for all shards (shards come and go with regions; an enrolment made
        # through the API must hold in each), kept in the credentials file by the worker
        self.credentials_file = cfg_svc.credentials_file
        # without a credentials file: this process's issuer (what its own replays sign
        # with); give a scale-out a credentials file, or a restart makes every phone
        # enrol again as new (docs/security.md)
        # Every worker of a deployment must have the same master (a device's key is derived
        # from it): give them all the same credentials file (start() checks the master's key
        # id against the deployment's record in YJ_CREDS). The enrolled set is shared through
        # YJ_ENROL (SharedIssuer).
        if self.credentials_file:
            self.issuer = SharedIssuer.load(self.credentials_file)
        else:
            self.issuer = SharedIssuer(local_issuer().master)
            self.issuer.fresh = False  # the process's own master: its replays verify, no grace to give
        self.issuer.timeout_s = cfg.enrol_timeout_s
        # token accounts and tokens on the server's clock too, as enrolments: the API's
        # Service clock is a shard's engine clock (0 before its first step), and an account
        # opened at 0 would get 'est' tokens once that clock reaches UNIX time
        self.issuer.tokens.clock = self.issuer.clock
        self.service_config = msgspec.structs.replace(cfg_svc, credentials_file="")
        self.mqtt_urls = mqtt_urls
        self.store = store
        self.on_announce = on_announce
        self.nc = self.js = self.leases = self.events = self.enrolments = self.creds_kv = None
        self.quota_kv = None  # YJ_QUOTA: the per-address enrolment counts (share_quota)
        self._quotas: dict = {}  # "pseudonym"/"account" -> this worker's API's DailyQuota
        self.enrolments_ready = asyncio.Event()  # the bucket's entries at start are imported
        self.shards: list[Shard] = []
        self.owned: dict[str, int] = {}  # region -> lease revision
        self.alive: set[str] = set()
        self.homes: dict[str, tuple[str, ...]] = {}  # live worker -> its home regions
        self.leased: set[str] = set()  # regions someone holds
        self.seen_regions: set[str] = set()
        self._token_region: dict[str, str] = {}
        self.announcing: dict[str, _Announcing] = {}  # gid -> state, for events we announce
        # gid -> (lat, lon, origin s) of the newest update this worker announced: a claim
        # keeps the first, rough location, and an engine that splits one quake (after a
        # gap in the data, a node's death) must still find the quake it already announced
        self.latest_loc: dict[str, tuple[float, float, float]] = {}
        self.last_alert: dict[str, Alert] = {}  # gid -> newest alert on YJ_OUT (anyone's)
        self.announced: list[Announcement] = []
        self.alert_bus = MemoryBus()
        self.link: AlertLink | None = None
        self._tasks: list[asyncio.Task] = []
        self._lock = asyncio.Lock()  # claims and takeovers, one at a time per worker
        self.errors = 0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self.nc = await ynats.connect(self.servers, f"yujing-worker-{self.cfg.worker_id}")
        self.js = self.nc.jetstream(timeout=2.0)
        replicas = self.cfg.replicas or min(3, ynats.cluster_size(self.nc))
        self.leases, self.events = await ynats.ensure_jetstream(self.js, replicas, lease_ttl_s=self.cfg.lease_ttl_s)
        await self._start_enrolments(replicas)  # before any shard (a Service) exists or a device is heard
        await self._start_quotas(replicas)
        await self._discover_regions()
        await self.nc.subscribe("yj.alert.>", cb=self._out_alert)
        if self.store is not None:
            await self.nc.subscribe("yj.event.>", cb=self._out_event)
        if self.mqtt_urls:
            self.link = AlertLink(self.mqtt_urls, self.alert_bus, self.service_config.alert_retain_s,
                                  client_id=f"yujing-{self.cfg.worker_id}")
            await self.link.start()
        await self._lease_round()  # own regions before the first shard decides its view
        self._tasks.append(asyncio.get_running_loop().create_task(self._lease_loop(), name="leases"))

    async def _start_enrolments(self, replicas: int) -> None:
        """The deployment's credentials: check that this worker's master is the
        deployment's (the first worker to start records its key id in ``YJ_CREDS``),
        adopt the deployment's grace period, and import the enrolments of ``YJ_ENROL``
        (then keep watching it) before any device message is taken."""
        iss = self.issuer
        buckets = []
        for bucket, ttl in ((KV_CREDS, None), (KV_ENROL, self.cfg.enrol_ttl_s)):
            try:
                buckets.append(await self.js.key_value(bucket))
            except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
                try:
                    buckets.append(await self.js.create_key_value(nats.js.api.KeyValueConfig(
                        bucket=bucket, ttl=ttl, history=1, replicas=replicas, storage=nats.js.api.StorageType.FILE)))
                except nats.js.errors.BadRequestError:  # another worker made it meanwhile
                    buckets.append(await self.js.key_value(bucket))
        self.creds_kv, self.enrolments = buckets
        info = await self.js.stream_info(f"KV_{KV_ENROL}")
        iss.ttl_s = info.config.max_age or None
        # a master made just now (the deployment's first start) gives its first hours'
        # enrolments grace (see Service); the whole deployment must agree on it
        grace = iss.grace_until_s
        new_s = self.settings.associate.new_device_s
        if iss.fresh and grace == -math.inf and new_s > 0:
            grace = time.time() + new_s
        rec = {"kid": iss.kid.hex(), "grace_until_s": grace if math.isfinite(grace) else None}
        try:
            await self.creds_kv.create(_DEPLOYMENT_KEY, json.dumps(rec).encode())
            log.info("worker %s: first of the deployment; credentials key id %s recorded", self.cfg.worker_id, rec["kid"])
        except nats.js.errors.KeyWrongLastSequenceError:
            rec = json.loads((await self.creds_kv.get(_DEPLOYMENT_KEY)).value)
            if rec.get("kid") != iss.kid.hex():
                raise RuntimeError(
                    f"worker {self.cfg.worker_id}: its credentials master (key id {iss.kid.hex()}) is not the deployment's "
                    f"({rec.get('kid')}): every worker needs the same credentials file (--credentials-file, a copy of the "
                    f"first worker's), or the devices it did not enrol are refused here (docs/scale-out.md)")
        g = rec.get("grace_until_s")
        g = -math.inf if g is None else float(g)
        if g != iss.grace_until_s:
            await asyncio.to_thread(iss.set_grace, g)
        if math.isfinite(g) and iss.fresh:
            log.warning("new device credentials: devices enrolled until %s count as established in the whole deployment",
                        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(g)))
        iss.fresh = False  # the Services of the shards must not set a grace of their own
        iss.loop = asyncio.get_running_loop()
        iss._collect = set()  # the pseudonyms the bucket has at start
        ready = self.enrolments_ready
        self._tasks.append(iss.loop.create_task(self._watch_enrolments(ready), name="enrolments"))
        try:
            await asyncio.wait_for(ready.wait(), self.cfg.nats_retry_s)
        except asyncio.TimeoutError:
            raise RuntimeError(f"worker {self.cfg.worker_id}: the enrolments in {KV_ENROL} could not be read "
                               f"within {self.cfg.nats_retry_s:.0f} s") from None
        # enrolments in this worker's file that the bucket does not have (made before the
        # deployment shared them): offered to the bucket, first come as always
        in_bucket, iss._collect = iss._collect, None
        oldest = time.time() - (iss.ttl_s or math.inf)
        mine = [(p, t) for p, t in iss.enrolled.items() if p not in in_bucket and t >= oldest]
        for p, t in mine:
            try:
                await self.enrolments.create(iss.kv_key(p), json.dumps({"p": p, "t": t, "v": p in iss.vouched}).encode())
            except nats.js.errors.KeyWrongLastSequenceError:
                pass  # made meanwhile by another worker: its entry is imported by the watch
            except _KV_ERRORS as exc:
                log.warning("worker %s: an enrolment of its file could not be offered to %s (%s)", self.cfg.worker_id,
                            KV_ENROL, exc)
        iss.kv = self.enrolments  # from now on every enrolment goes through the bucket
        log.info("worker %s: %d enrolments of the deployment imported", self.cfg.worker_id, len(iss.enrolled))

    async def _start_quotas(self, replicas: int) -> None:
        """The bucket the workers' per-address enrolment counts meet in (``YJ_QUOTA``),
        and a watch that hands each worker's counts to the others (:meth:`share_quota`)."""
        try:
            self.quota_kv = await self.js.key_value(KV_QUOTA)
        except (nats.js.errors.BucketNotFoundError, nats.js.errors.NotFoundError):
            try:
                self.quota_kv = await self.js.create_key_value(nats.js.api.KeyValueConfig(
                    bucket=KV_QUOTA, ttl=2 * 86_400.0, history=1, replicas=replicas,
                    storage=nats.js.api.StorageType.FILE))
            except nats.js.errors.BadRequestError:  # another worker made it meanwhile
                self.quota_kv = await self.js.key_value(KV_QUOTA)
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_quotas(), name="quotas"))

    def share_quota(self, quota, what: str) -> None:
        """Count ``quota`` (an :class:`~yujing.api.auth.DailyQuota` of this worker's API;
        ``what``: "pseudonym" or "account") across the deployment: its counts go to
        ``YJ_QUOTA`` as they change, the other workers' come back into it. Eventually
        consistent: requests on two workers within the few ms a count takes to arrive can
        both be granted. The address prefix is hashed under the master, as pseudonyms are
        in ``YJ_ENROL``: the bucket holds no address."""
        me = self.cfg.worker_id.encode().hex()
        master = self.issuer.master

        def key_of(prefix: str) -> str:
            return hashlib.blake2b(prefix.encode(), key=master[:64], digest_size=16, person=_QUOTA_PERSON).hexdigest()

        def on_use(key: str, day: int, count: int) -> None:
            if self.quota_kv is None or self._closed:
                return
            self.spawn(self._put_quota(f"{what}.{key}.{day}.{me}", count))

        quota.key_of, quota.on_use = key_of, on_use
        self._quotas[what] = quota

    async def _put_quota(self, key: str, count: int) -> None:
        try:
            await self.quota_kv.put(key, str(count).encode())
        except _KV_ERRORS as exc:  # the count stays local; the next enrolment tries again
            log.warning("worker %s: an enrolment count could not be shared through %s (%s)", self.cfg.worker_id,
                        KV_QUOTA, exc)

    async def _watch_quotas(self) -> None:
        me = self.cfg.worker_id.encode().hex()

        def take(e) -> None:
            parts = e.key.split(".")
            if not e.value or len(parts) != 4:
                return  # a delete marker, or a key no worker writes: nothing to count
            what, key, day, worker = parts
            q = self._quotas.get(what)
            if q is not None and worker != me:
                try:
                    q.merge(key, int(day), worker, int(e.value))
                except ValueError:  # not a count: skipped, never a watch broken over it
                    log.warning("worker %s: %s entry %r is not a count", self.cfg.worker_id, KV_QUOTA, e.key)

        await self._watch(self.quota_kv, KV_QUOTA, take)

    async def _watch_enrolments(self, ready: asyncio.Event) -> None:
        """Import every entry of ``YJ_ENROL`` into the issuer, for the life of the worker
        (entries imported again after a new watch change nothing)."""
        iss = self.issuer
        await self._watch(self.enrolments, KV_ENROL, lambda e: iss.watched(e.key, e.value, e.operation), ready)

    async def _watch(self, kv, bucket: str, take, ready: asyncio.Event | None = None) -> None:
        """Hand every entry of ``kv`` to ``take``, for the life of the worker; ``ready`` is
        set once the entries there were at the start are taken. A watch that breaks (its
        node died) is made again."""
        while True:
            try:
                w = await kv.watchall()
                try:
                    while True:
                        try:
                            e = await w.updates(timeout=60.0)
                        except nats.errors.TimeoutError:
                            continue
                        if e is None:
                            if ready is not None:
                                ready.set()
                            continue
                        take(e)
                finally:
                    try:
                        await w.stop()
                    except Exception:
                        pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.warning("worker %s: watching %s failed (%s); watching again", self.cfg.worker_id, bucket, exc)
                await asyncio.sleep(1.0)

    def spawn(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self._tasks.append(t)
        t.add_done_callback(self._done)
        return t

    def _done(self, t: asyncio.Task) -> None:
        if not t.cancelled() and t.exception() is not None:
            self.errors += 1
            log.error("worker %s task failed", self.cfg.worker_id, exc_info=t.exception())

    async def stop(self) -> None:
        """Leave cleanly: give the regions up at once (no TTL wait for the others)."""
        for r, rev in list(self.owned.items()):
            try:
                await self.leases.delete(f"region.{r}", last=rev)
            except _KV_ERRORS:
                pass
        try:
            await self.leases.delete(f"worker.{self.cfg.worker_id}")
        except _KV_ERRORS:
            pass
        await self.crash()
        if self.credentials_file:
            await asyncio.to_thread(self.issuer.save, self.credentials_file)

    async def crash(self) -> None:
        """Stop without a word (tests: a worker that dies). Leases lapse by themselves.
        Bounded: a task that ignores its cancellation, an MQTT link or a NATS connection
        that does not close within ``stop_timeout_s`` is logged and left behind, so that a
        stop never hangs its caller."""
        if self._closed:
            return
        self._closed = True
        self.issuer.closed = True  # no enrolment is made here any more (it could not be shared)
        bound = self.cfg.stop_timeout_s
        tasks = [*self._tasks, *(s.task for s in self.shards if s.task)]
        for t in tasks:
            t.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=bound)
            if stuck:
                log.error("worker %s: %d tasks ignored their cancellation for %.0f s: %s", self.cfg.worker_id, len(stuck),
                          bound, [t.get_name() for t in stuck])
        for s in self.shards:
            await self._bounded(s.svc.bus.close(), "a shard's bus")
            await self._bounded(s.reader.close(), "a shard's stream reader")
        if self.link is not None:
            await self._bounded(self.link.stop(), "the MQTT link")
        await self._bounded(self.alert_bus.close(), "the alert bus")
        if self.nc is not None:
            await self._bounded(self.nc.close(), "the NATS connection")

    async def _bounded(self, coro, what: str) -> None:
        try:
            async with asyncio.timeout(self.cfg.stop_timeout_s):
                await coro
        except TimeoutError:
            log.error("worker %s: %s did not close within %.0f s", self.cfg.worker_id, what, self.cfg.stop_timeout_s)
        except Exception as exc:  # closing what is already broken
            log.info("worker %s: closing %s: %s", self.cfg.worker_id, what, exc)

    @property
    def main_service(self) -> Service | None:
        return self.shards[0].svc if self.shards else None

    # ------------------------------------------------------------------ regions and leases
    def region_of_token(self, token: str) -> str | None:
        r = self._token_region.get(token)
        if r is None:
            try:
                r = h3.cell_to_parent(token, self.cfg.region_res) if h3.get_resolution(token) >= self.cfg.region_res else token
            except Exception:  # not a cell: the engine counts it when decoding; never ours
                r = ""
            self._token_region[token] = r
            if r:
                self.seen_regions.add(r)
        return r or None

    def region_of(self, lat: float, lon: float) -> str:
        return h3.latlng_to_cell(lat, lon, self.cfg.region_res)

    async def _discover_regions(self) -> None:
        """Regions with devices, from the subjects the stream holds (no payload read)."""
        try:
            info = await self.js.stream_info(ynats.STREAM_IN, subjects_filter="yj.v1.>")
        except _KV_ERRORS as exc:
            log.warning("cannot list the subjects of %s: %s", ynats.STREAM_IN, exc)
            return
        for subj in (info.state.subjects or {}):
            self.region_of_token(subj.rsplit(".", 1)[-1])

    def desired_owner(self, region: str) -> str | None:
        homes = sorted(w for w, hs in self.homes.items() if region in hs and w in self.alive)
        if homes:
            return homes[0]
        return rendezvous(region, self.alive)

    async def _lease_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.lease_ttl_s / 4)
            try:
                await self._lease_round()
            except _KV_ERRORS as exc:
                log.warning("worker %s: lease round failed: %s", self.cfg.worker_id, exc)

    async def _lease_round(self) -> None:
        me = self.cfg.worker_id
        # renew first, all at once: a late renewal loses the region (the engine's CPU
        # shares this event loop; a big engine step holds it for a few hundred ms)
        regions = list(self.owned.items())
        res = await asyncio.gather(*(self.leases.update(f"region.{r}", me.encode(), last=rev) for r, rev in regions),
                                   self.leases.put(f"worker.{me}", json.dumps({"home": list(self.cfg.home_regions)}).encode()),
                                   return_exceptions=True)
        for (r, _), x in zip(regions, res):
            if isinstance(x, nats.js.errors.KeyWrongLastSequenceError):
                log.warning("worker %s lost region %s (its lease lapsed)", me, r)
                del self.owned[r]
            elif isinstance(x, BaseException):
                log.info("worker %s: renewing region %s failed (%s); next round", me, r, x)
            else:
                self.owned[r] = x
        keys = await self._lease_keys()
        alive = {k.split(".", 1)[1] for k in keys if k.startswith("worker.")}
        for w in alive - set(self.homes):
            try:
                self.homes[w] = tuple(json.loads((await self.leases.get(f"worker.{w}")).value).get("home", ()))
            except (_KV_ERRORS + (ValueError,)):
                continue
        for w in set(self.homes) - alive:
            del self.homes[w]
        self.alive = alive | {me}
        self.leased = {k.split(".", 1)[1] for k in keys if k.startswith("region.")}
        for r in list(self.owned):  # hand a region to the worker that should have it (it came back, or joined)
            d = self.desired_owner(r)
            if d != me and d in self.homes:  # alive and known: its home, or the rendezvous winner
                try:
                    await self.leases.delete(f"region.{r}", last=self.owned[r])
                except _KV_ERRORS:
                    pass
                del self.owned[r]
        new = []
        for r in sorted((self.seen_regions | set(self.cfg.home_regions)) - set(self.owned)):
            if r in self.leased or self.desired_owner(r) != me:
                continue
            try:
                self.owned[r] = await self.leases.create(f"region.{r}", me.encode())
                new.append(r)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # someone was faster
        if new or not self.shards:
            self._place(new)
        await self._take_over_orphans()

    async def _lease_keys(self) -> list[str]:
        """Keys in the lease bucket, from the subjects its stream holds: one request (the
        client's ``keys()`` makes a consumer each time, and timed out for seconds after a
        node died). A key deleted less than a TTL ago still shows (its delete marker):
        a released region waits for the marker to age out, as a lapsed one does."""
        info = await self.js.stream_info(f"KV_{ynats.KV_LEASES}", subjects_filter=f"$KV.{ynats.KV_LEASES}.>")
        pre = len(f"$KV.{ynats.KV_LEASES}.")
        return [s[pre:] for s in (info.state.subjects or {})]

    def _place(self, regions: list[str]) -> None:
        """New regions go to a shard that already sees them with their halo; the rest get a
        new shard that rebuilds them from the stream."""
        rest = []
        for r in regions:
            s = next((s for s in self.shards if s.covers(r)), None)
            if s is not None:
                s.regions.add(r)
            else:
                rest.append(r)
        if rest or not self.shards:
            first = not self.shards
            start = None if first and self.cfg.lookback_s <= 0 else time.time() - self.cfg.lookback_s
            s = Shard(self, f"s{len(self.shards)}", set(rest), start)
            self.shards.append(s)
            s.task = self.spawn(s.run())
            log.info("worker %s: shard %s for %s (view %d regions)", self.cfg.worker_id, s.name, sorted(rest), len(s.view))

    # ------------------------------------------------------------------ events
    def _my_shard(self, name: str) -> Shard | None:
        return next((s for s in self.shards if s.name == name), None)

    async def _claims(self) -> tuple[list[dict], int]:
        try:
            e = await self.events.get("claims")
            return json.loads(e.value), e.revision
        except nats.js.errors.KeyNotFoundError:
            return [], 0

    def _match(self, claims: list[dict], u: EventUpdate) -> dict | None:
        best = None
        for c in claims:
            places = [(c["lat"], c["lon"], c["ot"])]
            if c["gid"] in self.latest_loc:
                places.append(self.latest_loc[c["gid"]])
            for lat, lon, ot in places:
                d = float(distance_km(lat, lon, u.latitude, u.longitude))
                if d <= self.cfg.match_km and abs(ot - u.origin_time_s) <= self.cfg.match_s:
                    if best is None or d < best[0]:
                        best = (d, c)
        return best[1] if best else None

    async def on_update(self, shard: Shard, u: EventUpdate) -> None:
        if not shard.live or u.issued_at_s < shard.live_from_s:
            return  # history being replayed: the sweep at the end of catch-up decides
        gid = shard.local_gid.get(u.event_id)
        if gid is None:
            if u.retracted:
                shard.pending.pop(u.event_id, None)
                return
            gid = await self._resolve(shard, u)
            if gid is None:
                return
        a = self.announcing.get(gid)
        if a is not None and a.shard is shard:
            await self._announce(gid, update=u)
        elif a is None:
            await self._maybe_take_over(shard, gid)

    async def on_alert(self, shard: Shard, al: Alert) -> None:
        if not shard.live or al.issued_at_s < shard.live_from_s:
            return
        gid = shard.local_gid.get(al.event_id)
        a = self.announcing.get(gid) if gid else None
        if a is not None and a.shard is shard:
            await self._announce(gid, alert=al)

    async def resolve_pending(self, shard: Shard) -> None:
        for lid, since in list(shard.pending.items()):
            u = shard.svc.latest.get(lid)
            if u is None or u.retracted:
                shard.pending.pop(lid, None)
                continue
            if shard.t is not None and shard.t - since >= self.cfg.defer_s:
                gid = await self._resolve(shard, u, force=True)
                if gid is not None and self.announcing.get(gid) and self.announcing[gid].shard is shard:
                    await self._announce_latest(gid)

    async def _resolve(self, shard: Shard, u: EventUpdate, force: bool = False) -> str | None:
        """The global id of a local event (claiming it if it is ours to claim), or None
        while it waits for the owner of its region."""
        deadline = time.monotonic() + self.cfg.nats_retry_s
        async with self._lock:
            while True:
                claims, rev = await self._retry(self._claims)
                c = self._match(claims, u)
                if c is not None:
                    shard.pending.pop(u.event_id, None)
                    shard.local_gid[u.event_id] = c["gid"]
                    await self._maybe_take_over(shard, c["gid"])
                    return c["gid"]
                region = self.region_of(u.latitude, u.longitude)
                ours = region in self.owned or region not in self.leased
                if not (ours or force):
                    shard.pending.setdefault(u.event_id, shard.t if shard.t is not None else u.issued_at_s)
                    return None
                taken = {c["gid"] for c in claims}
                gid, n = u.event_id, 0
                while gid in taken:
                    n += 1
                    gid = f"{u.event_id}{chr(ord('a') + n - 1)}"
                keep = [c for c in claims if abs(c["ot"] - u.origin_time_s) < 3600][-499:]
                keep.append({"gid": gid, "lat": u.latitude, "lon": u.longitude, "ot": u.origin_time_s,
                             "worker": self.cfg.worker_id})
                body = json.dumps(keep).encode()
                try:
                    if rev:
                        await self.events.update("claims", body, last=rev)
                    else:
                        await self.events.create("claims", body)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue  # someone claimed meanwhile: look again
                except _KV_ERRORS as exc:
                    if time.monotonic() >= deadline:
                        raise
                    log.warning("claim failed (%s); retrying", exc)
                    await asyncio.sleep(0.1)
                    continue
                rec = {"worker": self.cfg.worker_id, "shard": shard.name, "ev_v": 0, "al_v": 0,
                       "last_u_s": -1.0, "last_a_s": -1.0}
                erev = await self._retry(lambda: self.events.put(f"ev.{gid}", json.dumps(rec).encode()))
                shard.pending.pop(u.event_id, None)
                shard.local_gid[u.event_id] = gid
                self.announcing[gid] = _Announcing(shard, u.event_id, rec, erev)
                log.info("worker %s claims %s (region %s%s)", self.cfg.worker_id, gid, region, "" if ours else ", deferred")
                return gid

    async def _maybe_take_over(self, shard: Shard, gid: str) -> None:
        """Become the announcer of ``gid`` if its announcer is gone."""
        if gid in self.announcing:
            return
        try:
            e = await self.events.get(f"ev.{gid}")
        except nats.js.errors.KeyNotFoundError:
            # claimed, but the claimer's record is missing: it died between its two writes,
            # or its claim went through while the reply was lost. Nobody would announce the
            # quake: create the record (create is atomic, one worker wins; a claimer that
            # writes it after all wins the next compare-and-set and this worker follows)
            lid = next((k for k, g in shard.local_gid.items() if g == gid), None)
            if lid is None:
                return
            rec = {"worker": self.cfg.worker_id, "shard": shard.name, "ev_v": 0, "al_v": 0, "last_u_s": -1.0, "last_a_s": -1.0}
            try:
                rev = await self.events.create(f"ev.{gid}", json.dumps(rec).encode())
            except (nats.js.errors.KeyWrongLastSequenceError,) + _KV_ERRORS:
                return
            self.announcing[gid] = _Announcing(shard, lid, rec, rev)
            log.warning("worker %s announces %s, whose claimer left no record", self.cfg.worker_id, gid)
            return
        except _KV_ERRORS:
            return
        rec = json.loads(e.value)
        w = rec["worker"]
        # a record in this worker's own name that this process does not announce is from
        # its previous life (restarted under the same id): take it over like a dead one's
        if w in self.alive and w != self.cfg.worker_id:
            return  # alive and well: follow
        lid = next((k for k, g in shard.local_gid.items() if g == gid), None)
        if lid is None:
            return
        new = {**rec, "worker": self.cfg.worker_id, "shard": shard.name}
        try:
            rev = await self.events.update(f"ev.{gid}", json.dumps(new).encode(), last=e.revision)
        except (nats.js.errors.KeyWrongLastSequenceError,) + _KV_ERRORS:
            return  # another worker took it first, or the KV is busy: the next update retries
        self.announcing[gid] = _Announcing(shard, lid, new, rev)
        log.warning("worker %s takes over announcing %s from %s", self.cfg.worker_id, gid, w)
        prev = self.last_alert.get(gid)
        if prev is None and self.link is not None:
            # a worker that restarted has not seen the old announcer's alerts on YJ_OUT: the
            # stream keeps the last of each (its MQTT link needs the areas to cancel or clear)
            try:
                m = await self.js.get_last_msg(ynats.STREAM_OUT, f"yj.alert.{gid}")
                prev = self.last_alert[gid] = msgspec.json.decode(m.data, type=Alert)
            except (msgspec.DecodeError,) + _KV_ERRORS:
                prev = None
        if prev is not None and self.link is not None:
            # the link learns the areas the old announcer warned (for cancel and clearing),
            # and devices get the last alert again in case the old one died before sending it
            self.alert_bus.publish(f"yj.alert.{gid}", prev)
        self.spawn(self._announce_latest(gid, takeover=True))

    async def _take_over_orphans(self) -> None:
        for s in self.shards:
            for lid, gid in list(s.local_gid.items()):
                if gid not in self.announcing:
                    await self._maybe_take_over(s, gid)

    async def sweep(self, shard: Shard) -> None:
        """End of catch-up: decide, for every event the shard rebuilt, who announces."""
        for lid, u in list(shard.svc.latest.items()):
            if u.retracted or lid in shard.local_gid:
                continue
            gid = await self._resolve(shard, u)
            if gid is not None and gid in self.announcing and self.announcing[gid].shard is shard:
                await self._announce_latest(gid)

    async def _announce_latest(self, gid: str, takeover: bool = False) -> None:
        a = self.announcing.get(gid)
        if a is None:
            return
        # on a takeover the newest is sent again (the old announcer may have died between
        # deciding and sending), once: not when this worker has announced one since (the
        # sweep at the end of its catch-up may have sent the same a moment before)
        u = a.shard.svc.latest.get(a.local_id)
        if u is not None and (takeover or u.issued_at_s > a.rec["last_u_s"]):
            await self._announce(gid, update=u, resend=takeover)
        al = a.shard.svc.latest_alert.get(a.local_id)
        if al is not None and gid in self.announcing and (takeover or al.issued_at_s > a.rec["last_a_s"]):
            await self._announce(gid, alert=al, resend=takeover)

    async def _announce(self, gid: str, update: EventUpdate | None = None, alert: Alert | None = None,
                        resend: bool = False) -> None:
        """Publish one update or alert under the global ids, fenced by a compare-and-set
        on ``ev.<gid>``: a worker that lost the announcer role sends nothing. One at a
        time per event, and an engine record once: the sweep at the end of a catch-up and
        a takeover can both decide to send the newest. ``resend``: a takeover's re-send of
        the newest, made only if nothing of its kind was announced since the takeover."""
        a = self.announcing.get(gid)
        if a is None:
            return
        async with a.lock:
            if self.announcing.get(gid) is not a:
                return  # lost the role while waiting
            if update is not None:
                if update is a.last_u or (resend and a.sent_u):
                    return
            elif alert is a.last_a or (resend and a.sent_a):
                return
            await self._announce_locked(gid, update, alert)

    async def _announce_locked(self, gid: str, update: EventUpdate | None, alert: Alert | None) -> None:
        a = self.announcing[gid]
        rec = dict(a.rec)
        if update is not None:
            rec["ev_v"] += 1
            rec["last_u_s"] = update.issued_at_s
            # no pseudonyms leave the engine: the output stream is replicated and kept
            out = msgspec.structs.replace(update, event_id=gid, version=rec["ev_v"], device_ids=())
            subject, msg_id = f"yj.event.{gid}", f"{gid}/e{rec['ev_v']}"
        else:
            if alert.msg_type != "cancel" and rec["al_v"] > 0 and alert.msg_type == "alert":
                mt = "update"
            elif alert.msg_type != "cancel" and rec["al_v"] == 0:
                mt = "alert"
            else:
                mt = alert.msg_type
            rec["al_v"] += 1
            rec["last_a_s"] = alert.issued_at_s
            out = msgspec.structs.replace(alert, alert_id=f"{gid}-alert", event_id=gid, version=rec["al_v"], msg_type=mt)
            subject, msg_id = f"yj.alert.{gid}", f"{gid}/a{rec['al_v']}"
        deadline = time.monotonic() + self.cfg.nats_retry_s
        while True:
            try:
                rev = await self.events.update(f"ev.{gid}", json.dumps(rec).encode(), last=a.rev)
                break
            except nats.js.errors.KeyWrongLastSequenceError:
                e = await self._retry(lambda: self.events.get(f"ev.{gid}"))
                cur = json.loads(e.value)
                if cur["worker"] != self.cfg.worker_id or cur["shard"] != a.shard.name:
                    log.warning("worker %s: %s is announced by %s now; following", self.cfg.worker_id, gid, cur["worker"])
                    self.announcing.pop(gid, None)
                    return
                a.rec, a.rev = cur, e.revision  # our own earlier write that timed out: go on from it
                return await self._announce_locked(gid, update, alert)
            except _KV_ERRORS as exc:
                if time.monotonic() >= deadline:
                    self.errors += 1
                    log.error("announce %s: gave up after %.0f s (KV unreachable: %s)", msg_id, self.cfg.nats_retry_s, exc)
                    return
                log.info("announce %s: KV busy (%s); retrying", msg_id, exc)
                await asyncio.sleep(0.1)
        a.rec, a.rev = rec, rev
        if update is not None:
            a.sent_u += 1
            a.last_u = update
        else:
            a.sent_a += 1
            a.last_a = alert
        if update is not None and not update.retracted:
            self.latest_loc[gid] = (update.latitude, update.longitude, update.origin_time_s)
        if alert is not None:
            log.info("worker %s announces %s v%d (%s, M%.1f)", self.cfg.worker_id, out.alert_id, out.version, out.msg_type,
                     out.magnitude)
            self.alert_bus.publish(subject, out)  # devices first: the alert path is the one that is timed
        await self._retry(lambda: self.js.publish(subject, _JSON.encode(out), headers={"Nats-Msg-Id": msg_id}))
        ann = Announcement("event" if update is not None else "alert", out, self.cfg.worker_id, time.time())
        self.announced.append(ann)
        if self.on_announce is not None:
            self.on_announce(ann)

    async def _retry(self, fn):
        """``await fn()`` until it answers, for at most ``nats_retry_s`` (then the last
        error is raised: the caller's step fails and is counted, and it is tried again
        from the stream or the next update; a retry without end held a test for hours)."""
        deadline = time.monotonic() + self.cfg.nats_retry_s
        while True:
            try:
                return await fn()
            except nats.js.errors.KeyNotFoundError:
                raise
            except _KV_ERRORS as exc:
                if time.monotonic() >= deadline:
                    raise
                log.info("worker %s: NATS busy (%s); retrying", self.cfg.worker_id, exc)
                await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ YJ_OUT listeners
    async def _out_alert(self, msg) -> None:
        try:
            a = msgspec.json.decode(msg.data, type=Alert)
        except msgspec.DecodeError:
            return
        old = self.last_alert.get(a.event_id)
        if old is None or a.version > old.version:
            self.last_alert[a.event_id] = a
        if self.store is not None:
            await asyncio.to_thread(self.store.save_alert, a)

    async def _out_event(self, msg) -> None:
        try:
            u = msgspec.json.decode(msg.data, type=EventUpdate)
        except msgspec.DecodeError:
            return
        await asyncio.to_thread(self.store.save_update, u)
