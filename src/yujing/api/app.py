"""The HTTP API of ``yujing serve`` (FastAPI; OpenAPI at ``/openapi.json``).

Views of what the service knows, the dashboard's replay control, and operators' reads of
personal data. Who may call what is :data:`ROUTE_ROLES` (docs/api.md has it as a table, a
test checks the two agree and that every route of the OpenAPI description is in it);
:mod:`.auth` has the roles, API keys and the request-size and rate limits.

====================================  ===========  ==================================================
route                                 role         what
====================================  ===========  ==================================================
``GET /health``                       public       liveness, queue, counts, alert latency p50
``GET /api/events``                   public       events, newest first (``limit``, ``since``)
``GET /api/events/{id}``              public       one event: its newest update and all its updates
``GET /api/events.geojson``           public       the events as a USGS-feed-like FeatureCollection
``GET /api/events/{id}/mmi.geojson``  public       forecast intensity of the newest update, by band
``GET /api/quakeml``                  public       QuakeML 1.2 of the events (``event_id`` for one)
``GET /api/alerts``                   public       alert messages, newest first
``GET /api/alerts/{id}/cap``          public       the alert's newest message as CAP 1.2 XML
``GET /api/cap``                      public       Atom feed of the newest CAP message of each alert
``GET /api/network``                  public       devices online per H3 area, res <= 5 (k-anonymous)
``GET /api/triggers``                 public       recent triggers per res-5 area (k-anonymous)
``GET /api/stream``                   public       live Server-Sent Events: update, alert, trigger
``GET /api/research/network``         researcher   devices online per area down to res 7, k >= 10
``POST /api/replay``                  operator     replay a scenario (or recording) into the service
``GET /api/replay``                   operator     state of the current or last replay
``GET /api/replay/sources``           operator     scenario keys and recordings that can be replayed
``GET /metrics``                      operator     Prometheus text format
``GET /api/ops/triggers``             operator     every recent trigger area, also lone ones (audited)
``GET /api/ops/devices/{pseudonym}``  operator     one device's registry row (audited)
``GET /api/ops/audit``                operator     the audit log, newest first (audited)
``POST /api/enrol``                   public       enrol daily pseudonyms: their device credentials
``POST /api/device/data``             public       a device exports or deletes its data (proof of key)
``GET /``                             public       the live map dashboard (static files)
====================================  ===========  ==================================================

Every error, whatever raised it (an unknown route, a bad parameter, a missing event, a
missing key, a bug), is JSON of one shape: ``{"error": {"status": 404, "code": "not_found",
"message": "..."}}``; a test enforces it. Public responses never carry a device pseudonym or
a location finer than a resolution-5 area (two resolutions' counts could be subtracted to
find a lone device in a finer hidden area, so finer ones are offered only to researchers),
nor an area where fewer than k devices triggered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from importlib import resources
from typing import Any

import h3
import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..alerting import alert_to_json
from ..formats import alert_to_cap, events_to_geojson, events_to_quakeml, mmi_to_geojson
from ..formats.cap import cap_identifier
from ..records import Alert, EventUpdate
from ..replay import iso, update_to_json
from ..security import check_data_proof
from .auth import PUBLIC, RANK, ApiLimits, DailyQuota, Guard, KeyRing, Principal, TokenBuckets, address_prefix

log = logging.getLogger(__name__)

_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
          409: "conflict", 413: "too_large", 422: "invalid_parameter", 429: "rate_limited", 500: "internal_error",
          503: "unavailable"}
#: resolution of the public trigger map (an area of ~250 km^2, never one device)
PUBLIC_TRIGGER_RES = 5
#: finest area of the researchers' device counts (the device registry holds nothing finer)
RESEARCH_RES = 7
#: smallest k a researcher may ask for (k-anonymity of the finer counts)
RESEARCH_MIN_K = 10
#: how far back the trigger maps look, s
TRIGGER_WINDOW_S = 600.0
#: pseudonyms per enrolment request (a gateway or the load generator enrols many at once;
#: 2,000 hex pseudonyms are ~40 kB, under the default request-size limit)
MAX_ENROL = 2_000

#: (method, route) -> the weakest role that may call it. Every route of the app must be here
#: (create_app refuses to build otherwise); docs/api.md shows the same table, and
#: tests/test_api_auth.py checks both against /openapi.json. Personal data (anything that can
#: single out one device) is operator-only and every read of it is audited.
ROUTE_ROLES: dict[tuple[str, str], str] = {
    ("GET", "/health"): "public",
    ("GET", "/api/events"): "public",
    ("GET", "/api/events.geojson"): "public",
    ("GET", "/api/events/{event_id}"): "public",
    ("GET", "/api/events/{event_id}/mmi.geojson"): "public",
    ("GET", "/api/quakeml"): "public",
    ("GET", "/api/alerts"): "public",
    ("GET", "/api/alerts/{alert_id}/cap"): "public",
    ("GET", "/api/cap"): "public",
    ("GET", "/api/network"): "public",
    ("GET", "/api/triggers"): "public",
    ("GET", "/api/stream"): "public",
    ("GET", "/"): "public",
    # a device has no API key: enrolment is first come per pseudonym (docs/security.md), a
    # data-rights request carries a proof made with the pseudonym's credential
    ("POST", "/api/enrol"): "public",
    ("POST", "/api/device/data"): "public",
    # long-lived accounts and their blind-signed daily tokens (yujing.tokens): the account
    # never learns which pseudonym its token went to
    ("POST", "/api/account"): "public",
    ("POST", "/api/token"): "public",
    ("GET", "/api/token/keys"): "public",
    ("GET", "/api/research/network"): "researcher",
    # replays send real alerts to the real devices of an area
    ("POST", "/api/replay"): "operator",
    ("GET", "/api/replay"): "operator",
    ("GET", "/api/replay/sources"): "operator",
    # rejections by reason would tell an attacker which fake triggers get through
    ("GET", "/metrics"): "operator",
    ("GET", "/api/ops/triggers"): "operator",
    ("GET", "/api/ops/devices/{pseudonym}"): "operator",
    ("GET", "/api/ops/audit"): "operator",
}

# request bodies of the device routes (module level: msgspec resolves their annotations here)
class Token(msgspec.Struct, forbid_unknown_fields=True):
    key: str  # "est" or "new": which token key signed it
    day: str  # the UTC day (YYYY-MM-DD) the pseudonym is for
    prefix: str  # hex, the 32 random bytes before the message (RFC 9474 randomized)
    sig: str  # hex RSA-PSS signature

class EnrolRequest(msgspec.Struct, forbid_unknown_fields=True):
    pseudonyms: list[str]
    # pseudonym -> its token; an established token vouches for it (counts toward
    # announcing at once); without one a self-enrolled pseudonym is new for a while
    tokens: dict[str, Token] = {}

class AccountRequest(msgspec.Struct, forbid_unknown_fields=True):
    pass


class TokenRequest(msgspec.Struct, forbid_unknown_fields=True):
    account: str
    day: str
    key: str  # "est" (an account older than new_device_s) or "new": the key it blinded with
    blinded: str  # hex, the blinded message (modulus length)
    proof: str  # hex, tokens.request_proof(account key, day, blinded)


_PURPOSE = Query(..., min_length=3, max_length=200,
                 description="why you read personal data (e.g. a ticket number); written to the audit log")


def error_body(status: int, message: str, code: str | None = None) -> dict:
    return {"error": {"status": status, "code": code or _CODES.get(status, "error"), "message": message}}


def _err(status: int, message: str, code: str | None = None, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code), status_code=status, headers=headers)


def principal(request: Request) -> Principal:
    """Who sent the request (set by :class:`.auth.Guard`; public without a key)."""
    return request.scope.get("yujing.principal", PUBLIC)


async def _authorize(request: Request) -> None:
    """Refuse a request whose key's role is below its route's (401 without a key, 403 with a
    key of too low a role). A route missing from ROUTE_ROLES is refused to everyone."""
    route = request.scope.get("route")
    need = ROUTE_ROLES.get((request.method, getattr(route, "path", "")), "nobody")
    who = principal(request)
    if need == "public":
        return
    if need == "nobody":
        raise HTTPException(500, f"route {request.method} {getattr(route, 'path', '?')} has no role in ROUTE_ROLES")
    if who is PUBLIC:
        raise HTTPException(401, f"{request.method} {route.path} needs a key of role {need} or higher: send "
                                 "'Authorization: Bearer <key>'; an operator makes keys with "
                                 f"'yujing keys add --role {need} --name NAME'",
                            headers={"WWW-Authenticate": "Bearer"})
    if RANK[who.role] < RANK[need]:
        raise HTTPException(403, f"{request.method} {route.path} needs role {need}; the key {who.name!r} is "
                                 f"{who.role}: ask an operator for a {need} key")


class _TriggerAreas:
    """Distinct devices with a first trigger in the last :data:`TRIGGER_WINDOW_S` per res-5
    area, kept once for all live streams. Fed lazily from ``service.recent_triggers``, which
    the service appends to before it publishes a trigger, so a stream that just received a
    trigger always finds it counted."""

    def __init__(self, recent):
        self.recent = recent
        self.last = None  # the newest trigger counted (held, so `is` cannot match a new object)
        self.areas: dict[str, dict[str, float]] = {}  # cell -> device -> newest issued_at_s

    def devices(self, cell: str, now_s: float) -> int:
        """Devices that triggered in ``cell`` within the window before ``now_s`` (UNIX s)."""
        new = []
        for t in reversed(self.recent):
            if t is self.last:
                break
            new.append(t)
        if new:
            self.last = new[0]
            for t in reversed(new):
                c = h3.latlng_to_cell(t.latitude, t.longitude, PUBLIC_TRIGGER_RES)
                self.areas.setdefault(c, {})[t.device_id] = t.issued_at_s
            if len(self.areas) > 5_000:  # forget areas whose triggers all left the window
                self.areas = {c: d for c, d in self.areas.items()
                              if max(d.values()) >= now_s - TRIGGER_WINDOW_S}
        devs = self.areas.get(cell, {})
        return sum(1 for t in devs.values() if t >= now_s - TRIGGER_WINDOW_S)


def create_app(service, replayer=None, limits: ApiLimits | None = None, clock=time.monotonic, broker=None,
               store=None, share_quota=None) -> FastAPI:
    """The API over a running :class:`yujing.service.Service` and ``store`` (default
    ``service.store``; a scale-out worker passes its own, as its shards' Services have none).
    Without a store history comes from memory, keys cannot be looked up and personal data,
    which must be audited, is not served. ``replayer`` backs ``POST /api/replay``. ``limits``: request
    size and rate (default :class:`.auth.ApiLimits`); ``clock``: monotonic seconds for the
    rate limit and the key cache (tests pass their own). ``share_quota``: a scale-out
    worker's :meth:`~yujing.scaleout.Worker.share_quota`, so that the enrolments per
    address are counted across the deployment."""
    app = FastAPI(
        title="yujing",
        version="1",
        description="Earthquake early warning from phones and low-cost sensors: events, alerts, network health. "
                    "Routes beyond the public ones need an API key: 'Authorization: Bearer <key>'.",
        dependencies=[Depends(_authorize)],
    )
    store = service.store if store is None else store
    limits = limits or ApiLimits()
    app.state.closing = asyncio.Event()  # set by the server before it stops: streams end
    app.state.keys = KeyRing(store, clock)
    app.state.buckets = TokenBuckets(limits.rate_per_s, limits.burst, clock)
    # self-enrolled pseudonyms and new accounts per client address and UTC day
    app.state.enrol_quota = DailyQuota(limits.enrol_per_address)
    app.state.account_quota = DailyQuota(limits.enrol_per_address)
    if share_quota is not None:  # a scale-out worker: counted across the deployment
        share_quota(app.state.enrol_quota, "pseudonym")
        share_quota(app.state.account_quota, "account")
    app.add_middleware(Guard, keys=app.state.keys, limits=limits, buckets=app.state.buckets,
                       error=lambda status, message, headers: _err(status, message, headers=headers))
    trigger_areas = _TriggerAreas(service.recent_triggers)
    used_proofs: dict[str, float] = {}  # data-rights proofs seen (replays of one are refused)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _err(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x not in ("query", "path", "body"))
            hint = (" (say why you read personal data, e.g. ?purpose=ticket-123: it is written to the audit log)"
                    if loc == "purpose" else "")
            parts.append(f"{loc}: {e.get('msg')}{hint}")
        return _err(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        return _err(500, f"{type(exc).__name__}: the server failed on this request; see its log")

    async def _db(fn, *args, **kw):
        return await asyncio.to_thread(fn, *args, **kw)

    async def _updates_of(event_id: str) -> list[EventUpdate]:
        if store is not None:
            return await _db(store.updates, event_id)
        u = service.latest.get(event_id)
        return [u] if u else []

    async def _all_latest(limit: int, since: float | None) -> list[EventUpdate]:
        if store is not None:
            rows = await _db(store.events, limit=limit, since_s=since)
            out = []
            for r in rows:
                ups = await _db(store.updates, r["event_id"])
                if ups:
                    out.append(ups[-1])
            return out
        us = sorted(service.latest.values(), key=lambda u: -u.origin_time_s)
        return [u for u in us if since is None or u.origin_time_s >= since][:limit]

    # ------------------------------------------------------------------ health
    @app.get("/health", summary="Liveness and a few counts")
    async def health() -> dict:
        return service.health()

    # ------------------------------------------------------------------ events
    @app.get("/api/events", summary="Events, newest first")
    async def events(limit: int = Query(100, ge=1, le=1000), since: float | None = Query(None, description="origin time, UNIX s")) -> dict:
        latest = await _all_latest(limit, since)
        return {"events": [update_to_json(u) for u in latest]}

    @app.get("/api/events.geojson", summary="Events as GeoJSON (USGS feed shape)")
    async def events_geojson(limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
        latest = await _all_latest(limit, None)
        return JSONResponse(events_to_geojson(latest), media_type="application/geo+json")

    @app.get("/api/events/{event_id}", summary="One event: newest update and all updates")
    async def event(event_id: str) -> dict:
        ups = await _updates_of(event_id)
        if not ups:
            raise HTTPException(404, f"no event {event_id!r}")
        return {"event": update_to_json(ups[-1]), "updates": [update_to_json(u) for u in ups]}

    @app.get("/api/events/{event_id}/mmi.geojson", summary="Forecast intensity (MMI) of the newest update")
    async def mmi(event_id: str, bin_width: float = Query(0.5, gt=0, le=2)) -> JSONResponse:
        ups = await _updates_of(event_id)
        if not ups:
            raise HTTPException(404, f"no event {event_id!r}")
        u = ups[-1]
        if u.retracted:
            return JSONResponse({"type": "FeatureCollection", "features": []}, media_type="application/geo+json")
        tm = await asyncio.to_thread(service.policy.tier_map, u)
        return JSONResponse(mmi_to_geojson(list(tm.cells), tm.mmi, bin_width=bin_width), media_type="application/geo+json")

    @app.get("/api/quakeml", summary="QuakeML 1.2 of the events")
    async def quakeml(event_id: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> Response:
        if event_id is not None:
            ups = await _updates_of(event_id)
            if not ups:
                raise HTTPException(404, f"no event {event_id!r}")
        else:
            ups = []
            for u in await _all_latest(limit, None):
                ups += await _updates_of(u.event_id)
        return Response(events_to_quakeml(ups), media_type="application/xml")

    # ------------------------------------------------------------------ alerts
    async def _alerts(event_id: str | None, limit: int) -> list[Alert]:
        if store is not None:
            return await _db(store.alerts, event_id=event_id, limit=limit)
        al = sorted(service.latest_alert.values(), key=lambda a: -a.issued_at_s)
        return [a for a in al if event_id is None or a.event_id == event_id][:limit]

    @app.get("/api/alerts", summary="Alert messages, newest first")
    async def alerts(event_id: str | None = None, limit: int = Query(100, ge=1, le=1000)) -> dict:
        return {"alerts": [alert_to_json(a) for a in await _alerts(event_id, limit)]}

    async def _history(alert_id: str) -> list[Alert]:
        if store is None:
            a = next((a for a in service.latest_alert.values() if a.alert_id == alert_id), None)
            return [a] if a else []
        latest = await _db(store.latest_alert, alert_id)
        if latest is None:
            return []
        msgs = await _db(store.alerts, event_id=latest.event_id, limit=1000)
        return sorted((m for m in msgs if m.alert_id == alert_id), key=lambda m: m.version)

    @app.get("/api/alerts/{alert_id}/cap", summary="The alert's newest message as CAP 1.2")
    async def alert_cap(alert_id: str) -> Response:
        msgs = await _history(alert_id)
        if not msgs:
            raise HTTPException(404, f"no alert {alert_id!r}")
        xml = await asyncio.to_thread(alert_to_cap, msgs[-1], previous=msgs[:-1])
        return Response(xml, media_type="application/cap+xml")

    @app.get("/api/cap", summary="Atom feed of the current CAP messages")
    async def cap_feed(request: Request, limit: int = Query(50, ge=1, le=500)) -> Response:
        newest: dict[str, Alert] = {}
        for a in await _alerts(None, 1000):
            if a.alert_id not in newest or a.version > newest[a.alert_id].version:
                newest[a.alert_id] = a
        items = sorted(newest.values(), key=lambda a: -a.issued_at_s)[:limit]
        base = str(request.base_url).rstrip("/")
        return Response(_atom(items, base), media_type="application/atom+xml")

    # ------------------------------------------------------------------ network
    @app.get("/api/network", summary="Devices online per area, k-anonymous")
    async def network(res: int = Query(5, ge=0, le=PUBLIC_TRIGGER_RES)) -> dict:
        now = service.clock()
        k = service.config.k_anonymity
        counts, hidden = service.registry.per_area(now, service.config.online_s, res, k)
        cells = []
        for c, n in sorted(counts.items()):
            lat, lon = h3.cell_to_latlng(c)
            cells.append({"cell": c, "devices": n, "latitude": round(lat, 4), "longitude": round(lon, 4)})
        return {"res": res, "k": k, "online_s": service.config.online_s, "areas": cells,
                "devices_in_areas_below_k": hidden, "devices_online": sum(counts.values()) + hidden}

    @app.get("/api/research/network", summary="Devices online per area down to resolution 7, k >= 10 (researchers)")
    async def research_network(res: int = Query(7, ge=0, le=RESEARCH_RES),
                               k: int = Query(RESEARCH_MIN_K, ge=RESEARCH_MIN_K, le=1000,
                                              description="areas with fewer devices are left out")) -> dict:
        # no audit: k-anonymous counts are not personal data. A researcher could subtract two
        # resolutions' counts; researchers are known by their key, which is the control here.
        k = max(k, service.config.k_anonymity)
        now = service.clock()
        counts, hidden = service.registry.per_area(now, service.config.online_s, res, k)
        return {"res": res, "k": k, "online_s": service.config.online_s,
                "areas": [{"cell": c, "devices": n} for c, n in sorted(counts.items())],
                "devices_in_areas_below_k": hidden, "devices_online": sum(counts.values()) + hidden}

    def _recent(since: float | None) -> list:
        t0 = service.clock() - TRIGGER_WINDOW_S if since is None else since
        return [t for t in service.recent_triggers if t.issued_at_s >= t0]

    @app.get("/api/triggers", summary="Recent first triggers per resolution-5 area, k-anonymous")
    async def triggers(since: float | None = Query(None, description="UNIX s; default: the last 10 minutes")) -> dict:
        # A lone trigger in an area says "this one phone moved at this time": only areas
        # where at least k distinct devices triggered are shown.
        k = service.config.k_anonymity
        trigs = _recent(since)
        devices: dict[str, set] = {}
        for t in trigs:
            devices.setdefault(h3.latlng_to_cell(t.latitude, t.longitude, PUBLIC_TRIGGER_RES), set()).add(t.device_id)
        shown = {c for c, d in devices.items() if len(d) >= k}
        areas = _trigger_areas(t for t in trigs if h3.latlng_to_cell(t.latitude, t.longitude, PUBLIC_TRIGGER_RES) in shown)
        return {"k": k, "areas": areas,
                "triggers_in_areas_below_k": len(trigs) - sum(a["triggers"] for a in areas)}

    def server_now() -> float:
        # what a person or a device dates goes by the server's wall clock: accounts, tokens,
        # enrolments, data-rights proofs, audit rows. On a scale-out worker the Service
        # clock is a shard's engine clock (0 before its first step, behind while it catches
        # up); the issuer's token book has the wall clock there (TokenIssuer.clock). What is
        # compared with engine data (recent triggers, devices online) keeps service.clock.
        return service.issuer.tokens.now(service.clock)

    # ------------------------------------------------------------------ personal data (operators, audited)
    async def _audit(request: Request, action: str, target: str, purpose: str) -> None:
        """Write the read to the audit log before anything personal is read: no audit, no data."""
        if store is None:
            raise HTTPException(503, "this server has no store, so the read could not be audited; personal data is "
                                     "served only by a server with a store")
        try:
            await _db(store.audit, principal(request).actor, action, target, purpose, server_now())
        except ValueError as exc:
            raise HTTPException(422, f"purpose: {exc}") from None
        except Exception as exc:
            raise HTTPException(503, f"the audit log could not be written ({type(exc).__name__}: {exc}); personal "
                                     "data is not served unaudited, try again when the store is back") from None

    @app.get("/api/ops/triggers", summary="Every recent trigger area, also those of a single device (operators; audited)")
    async def ops_triggers(request: Request, purpose: str = _PURPOSE,
                           since: float | None = Query(None, description="UNIX s; default: the last 10 minutes")) -> dict:
        t0 = service.clock() - TRIGGER_WINDOW_S if since is None else since
        await _audit(request, "read_triggers", f"res{PUBLIC_TRIGGER_RES} trigger areas since {iso(t0)}", purpose)
        return {"areas": _trigger_areas(_recent(since))}

    @app.get("/api/ops/devices/{pseudonym}", summary="One device's registry entry (operators; audited)")
    async def ops_device(request: Request, pseudonym: str, purpose: str = _PURPOSE) -> dict:
        # One device at a time, by the pseudonym its owner reads off the device: no listing,
        # so an operator cannot browse who is where (minimum necessary).
        await _audit(request, "read_device", pseudonym, purpose)
        row = await _db(store.device, pseudonym)
        live = service.registry.devs.get(pseudonym)
        if live is not None:  # newer than the store's copy, which is written every few seconds
            row = {"pseudonym": pseudonym, "cell": live.cell, "kind": live.kind, "first_seen_s": live.first_seen_s,
                   "last_seen_s": live.last_seen_s, "raw_consent": bool(live.raw_consent)}
        if row is None:
            raise HTTPException(404, f"no device {pseudonym!r} (pseudonyms change daily: ask for today's)")
        return {"device": row}

    @app.get("/api/ops/audit", summary="The audit log, newest first (operators; audited)")
    async def ops_audit(request: Request, purpose: str = _PURPOSE, limit: int = Query(100, ge=1, le=10_000),
                        verify: bool = Query(False, description="recompute the whole hash chain (slow on a long log)")) -> dict:
        # reading who read what is itself recorded: the watchers are watched
        await _audit(request, "read_audit_log", f"newest {limit}", purpose)
        rows = await _db(store.audit_log, limit)
        out: dict[str, Any] = {"rows": rows}
        if verify:
            ok, bad = await _db(store.verify_audit)
            out["chain"] = {"ok": ok, "first_bad_seq": bad}
        return out

    # ------------------------------------------------------------------ live stream
    @app.get("/api/stream", summary="Server-Sent Events: update, alert, trigger")
    async def stream(request: Request) -> StreamingResponse:
        q: asyncio.Queue = asyncio.Queue(1000)

        def put(subject: str, obj: Any) -> None:
            if q.full():  # a slow browser loses old messages, never stalls the service
                q.get_nowait()
                service.bus.dropped["sse"] += 1  # counted with the bus's own drops (/metrics)
            q.put_nowait((subject, obj))

        subs = [service.bus.subscribe(p, put) for p in ("yj.event.>", "yj.alert.>", "yj.trig")]

        async def gen():
            try:
                yield b": yujing live stream\n\n"
                idle = 0.0
                while not app.state.closing.is_set():
                    try:
                        async with asyncio.timeout(1.0):
                            subject, obj = await q.get()
                    except TimeoutError:
                        # a browser that left, or a server shutting down, ends the stream
                        if await request.is_disconnected():
                            break
                        idle += 1.0
                        if idle >= 15.0:
                            idle = 0.0
                            yield b": keep-alive\n\n"
                        continue
                    idle = 0.0
                    if isinstance(obj, EventUpdate):
                        name, data = "update", update_to_json(obj)
                    elif isinstance(obj, Alert):
                        name, data = "alert", alert_to_json(obj)
                    else:
                        name, data = "trigger", _public_trigger(obj)
                        if trigger_areas.devices(data["cell"], obj.issued_at_s) < service.config.k_anonymity:
                            continue  # an area with fewer than k devices triggered stays hidden
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
            finally:
                for s in subs:
                    service.bus.unsubscribe(s)

        return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    # ------------------------------------------------------------------ replay control
    class ReplayRequest(msgspec.Struct):
        source: str = "scenario"
        scenario: str = "luding2022"
        phones: int = 20_000
        seed: int = 0
        event: str = ""
        lead_s: float = 2.0

    @app.post("/api/replay", summary="Replay a scenario or a recorded quake into the running service", status_code=202)
    async def replay(request: Request) -> dict:
        if replayer is None:
            raise HTTPException(503, "replays are disabled on this server (yujing serve --no-replay)")
        try:
            req = msgspec.json.decode(await request.body() or b"{}", type=ReplayRequest)
        except msgspec.DecodeError as exc:
            raise HTTPException(422, f"replay request: {exc}") from None
        try:
            info = await replayer.start(req.source, scenario=req.scenario, phones=req.phones, seed=req.seed,
                                        event=req.event, lead_s=req.lead_s)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        except RuntimeError as exc:
            raise HTTPException(409, str(exc)) from None
        if store is not None:
            # not a read of personal data, but it sends real alerts to real devices: keep who did it
            target = f"{req.source}:{req.scenario if req.source == 'scenario' else req.event}"
            try:
                await _db(store.audit, principal(request).actor, "start_replay", target, "replay control", server_now())
            except Exception as exc:  # the replay is running; a lost record must not hide that
                log.error("replay %s started by %s could not be audited: %s", target, principal(request).actor, exc)
        return info

    # ------------------------------------------------------------------ devices: enrolment, data rights
    @app.post("/api/account", summary="Open a long-lived device account (no personal data): its key asks for daily tokens")
    async def open_account(request: Request) -> dict:
        try:  # no fields: an account holds no personal data
            msgspec.json.decode(await request.body() or b"{}", type=AccountRequest)
        except msgspec.DecodeError as exc:
            raise HTTPException(422, f"account request: {exc}") from None
        now, prefix = server_now(), _address(request)
        left = app.state.account_quota.left(prefix, now)
        if left is not None and left < 1:
            app.state.account_quota.refused += 1
            raise HTTPException(429, f"this address opened {limits.enrol_per_address} accounts today (UTC), the most one "
                                     "address may (yujing serve --enrol-per-address); a device needs one account: try "
                                     "again tomorrow", headers={"Retry-After": str(_to_midnight(now))})
        acct, key = service.issuer.tokens.open_account(now)
        app.state.account_quota.use(prefix, now)
        await asyncio.to_thread(service.issuer.flush_log)
        return {"account": acct, "key": key.hex()}

    @app.get("/api/token/keys", summary="The two token keys (RSA, n in hex): 'est' for accounts older than new_device_s")
    async def token_keys() -> dict:
        keys = await asyncio.to_thread(service.issuer.tokens.public_keys)
        return {k: v.as_json() for k, v in keys.items()}

    @app.post("/api/token", summary="Blind-sign one token per account per day (RFC 9474): the server never sees the pseudonym")
    async def token(request: Request) -> dict:
        try:
            req = msgspec.json.decode(await request.body() or b"{}", type=TokenRequest)
            blinded = bytes.fromhex(req.blinded)
        except (msgspec.DecodeError, ValueError) as exc:
            raise HTTPException(422, f"token request: {exc}") from None
        try:
            sig = await asyncio.to_thread(service.issuer.tokens.sign, req.account, req.day, req.key, blinded, req.proof,
                                          server_now(), service.settings.associate.new_device_s)
            await asyncio.to_thread(service.issuer.flush_log)
        except ValueError as exc:
            raise HTTPException(422, f"token request: {exc}") from None
        return {"key": req.key, "blind_sig": sig.hex()}

    @app.post("/api/enrol", summary="Enrol today's pseudonyms: one device credential each (first come)")
    async def enrol(request: Request) -> dict:
        try:
            req = msgspec.json.decode(await request.body() or b"{}", type=EnrolRequest)
        except msgspec.DecodeError as exc:
            raise HTTPException(422, f"enrolment request: {exc}") from None
        if not 1 <= len(req.pseudonyms) <= MAX_ENROL:
            raise HTTPException(422, f"enrol 1 to {MAX_ENROL} pseudonyms per request")
        now = server_now()
        # an operator's key vouches for the devices (its gateway, its load generator): they
        # count toward announcing events at once; self-enrolled ones after new_device_s,
        # unless an established token vouches for the pseudonym
        operator = principal(request).role == "operator"

        def check_tokens() -> dict[str, str | None]:
            # RSA verifications (~0.1 ms each, 2,000 a request) off the engine's loop
            out = {}
            for p, tok in req.tokens.items():
                try:
                    service.issuer.tokens.check(tok.key, tok.day, p, bytes.fromhex(tok.prefix), bytes.fromhex(tok.sig), now)
                    out[p] = None
                except ValueError as exc:
                    out[p] = str(exc)
            return out

        token_errors = await asyncio.to_thread(check_tokens) if req.tokens else {}
        creds, refused = [], []
        quota, prefix = app.state.enrol_quota, _address(request)
        for p in req.pseudonyms:
            vouched = operator
            tok = req.tokens.get(p) if isinstance(p, str) else None
            try:
                if tok is not None:
                    if token_errors.get(p) is not None:
                        raise ValueError(token_errors[p])
                    vouched = vouched or tok.key == "est"
                # a pseudonym that vouches for nobody counts against its address's day
                left = None if vouched else quota.left(prefix, now)
                if left is not None and left < 1:
                    quota.refused += 1
                    raise ValueError(f"this address enrolled {quota.per_day} pseudonyms for itself today (UTC), the most "
                                     "one address may (yujing serve --enrol-per-address); enrol with an established "
                                     "token from the device's account (POST /api/account, then /api/token), which does "
                                     "not count, or tomorrow")
                c = service.issuer.enrol(p, now, vouched=vouched)
                if not vouched:
                    quota.use(prefix, now)
            except ValueError as exc:
                refused.append({"device": p if isinstance(p, str) else "", "reason": str(exc)})
                continue
            creds.append({"device": c.device, "key": c.key.hex()})
        # on disk before the keys leave: a crash must not forget an enrolment
        await asyncio.to_thread(service.issuer.flush_log)
        # the key travels once, in this response: serve the API over TLS (docs/security.md)
        return {"kid": service.issuer.kid.hex(), "credentials": creds, "refused": refused}

    class DataRequest(msgspec.Struct, forbid_unknown_fields=True):
        device: str
        action: str
        t_s: float
        proof: str

    @app.post("/api/device/data", summary="A device exports or deletes what is held under its pseudonym")
    async def device_data(request: Request) -> dict:
        try:
            req = msgspec.json.decode(await request.body() or b"{}", type=DataRequest)
        except msgspec.DecodeError as exc:
            raise HTTPException(422, f"data request: {exc}") from None
        try:
            check_data_proof(service.issuer, req.device, req.action, req.t_s, req.proof, server_now(), used_proofs)
        except ValueError as exc:
            raise HTTPException(403, f"data request for {req.device!r}: {exc}") from None
        if store is None:
            raise HTTPException(503, "this server has no store, so the request could not be audited; try a server with one")
        # audited before anything is read or deleted: no audit, no data (as for operators);
        # the actor is the device itself, named by the pseudonym it proved
        try:
            await _db(store.audit, f"device:{req.device}", f"device_{req.action}", req.device,
                      "data subject request (proof of key)", server_now())
        except Exception as exc:
            raise HTTPException(503, f"the audit log could not be written ({type(exc).__name__}: {exc}); "
                                     "try again when the store is back") from None
        out: dict[str, Any] = {"device": req.device, "action": req.action}
        if req.action == "export":
            held = service.device_data(req.device)
            held["stored"] = await _db(store.device, req.device)
            out["data"] = held
        else:
            gone = service.forget_device(req.device)
            gone["stored"] = int(await _db(store.delete_device, req.device))
            out["deleted"] = gone
        return out

    @app.get("/api/replay/sources", summary="What can be replayed: scenario keys and recordings")
    async def replay_sources() -> dict:
        if replayer is None:
            raise HTTPException(503, "replays are disabled on this server (yujing serve --no-replay)")
        return replayer.sources()

    @app.get("/api/replay", summary="State of the current or last replay")
    async def replay_state() -> dict:
        if replayer is None:
            raise HTTPException(503, "replays are disabled on this server (yujing serve --no-replay)")
        return replayer.state()

    # ------------------------------------------------------------------ metrics
    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(prometheus_text(service, broker, enrol_refused={"pseudonym": app.state.enrol_quota.refused,
                                                                          "account": app.state.account_quota.refused}),
                        media_type="text/plain; version=0.0.4")

    # ------------------------------------------------------------------ dashboard
    static = resources.files("yujing.api") / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        return RedirectResponse("/static/index.html")

    # fail closed: a route added without a role must not start with the dependency's 500
    # as its only guard, nor a role be kept for a route that is gone
    routes = {(m, r.path) for r in app.routes if isinstance(r, APIRoute) for m in r.methods}
    if routes != set(ROUTE_ROLES):
        raise RuntimeError(f"ROUTE_ROLES and the app's routes differ: no role for {sorted(routes - set(ROUTE_ROLES))}, "
                           f"no route for {sorted(set(ROUTE_ROLES) - routes)}")
    return app


def _public_trigger(t) -> dict:
    """A trigger as the public sees it: its res-5 area, time and strength; no pseudonym."""
    cell = h3.latlng_to_cell(t.latitude, t.longitude, PUBLIC_TRIGGER_RES)
    lat, lon = h3.cell_to_latlng(cell)
    return {"cell": cell, "latitude": round(lat, 4), "longitude": round(lon, 4), "time": iso(t.issued_at_s),
            "onset_time": iso(t.onset_time_s), "pga_gal": round(t.pga_gal, 2)}


def _trigger_areas(trigs) -> list[dict]:
    areas: dict[str, dict] = {}
    for t in trigs:
        p = _public_trigger(t)
        a = areas.setdefault(p["cell"], {"cell": p["cell"], "latitude": p["latitude"], "longitude": p["longitude"],
                                         "triggers": 0, "last": p["time"], "max_pga_gal": 0.0})
        a["triggers"] += 1
        a["last"] = max(a["last"], p["time"])
        a["max_pga_gal"] = max(a["max_pga_gal"], p["pga_gal"])
    return sorted(areas.values(), key=lambda a: a["cell"])


def _atom(alerts: list[Alert], base: str) -> bytes:
    from xml.sax.saxutils import escape

    updated = iso(max((a.issued_at_s for a in alerts), default=time.time()))
    entries = []
    for a in alerts:
        link = f"{base}/api/alerts/{a.alert_id}/cap"
        title = f"M{a.magnitude:.1f} earthquake early warning ({a.msg_type}, message {a.version})"
        entries.append(
            "<entry>"
            f"<id>{escape(cap_identifier(a))}</id><title>{escape(title)}</title>"
            f"<updated>{iso(a.issued_at_s)}</updated>"
            f'<link rel="alternate" type="application/cap+xml" href="{escape(link)}"/>'
            f"<content type=\"application/cap+xml\" src=\"{escape(link)}\"/>"
            "</entry>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<feed xmlns="http://www.w3.org/2005/Atom">'
        f"<id>{escape(base)}/api/cap</id><title>yujing CAP alerts</title><updated>{updated}</updated>"
        "<author><name>yujing</name></author>" + "".join(entries) + "</feed>"
    ).encode()


def _address(request: Request) -> str:
    """The client's address prefix for the per-address enrolment limit (behind a trusted
    proxy, the address it names: yujing serve --trusted-proxy)."""
    return address_prefix(request.client.host if request.client else "unknown")


def _to_midnight(now_s: float) -> int:
    """Whole seconds until the next UTC day begins (a Retry-After)."""
    return max(1, math.ceil(86_400 - now_s % 86_400))


def prometheus_text(service, broker=None, enrol_refused: dict[str, int] | None = None) -> str:
    """The service's counters in the Prometheus text exposition format; with ``broker``
    (``yujing serve``'s embedded MQTT broker), its acknowledgements too; with
    ``enrol_refused``, the enrolments the per-address limit refused (pseudonyms, accounts)."""
    s = service.stats
    lines = [
        "# HELP yujing_messages_received_total Device messages received (any transport).",
        "# TYPE yujing_messages_received_total counter",
        f"yujing_messages_received_total {s.received}",
        "# HELP yujing_messages_accepted_total Device messages accepted, by kind.",
        "# TYPE yujing_messages_accepted_total counter",
    ]
    lines += [f'yujing_messages_accepted_total{{kind="{k}"}} {v}' for k, v in s.accepted.items()]
    lines += ["# HELP yujing_messages_rejected_total Device messages refused, by reason.",
              "# TYPE yujing_messages_rejected_total counter"]
    lines += [f'yujing_messages_rejected_total{{reason="{k}"}} {v}' for k, v in sorted(service.rejects.by_reason().items())]
    lines += [
        "# HELP yujing_event_updates_total Event updates issued.",
        "# TYPE yujing_event_updates_total counter",
        f"yujing_event_updates_total {s.updates}",
        "# HELP yujing_alerts_total Alert messages issued.",
        "# TYPE yujing_alerts_total counter",
        f"yujing_alerts_total {s.alerts}",
        "# HELP yujing_engine_busy_seconds_total Time spent in the detection engine.",
        "# TYPE yujing_engine_busy_seconds_total counter",
        f"yujing_engine_busy_seconds_total {s.engine_busy_s:.6f}",
        "# HELP yujing_alert_policy_busy_seconds_total Time spent forecasting shaking and deciding alerts.",
        "# TYPE yujing_alert_policy_busy_seconds_total counter",
        f"yujing_alert_policy_busy_seconds_total {s.policy_busy_s:.6f}",
        "# HELP yujing_queue_messages Messages waiting for the engine.",
        "# TYPE yujing_queue_messages gauge",
        f"yujing_queue_messages {len(service._queue)}",
        "# HELP yujing_devices_online Devices heard from within the online window.",
        "# TYPE yujing_devices_online gauge",
        f"yujing_devices_online {len(service.registry.online(service.clock(), service.config.online_s))}",
        "# HELP yujing_alert_latency_seconds Trigger arrival to alert published (recent alerts).",
        "# TYPE yujing_alert_latency_seconds summary",
    ]
    lat = sorted(service.alert_latency_s)
    for q in (0.5, 0.9, 0.99):
        v = lat[min(len(lat) - 1, int(q * len(lat)))] if lat else math.nan
        lines.append(f'yujing_alert_latency_seconds{{quantile="{q}"}} {v:.6f}')
    lines += [f"yujing_alert_latency_seconds_count {len(lat)}", f"yujing_alert_latency_seconds_sum {sum(lat):.6f}"]
    from ..gcpace import observe

    gs = observe()
    lines += ["# HELP yujing_gc_collections_total Garbage collections of this process since its first /metrics, "
              "by generation (yujing serve paces them: docs/performance.md).",
              "# TYPE yujing_gc_collections_total counter"]
    lines += [f'yujing_gc_collections_total{{generation="{g}"}} {gs.count[g]}' for g in range(3)]
    lines += ["# HELP yujing_gc_pause_seconds_max Longest collection pause, by generation.",
              "# TYPE yujing_gc_pause_seconds_max gauge"]
    lines += [f'yujing_gc_pause_seconds_max{{generation="{g}"}} {gs.max_pause_s[g]:.6f}' for g in range(3)]
    lines += ["# HELP yujing_bus_dropped_total Non-critical messages dropped for slow consumers.",
              "# TYPE yujing_bus_dropped_total counter"]
    lines += [f'yujing_bus_dropped_total{{subscriber="{k}"}} {v}' for k, v in sorted(service.bus.dropped.items())]
    # a device's QoS 1 message is acknowledged once the journal holds it (docs/reliability.md)
    lines += [
        "# HELP yujing_journal_acks_unwritten_total Journal batches whose messages were acknowledged before "
        "their rows were written (the journal failing or slow beyond journal_ack_max_s: a kill then loses them).",
        "# TYPE yujing_journal_acks_unwritten_total counter",
        f"yujing_journal_acks_unwritten_total {getattr(service, 'journal_acks_unwritten', 0)}",
    ]
    if broker is not None:
        c = broker.counts
        lines += [
            "# HELP yujing_mqtt_acks_sent_total QoS 1 acknowledgements (PUBACK) the embedded broker sent.",
            "# TYPE yujing_mqtt_acks_sent_total counter",
            f"yujing_mqtt_acks_sent_total {c['ack_sent']}",
            "# HELP yujing_mqtt_acks_waiting QoS 1 acknowledgements not sent yet (waiting for the journal).",
            "# TYPE yujing_mqtt_acks_waiting gauge",
            f"yujing_mqtt_acks_waiting {broker.acks_waiting}",
            "# HELP yujing_mqtt_acks_dropped_total QoS 1 acknowledgements never sent: their connection closed "
            "first (the device sends those messages again).",
            "# TYPE yujing_mqtt_acks_dropped_total counter",
            f"yujing_mqtt_acks_dropped_total {c['ack_lost']}",
            "# HELP yujing_mqtt_acks_withheld_total QoS 1 messages not acknowledged because they were not taken "
            "(the server stopping: the device sends them to the next).",
            "# TYPE yujing_mqtt_acks_withheld_total counter",
            f"yujing_mqtt_acks_withheld_total {c['ack_withheld']}",
        ]
    if enrol_refused is not None:
        lines += ["# HELP yujing_enrol_refused_total Enrolments the per-address daily limit refused (self-enrolled "
                  "pseudonyms, new accounts).",
                  "# TYPE yujing_enrol_refused_total counter"]
        lines += [f'yujing_enrol_refused_total{{what="{k}"}} {v}' for k, v in sorted(enrol_refused.items())]
    return "\n".join(lines) + "\n"
