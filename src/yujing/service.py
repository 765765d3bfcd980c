"""The live service's core: device messages in, event updates and alerts out, on a clock.

One :class:`Service` holds one detection engine and the alert policy. Transports (the MQTT
link, NATS, the replay control) hand it raw device messages with :meth:`Service.receive`,
which never blocks and never raises: a message is decoded at once (a bad one is counted
and dropped with its reason), stamped with its arrival time on the server clock, and
queued. One task runs the engine over the queue in arrival order and, every engine step,
feeds the heartbeats gathered since the last step and fires the engine's timer
(:meth:`yujing.engine.Engine.tick`), so the engine sees exactly what a replay of the same
messages would: the live service and a replay run the same code.

What comes out goes on the in-process bus (:mod:`yujing.bus.memory`):

=========================  ======================================  ==========================
subject                    object                                  consumers
=========================  ======================================  ==========================
``yj.event.<event_id>``    :class:`~yujing.records.EventUpdate`    store, SSE, metrics
``yj.alert.<event_id>``    :class:`~yujing.records.Alert`          MQTT to devices, store, SSE
``yj.trig``                :class:`~yujing.records.Trigger`        dashboard (non-critical)
=========================  ======================================  ==========================

The latency the service is judged by, message arrival to alert published, is measured
per alert message: ``alert published - issued_at_s`` of the update behind it, where
``issued_at_s`` is the arrival of the trigger that completed the event (or the engine step
that revised it); see :attr:`Service.alert_latency_s`.

The device registry (:class:`Registry`) keeps, per pseudonym, only its coarse cell, kind,
consent and when it was last heard, in memory, and flushes changes to the store every few
seconds. Pseudonyms rotate daily, so a row is one device-day at most.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import h3
import msgspec
import numpy as np

from . import protocol
from .alerting import AlertPolicy
from .bus.memory import MemoryBus
from .engine import Engine
from .geo import distance_km
from .records import Alert, Device, EventUpdate, Trigger
from .rejects import Rejects
from .security import Guard, GuardConfig, Issuer, local_issuer
from .settings import Settings

log = logging.getLogger(__name__)


class ServiceConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Settings of the live service (engine and alert settings are in :class:`Settings`)."""

    step_s: float = 0.25  # engine step and timer period, s
    online_s: float = 900.0  # a device heard within this long is online, s
    alert_retain_s: float = 600.0  # retained alert per area is cleared this long after its last message, s
    registry_flush_s: float = 5.0  # device registry changes reach the store this often, s
    k_anonymity: int = 10  # areas with fewer devices are not shown publicly
    max_devices: int = 5_000_000  # registry size bound: beyond it the oldest are forgotten
    recent_triggers: int = 2_000  # kept in memory for the dashboard
    # device security (docs/security.md): a served network refuses unsigned messages; a
    # development server may accept them (signed ones are still checked)
    allow_unsigned: bool = False
    rate_limits: bool = True  # per-credential and per-cell trigger limits
    # where the credential master and the enrolled pseudonyms are kept across restarts
    # ("" = in memory: every credential dies with the process)
    credentials_file: str = ""
    # the journal of accepted messages (a service given one: yujing serve with a file or
    # PostgreSQL store): how far back it is kept and replayed on start (s; the event TTL
    # plus a minute), its size bound, how often the accepted messages are written (s)
    journal_s: float = 300.0
    journal_max_rows: int = 2_000_000
    journal_flush_s: float = 0.2
    # a QoS 1 message is acknowledged to its device once the journal batch holding it is
    # written (Service.journaled); a batch whose write fails or hangs is acknowledged
    # anyway this long after its first message (s), counted: the device must not stall
    # (its in-flight window full) nor re-send forever while the database is down
    journal_ack_max_s: float = 2.0
    # a restarted service's event continues a stored one of the journal window when its
    # first estimate lies within this distance (km) and origin time (s) of it
    resume_match_km: float = 100.0
    resume_match_s: float = 20.0


#: A device's clock offset is the smallest (arrival - sent) it showed within this window
#: (s): the message that waited least in queues tells the clock; a late one does not.
CLOCK_WINDOW_S = 600.0
#: A message claiming to be sent more than this far ahead of its arrival (s) does not
#: move its device's clock estimate: one forged heartbeat "from the future" would
#: otherwise shift all the device's real triggers out of any event. Only a signed
#: message (issue 12) closes this for good, so the bound holds for unsigned messages only
#: (a development server's): a signed one from a clock minutes ahead is believed.
CLOCK_AHEAD_MAX_S = 120.0
#: process_queue feeds the triggers it gathered once this many messages were taken since
#: the first of them: the most an event update waits behind the batching is the
#: registry and door work of these messages (a few ms), far less than an engine step.
RUN_SPAN = 2048
#: The engine takes a run's triggers in pieces of at most this many, and what a piece
#: makes is published before the next piece: an event update waits for the association
#: of its own piece only (a new-event attempt costs 10-100 ms; a run can hold thousands).
FEED_CHUNK = 32
#: Onsets per device whose messages are remembered (as a bit per update number, ~90 per
#: onset) to drop repeats.
ONSETS_REMEMBERED = 4


@dataclass
class _Dev:
    cell: str
    kind: str
    first_seen_s: float
    last_seen_s: float
    raw_consent: bool = False
    off_min_s: float = math.inf  # smallest arrival - sent within the window, s
    triggers_seen: dict | None = None  # onset_s -> bit mask of the update numbers received
    off_since_s: float = -math.inf  # arrival time when the window's minimum was set

    def clock_offset(self, sent_s: float, arrival_s: float, signed: bool = False) -> float:
        """Fold one message into the clock estimate; returns the device's offset (s).
        ``signed``: the message carried a signature that verified, so its ``sent_s`` is
        the device's own word and a clock minutes ahead is taken as it is."""
        off = arrival_s - sent_s
        if off < -CLOCK_AHEAD_MAX_S and not signed:
            return off if not math.isfinite(self.off_min_s) else self.off_min_s
        if off <= self.off_min_s or arrival_s - self.off_since_s > CLOCK_WINDOW_S:
            self.off_min_s, self.off_since_s = off, arrival_s
        return self.off_min_s


