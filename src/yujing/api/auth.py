"""Access control of the HTTP API: roles, API keys, request-size and rate limits.

Roles, weakest first: ``public`` (no key), ``researcher``, ``operator``; a key of a role may
do everything the roles before it may. Which route needs which role is the table
:data:`yujing.api.app.ROUTE_ROLES` (and docs/api.md).

An API key is ``yj_`` + 43 URL-safe characters (256 random bits). The store keeps only its
SHA-256 (:meth:`yujing.store.Store.add_api_key`): a copy of the database gives no key, and a
lookup by hash needs no slow password hash, because a 256-bit random key cannot be guessed
(the reason PBKDF2 and friends exist, short human passwords, does not apply). Keys travel as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

:class:`Guard` is a plain ASGI middleware (a ``BaseHTTPMiddleware`` would buffer the live
stream): it resolves the key, charges the caller's token bucket and caps the request body,
before any route runs, so that also unknown routes and static files are limited.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import math
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from starlette.exceptions import HTTPException as StarletteHTTPException

ROLES = ("public", "researcher", "operator")
RANK = {r: i for i, r in enumerate(ROLES)}
KEY_PREFIX = "yj_"
#: how long a looked-up key is trusted before the store is asked again, s (a key revoked
#: with ``yujing keys revoke`` by another process stops working within this time)
KEY_CACHE_S = 10.0
#: the name of the operator key that ``yujing serve`` creates on its first start
BOOTSTRAP_KEY_NAME = "operator"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the key's name and role (``public``/``public`` without a key)."""

    name: str
    role: str

    @property
    def actor(self) -> str:
        """How the audit log names this caller: ``role:name``."""
        return f"{self.role}:{self.name}"


PUBLIC = Principal("public", "public")


@dataclass
class ApiLimits:
    """Limits of the HTTP API (``yujing serve --max-request-bytes --rate-limit --rate-burst``).

    ``max_body_bytes``: largest request body accepted, bytes (413 beyond it).
    ``rate_per_s``: requests per second each key, or each client address without a key, may
    sustain (0: no rate limit, e.g. behind a proxy that limits).
    ``burst``: requests a caller may make at once after being idle (the bucket's size).
    ``enrol_per_address``: pseudonyms a client address may enrol for itself, and accounts it
    may open, per UTC day (each its own count; 0: no limit). An IPv6 address counts by its
    /64, the prefix one subscriber gets. Enrolments with an operator key or an established
    token do not count (:class:`DailyQuota`).
    """

    max_body_bytes: int = 64 * 1024
    rate_per_s: float = 20.0
    burst: int = 200
    enrol_per_address: int = 500

    def __post_init__(self) -> None:
        if not isinstance(self.max_body_bytes, int) or self.max_body_bytes < 0:
            raise ValueError(f"max request size must be a whole number of bytes >= 0, not {self.max_body_bytes!r}")
        if not (math.isfinite(self.rate_per_s) and self.rate_per_s >= 0):
            raise ValueError(f"rate limit must be >= 0 requests per second (0: none), not {self.rate_per_s!r}")
        if not isinstance(self.burst, int) or self.burst < 1:
            raise ValueError(f"rate burst must be a whole number of requests >= 1, not {self.burst!r}")
        if not isinstance(self.enrol_per_address, int) or self.enrol_per_address < 0:
            raise ValueError(f"enrolments per address must be a whole number >= 0 (0: no limit), not {self.enrol_per_address!r}")


# ---------------------------------------------------------------------------- keys

def new_key() -> str:
    """A fresh API key: ``yj_`` and 256 random bits, URL-safe base64 (the prefix lets secret
    scanners and people recognise it)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    """SHA-256 of the key, 64 lowercase hex digits: what the store keeps."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_key(store, name: str, role: str, actor: str, now_s: float | None = None) -> str:
    """Make a key of ``role`` named ``name``, keep its hash in ``store``, write who made it
    to the audit log, and return the key (the only time it exists in the clear)."""
    if role not in ROLES[1:]:
        raise ValueError(f"a key's role must be one of {', '.join(ROLES[1:])} (the public needs no key), not {role!r}")
    now_s = time.time() if now_s is None else now_s
    key = new_key()
    store.add_api_key(name, role, hash_key(key), now_s)
    store.audit(actor, "create_api_key", f"{role}:{name}", "key management", now_s)
    return key


def revoke_key(store, name: str, actor: str, now_s: float | None = None) -> bool:
    """Revoke the live key ``name`` (audited); False if there is none of that name."""
    now_s = time.time() if now_s is None else now_s
    ok = store.revoke_api_key(name, now_s)
    if ok:
        store.audit(actor, "revoke_api_key", name, "key management", now_s)
    return ok


