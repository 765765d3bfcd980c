"""Access control of the HTTP API, against a real ``yujing serve`` (HTTP over a socket, SQLite
in a file, the embedded MQTT broker) and, for the key table, PostgreSQL too.

Routes are enumerated from /openapi.json, so a route added without a role in
``ROUTE_ROLES`` (or in docs/api.md's table) fails here. The rate limit runs on a clock the
test moves by hand: no sleeps, no timed assertions.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import h3
import httpx
import pytest

from yujing.api.app import ROUTE_ROLES, _TriggerAreas
from yujing.api.auth import KEY_CACHE_S, ApiLimits, DailyQuota, TokenBuckets, address_prefix, create_key, hash_key
from yujing.records import Trigger
from yujing.serve import ServeOptions, Server
from yujing.store import open_store

API_MD = Path(__file__).resolve().parents[1] / "docs" / "api.md"
ERROR_KEYS = {"status", "code", "message"}


class Clock:
    """Monotonic seconds that move only when the test says so."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, limits: ApiLimits | None = None, clock: Clock | None = None):
    db = tmp_path / "yj.db"
    srv = Server(ServeOptions(port=0, mqtt_port=0, store=f"sqlite:///{db}", limits=limits),
                 api_clock=clock or Clock())
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


def op_key(srv: Server) -> str:
    """The operator key of the first start, read from the file beside the database."""
    return srv.operator_key_file.read_text().strip()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, (r.request.method, r.request.url, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    assert body["error"]["status"] == status and body["error"]["code"] == code and body["error"]["message"], body
    return body["error"]


def operations(spec: dict) -> list[tuple[str, str]]:
    return [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]


def concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "no-such-thing", path)


async def call(api: httpx.AsyncClient, method: str, path: str, headers: dict | None = None) -> httpx.Response:
    """One request to a route, with what it needs to get past validation (a purpose) and
    nothing that would start work (a replay request it must refuse)."""
    params = {"purpose": "access-control test"}
    if method == "POST":
        return await api.post(concrete(path), content=b"{not json", params=params, headers=headers)
    if path == "/api/stream":  # the stream never ends: read the status line and go
        async with api.stream("GET", path, headers=headers) as r:
            await r.aread() if r.status_code >= 400 else None
            return r
    return await api.request(method, concrete(path), params=params, headers=headers)


# ---------------------------------------------------------------------------- the role table

def docs_role_table() -> dict[tuple[str, str], str]:
    """The role table of docs/api.md: rows like ``| `GET /api/events?limit=` | public | ... |``."""
    out = {}
    for line in API_MD.read_text().splitlines():
        m = re.match(r"\|\s*`(GET|POST|PUT|DELETE|PATCH) ([^`?]+)[^`]*`\s*\|\s*(\w+)\s*\|", line)
        if m:
            out[(m.group(1), m.group(2))] = m.group(3)
    return out


def test_every_route_has_a_role_and_docs_show_the_same_table(tmp_path):
    async def go():
        async with serving(tmp_path) as srv, httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            return (await api.get("/openapi.json")).json()

    spec = asyncio.run(go())
    ops = operations(spec)
    missing = [op for op in ops if op not in ROUTE_ROLES]
    assert not missing, f"routes without a role in yujing.api.app.ROUTE_ROLES: {missing}"
    assert set(ROUTE_ROLES) - set(ops) == {("GET", "/")}, "ROUTE_ROLES names routes the API does not have"
    docs = docs_role_table()
    docs = {(m, re.sub(r"\{[^}]+\}", "{X}", p)): r for (m, p), r in docs.items()}
    ours = {(m, re.sub(r"\{[^}]+\}", "{X}", p)): r for (m, p), r in ROUTE_ROLES.items()}
    assert docs == ours, f"docs/api.md's table and ROUTE_ROLES differ: {set(docs.items()) ^ set(ours.items())}"