class Registry:
    """Devices heard from: pseudonym -> coarse cell, kind, consent, last heard. No
    position finer than the device's own (res <= 7) cell; no history of cells."""

    def __init__(self, max_devices: int):
        self.max_devices = max_devices
        self.devs: dict[str, _Dev] = {}
        self.dirty: set[str] = set()

    def seen(self, device: str, cell: str, t_s: float, kind: str | None = None, raw_consent: bool | None = None) -> _Dev:
        d = self.devs.get(device)
        if d is None:
            if len(self.devs) >= self.max_devices:
                # dicts keep insertion order: drop the earliest-registered quarter
                for k in list(self.devs)[: self.max_devices // 4]:
                    del self.devs[k]
            d = self.devs[device] = _Dev(cell, kind or "phone", t_s, t_s)
        else:
            d.cell = cell
            d.last_seen_s = max(d.last_seen_s, t_s)
        if kind is not None:
            d.kind = kind
        if raw_consent is not None:
            d.raw_consent = raw_consent
        self.dirty.add(device)
        return d

    def online(self, now_s: float, online_s: float) -> list[tuple[str, _Dev]]:
        return [(k, d) for k, d in self.devs.items() if now_s - d.last_seen_s <= online_s]

    def per_area(self, now_s: float, online_s: float, res: int, k: int) -> tuple[dict[str, int], int]:
        """Online devices per H3 cell at ``res`` (<= 7); areas under ``k`` devices are
        left out. Returns (counts, devices in suppressed areas)."""
        res = min(int(res), protocol.DEVICE_CELL_RES)
        counts: dict[str, int] = {}
        parent_of: dict[str, str] = {}
        for _, d in self.online(now_s, online_s):
            p = parent_of.get(d.cell)
            if p is None:
                r = h3.get_resolution(d.cell)
                p = parent_of[d.cell] = d.cell if r <= res else h3.cell_to_parent(d.cell, res)
            counts[p] = counts.get(p, 0) + 1
        shown = {c: n for c, n in counts.items() if n >= k}
        return shown, sum(counts.values()) - sum(shown.values())


@dataclass
class Stats:
    received: int = 0
    accepted: dict[str, int] = field(default_factory=lambda: dict.fromkeys(protocol.KINDS, 0))
    updates: int = 0
    alerts: int = 0
    engine_busy_s: float = 0.0
    policy_busy_s: float = 0.0


class Service:
    """See the module docstring. ``clock`` returns the server time (UNIX s); tests and
    the load generator may pass their own."""

    def __init__(
        self,
        settings: Settings | None = None,
        bus: MemoryBus | None = None,
        store=None,
        devices: dict[str, Device] | None = None,
        config: ServiceConfig | None = None,
        clock: Callable[[], float] = time.time,
        issuer: Issuer | None = None,
        journal=None,
    ):
        self.settings = settings or Settings()
        self.config = config or ServiceConfig()
        self.bus = bus if bus is not None else MemoryBus()
        self.store = store
        self.clock = clock
        self.rejects = Rejects()
        self.engine = Engine(dict(devices or {}), self.settings, self.rejects, step_s=self.config.step_s)
        self.engine.split_ticks = True  # an alert goes out before the step's new-event tries
        self._listed = frozenset(devices or ())  # operator-listed fixed sensors
        self.policy = AlertPolicy(self.settings.alert)
        self.registry = Registry(self.config.max_devices)
        c = self.config
        if issuer is None:
            issuer = Issuer.load(c.credentials_file) if c.credentials_file else local_issuer()
        self.issuer = issuer
        # self-enrolled devices count toward announcing an event only once established
        self.engine.assoc.is_new = issuer.is_new
        if issuer.fresh and issuer.grace_until_s == -math.inf and self.settings.associate.new_device_s > 0:
            # a master made just now: every device enrols afresh, and were they all new the
            # network could announce nothing for new_device_s (docs/security.md)
            issuer.set_grace(clock() + self.settings.associate.new_device_s)
            log.warning("new device credentials (no credentials file, or a first start): devices enrolled in the next "
                        "%.1f h count as established; fake devices enrolled meanwhile would too", 
                        self.settings.associate.new_device_s / 3600)
        self.guard = Guard(issuer, GuardConfig(allow_unsigned=c.allow_unsigned, rate_limits=c.rate_limits,
                                               max_credentials=c.max_devices,
                                               new_device_s=self.settings.associate.new_device_s))
        self.stats = Stats()
        self.started_s = clock()
        self._queue: deque = deque()
        self._wake: asyncio.Event | None = None
        self._last_arrival = -math.inf
        self._hb: list[tuple[str, float, float, float, bool, float]] = []  # id, lat, lon, arrival, ready, every_s
        self._tasks: list[asyncio.Task] = []
        self.alert_latency_s: deque[float] = deque(maxlen=100_000)
        self.recent_triggers: deque[Trigger] = deque(maxlen=self.config.recent_triggers)
        self.latest: dict[str, EventUpdate] = {}  # event_id -> newest update
        self.latest_alert: dict[str, Alert] = {}  # event_id -> newest alert message
        self.last_store_error: str = ""
        self._warm_regions: set[str] = set()
        self._noted_cells: set[str] = set()  # cells whose region is known (a memo)
        # the journal (yujing.store.journal): accepted messages wait in _jbuf (a list
        # append per message) until the flusher writes them from a worker thread
        self.journal = journal
        self._jbuf: list | None = [] if journal is not None else None
        self.journal_written = 0
        self.journal_dropped = 0  # accepted messages the journal could not keep (counted)
        # acknowledgements waiting for the journal (journaled()): one future for the rows
        # in _jbuf, one for the rows being written
        self._jack: asyncio.Future | None = None
        self._jack_writing: asyncio.Future | None = None
        self.journal_acks_unwritten = 0  # batches acknowledged before their rows were written (time bound)
        # a restarted service (resume()): engine event id -> (published id, version offset)
        self._resume: _Resumption | None = None
        self._catching_up = False
        self._resumed_out: list[tuple[str, Any]] = []  # what resume() found unsent, for publish_resumed()
        self.resume_figures: dict[str, Any] = {}
        self.resume_alerts: list[Alert] = []  # stored alert messages of the window, for the MQTT link

    # ------------------------------------------------------------------ input
    def now(self) -> float:
        """Server clock, never going back (arrival stamps must be in order)."""
        t = self.clock()
        if t < self._last_arrival:
            t = self._last_arrival
        self._last_arrival = t
        return t

    def receive(self, topic: str, payload: bytes, arrival_s: float | None = None) -> bool:
        """Take one device message (any transport). Decodes it now and queues it for the
        engine; returns False (and counts the reason) when it cannot be used. Never
        raises, never blocks."""
        self.stats.received += 1
        arr = self.now() if arrival_s is None else arrival_s
        try:
            msg = protocol.decode(topic, payload)
            # signature, replay window and trigger rate limits, in arrival order: what is
            # refused here never reaches the queue or the engine
            self.guard.check(topic, payload, msg, arr)
        except protocol.ProtocolError as exc:
            self.rejects.add(exc.reason, f"topic {topic}", str(exc))
            return False
        except Exception as exc:  # a decoder bug must not stop the service either
            self.rejects.add("decode_error", f"topic {topic}", f"{type(exc).__name__}: {exc}")
            return False
        jb = self._jbuf
        if jb is not None:
            jb.append((arr, topic, payload))
        self._queue.append((arr, msg))
        if self._wake is not None:
            self._wake.set()
        return True

    def receive_many(self, items) -> int:
        """Take many device messages at once: ``(arrival_s, topic, payload)`` in arrival
        order (what arrived within an engine step; :func:`drive` hands them over so). The
        same as :meth:`receive` one by one: decoded together
        (:func:`~yujing.protocol.decode_batch`), checked at the door in arrival order
        (:meth:`~yujing.security.Guard.check_batch`); a bad message is counted with its
        reason and refuses only itself. Returns how many were accepted."""
        if not items:
            return 0
        arrs = [it[0] for it in items]
        topics = [it[1] for it in items]
        payloads = [it[2] for it in items]
        self.stats.received += len(items)
        msgs = protocol.decode_batch(topics, payloads)
        errs = self.guard.check_batch(topics, payloads, msgs, arrs)
        q = self._queue
        jb = self._jbuf
        rejects = self.rejects
        n = 0
        for arr, topic, payload, msg, err in zip(arrs, topics, payloads, msgs, errs):
            if err is not None:
                rejects.add(err.reason, f"topic {topic}", str(err))
                continue
            if jb is not None:
                jb.append((arr, topic, payload))
            q.append((arr, msg))
            n += 1
        if n and self._wake is not None:
            self._wake.set()
        return n

    def journaled(self) -> "asyncio.Future | None":
        """When to acknowledge (MQTT QoS 1) the message just given to :meth:`receive`: a
        future done once everything this service accepted so far is written to its journal
        — that message if it was accepted, or the first copy of one refused as a re-send
        (``replayed``) — or None when nothing waits (no journal, or all of it written):
        acknowledge now. The engine does not wait for it: it has the message already.

        The future is done at the write of the batch (every ``journal_flush_s``), or
        ``journal_ack_max_s`` after the batch's first message if the write failed or hangs
        (the rows then wait for the next round, or are dropped when the buffer is full:
        counted in ``journal_acks_unwritten`` and ``journal_dropped``), or at a clean stop
        (everything accepted was processed). Its result says whether the rows were written.
        Call it in the event loop."""
        if self._jbuf:
            f = self._jack
            if f is None or f.done():  # a new batch, or one acknowledged unwritten (time bound)
                loop = asyncio.get_running_loop()
                f = self._jack = loop.create_future()
                loop.call_later(self.config.journal_ack_max_s, self._ack_unwritten, f)
            return f
        f = self._jack_writing
        return f if f is not None and not f.done() else None

    def _ack_unwritten(self, f: asyncio.Future) -> None:
        if not f.done():
            f.set_result(False)
            self.journal_acks_unwritten += 1
            if self.journal_acks_unwritten in (1, 10, 100) or self.journal_acks_unwritten % 1000 == 0:
                log.warning("journal not written within %.1f s: messages acknowledged before it (%d batches so far); "
                            "a kill now would lose them", self.config.journal_ack_max_s, self.journal_acks_unwritten)

    def _release_acks(self) -> None:
        """Everything accepted was processed (a clean stop): acknowledge what waits."""
        for f in (self._jack, self._jack_writing):
            if f is not None and not f.done():
                f.set_result(False)
        self._jack = self._jack_writing = None

    # ------------------------------------------------------------------ running
    async def start(self) -> None:
        """Start the engine task and the registry flusher (in the running loop)."""
        self._wake = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._engine_loop(), name="engine"))
        if self.journal is not None:
            self._tasks.append(loop.create_task(self._journal_loop(), name="journal"))
        if self.store is not None:
            self._tasks.append(loop.create_task(self._flush_loop(), name="registry-flush"))
            self.bus.subscribe("yj.event.>", self._store_update, critical=True)
            self.bus.subscribe("yj.alert.>", self._store_alert, critical=True)

    async def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Process what is queued, then stop (a clean shutdown loses nothing accepted;
        what the store could not take within ``drain_timeout_s`` is logged)."""
        while self.process_queue():
            pass
        self._emit(self.engine.tick(self.now()))
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        try:
            await asyncio.wait_for(self.bus.drain(), drain_timeout_s)
        except asyncio.TimeoutError:
            log.error("outputs not drained within %.0f s at shutdown (store down?): %s", drain_timeout_s, self.last_store_error)
        if self.store is not None:
            await self._flush_registry_async()
        if self.journal is not None:
            # everything accepted was processed and its outputs stored: a clean stop needs
            # no replay, and the journal is personal data (docs/privacy.md); the devices
            # get their acknowledgements (nothing needs sending again)
            self._jbuf = None
            self._release_acks()
            try:
                await asyncio.to_thread(self.journal.clear, True)
            except Exception as exc:
                log.error("journal not cleared at shutdown (%s: %s); the next start purges it", type(exc).__name__, exc)
        if self.config.credentials_file:
            await asyncio.to_thread(self.issuer.save, self.config.credentials_file)

    def _step_due_s(self) -> float:
        """When the engine's open step closes (server clock), or inf: none is open. The
        updates of a large event wait for it (:mod:`yujing.engine`), so the timer fires
        then, not at its own period's next beat (up to a step later)."""
        e = self.engine
        return e._step_end if (e._pending or e._step_open) else math.inf

    async def _engine_loop(self) -> None:
        step = self.config.step_s
        next_tick = self.clock() + step
        while True:
            timeout = max(0.0, min(next_tick, self._step_due_s()) - self.clock())
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the
            # cancel that stop() sends (CPython gh-86296), and the loop never ends
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                self.process_queue()
                now = self.clock()
                if now >= next_tick or now >= self._step_due_s():
                    self.fire_timer()
                    if now >= next_tick:
                        next_tick = max(next_tick + step, self.clock())
            except Exception:
                # the engine must outlive any one bad step; the message that broke it is gone
                self.rejects.add("engine_error", "engine step", "see the service log")
                log.exception("engine step failed")
            # let transports and the API run between batches
            await asyncio.sleep(0)

    async def _journal_loop(self) -> None:
        c = self.config
        purge_every = max(1.0, min(10.0, c.journal_s / 10))
        next_purge = self.clock()
        while True:
            await asyncio.sleep(c.journal_flush_s)
            try:
                await self._flush_journal()
                if self.clock() >= next_purge:
                    next_purge = self.clock() + purge_every
                    await asyncio.to_thread(self.journal.purge, self.clock() - c.journal_s, c.journal_max_rows)
            except Exception as exc:
                # the store down: rows wait in the buffer (bounded below); the engine goes on
                log.warning("journal write failed (%s: %s); %d rows waiting", type(exc).__name__, exc,
                            len(self._jbuf or ()))

    async def _flush_journal(self) -> None:
        rows = self._jbuf
        if not rows:
            return
        self._jbuf = []
        # the acknowledgements of these rows wait for this write (journaled())
        ack, self._jack = self._jack, None
        self._jack_writing = ack
        try:
            self.journal_written += await asyncio.to_thread(self.journal.append, rows)
        except BaseException:
            # keep them for the next round, in order, within the size bound
            if self._jbuf is not None:
                rows.extend(self._jbuf)
                over = len(rows) - self.config.journal_max_rows
                if over > 0:
                    del rows[:over]
                    self.journal_dropped += over
                self._jbuf = rows
                # their acknowledgements wait for that round too (journal_ack_max_s at most),
                # with those of the rows taken meanwhile
                if ack is not None and not ack.done():
                    newer, self._jack = self._jack, ack
                    if newer is not None:
                        ack.add_done_callback(lambda f: newer.done() or newer.set_result(f.result()))
            elif ack is not None and not ack.done():
                ack.set_result(False)  # stopped meanwhile: everything taken was processed
            raise
        else:
            if ack is not None and not ack.done():
                ack.set_result(True)
        finally:
            if self._jack_writing is ack:
                self._jack_writing = None

    def process_queue(self, max_items: int = 50_000) -> int:
        """Run queued messages through the engine, oldest first; returns how many. The
        trigger messages among them go to the engine together
        (:meth:`~yujing.engine.Engine.feed_triggers`: the same updates as one by one, the
        roles of a batch's triggers for a large event computed at once); heartbeats wait
        for the engine step as before; other kinds go one by one, in order."""
        q = self._queue
        run: list[Trigger] = []
        n = 0
        try:
            n = self._drain(q, max_items, run)
        finally:
            # what was taken from the queue reaches the engine even when one message
            # raised (the live loop counts that one as engine_error and goes on)
            if run:
                self._feed_triggers(run)
        return n

    def _drain(self, q: deque, max_items: int, run: list) -> int:
        """process_queue's loop: registry, clock and duplicates per message; triggers are
        gathered in ``run`` (fed whenever another kind needs the engine in order)."""
        n = 0
        trig_kind, hb_kind = protocol.TriggerMsg, protocol.HeartbeatMsg
        # a heartbeat's work (most messages), inline with these locals: the registry row
        # (Registry.seen), the clock estimate (_Dev.clock_offset), the cell's centre
        noted, devs, dirty = self._noted_cells, self.registry.devs, self.registry.dirty
        centres, hb_append = protocol._CENTRES, self._hb.append
        presence = self._presence
        accepted = self.stats.accepted
        run_from = 0  # n at the run's first trigger
        while q and n < max_items:
            if run and n - run_from >= RUN_SPAN:
                # an alert the run makes must not wait for a whole backlog behind it
                batch = run[:]
                run.clear()
                self._feed_triggers(batch)
            arr, msg = q.popleft()
            n += 1
            kind = type(msg)
            if kind is hb_kind:
                cell, dev = msg.cell, msg.device
                if cell not in noted:
                    self._note_region(cell)
                d = devs.get(dev)
                if d is None:
                    d = self.registry.seen(dev, cell, arr)
                else:
                    d.cell = cell
                    if arr > d.last_seen_s:
                        d.last_seen_s = arr
                    dirty.add(dev)
                off = arr - msg.sent_s
                if (off <= d.off_min_s or arr - d.off_since_s > CLOCK_WINDOW_S) and (off >= -CLOCK_AHEAD_MAX_S or msg.sig):
                    d.off_min_s, d.off_since_s = off, arr
                c = centres.get(cell)
                if c is None:
                    c = protocol.cell_centre(cell)
                if presence.since_s is None:
                    presence.heard(arr)  # a cold start's settling time runs from here
                hb_append((dev, c[0], c[1], arr, msg.ready, msg.every_s))
                accepted["hb"] += 1
            elif kind is trig_kind:
                t = self._trigger_record(arr, msg)
                if t is not None:
                    if not run:
                        run_from = n
                    run.append(t)
            else:
                if run:
                    batch = run[:]
                    run.clear()
                    self._feed_triggers(batch)
                self._one(arr, msg)
        return n

    def _feed_triggers(self, run: list[Trigger]) -> None:
        # in pieces of FEED_CHUNK, each piece's updates published before the next is
        # associated: an update waits for its own piece, not for the new-event attempts of
        # a whole run behind it (the same updates: feed_triggers equals one by one)
        engine, stats = self.engine, self.stats
        for i in range(0, len(run), FEED_CHUNK):
            t0 = time.perf_counter()
            out = engine.feed_triggers(run[i:i + FEED_CHUNK] if len(run) > FEED_CHUNK else run)
            stats.engine_busy_s += time.perf_counter() - t0
            self._emit(out)

    def _trigger_record(self, arr: float, msg) -> Trigger | None:
        """A trigger message's registry entry, duplicate check and clock correction: its
        engine record, or None (a repeat, counted)."""
        self._note_region(msg.cell)
        d = self.registry.seen(msg.device, msg.cell, arr)
        seen = d.triggers_seen
        if seen is None:
            seen = d.triggers_seen = {}
        bit = 1 << min(msg.update, 4095)
        mask = seen.get(msg.onset_s, 0)
        if mask & bit:
            # MQTT QoS 1 delivers at least once: a device that missed the PUBACK sends
            # again. A repeat, seconds late, would join no event and could seed a new one
            self.rejects.add("duplicate", f"device {msg.device!r}", f"trigger onset {msg.onset_s:.3f} update {msg.update} again")
            return None
        seen[msg.onset_s] = mask | bit
        if len(seen) > ONSETS_REMEMBERED:
            del seen[next(iter(seen))]  # the oldest onset
        self.stats.accepted["trig"] += 1
        return protocol.to_trigger(msg, arr, d.clock_offset(msg.sent_s, arr, bool(msg.sig)))

    @property
    def _presence(self):
        return self.engine.assoc.presence

    def _heartbeat(self, arr: float, msg) -> None:
        # (process_queue does the same inline)
        self._note_region(msg.cell)
        self.registry.seen(msg.device, msg.cell, arr).clock_offset(msg.sent_s, arr, bool(msg.sig))
        lat, lon = protocol.cell_centre(msg.cell)
        self._presence.heard(arr)  # the first starts a cold start's settling time
        self._hb.append((msg.device, lat, lon, arr, msg.ready, msg.every_s))
        self.stats.accepted["hb"] += 1

    def fire_timer(self) -> None:
        """One engine step's time-driven work: heartbeats of the step, then the timer."""
        now = self.now()
        self._feed_heartbeats()
        t0 = time.perf_counter()
        out = self.engine.tick(now)
        self.stats.engine_busy_s += time.perf_counter() - t0
        self._emit(out)
        # areas fall only once a lower estimate has held (alerting.py): with no new
        # estimate, the policy's clock decides when
        for a in self.policy.tick(now):
            self._publish_alert(a)

    def _one(self, arr: float, msg) -> None:
        kind = type(msg)
        reg = self.registry
        if kind is protocol.TriggerMsg:
            trig = self._trigger_record(arr, msg)
            if trig is not None:
                self._feed_triggers([trig])
            return
        if kind is protocol.HeartbeatMsg:
            self._heartbeat(arr, msg)
            return
        if kind is not protocol.ConsentMsg and kind is not protocol.PacketMsg:
            self._note_region(msg.cell)
        if kind is protocol.PacketMsg:
            d = reg.devs.get(msg.device)
            if msg.device not in self.engine.devices:
                # operator-listed sensors are in the table from the start; others say hello
                self.rejects.add(
                    "unknown_device", f"device {msg.device!r}", "raw packets need a hello first (kind 'sensor', or a phone with raw_consent)"
                )
                return
            if msg.device not in self._listed and (d is None or (d.kind == "phone" and not d.raw_consent)):
                # only operator-listed sensors stream without a hello on record (a
                # registry entry forgotten under memory pressure does not open the gate)
                self.rejects.add("no_consent", f"device {msg.device!r}", "raw packets from a phone need its raw-upload consent")
                return
            reg.seen(msg.device, msg.cell, arr)
            self.stats.accepted["pkt"] += 1
            t0 = time.perf_counter()
            out = self.engine.feed(protocol.to_packet(msg, arr))
            self.stats.engine_busy_s += time.perf_counter() - t0
            self._emit(out)
        elif kind is protocol.HelloMsg:
            reg.seen(msg.device, msg.cell, arr, kind=msg.kind, raw_consent=msg.raw_consent).clock_offset(msg.sent_s, arr, bool(msg.sig))
            self.stats.accepted["hello"] += 1
            if msg.kind == "sensor" or msg.raw_consent:
                self._admit_streamer(msg.device, msg.cell)
        elif kind is protocol.ConsentMsg:
            reg.seen(msg.device, msg.cell, arr, raw_consent=msg.raw_consent)
            self.stats.accepted["consent"] += 1
            if msg.raw_consent:
                # consent given after the hello opens the gate as a hello with consent
                # would; a withdrawal closes it at the consent check on each packet
                self._admit_streamer(msg.device, msg.cell)

    def _admit_streamer(self, device: str, cell: str) -> None:
        """Put a device that may stream raw packets in the engine's table (at its cell's
        centre: the engine never learns a finer position)."""
        known = self.engine.devices.get(device)
        if known is None or not _within_cell(known, cell):
            lat, lon = protocol.cell_centre(cell)
            self.engine.add_device(Device(device, lat, lon))

    def _note_region(self, cell: str) -> None:
        """The first message from a resolution-2 region (~86,000 km^2) has the alert
        policy's cell centres computed for it in a worker thread, so that a first alert
        there does not pay for them (~130 ms for an M7.4's cells) on the alert path."""
        if cell in self._noted_cells:
            return
        if len(self._noted_cells) >= 1_000_000:
            self._noted_cells.clear()
        self._noted_cells.add(cell)
        region = h3.cell_to_parent(cell, 2) if h3.get_resolution(cell) > 2 else cell
        if region in self._warm_regions:
            return
        self._warm_regions.add(region)
        lat, lon = h3.cell_to_latlng(region)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.policy.warm(lat, lon, 1100.0)  # no loop (a plain drive()): warm in line
            return
        self._tasks.append(loop.create_task(asyncio.to_thread(self.policy.warm, lat, lon, 1100.0)))

    def _feed_heartbeats(self) -> None:
        if not self._hb:
            return
        hb, self._hb = self._hb, []
        ids = [h[0] for h in hb]
        lat = np.fromiter((h[1] for h in hb), float, len(hb))
        lon = np.fromiter((h[2] for h in hb), float, len(hb))
        ready = np.fromiter((h[4] for h in hb), bool, len(hb))
        every = np.fromiter((h[5] for h in hb), float, len(hb))
        t0 = time.perf_counter()
        out = self.engine.feed_heartbeats(ids, lat, lon, max(h[3] for h in hb), ready=ready, every_s=every)
        self.stats.engine_busy_s += time.perf_counter() - t0
        self._emit(out)

    # ------------------------------------------------------------------ restart
    def resume(self, now_s: float | None = None) -> dict[str, Any]:
        """Go on after a restart; call before :meth:`start`, in a worker thread (it is CPU
        work, seconds at most). Replays the journal's last ``journal_s`` through the fresh
        engine on message time (as :func:`drive` does) with nothing published, and matches
        the events it rebuilds to those the store holds from the same window (same id, or
        a first estimate within ``resume_match_km`` and ``resume_match_s`` of origin): a
        matched event keeps its stored id, its versions go on from the stored ones, and the
        alert policy goes on from the newest stored alert (:meth:`AlertPolicy.resume`).
        What the rebuilt engine knows and the store does not (its newest estimate, when it
        is newer than the newest stored; an alert picture devices were not told) is kept
        for :meth:`publish_resumed`, one message each. Without a journal the engine starts
        empty, but events it makes later still continue stored ones under their ids.
        Returns figures (also in ``resume_figures``)."""
        t0 = time.perf_counter()
        c = self.config
        now = self.clock() if now_s is None else now_s
        since = now - c.journal_s
        rows = self.journal.since(since) if self.journal is not None else []
        horizon = since - self.settings.associate.event_ttl_s
        events: dict[str, dict] = {}
        alerts: dict[str, Alert] = {}
        sent: list[Alert] = []
        if self.store is not None:
            events = {r["event_id"]: r for r in self.store.events(limit=100_000, since_s=horizon)}
            sent = self.store.alerts(limit=1_000_000, since_s=horizon)[::-1]  # oldest first
            for a in sent:
                alerts[a.event_id] = a if a.event_id not in alerts or a.version > alerts[a.event_id].version else alerts[a.event_id]
            for eid, a in alerts.items():
                # an alert stored without its event row (the two writes race): match on it
                events.setdefault(eid, {"event_id": eid, "origin_time_s": a.origin_time_s, "latitude": a.latitude,
                                        "longitude": a.longitude, "version": a.event_version, "last_issued_s": a.issued_at_s})
        self.resume_alerts = sent
        rs = self._resume = _Resumption(events, alerts, c.resume_match_km, c.resume_match_s)
        jb, self._jbuf = self._jbuf, None  # what is replayed is in the journal already
        live_clock = self.clock
        mc = ManualClock(rows[0][0] if rows else now)
        self.clock = mc
        self._catching_up = True
        try:
            drive(self, mc, rows)
        finally:
            self.clock = live_clock
            self._catching_up = False
            self._jbuf = jb
        self._resumed_out = rs.finish(self)
        self.resume_figures = {
            "journal_rows": len(rows), "journal_from_s": rows[0][0] if rows else None,
            "journal_to_s": rows[-1][0] if rows else None,
            "stored_events": len(events), "stored_alerts": len(alerts),
            "events_rebuilt": len(rs.ids), "events_continued": len(rs.taken),
            "updates_unsent": sum(1 for k, _ in self._resumed_out if k.startswith("yj.event.")),
            "alerts_unsent": sum(1 for k, _ in self._resumed_out if k.startswith("yj.alert.")),
            "seconds": time.perf_counter() - t0,
        }
        log.info("resumed: %s", self.resume_figures)
        return self.resume_figures

    def publish_resumed(self) -> int:
        """Publish what :meth:`resume` found the previous life had not (after
        :meth:`start`, once the store and the transports are subscribed)."""
        out, self._resumed_out = self._resumed_out, []
        for subject, obj in out:
            if isinstance(obj, Alert):
                self._publish_alert(obj)
            else:
                self.stats.updates += 1
                self.bus.publish(subject, obj)
        return len(out)

    # ------------------------------------------------------------------ output
    def _emit(self, updates: list[EventUpdate]) -> None:
        trigs = self.engine.triggers
        if trigs:
            # first triggers the engine took (phones' own, or picked from sensors' packets):
            # for the dashboard; the engine keeps them only for reports, a service must not
            catching = self._catching_up
            for t in trigs:
                self.recent_triggers.append(t)
                if not catching:
                    self.bus.publish("yj.trig", t)
            trigs.clear()
        rs = self._resume
        for u in updates:
            if rs is not None:
                # a restarted service: the engine's ids and versions -> the published ones
                u = rs.place(u, self)
                if self._catching_up:
                    # rebuilding: what this would publish went out in the previous life, or
                    # is found missing by resume() at the end
                    self.latest[u.event_id] = rs.last[u.event_id] = u
                    self.policy.on_update(u)
                    continue
            self.stats.updates += 1
            self.latest[u.event_id] = u
            self.bus.publish(f"yj.event.{u.event_id}", u)
            t0 = time.perf_counter()
            alerts = self.policy.on_update(u)
            self.stats.policy_busy_s += time.perf_counter() - t0
            for a in alerts:
                self._publish_alert(a)
                self.alert_latency_s.append(self.clock() - u.issued_at_s)
        # the step's new-event tries, once its updates and alerts are out (Engine.split_ticks)
        t0 = time.perf_counter()
        more = self.engine.tick_new()
        self.stats.engine_busy_s += time.perf_counter() - t0
        if more:
            self._emit(more)

    def _publish_alert(self, a: Alert) -> None:
        if self._catching_up:
            return  # a downgrade found while rebuilding: resume() compares with the store
        self.stats.alerts += 1
        self.latest_alert[a.event_id] = a
        self.bus.publish(f"yj.alert.{a.event_id}", a)

    async def _store_update(self, subject: str, u: EventUpdate) -> None:
        # the pseudonyms behind an update are the engine's working data, not a record to
        # keep: stored they would link a device to a place and time for good
        await self._store_call(self.store.save_update, msgspec.structs.replace(u, device_ids=()))

    async def _store_alert(self, subject: str, a: Alert) -> None:
        await self._store_call(self.store.save_alert, a)

    def _stored(self, fn, rec, status) -> None:
        if status == "conflict":
            # another record under the same id and version (ids reused, e.g. across a
            # restart): the stored one stays; never silently
            what = (f"alert {rec.alert_id} v{rec.version}" if isinstance(rec, Alert)
                    else f"event {rec.event_id} v{rec.version}")
            self.rejects.add("store_conflict", what, "the store holds a different record under this id and version")
            log.error("store conflict: %s is stored with other content; the stored record is kept", what)

    async def _store_call(self, fn, *args) -> None:
        # a database outage must not lose the record: retry with backoff, keep order; a
        # record the database refuses for good (a constraint) is counted and skipped, or
        # it would block every record after it
        delay = 0.1
        while True:
            try:
                status = await asyncio.to_thread(fn, *args)
                self.last_store_error = ""
                self._stored(fn, args[0], status)
                return
            except Exception as exc:
                self.last_store_error = f"{type(exc).__name__}: {exc}"
                if not _transient(exc):
                    self.rejects.add("store_refused", f"{fn.__name__}", self.last_store_error)
                    log.error("store refused a record for good (%s); skipped", self.last_store_error)
                    return
                log.warning("store write failed (%s); retrying in %.1f s", self.last_store_error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.registry_flush_s)
            try:
                await self._flush_registry_async()
            except Exception as exc:
                self.last_store_error = f"{type(exc).__name__}: {exc}"
                log.warning("device registry flush failed: %s", self.last_store_error)

    async def _flush_registry_async(self) -> None:
        # the rows are taken here, in the loop's thread (the engine adds to the registry
        # there); only the database write goes to a worker thread
        dirty, self.registry.dirty = self.registry.dirty, set()
        rows = []
        for k in dirty:
            d = self.registry.devs.get(k)
            if d is not None:
                rows.append((k, d.cell, d.kind, d.last_seen_s, d.raw_consent))
        try:
            await asyncio.to_thread(self.store.note_devices, rows)
        except Exception:
            self.registry.dirty |= dirty  # try again next time
            raise

    # ------------------------------------------------------------------ data rights
    def device_data(self, pseudonym: str) -> dict[str, Any]:
        """What the service holds in memory under ``pseudonym``: its registry row, the
        triggers kept for the dashboard, whether the engine lists it as a sensor."""
        d = self.registry.devs.get(pseudonym)
        row = None
        if d is not None:
            row = {"pseudonym": pseudonym, "cell": d.cell, "kind": d.kind, "first_seen_s": d.first_seen_s,
                   "last_seen_s": d.last_seen_s, "raw_consent": bool(d.raw_consent)}
        trigs = [msgspec.to_builtins(t) for t in self.recent_triggers if t.device_id == pseudonym]
        return {"registry": row, "recent_triggers": trigs, "sensor": pseudonym in self.engine.devices}

    def forget_device(self, pseudonym: str) -> dict[str, int]:
        """Delete what the service holds in memory under ``pseudonym`` (the store's row is
        the caller's); returns counts. Its replay window is kept: it is a number, and
        without it the device's old messages could be replayed."""
        n_reg = int(self.registry.devs.pop(pseudonym, None) is not None)
        self.registry.dirty.discard(pseudonym)
        kept = [t for t in self.recent_triggers if t.device_id != pseudonym]
        n_trig = len(self.recent_triggers) - len(kept)
        if n_trig:
            self.recent_triggers.clear()
            self.recent_triggers.extend(kept)
        self.guard.forget(pseudonym)
        # the engine's working state (a consented phone's picker stream, the presence of
        # its heartbeats) is not touched: it is transient, and the engine is not this
        # module's to reach into; docs/security.md says what remains and for how long
        return {"registry": n_reg, "recent_triggers": n_trig}

    # ------------------------------------------------------------------ views
    def health(self) -> dict[str, Any]:
        now = self.clock()
        lat = sorted(self.alert_latency_s)
        return {
            "status": "ok" if not self.last_store_error else "degraded",
            "uptime_s": now - self.started_s,
            "queue": len(self._queue),
            "received": self.stats.received,
            "rejected": self.rejects.total,
            "devices_online": len(self.registry.online(now, self.config.online_s)),
            "events": len(self.latest),
            "alerts": self.stats.alerts,
            "alert_latency_p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "store_error": self.last_store_error or None,
        }