def bootstrap_operator_key(store, db_path: Path | None) -> tuple[str | None, Path | None]:
    """On a store with no live operator key, make one named ``operator`` so that the
    dashboard's replay control works with no configuration. Returns ``(key, file)``: with a
    SQLite file store the key is written to ``<db>.operator-key`` (mode 0600, beside the
    database, like the database's own permissions) and ``key`` is None, so it never reaches a
    log; otherwise (memory, PostgreSQL) the key is returned for the caller to show once.
    ``(None, None)`` when an operator key exists."""
    if any(k["role"] == "operator" and k["revoked_at_s"] is None for k in store.api_keys()):
        return None, None
    name = BOOTSTRAP_KEY_NAME
    taken = {k["name"] for k in store.api_keys()}
    n = 2
    while name in taken:  # the first one was revoked: names are never reused
        name, n = f"{BOOTSTRAP_KEY_NAME}-{n}", n + 1
    try:
        key = create_key(store, name, "operator", "yujing-serve:first-start")
    except Exception:
        # another worker on the same PostgreSQL store may have made it a moment ago
        if any(k["role"] == "operator" and k["revoked_at_s"] is None for k in store.api_keys()):
            return None, None
        raise
    if db_path is None:
        return key, None
    path = db_path.with_name(db_path.name + ".operator-key")
    # O_EXCL: never follow a planted symlink or reuse someone else's file; 0600 from birth
    try:
        path.unlink()  # a stale file of a revoked key
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return None, path


class KeyRing:
    """Looks keys up by hash in the store, remembering answers for :data:`KEY_CACHE_S`
    seconds (so most requests do not touch the database). Unknown keys are not remembered:
    a flood of bad keys costs a lookup each, and the rate limit bounds that."""

    def __init__(self, store, clock: Callable[[], float] = time.monotonic, max_cached: int = 10_000):
        self.store = store
        self.clock = clock
        self.max_cached = max_cached
        self._cache: dict[str, tuple[Principal, float]] = {}

    async def lookup(self, key: str) -> Principal | None:
        h = hash_key(key)
        now = self.clock()
        hit = self._cache.get(h)
        if hit is not None and now - hit[1] < KEY_CACHE_S:
            return hit[0]
        if self.store is None:
            return None
        row = await asyncio.to_thread(self.store.api_key, h)
        if row is None:
            self._cache.pop(h, None)
            return None
        if len(self._cache) >= self.max_cached:
            self._cache.clear()
        p = self._cache[h] = (Principal(row["name"], row["role"]), now)
        return p[0]


def key_from_headers(headers: dict[bytes, bytes]) -> str | None:
    """The key a request carries, None without one; ValueError for an Authorization header
    that is not a bearer token."""
    auth = headers.get(b"authorization")
    if auth is not None:
        scheme, _, token = auth.decode("latin-1").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ValueError("the Authorization header must be 'Bearer <key>'")
        return token.strip()
    x = headers.get(b"x-api-key")
    return x.decode("latin-1").strip() if x is not None else None


# ---------------------------------------------------------------------------- rate limit

