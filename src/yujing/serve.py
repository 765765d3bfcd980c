"""``yujing serve``: the whole live system in one asyncio process.

Embedded defaults, no configuration: an MQTT broker inside the process for devices
(:mod:`yujing.bus.mqtt`), the in-process bus, SQLite in one file, and the HTTP API with
the live map on 127.0.0.1. Options switch each part to a real server:
``--mqtt tcp://host:port`` (any MQTT 3.1.1 broker: Mosquitto, NATS's MQTT listener),
``--store postgresql://...``, ``--bus nats://...`` (scale-out; see :mod:`yujing.bus.nats`).

Restarts: accepted device messages are journaled in the store for a few minutes
(:mod:`yujing.store.journal`), and the embedded broker acknowledges a QoS 1 message only
once it is journaled (a device re-sends what a killed server had not acknowledged); a
server started again (after a crash, a kill, a clean
stop mid-quake) replays that window into its fresh engine and goes on from the store: the
same event and alert ids, versions after the stored ones, nothing published twice
(:meth:`yujing.service.Service.resume`, docs/reliability.md).

Retention (:mod:`yujing.retention`): the server purges what it holds about devices silent
for longer than ``retention`` (default 7 days), in its store and in memory, once at start
and then every ``retention.interval_s``; each purge is in the audit log.

Access control (:mod:`yujing.api.auth`) also needs no configuration: on its first start
with a store that has no operator key, the server makes one, writes it to
``<database>.operator-key`` (mode 0600) for a SQLite file, or prints it once otherwise.

:class:`Server` is what tests start (ports 0 pick free ones); :func:`run` is the command.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .api.auth import ApiLimits
from .bus.memory import MemoryBus
from .bus.mqtt import MqttLink, parse_mqtt_url
from .bus.mqtt_broker import EmbeddedBroker
from .gcpace import FREEZE_S, GcPacer, observe
from .replay_live import LiveReplay
from .retention import RetentionPolicy
from .security import Issuer
from .service import Service, ServiceConfig
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    mqtt: str | None = None  # external broker URL; None: embedded
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = 1883  # embedded broker's port
    store: str = "sqlite:///yujing.db"
    bus: str | None = None
    data_dir: Path | None = None
    replay: bool = True  # the dashboard's replay control (sends real alerts to real devices)
    config: ServiceConfig | None = None
    settings: Settings | None = None
    log_http: bool = False
    limits: ApiLimits | None = None  # request size and rate limits of the HTTP API (None: defaults)
    operator_key: bool = True  # make an operator key on the first start (see the module docstring)
    # addresses of reverse proxies whose X-Forwarded-For names the client (comma-separated);
    # None: the header is ignored, else any local process could pick its own rate-limit bucket
    trusted_proxies: str | None = None
    # how long data not linked to an event is kept, and how often the server purges it
    retention: RetentionPolicy | None = None  # None: RetentionPolicy() (7 days, hourly)
    # where device credentials (the signing master and the enrolled pseudonyms) are kept
    # across restarts; None: ``<database>.credentials`` beside a SQLite file, else memory
    # only (a restart makes devices enrol again: fail closed). ``config.credentials_file``,
    # when set, wins.
    credentials_file: Path | None = None
    allow_unsigned: bool = False  # accept unsigned device messages (a development server only)
    # seconds between freezes of the garbage collector's survivors (yujing.gcpace), applied
    # by run(), the process's entry point; 0: CPython's defaults
    gc_freeze_s: float = FREEZE_S


class Server:
    """All parts of the service, started and stopped in order. ``clock``: the service's
    UNIX time; ``api_clock``: monotonic seconds of the API's rate limit and key cache;
    ``sleep``: how the retention purge waits ``retention.interval_s`` between rounds.

    After :meth:`start`, ``operator_key`` holds the operator key made on this start when it
    could not be written to a file (memory or PostgreSQL store), ``operator_key_file`` the
    file it was written to; both None when the store already had an operator key."""

    def __init__(self, opts: ServeOptions, clock=time.time, api_clock=time.monotonic, sleep=asyncio.sleep):
        self.opts = opts
        self._sleep = sleep  # the purge loop's wait between rounds (tests pass their own)
        self.clock = clock
        self.api_clock = api_clock
        self.operator_key: str | None = None
        self.operator_key_file: Path | None = None
        self.broker: EmbeddedBroker | None = None
        self.link: MqttLink | None = None
        self.store = None
        self.journal = None  # yujing.store.Journal (None: in-memory store)
        self.resumed: dict = {}  # figures of Service.resume at start
        self.service: Service | None = None
        self.replay: LiveReplay | None = None
        self._uvicorn = None
        self.app = None
        self._http_task: asyncio.Task | None = None
        self.http_port = 0
        self.mqtt_url = ""
        self.worker = None  # scale-out mode (--bus): the engine worker
        self.retention = opts.retention or RetentionPolicy()
        self.last_purge: dict[str, int] | None = None  # counts of the newest purge
        self._purge_task: asyncio.Task | None = None

    async def start(self) -> None:
        from .store import open_store

        o = self.opts
        if o.bus is not None:
            await self._start_worker()
            return
        from .store import Journal

        self.store = await asyncio.to_thread(open_store, o.store)
        self.journal = await asyncio.to_thread(Journal.open, o.store)
        bus = MemoryBus()
        cfg = self.service_config()
        # without a credentials file the credentials live as long as this process: a
        # master of its own, fresh (the Service gives its first hours' enrolments grace)
        self.service = Service(o.settings, bus, self.store, config=cfg, clock=self.clock, journal=self.journal,
                               issuer=None if cfg.credentials_file else Issuer())
        # a restart: rebuild the quake in progress from the journal, go on from the store
        # (ids, versions, alert areas) before any device message or request is taken
        t0 = time.monotonic()
        self.resumed = await asyncio.to_thread(self.service.resume)
        await self.service.start()
        if o.mqtt is None:
            self.broker = EmbeddedBroker(o.mqtt_host, o.mqtt_port)
            # bound now (a port in use fails here), accepting devices only once the link
            # has set its hooks (MqttLink.start): no message is taken before the service
            # sees it, none under the broker's open default rules
            await self.broker.start(serving=False)
            self.mqtt_url = f"tcp://{o.mqtt_host}:{self.broker.port}"
        else:
            parse_mqtt_url(o.mqtt)  # a bad URL fails here, with what was wrong
            self.mqtt_url = o.mqtt
        # the link's MQTT session is persistent on an external broker (it keeps the devices'
        # QoS 1 messages while the server is down): one session per deployment, named by
        # its store, so that two servers (or test runs) sharing a broker never take over
        # each other's session and its queued messages
        store_id = o.store
        db = _sqlite_file(o.store)
        if db is not None:
            store_id = str(db.resolve())  # the default sqlite:///yujing.db is relative
        sid = hashlib.blake2b(store_id.encode(), digest_size=5).hexdigest()
        self.link = MqttLink(self.mqtt_url, self.service, retain_s=self.service.config.alert_retain_s, broker=self.broker,
                             client_id=f"yujing-service-{sid}")
        self.link.resume(self.service.resume_alerts, self.clock())
        await self.link.start(ready=self.service.publish_resumed)
        self.resumed["ready_s"] = time.monotonic() - t0
        if self.resumed["journal_rows"] or self.resumed["stored_events"]:
            log.warning("resumed after a restart: %s", self.resumed)
        self.replay = self._replay(self.service.issuer)
        await self._start_retention()
        await self._start_http()

    def service_config(self) -> ServiceConfig:
        """The engine service's configuration: ``opts.config`` with the device-security
        options of the command line filled in."""
        o = self.opts
        cfg = o.config or ServiceConfig()
        creds = cfg.credentials_file or (str(o.credentials_file) if o.credentials_file else "")
        if not creds:
            db = _sqlite_file(o.store)
            creds = str(db.with_name(db.name + ".credentials")) if db is not None else ""
        return msgspec.structs.replace(cfg, credentials_file=creds, allow_unsigned=cfg.allow_unsigned or o.allow_unsigned)

    def _replay(self, issuer) -> LiveReplay | None:
        """The dashboard's replay control, signing with the engine's own issuer (a server
        that keeps its credentials in a file has another master than this process's
        default, and would refuse the replay as unknown_credential)."""
        from .security import Signer

        o = self.opts
        return LiveReplay(self.link.publish_device, self.clock, o.data_dir, signer=Signer(issuer)) if o.replay else None

    async def _start_retention(self) -> None:
        # The first purge runs before the server takes requests: a store left alone for
        # weeks is cleaned before anyone reads it. Then one every interval.
        await self.purge_once()
        self._purge_task = asyncio.get_running_loop().create_task(self._purge_loop(), name="retention")

    async def purge_once(self) -> dict[str, int]:
        """Purge now (server clock): the service's memory, in this loop's thread where the
        engine changes it, then the store in a worker thread. Returns the counts."""
        from .retention import purge_memory

        now = self.clock()
        policy = self.retention
        mem = purge_memory(self.service, policy.cutoff(now)) if self.service is not None else {}
        counts = await asyncio.to_thread(
            self.store.purge, policy.cutoff(now), at_s=now, purpose=policy.label(), extra=mem)
        self.last_purge = {**mem, **counts}
        if any(self.last_purge.values()):
            log.info("retention purge (%s): %s", policy.label(), self.last_purge)
        return self.last_purge

    async def _purge_loop(self) -> None:
        while True:
            await self._sleep(self.retention.interval_s)
            try:
                await self.purge_once()
            except Exception as exc:
                # a database outage must not stop the server; the next round tries again
                log.error("retention purge failed (%s: %s); retrying in %.0f s", type(exc).__name__, exc,
                          self.retention.interval_s)

    async def _start_worker(self) -> None:
        """``--bus nats://...``: this process is one engine worker of the scale-out
        (:mod:`yujing.scaleout`); devices reach NATS's own MQTT listener (``--mqtt``, required).
        The worker stores every announced event and alert; the API reads history, keys and
        the audit log from that store and its live routes (stream, network, triggers) from
        the worker's first shard."""
        from .bus.nats import parse_nats_url
        from .bus.mqtt import parse_mqtt_url
        from .scaleout import Worker, config_from_env
        from .store import open_store

        o = self.opts
        servers = parse_nats_url(o.bus)
        if o.mqtt is None:
            raise ValueError("--bus nats://... needs --mqtt tcp://host:port[,host:port...]: the MQTT listener(s) of the "
                             "NATS servers (the embedded broker cannot feed a JetStream stream)")
        mqtt_urls = [u if "://" in u else f"tcp://{u}" for u in o.mqtt.split(",")]
        for u in mqtt_urls:
            parse_mqtt_url(u)
        self.mqtt_url = mqtt_urls[0]
        self.store = await asyncio.to_thread(open_store, o.store)
        self.worker = Worker(servers, config_from_env(), o.settings, self.service_config(), mqtt_urls=mqtt_urls, store=self.store)
        await self.worker.start()
        self.service = self.worker.main_service
        self.link = self.worker.link
        self.replay = self._replay(self.worker.issuer)
        await self._start_retention()
        await self._start_http()

    async def _start_http(self) -> None:
        import uvicorn

        from .api.app import create_app
        from .api.auth import bootstrap_operator_key

        if self.opts.operator_key:
            self.operator_key, self.operator_key_file = await asyncio.to_thread(
                bootstrap_operator_key, self.store, _sqlite_file(self.opts.store))
        worker = self.worker
        app = self.app = create_app(self.service, self.replay, limits=self.opts.limits, clock=self.api_clock,
                                    broker=self.broker, store=self.store,
                                    share_quota=worker.share_quota if worker is not None else None)
        cfg = uvicorn.Config(app, host=self.opts.host, port=self.opts.port, log_level="info" if self.opts.log_http else "warning",
                             access_log=self.opts.log_http, lifespan="off", timeout_graceful_shutdown=3,
                             proxy_headers=self.opts.trusted_proxies is not None,
                             forwarded_allow_ips=self.opts.trusted_proxies or "")
        # after uvicorn.Config, which (re)configures uvicorn's loggers
        access = logging.getLogger("uvicorn.access")
        if _REDACTOR not in access.filters:
            access.addFilter(_REDACTOR)
        self._uvicorn = uvicorn.Server(cfg)
        # serve() would install its own signal handlers; run() owns the signals
        self._uvicorn.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self._http_task = asyncio.get_running_loop().create_task(self._uvicorn.serve(), name="http")
        while not self._uvicorn.started:
            if self._http_task.done():
                exc = self._http_task.exception()
                raise OSError(f"HTTP server could not start on {self.opts.host}:{self.opts.port}: {exc or 'port in use?'}")
            await asyncio.sleep(0.01)
        self.http_port = self._uvicorn.servers[0].sockets[0].getsockname()[1]

    @property
    def mqtt_topics(self) -> str:
        from . import protocol

        return f"{protocol.TOPIC_ROOT}/<kind>/<res5 cell> in, {protocol.TOPIC_ROOT}/alert/<res3 cell> out"

    @property
    def store_label(self) -> str:
        from .store.backend import redact

        return redact(self.opts.store)

    @property
    def http_url(self) -> str:
        return f"http://{self.opts.host}:{self.http_port}"

    async def stop(self) -> None:
        """Stop taking input, finish what was accepted, then close the outputs."""
        if self._uvicorn is not None:
            self.app.state.closing.set()  # live streams end, so the HTTP server can stop
            self._uvicorn.should_exit = True
            await asyncio.gather(self._http_task, return_exceptions=True)
        if self._purge_task is not None:
            self._purge_task.cancel()
            await asyncio.gather(self._purge_task, return_exceptions=True)
        if self.replay is not None and self.replay.task is not None:
            self.replay.task.cancel()
        if self.worker is not None:
            await self.worker.stop()  # gives its regions up at once; stops its alert link too
            self.link = self.service = None
        if self.link is not None:
            await self.link.stop_input()
        if self.service is not None:
            await self.service.stop()
        if self.link is not None:
            await self.link.stop()
        if self.broker is not None:
            await self.broker.stop()
        if self.journal is not None:
            await asyncio.to_thread(self.journal.close)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)