class _Resumption:
    """A restarted service's map from its engine's events to the published ones; see
    :meth:`Service.resume`. ``events``: stored event rows of the window by id (origin,
    position, newest ``version``, ``last_issued_s``); ``alerts``: newest stored alert per
    event id."""

    def __init__(self, events: dict[str, dict], alerts: dict[str, Alert], km: float, s: float):
        self.events, self.alerts, self.km, self.s = events, alerts, km, s
        self.ids: dict[str, tuple[str, int]] = {}  # engine event id -> (published id, version offset)
        self.used: set[str] = set()  # published ids given out
        self.taken: set[str] = set()  # stored events continued
        self.last: dict[str, EventUpdate] = {}  # published id -> newest rebuilt update

    def place(self, u: EventUpdate, svc: "Service") -> EventUpdate:
        m = self.ids.get(u.event_id)
        if m is None:
            m = self._match(u, svc)
        pub, off = m
        if pub == u.event_id and off == 0:
            return u
        return msgspec.structs.replace(u, event_id=pub, version=u.version + off)

    def _near(self, u: EventUpdate, row: dict) -> bool:
        return (abs(u.origin_time_s - row["origin_time_s"]) <= self.s
                and float(distance_km(u.latitude, u.longitude, row["latitude"], row["longitude"])) <= self.km)

    def _match(self, u: EventUpdate, svc: "Service") -> tuple[str, int]:
        eid = u.event_id
        row = self.events.get(eid)
        if row is None or eid in self.taken or not self._near(u, row):
            near = [r for k, r in self.events.items() if k not in self.taken and self._near(u, r)]
            row = min(near, key=lambda r: abs(u.origin_time_s - r["origin_time_s"])) if near else None
        if row is None:
            pub, k = eid, 1
            while pub in self.events or pub in self.used:  # another event has this id
                k += 1
                pub = f"{eid}-{k}"
            m = (pub, 0)
        else:
            pub = row["event_id"]
            self.taken.add(pub)
            if svc._catching_up:
                m = (pub, 0)  # the offset is set when the rebuild ends (finish)
            else:
                # found live, after the rebuild: this update is the stored event's next version
                m = (pub, int(row["version"]) + 1 - u.version)
                svc.policy.resume(pub, self.alerts.get(pub))
        self.used.add(pub)
        self.ids[eid] = m
        return m

    def finish(self, svc: "Service") -> list[tuple[str, Any]]:
        """At the end of the rebuild: each rebuilt event's version offset, the alert
        policy set to what was sent, and what is still to send (at most one update and
        one alert per event)."""
        out: list[tuple[str, Any]] = []
        for eid, (pub, _) in list(self.ids.items()):
            u = self.last.get(pub)
            if u is None:
                continue
            row = self.events.get(pub) if pub in self.taken else None
            v_stored = int(row["version"]) if row is not None else 0
            newer = u.issued_at_s > (row["last_issued_s"] if row is not None else -math.inf) + 1e-6
            if row is None and u.retracted:
                newer = False  # an event nobody heard of, retracted: nothing to tell
            v_now = v_stored + 1 if newer else v_stored
            self.ids[eid] = (pub, v_now - u.version)
            u = msgspec.structs.replace(u, version=max(v_now, 1))
            svc.latest[pub] = u
            if newer:
                out.append((f"yj.event.{pub}", u))
            if svc.policy.resume(pub, self.alerts.get(pub) if row is not None else None):
                out += [(f"yj.alert.{pub}", a) for a in svc.policy.on_update(u)]
        return out