def test_public_routes_open_protected_routes_refuse(tmp_path):
    async def go():
        async with serving(tmp_path) as srv, httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            researcher = await asyncio.to_thread(create_key, srv.store, "rita", "researcher", "test")
            operator = op_key(srv)
            ops = operations((await api.get("/openapi.json")).json())
            assert (await api.get("/docs")).status_code == 200
            assert (await api.get("/static/index.html")).status_code == 200
            checked = {"public": 0, "researcher": 0, "operator": 0}
            for method, path in ops:
                need = ROUTE_ROLES[(method, path)]
                checked[need] += 1
                what = f"{method} {path}"
                anon = await call(api, method, path)
                if need == "public":
                    assert anon.status_code not in (401, 403), (what, anon.text)
                    # a bad key is refused even where none is needed: the caller should know
                    assert_error(await call(api, method, path, bearer("yj_wrong")), 401, "unauthorized")
                    continue
                e = assert_error(anon, 401, "unauthorized")
                assert anon.headers["www-authenticate"] == "Bearer" and f"--role {need}" in e["message"], (what, e)
                assert_error(await call(api, method, path, bearer("yj_" + "A" * 43)), 401, "unauthorized")
                assert_error(await call(api, method, path, {"X-API-Key": "yj_wrong"}), 401, "unauthorized")
                assert_error(await call(api, method, path, {"Authorization": f"Basic {operator}"}), 401, "unauthorized")
                if need == "operator":
                    e = assert_error(await call(api, method, path, bearer(researcher)), 403, "forbidden")
                    assert "'rita' is researcher" in e["message"], e
                else:
                    r = await call(api, method, path, bearer(researcher))
                    assert r.status_code not in (401, 403), (what, r.text)
                for h in (bearer(operator), {"X-API-Key": operator}):
                    r = await call(api, method, path, h)
                    assert r.status_code not in (401, 403), (what, r.text)
            return checked

    checked = asyncio.run(go())
    assert checked["public"] >= 10 and checked["researcher"] >= 1 and checked["operator"] >= 6, checked


def test_researcher_gets_finer_areas_only_with_k_at_least_10(tmp_path):
    async def go():
        async with serving(tmp_path) as srv, httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            key = bearer(await asyncio.to_thread(create_key, srv.store, "rita", "researcher", "test"))
            assert_error(await api.get("/api/network", params={"res": 7}), 422, "invalid_parameter")
            r = await api.get("/api/research/network", params={"res": 7, "k": 10}, headers=key)
            assert r.status_code == 200 and r.json()["res"] == 7 and r.json()["k"] == 10
            e = assert_error(await api.get("/api/research/network", params={"res": 7, "k": 9}, headers=key),
                             422, "invalid_parameter")
            assert e["message"].startswith("k:"), e

    asyncio.run(go())


# ---------------------------------------------------------------------------- limits

def test_request_size_limit(tmp_path):
    async def go():
        async with serving(tmp_path, ApiLimits(max_body_bytes=1024)) as srv, \
                httpx.AsyncClient(base_url=srv.http_url, timeout=30, headers=bearer(op_key(srv))) as api:
            small = b'{"source": "nowhere"}'.ljust(1024)
            r = await api.post("/api/replay", content=small)  # exactly the limit: read, then refused as a request
            e = assert_error(r, 422, "invalid_parameter")
            assert "nowhere" in e["message"]
            e = assert_error(await api.post("/api/replay", content=small + b" "), 413, "too_large")
            assert "1024 bytes" in e["message"] and "--max-request-bytes" in e["message"]

            async def chunks():  # no Content-Length: the server counts what arrives
                for _ in range(8):
                    yield b" " * 200

            assert_error(await api.post("/api/replay", content=chunks()), 413, "too_large")
            # any route, also a public one and one that reads no body
            assert_error(await api.request("GET", "/health", content=b"x" * 2000), 413, "too_large")

    asyncio.run(go())