_DEVICE_PATH = re.compile(r"(/api/ops/devices/)[^/?]+")


class _AccessLogRedactor(logging.Filter):
    """Keeps personal data out of the HTTP access log (``--log-http``), which the operator's
    log rotation keeps, not the retention purge: the pseudonym in an operator's device read
    (``/api/ops/devices/<pseudonym>``) and every query string (``purpose`` is free text).
    The audit log has both, the pseudonym as a tag that dies with the retention period."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn.access: (client address, method, path with query, HTTP version, status)
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            path, _, query = args[2].partition("?")
            path = _DEVICE_PATH.sub(r"\1<pseudonym>", path) + ("?<query>" if query else "")
            record.args = (args[0], args[1], path, args[3], args[4])
        return True


_REDACTOR = _AccessLogRedactor()


def _sqlite_file(url: str) -> Path | None:
    """The SQLite database file of a store URL; None for memory or PostgreSQL."""
    from .store.backend import SQLITE, parse_url

    dialect, target = parse_url(url)
    return Path(target) if dialect == SQLITE and target != ":memory:" else None


async def run(opts: ServeOptions, on_ready=None) -> int:
    """Run until SIGINT/SIGTERM; returns an exit code."""
    srv = Server(opts)
    from .store.backend import StoreError

    try:
        await srv.start()
    except (OSError, ValueError, ConnectionError, StoreError) as exc:
        log.error("%s", exc)
        await srv.stop()
        return 2
    if on_ready is not None:
        on_ready(srv)
    # this process is the server: its long-lived rows leave the full collections (gcpace)
    observe()
    pacer = GcPacer(opts.gc_freeze_s) if opts.gc_freeze_s > 0 else None
    if pacer is not None:
        pacer.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if pacer is not None:
        await pacer.stop()
    await srv.stop()
    return 0