def _transient(exc: Exception) -> bool:
    """A store error worth retrying: the database unreachable or busy, not a record it
    refuses (a constraint, a bad value)."""
    from .store.backend import StoreError

    name = type(exc).__name__
    return isinstance(exc, (StoreError, OSError, ConnectionError)) or name in ("OperationalError", "InterfaceError")


def _within_cell(dev: Device, cell: str) -> bool:
    res = h3.get_resolution(cell)
    return h3.latlng_to_cell(dev.latitude, dev.longitude, res) == cell


class ManualClock:
    """A clock that only moves when told: for driving a service on message time."""

    def __init__(self, t_s: float = 0.0):
        self.t_s = t_s

    def __call__(self) -> float:
        return self.t_s


#: Messages :func:`drive` hands to :meth:`Service.receive_many` at once at most (a step's
#: worth usually: the batch ends at each timer tick).
DRIVE_BATCH = 4096


def drive(service: Service, clock: ManualClock, messages) -> int:
    """Feed ``(arrival_s, topic, payload)`` messages through ``service`` on their own
    time, firing its timer every ``step_s`` as the live loop does, without sleeping: the
    same code path as live, deterministic (tests, benchmarks, what-if replays). The
    service must have been made with ``clock``. Returns the number of messages."""
    step = service.config.step_s
    next_tick = None
    n = 0
    batch: list = []  # what arrived since the last tick: decoded and checked together
    for item in messages:
        arr = item[0]
        if next_tick is None:
            next_tick = arr + step
        if next_tick <= arr or len(batch) >= DRIVE_BATCH:
            clock.t_s = batch[-1][0] if batch else clock.t_s
            service.receive_many(batch)
            batch = []
        while next_tick <= arr:
            clock.t_s = next_tick
            service.process_queue()
            service.fire_timer()
            next_tick += step
        batch.append(item)
        n += 1
    if batch:
        clock.t_s = batch[-1][0]
        service.receive_many(batch)
    service.process_queue()
    if next_tick is not None:
        clock.t_s = max(clock.t_s, next_tick)
        service.fire_timer()
    return n