def test_rate_limit_per_address_and_per_key(tmp_path):
    clock = Clock()

    async def go():
        async with serving(tmp_path, ApiLimits(rate_per_s=0.5, burst=3), clock) as srv, \
                httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            operator = bearer(op_key(srv))
            for _ in range(3):
                assert (await api.get("/health")).status_code == 200
            r = await api.get("/health")
            e = assert_error(r, 429, "rate_limited")
            assert r.headers["retry-after"] == "2" and "this address" in e["message"], (r.headers, e)
            # a bad key is charged to the address: guessing keys is limited too
            assert_error(await api.get("/health", headers=bearer("yj_guess")), 429, "rate_limited")
            # a key has its own bucket
            for _ in range(3):
                assert (await api.get("/metrics", headers=operator)).status_code == 200
            r = await api.get("/metrics", headers=operator)
            e = assert_error(r, 429, "rate_limited")
            assert "this key" in e["message"]
            # a client cannot pick a new bucket by naming another address (no proxy is trusted)
            assert_error(await api.get("/health", headers={"X-Forwarded-For": "10.9.8.7"}), 429, "rate_limited")
            clock.t += 1.0  # half a token: still refused, and told to wait the other second
            r = await api.get("/health")
            assert_error(r, 429, "rate_limited")
            assert r.headers["retry-after"] == "1"
            clock.t += 1.0
            assert (await api.get("/health")).status_code == 200
            assert_error(await api.get("/health"), 429, "rate_limited")
            clock.t += 3600.0  # a long pause refills to the burst, not beyond
            assert all([(await api.get("/health")).status_code == 200 for _ in range(3)])
            assert_error(await api.get("/health"), 429, "rate_limited")

    asyncio.run(go())


def test_token_buckets_forget_the_idle_first_and_stay_bounded():
    clock = Clock(0.0)
    b = TokenBuckets(rate_per_s=1.0, burst=1, clock=clock, max_callers=2)
    assert b.take("a") == 0.0 and b.take("b") == 0.0
    assert b.take("a") == 1.0  # a is empty, and now the most recently used
    assert b.take("c") == 0.0  # b (least recently used) is dropped
    assert len(b._b) == 2 and b.take("a") == 1.0
    assert TokenBuckets(0.0, 1, clock).take("x") == 0.0  # rate 0: no limit
    with pytest.raises(ValueError, match="rate limit"):
        ApiLimits(rate_per_s=-1)
    with pytest.raises(ValueError, match="burst"):
        ApiLimits(burst=0)


# ---------------------------------------------------------------------------- audit