class TokenBuckets:
    """One token bucket per caller: ``burst`` tokens, refilled at ``rate_per_s``; a request
    takes one. ``clock`` is monotonic seconds (tests pass their own).

    At most ``max_callers`` buckets are kept (an attacker with many addresses must not grow
    memory without bound): beyond it the least recently used are dropped, which only hands
    those callers a full bucket early, so a bucket that had time to refill loses nothing."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_callers: int = 100_000):
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.clock = clock
        self.max_callers = max_callers
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)

    def take(self, caller: str) -> float:
        """Take a token for ``caller``: 0.0 if granted, else the seconds until one is due."""
        if self.rate_per_s <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._b.pop(caller, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate_per_s)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate_per_s
        self._b[caller] = (tokens, now)
        while len(self._b) > self.max_callers:
            self._b.popitem(last=False)
        return wait


def address_prefix(host: str) -> str:
    """The part of a client address that names one subscriber: an IPv4 address whole, an
    IPv6 one by its /64 (a subscriber is handed a /64 or more, and picks addresses in it
    at will); anything else (a test client's name) as it is."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host
    if ip.version == 6:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


class DailyQuota:
    """Counts per client address and UTC day, up to ``per_day`` (0: no limit): how many
    pseudonyms an address enrolled for itself, or how many accounts it opened.

    An attacker who enrols fakes a day ahead passes every test the engine can make
    (tests/test_attacks.py, (b)); what bounds him is how many fakes he can enrol. Without a
    limit one address enrolled 2,000 pseudonyms a request, 20 requests a second. With it,
    each address yields at most ``per_day`` self-enrolled fakes and ``per_day`` accounts
    (whose established tokens vouch for a pseudonym a day each, six hours after opening).
    Phones behind a shared address (carrier-grade NAT) enrol with their account's token,
    which this does not count; only opening accounts does.

    Held in memory only, never stored or logged: the address prefix and a count. At most
    ``max_callers`` are kept; beyond it the least recently used go (which hands them a
    fresh count: an attacker needs that many addresses to do it, and then has them)."""

    def __init__(self, per_day: int, max_callers: int = 100_000):
        self.per_day = per_day
        self.max_callers = max_callers
        self.refused = 0
        self._n: OrderedDict[str, tuple[int, int]] = OrderedDict()  # prefix -> (UTC day, count)
        # Shared by the workers of a scale-out (yujing.scaleout.Worker.share_quota): each
        # publishes its own count of a (key, day), ``key_of`` the prefix's key (a keyed
        # hash, never the address), and hears the others' (:meth:`merge`)
        self.key_of: Callable[[str], str] = lambda prefix: prefix
        self.on_use: Callable[[str, int, int], None] | None = None  # (key, UTC day, own count)
        self._others: OrderedDict[tuple[str, int], dict[str, int]] = OrderedDict()

    def left(self, prefix: str, now_s: float) -> int | None:
        """How many ``prefix`` may still take today (UNIX s ``now_s``), counting what the
        other workers of a scale-out reported; None: no limit."""
        if self.per_day <= 0:
            return None
        today = int(now_s // 86_400)
        day, n = self._n.get(prefix, (-1, 0))
        others = sum(self._others.get((self.key_of(prefix), today), {}).values()) if self._others else 0
        return self.per_day - (n if day == today else 0) - others

    def use(self, prefix: str, now_s: float, k: int = 1) -> None:
        """``prefix`` took ``k`` today."""
        if self.per_day <= 0 or k <= 0:
            return
        today = int(now_s // 86_400)
        day, n = self._n.pop(prefix, (today, 0))
        own = (n if day == today else 0) + k
        self._n[prefix] = (today, own)
        while len(self._n) > self.max_callers:
            self._n.popitem(last=False)
        if self.on_use is not None:
            self.on_use(self.key_of(prefix), today, own)

    def merge(self, key: str, day: int, worker: str, count: int) -> None:
        """Another worker's own count of ``key`` on UTC day ``day`` (days are numbered
        from the UNIX epoch): what :meth:`left` adds to this worker's."""
        self._others.setdefault((key, day), {})[worker] = count
        self._others.move_to_end((key, day))
        while len(self._others) > self.max_callers:
            self._others.popitem(last=False)


# ---------------------------------------------------------------------------- middleware

class Guard:
    """ASGI middleware: key -> principal (``scope["yujing.principal"]``), rate limit, body size.

    ``error(status, message, headers)`` makes the API's one JSON error response."""

    def __init__(self, app, keys: KeyRing, limits: ApiLimits, buckets: TokenBuckets, error):
        self.app = app
        self.keys = keys
        self.limits = limits
        self.buckets = buckets
        self.error = error

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or ())
        client = scope.get("client")
        caller = f"addr:{client[0]}" if client else "addr:unknown"
        principal, refusal = PUBLIC, None
        try:
            key = key_from_headers(headers)
        except ValueError as exc:
            key, refusal = None, f"{exc}; get a key from the operator (yujing keys add)"
        if key is not None:
            found = await self.keys.lookup(key)
            if found is None:
                refusal = ("unknown or revoked API key; check the key you sent, or ask the operator "
                           "for one (yujing keys add --role ROLE --name NAME)")
            else:
                principal, caller = found, f"key:{found.name}"
        # a bad key is charged to its address, so that guessing keys is rate limited too
        wait = self.buckets.take(caller)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            who = "this key" if caller.startswith("key:") else "this address"
            return await self.error(429, f"too many requests from {who}: the limit is {self.buckets.rate_per_s:g}/s "
                                         f"(bursts of {self.buckets.burst}); retry after {retry} s",
                                    {"Retry-After": str(retry)})(scope, receive, send)
        if refusal is not None:
            return await self.error(401, refusal, {"WWW-Authenticate": "Bearer"})(scope, receive, send)
        limit = self.limits.max_body_bytes
        size = headers.get(b"content-length")
        too_large = (f"request body larger than {limit} bytes; send less (the server's limit is "
                     f"yujing serve --max-request-bytes)")
        if size is not None:
            try:
                n = int(size)
            except ValueError:
                return await self.error(400, f"Content-Length {size!r} is not a number", {})(scope, receive, send)
            if n > limit:
                return await self.error(413, too_large, {})(scope, receive, send)
        scope["yujing.principal"] = principal
        got = 0

        async def capped_receive():
            # a chunked body has no Content-Length: count what arrives; the route reading it
            # gets an HTTPException, which the app turns into the JSON error
            nonlocal got
            msg = await receive()
            if msg["type"] == "http.request":
                got += len(msg.get("body", b""))
                if got > limit:
                    raise StarletteHTTPException(413, too_large)
            return msg

        return await self.app(scope, capped_receive, send)