def test_personal_data_reads_are_audited(tmp_path):
    cell = h3.latlng_to_cell(29.6, 102.1, 7)

    async def go():
        async with serving(tmp_path) as srv, httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            operator = bearer(op_key(srv))
            researcher = bearer(await asyncio.to_thread(create_key, srv.store, "rita", "researcher", "test"))
            await asyncio.to_thread(srv.store.note_device, "pz-1", cell, "phone", 1000.0)
            n0 = len(srv.store.audit_log(limit=1000))

            # refused reads leave no row; a read without a purpose is refused
            assert_error(await api.get("/api/ops/devices/pz-1", params={"purpose": "curious"}, headers=researcher),
                         403, "forbidden")
            e = assert_error(await api.get("/api/ops/devices/pz-1", headers=operator), 422, "invalid_parameter")
            assert "purpose" in e["message"] and "audit" in e["message"]
            assert len(srv.store.audit_log(limit=1000)) == n0

            r = await api.get("/api/ops/devices/pz-1", params={"purpose": "ticket 42: no alerts"}, headers=operator)
            assert r.status_code == 200 and r.json()["device"]["cell"] == cell
            r = await api.get("/api/ops/devices/pz-2", params={"purpose": "ticket 43"}, headers=operator)
            assert_error(r, 404, "not_found")  # asking about someone is recorded even when they are unknown
            r = await api.get("/api/ops/triggers", params={"purpose": "false-trigger review"}, headers=operator)
            assert r.status_code == 200
            r = await api.get("/api/ops/audit", params={"purpose": "monthly check", "verify": "true"}, headers=operator)
            assert r.status_code == 200 and r.json()["chain"] == {"ok": True, "first_bad_seq": None}
            return r.json()["rows"], n0

    rows, n0 = asyncio.run(go())
    assert len(rows) == n0 + 4
    got = [(x["actor"], x["action"], x["target"], x["purpose"]) for x in reversed(rows[:4])]
    # the store keeps the pseudonym read as a keyed tag (docs/privacy.md: the audit log
    # outlives the retention period, the tag's key does not)
    assert got[0][:2] == ("operator:operator", "read_device") and got[0][3] == "ticket 42: no alerts"
    assert got[1][:2] == ("operator:operator", "read_device") and got[1][3] == "ticket 43"
    assert got[0][2].startswith("dev#") and got[1][2].startswith("dev#") and got[0][2] != got[1][2]
    assert got[2][:2] == ("operator:operator", "read_triggers") and got[2][3] == "false-trigger review"
    assert got[3] == ("operator:operator", "read_audit_log", "newest 100", "monthly check")
    # the first start's key and the researcher key were recorded as made, by whom
    made = [(x["actor"], x["target"]) for x in rows if x["action"] == "create_api_key"]
    assert ("yujing-serve:first-start", "operator:operator") in made and ("test", "researcher:rita") in made


# ---------------------------------------------------------------------------- keys

def test_operator_key_of_the_first_start_and_the_keys_command(tmp_path):
    clock = Clock()
    url = f"sqlite:///{tmp_path / 'yj.db'}"

    def keys(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "yujing.cli", "keys", *args, "--store", url],
                              capture_output=True, text=True, timeout=60)

    async def go():
        async with serving(tmp_path, clock=clock) as srv, httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            f = srv.operator_key_file
            assert f == tmp_path / "yj.db.operator-key" and srv.operator_key is None
            assert f.stat().st_mode & 0o777 == 0o600
            key = f.read_text().strip()
            assert re.fullmatch(r"yj_[A-Za-z0-9_-]{43}", key)
            # the store has the hash only
            con = sqlite3.connect(tmp_path / "yj.db")
            dump = "\n".join(con.iterdump())
            con.close()
            assert key not in dump and hash_key(key) in dump

            p = await asyncio.to_thread(keys, "add", "--role", "researcher", "--name", "ana")
            assert p.returncode == 0, p.stderr
            ana = p.stdout.strip()
            assert (await api.get("/api/research/network", headers=bearer(ana))).status_code == 200
            p = await asyncio.to_thread(keys, "add", "--role", "operator", "--name", "ana")
            assert p.returncode == 2 and "never reused" in p.stderr
            p = await asyncio.to_thread(keys, "revoke", "ana")
            assert p.returncode == 0, p.stderr
            clock.t += KEY_CACHE_S + 0.1  # the server asks the store again after its cache time
            assert_error(await api.get("/api/research/network", headers=bearer(ana)), 401, "unauthorized")
            p = await asyncio.to_thread(keys, "list")
            assert re.search(r"^ana\tresearcher\tmade \S+\trevoked ", p.stdout, re.M), p.stdout
            assert re.search(r"^operator\toperator\tmade \S+\tlive$", p.stdout, re.M), p.stdout
            return key

    key = asyncio.run(go())

    async def again():  # a second start makes no new key and leaves the file alone
        async with serving(tmp_path) as srv:
            return srv.operator_key, srv.operator_key_file

    assert asyncio.run(again()) == (None, None)
    assert (tmp_path / "yj.db.operator-key").read_text().strip() == key
    st = open_store(url)
    try:
        acts = {(x["actor"], x["action"], x["target"]) for x in st.audit_log(limit=100)}
    finally:
        st.close()
    me = f"cli:{getpass.getuser()}"
    assert {(me, "create_api_key", "researcher:ana"), (me, "revoke_api_key", "ana")} <= acts


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """A SQLite file, or a fresh PostgreSQL schema (test_serve's fixture: fails, never skips,
    without a server)."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "keys.db")
    return request.getfixturevalue("pg_schema_url")


def test_store_keeps_key_hashes_and_never_reuses_a_name(store_url):
    st = open_store(store_url)
    try:
        h = hashlib.sha256(b"k1").hexdigest()
        st.add_api_key("ana", "researcher", h, 10.0)
        assert st.api_key(h) == {"name": "ana", "role": "researcher", "created_at_s": 10.0}
        assert st.api_key(hashlib.sha256(b"k2").hexdigest()) is None
        with pytest.raises(ValueError, match="never reused"):
            st.add_api_key("ana", "operator", hashlib.sha256(b"k2").hexdigest(), 11.0)
        for bad, match in ((("", "operator", h), "name"), (("bo", "admin", h), "role"), (("bo", "operator", "K1"), "hash"),
                           ((" bo", "operator", h), "name")):
            with pytest.raises(ValueError, match=match):
                st.add_api_key(*bad, 12.0)
        assert st.revoke_api_key("ana", 20.0) and not st.revoke_api_key("ana", 21.0)
        assert st.api_key(h) is None
        assert st.api_keys() == [{"name": "ana", "role": "researcher", "created_at_s": 10.0, "revoked_at_s": 20.0}]
        with pytest.raises(ValueError, match="never reused"):
            st.add_api_key("ana", "researcher", hashlib.sha256(b"k3").hexdigest(), 30.0)
    finally:
        st.close()


# ---------------------------------------------------------------------------- k-anonymous triggers

def _trigger(device: str, lat: float, lon: float, t: float) -> Trigger:
    return Trigger(device_id=device, latitude=lat, longitude=lon, onset_time_s=t - 1, issued_at_s=t, window_s=1.0,
                   pga_gal=5.0, pgv_cm_s=0.1, pd_cm=0.01)


def test_public_trigger_map_hides_areas_with_fewer_than_k_devices(tmp_path):
    async def go():
        async with serving(tmp_path) as srv, httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            now = srv.service.clock()
            k = srv.service.config.k_anonymity
            lone = [_trigger("lone", 29.6, 102.1, now - 5), _trigger("lone", 29.6, 102.1, now - 4)]
            crowd = [_trigger(f"d{i}", 31.0, 103.4, now - 3) for i in range(k)]
            # the deque the service fills with the first triggers the engine took
            srv.service.recent_triggers.extend(lone + crowd)
            pub = (await api.get("/api/triggers")).json()
            ops = (await api.get("/api/ops/triggers", params={"purpose": "test"},
                                 headers=bearer(op_key(srv)))).json()
            return pub, ops, k

    pub, ops, k = asyncio.run(go())
    crowd_cell = h3.latlng_to_cell(31.0, 103.4, 5)
    assert [a["cell"] for a in pub["areas"]] == [crowd_cell] and pub["areas"][0]["triggers"] == k
    assert pub["triggers_in_areas_below_k"] == 2 and pub["k"] == k
    assert {a["cell"] for a in ops["areas"]} == {crowd_cell, h3.latlng_to_cell(29.6, 102.1, 5)}


def test_stream_counts_distinct_devices_per_area():
    recent: list = []
    areas = _TriggerAreas(recent)
    cell = h3.latlng_to_cell(31.0, 103.4, 5)
    recent += [_trigger("a", 31.0, 103.4, 100.0), _trigger("a", 31.0, 103.4, 101.0)]
    assert areas.devices(cell, 101.0) == 1  # one phone twice is one device
    recent.append(_trigger("b", 31.0, 103.4, 102.0))
    assert areas.devices(cell, 102.0) == 2
    assert areas.devices(cell, 101.0 + 600.5) == 1  # a's triggers left the 10-minute window
    assert areas.devices(h3.latlng_to_cell(0.0, 0.0, 5), 102.0) == 0


def test_enrolments_per_address_and_day_are_limited(tmp_path):
    """An address may enrol ``enrol_per_address`` pseudonyms for itself and open as many
    accounts a UTC day: beyond it each further pseudonym is refused with the reason (the
    rest of the request still enrols), an account gets a 429, and /metrics counts both.
    Pseudonyms enrolled with an operator key do not count, nor is a pseudonym refused for
    being taken already charged. A forged X-Forwarded-For does not buy a fresh count."""

    async def go():
        async with serving(tmp_path, ApiLimits(enrol_per_address=5)) as srv, \
                httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
            operator = bearer(op_key(srv))
            r = (await api.post("/api/enrol", json={"pseudonyms": ["q1", "q2", "q3"]})).json()
            assert [c["device"] for c in r["credentials"]] == ["q1", "q2", "q3"] and r["refused"] == []
            # taken already: refused for that, and not charged
            r = (await api.post("/api/enrol", json={"pseudonyms": ["q1"]})).json()
            assert r["credentials"] == [] and "enrolled already" in r["refused"][0]["reason"]
            r = (await api.post("/api/enrol", json={"pseudonyms": ["q4", "q5", "q6", "q7"]},
                                headers={"X-Forwarded-For": "10.9.8.7"})).json()
            assert [c["device"] for c in r["credentials"]] == ["q4", "q5"]
            assert [x["device"] for x in r["refused"]] == ["q6", "q7"]
            assert all("--enrol-per-address" in x["reason"] and "token" in x["reason"] for x in r["refused"])
            assert "q6" not in srv.service.issuer.enrolled
            # an operator's gateway is not limited
            r = (await api.post("/api/enrol", json={"pseudonyms": [f"gw{i}" for i in range(20)]}, headers=operator)).json()
            assert len(r["credentials"]) == 20 and r["refused"] == []
            # accounts: their own count
            for _ in range(5):
                assert (await api.post("/api/account")).status_code == 200
            r = await api.post("/api/account")
            e = assert_error(r, 429, "rate_limited")
            assert "accounts today" in e["message"] and 1 <= int(r.headers["retry-after"]) <= 86_400, (e, r.headers)
            m = (await api.get("/metrics", headers=operator)).text
            assert 'yujing_enrol_refused_total{what="pseudonym"} 2' in m
            assert 'yujing_enrol_refused_total{what="account"} 1' in m

    asyncio.run(go())


def test_daily_quota_counts_by_subscriber_prefix_and_starts_again_each_utc_day():
    q = DailyQuota(3, max_callers=2)
    day = 20_000 * 86_400.0
    a = address_prefix("2001:db8:1:2:aaaa::1")
    assert a == address_prefix("2001:db8:1:2:ffff::9") != address_prefix("2001:db8:1:3::1")
    assert address_prefix("203.0.113.7") == "203.0.113.7" != address_prefix("203.0.113.8")
    assert q.left(a, day) == 3
    q.use(a, day + 10.0, 2)
    assert q.left(a, day + 86_399.0) == 1
    assert q.left(a, day + 86_400.0) == 3  # a new UTC day
    q.use(a, day + 86_400.0)
    assert q.left(a, day + 86_401.0) == 2
    # bounded: the least recently used goes first
    q.use("b", day + 86_402.0)
    q.use("c", day + 86_403.0)
    assert q.left(a, day + 86_404.0) == 3 and q.left("b", day + 86_404.0) == 2
    assert DailyQuota(0).left(a, day) is None  # 0: no limit
