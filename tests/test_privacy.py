"""The privacy test (issue 12): after a replay, a demo and a served session with devices, no
table, log, file, API response or live-stream message holds a position finer than a
device's resolution-7 cell, or a stable device identifier.

What the rules mean, precisely (docs/privacy.md repeats them):

**Finer than the cell.** Every latitude/longitude pair found in an output (JSON objects
with ``latitude``/``longitude`` or ``lat``/``lon``, GeoJSON coordinates, QuakeML, CAP
polygons, the store's columns and JSON columns) must be, to the precision it is printed
with, the centre or a vertex of an H3 cell of resolution 7 or coarser (cells are what
devices report and alerts target; polygon maps are drawn from cell vertices), unless it
is an event epicentre (a property of the earthquake, not of anybody; listed from the
event records themselves). "To the precision printed" is +-0.5 in the last printed digit:
16.9287 stands for [16.92865, 16.92875]. A position printed with few digits is checked as
widely as it claims: 2 decimals (+-550 m) are accepted only near a centre or vertex; that
is weaker evidence than 4 (a random position passes a 2-decimal test about 1 time in 4,
a 4-decimal one about 1 in 10^4) but a table of leaked positions still fails at once.
Free text (logs, HTML, the console) cannot be parsed for pairs reliably, so there the
test looks for canaries: the true positions of every simulated phone (which the server
never received) to 3 to 6 decimals, latitude and longitude within 200 characters.

**Stable device id.** A phone's identifier is its daily pseudonym (keyed BLAKE2b of the
UTC date under a secret that stays on the phone). The test knows every simulated phone's
secret, so it knows its pseudonyms of the day before, the day of and the day after the
session, and it drives the session with two days' pseudonyms of the same phones. Then:
(1) no record (a table row, a JSON response, a live-stream message, a log line, a file
line) holds pseudonyms of two different days of one phone, which would link the days;
(2) no secret appears anywhere; (3) every device the store or the registry knows is a
pseudonym of the session (no simulator index, no other id); (4) nothing kept longer than the retention period (every table but ``devices``, the
log file) and nothing public (public routes, the live stream) holds a pseudonym at all;
the audit log has keyed tags that die with the retention period instead.
And no H3 cell index anywhere is finer than resolution 7.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sqlite3
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from pathlib import Path

import h3
import httpx
import pytest

from yujing import tokens, protocol, scenarios
from yujing.api.app import ROUTE_ROLES
from yujing.api.auth import create_key
from yujing.bus.mqtt import MqttClient
from yujing.security import Signer, data_proof
from yujing.serve import ServeOptions, Server
from yujing.service import ServiceConfig
from yujing.sources.simulator import daily_pseudonym, simulate

LUDING = scenarios.get("luding2022")
MAX_RES = protocol.DEVICE_CELL_RES
_HEX16 = re.compile(r"(?<![0-9a-f])[0-9a-f]{16}(?![0-9a-f])")
_HEX32 = re.compile(r"(?<![0-9a-f])[0-9a-f]{32}(?![0-9a-f])")
_NUM = re.compile(r"-?\d{1,3}\.\d{3,}")
_H3 = re.compile(r"(?<![0-9a-fA-F])8[0-9a-fA-F]{14}(?![0-9a-fA-F])")


def _day(t_s: float) -> str:
    return datetime.fromtimestamp(t_s, timezone.utc).strftime("%Y-%m-%d")


def _days_around(t_s: float) -> list[str]:
    d = datetime.fromtimestamp(t_s, timezone.utc)
    return [(d + timedelta(days=k)).strftime("%Y-%m-%d") for k in (-1, 0, 1)]


def _decimals(x) -> int:
    s = x if isinstance(x, str) else repr(float(x))
    if "e" in s.lower():
        return 17
    return len(s.split(".")[1]) if "." in s else 0


def _tol(dec: int) -> float:
    return 0.5 * 10.0 ** -dec * (1 + 1e-6) + 1e-9


_CELL_POINTS: dict[str, list[tuple[float, float]]] = {}


def _points_of(cell: str) -> list[tuple[float, float]]:
    p = _CELL_POINTS.get(cell)
    if p is None:
        p = _CELL_POINTS[cell] = [h3.cell_to_latlng(cell), *h3.cell_to_boundary(cell)]
    return p


def cell_point(lat: float, lon: float, dec_lat: int, dec_lon: int) -> bool:
    """Whether (lat, lon), printed with these decimals, may be the centre or a vertex of an
    H3 cell of resolution <= 7."""
    tl, tn = _tol(dec_lat), _tol(dec_lon)
    for res in (MAX_RES, 6, 5, 4, 3, 2, 1, 0):
        for c in h3.grid_disk(h3.latlng_to_cell(lat, lon, res), 1):
            for plat, plon in _points_of(c):
                if abs(plat - lat) <= tl and abs(plon - lon) <= tn:
                    return True
    return False


class Checker:
    """Collects violations of the rules (module docstring) over everything it is shown."""

    def __init__(self):
        self.pseudonyms: dict[str, tuple[str, int, str]] = {}  # pseudonym -> (network, phone, day)
        self.secrets: set[str] = set()
        self.canaries: dict[str, list[str]] = {}  # formatted latitude -> formatted longitudes
        self.epicentres: list[tuple[float, float]] = []
        self.findings: list[str] = []
        self.pairs_checked = 0
        self.records = 0

    # -- what the test knows --------------------------------------------------------------
    def know_network(self, name: str, net, days: list[str]) -> None:
        for p in range(net.n_phones):
            sec = net.secret(p)
            self.secrets.add(sec.hex())
            for d in days:
                self.pseudonyms[daily_pseudonym(sec, d)] = (name, p, d)
            for dec in (3, 4, 5, 6):
                lat, lon = f"{net.latitude[p]:.{dec}f}", f"{net.longitude[p]:.{dec}f}"
                self.canaries.setdefault(lat, []).append(lon)

    def know_epicentre(self, lat: float, lon: float) -> None:
        self.epicentres.append((float(lat), float(lon)))

    # -- rules ----------------------------------------------------------------------------
    def _pair(self, where: str, lat, lon) -> None:
        self.pairs_checked += 1
        flat, flon = float(lat), float(lon)
        dl, dn = _decimals(lat), _decimals(lon)
        for elat, elon in self.epicentres:
            if abs(elat - flat) <= _tol(dl) and abs(elon - flon) <= _tol(dn):
                return
        if not (-90 <= flat <= 90 and -180 <= flon <= 180) or not cell_point(flat, flon, dl, dn):
            self.findings.append(f"{where}: position {lat}, {lon} is finer than a resolution-{MAX_RES} cell")

    def record_text(self, where: str, text: str) -> None:
        """One record's text: pseudonyms of two days of one phone, secrets, canaries."""
        self.records += 1
        days: dict[tuple[str, int], set[str]] = {}
        for tok in _HEX16.findall(text):
            who = self.pseudonyms.get(tok)
            if who is not None:
                days.setdefault(who[:2], set()).add(who[2])
        for (net, phone), ds in days.items():
            if len(ds) > 1:
                self.findings.append(f"{where}: pseudonyms of {len(ds)} days of one device ({net} phone {phone}) in one record")
        for tok in _HEX32.findall(text):
            if tok in self.secrets:
                self.findings.append(f"{where}: a device secret")
        for tok in _H3.findall(text):
            if h3.is_valid_cell(tok.lower()) and h3.get_resolution(tok.lower()) > MAX_RES:
                self.findings.append(f"{where}: H3 cell {tok} of resolution {h3.get_resolution(tok.lower())}")
        nums = [(m.start(), m.group()) for m in _NUM.finditer(text)]
        for i, (pos, s) in enumerate(nums):
            lons = self.canaries.get(s)
            if lons:
                near = {t for p2, t in nums[max(0, i - 8): i + 9] if abs(p2 - pos) <= 200}
                if near & set(lons):
                    self.findings.append(f"{where}: a simulated phone's true position ({s}, ...)")

    def no_pseudonyms(self, where: str, text: str) -> None:
        hits = [t for t in _HEX16.findall(text) if t in self.pseudonyms]
        if hits:
            self.findings.append(f"{where}: {len(hits)} pseudonyms in the clear (e.g. {hits[0]})")

    def json_obj(self, where: str, obj, text: str | None = None) -> None:
        """A JSON document: every position in it, and its text as one record."""
        self.record_text(where, text if text is not None else json.dumps(obj))
        self._walk(where, obj)

    def _walk(self, where: str, o) -> None:
        if isinstance(o, dict):
            for a, b in (("latitude", "longitude"), ("lat", "lon")):
                if isinstance(o.get(a), (int, float)) and isinstance(o.get(b), (int, float)):
                    self._pair(where, o[a], o[b])
            if o.get("type") in ("Point", "MultiPoint", "LineString", "Polygon", "MultiPolygon") and "coordinates" in o:
                self._coords(where, o["coordinates"])
            for v in o.values():
                self._walk(where, v)
        elif isinstance(o, list):
            for v in o:
                self._walk(where, v)

    def _coords(self, where: str, c) -> None:
        if c and isinstance(c[0], (int, float)):
            self._pair(where, c[1], c[0])  # GeoJSON: [lon, lat(, depth)]
        else:
            for x in c:
                self._coords(where, x)

    def xml(self, where: str, text: str) -> None:
        self.record_text(where, text)
        root = ET.fromstring(text)
        strip = lambda tag: tag.rsplit("}", 1)[-1]
        for el in root.iter():
            kids = {strip(k.tag): k for k in el}
            if "latitude" in kids and "longitude" in kids:  # QuakeML origin
                lat, lon = (kids[n].findtext("{*}value") or kids[n].text for n in ("latitude", "longitude"))
                if lat and lon:
                    self._pair(where, lat.strip(), lon.strip())
            if strip(el.tag) in ("polygon", "circle") and el.text:  # CAP: "lat,lon lat,lon ..."
                for pt in el.text.split():
                    if "," in pt:
                        lat, lon = pt.split(",")[:2]
                        self._pair(where, lat, lon)

    def text_lines(self, where: str, text: str) -> None:
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                self.record_text(f"{where}:{i}", line)

    def file(self, path: Path, root: Path) -> None:
        where = str(path.relative_to(root))
        raw = path.read_bytes()
        if raw.startswith(b"SQLite format 3"):
            self.sqlite(where, path)
            return
        text = raw.decode("utf-8", errors="replace")
        if path.suffix in (".json", ".geojson"):
            self.json_obj(where, json.loads(text), text)
        elif path.suffix == ".jsonl":
            for i, line in enumerate(text.splitlines(), 1):
                self.json_obj(f"{where}:{i}", json.loads(line), line)
        elif path.suffix == ".xml":
            self.xml(where, text)
        else:
            self.text_lines(where, text)
            if path.suffix == ".log":  # kept by log rotation, not by the retention purge
                self.no_pseudonyms(where, text)

    def sqlite(self, where: str, path: Path) -> dict[str, list[dict]]:
        """Every row of every table; returns them (table -> rows)."""
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        out = {}
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for t in tables:
                rows = [dict(r) for r in conn.execute(f"SELECT * FROM {t}")]
                out[t] = rows
                for i, row in enumerate(rows):
                    w = f"{where}:{t}[{i}]"
                    obj = dict(row)
                    for k, v in row.items():
                        if isinstance(v, str) and v[:1] in "{[":
                            obj[k] = json.loads(v)
                    self.json_obj(w, obj, json.dumps(row))
                if t != "devices":
                    # only the registry is purged by the retention job: a pseudonym in any
                    # other table (events, alerts, the audit log, keys: kept) would outlive it
                    self.no_pseudonyms(f"{where}:{t}", json.dumps(rows))
        finally:
            conn.close()
        return out


# ---------------------------------------------------------------- the checker can fail

def test_the_checker_catches_each_kind_of_leak():
    net = simulate(LUDING, 100, seed=1)
    days = _days_around(LUDING.origin_time_s)
    c = Checker()
    c.know_network("n", net, days)
    cell = h3.latlng_to_cell(30.0, 102.0, 7)
    clat, clon = h3.cell_to_latlng(cell)
    c.json_obj("ok", {"cell": cell, "latitude": round(clat, 4), "longitude": round(clon, 4),
                      "device": daily_pseudonym(net.secret(0), days[1])})
    c.json_obj("ok-res5", {"latitude": round(h3.cell_to_latlng(h3.cell_to_parent(cell, 5))[0], 4),
                           "longitude": round(h3.cell_to_latlng(h3.cell_to_parent(cell, 5))[1], 4)})
    assert c.findings == []
    c.json_obj("fine", {"latitude": clat + 0.0031, "longitude": clon})
    c.json_obj("geojson", {"type": "Point", "coordinates": [clon + 0.0042, clat]})
    c.json_obj("two-days", {"a": daily_pseudonym(net.secret(3), days[1]), "b": daily_pseudonym(net.secret(3), days[2])})
    c.record_text("secret", f"key {net.secret(5).hex()}")
    c.record_text("canary", f"phone at {net.latitude[7]:.5f} {net.longitude[7]:.5f}")
    c.no_pseudonyms("audit", f"read {daily_pseudonym(net.secret(8), days[0])}")
    c.record_text("res8", f"cell {h3.latlng_to_cell(30.0, 102.0, 8)}")
    assert [f.split(":")[0] for f in c.findings] == ["fine", "geojson", "two-days", "secret", "canary", "audit", "res8"], c.findings
    # an epicentre is not a device's position
    c.findings.clear()
    c.know_epicentre(29.5912, 102.0811)
    c.json_obj("epicentre", {"latitude": 29.5912, "longitude": 102.0811})
    assert c.findings == []


# ---------------------------------------------------------------- replay and demo

def _run(*args, cwd: Path) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "yujing.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"yujing {' '.join(args)} failed:\n{r.stderr[-3000:]}"
    return r


def _scan_outputs(c: Checker, root: Path) -> int:
    n = 0
    for f in sorted(root.rglob("*")):
        if f.is_file():
            c.file(f, root)
            n += 1
    return n


def test_replay_and_demo_outputs(tmp_path, openeew_dir):
    """``yujing replay`` of an OpenEEW recording and ``yujing demo``: every file they write
    and everything they print."""
    c = Checker()
    rp = tmp_path / "replay"
    rp.mkdir()
    r = _run("replay", str(openeew_dir), "--event", "2018_2_16", "-q", "-o", "updates.jsonl", "--alerts", "alerts.jsonl",
             "--cap-dir", "cap", "--quakeml", "events.xml", "--geojson", "geojson", cwd=rp)
    (rp / "stdout.txt").write_text(r.stdout + r.stderr)
    for line in (rp / "updates.jsonl").read_text().splitlines():
        u = json.loads(line)
        c.know_epicentre(u["latitude"], u["longitude"])
    # the recorded sensors are fixed, declared by their operator with their positions; their
    # ids and positions must still not leave in what the replay writes
    sensors = json.loads((openeew_dir / "devices.json").read_text())
    n = _scan_outputs(c, rp)
    written = "".join(f.read_text() for f in rp.rglob("*") if f.is_file() and f.name != "stdout.txt")
    for s in sensors:
        assert f'"{s["device_id"]}"' not in written, f"sensor id {s['device_id']} in the replay's files"

    dm = tmp_path / "demo"
    dm.mkdir()
    seed, phones = 4, 2000
    r = _run("demo", "--phones", str(phones), "--seed", str(seed), "--report", "report.html", "--json", "summary.json", cwd=dm)
    (dm / "stdout.txt").write_text(r.stdout + r.stderr)
    net = simulate(LUDING, phones, seed=seed)  # the demo's own phones, to know their secrets and true places
    c.know_network("demo", net, _days_around(LUDING.origin_time_s))
    n += _scan_outputs(c, dm)
    assert n >= 10 and c.records > 50
    assert c.findings == [], "\n".join(c.findings[:30])


# ---------------------------------------------------------------- a served session

def _my_phones(net, days: list[str], t0: float):
    """Messages of the test's own phones: hello and a heartbeat under day-1 pseudonyms, then
    the same phones under day-2 pseudonyms (a session across UTC midnight, as the server
    sees it), and one phone that consents to raw uploads, streams, then withdraws."""
    out = []
    for day in days:
        for p in range(net.n_phones):
            dev = daily_pseudonym(net.secret(p), day)
            cell = net.cell_str(int(net.cell[p]))
            out.append(("hello", protocol.HelloMsg(device=dev, cell=cell, sent_s=t0, kind="phone", app="privacy-test")))
            out.append(("hb", protocol.HeartbeatMsg(device=dev, cell=cell, sent_s=t0)))
    dev = daily_pseudonym(net.secret(0), days[1])
    cell = net.cell_str(int(net.cell[0]))
    pkt = lambda k: protocol.PacketMsg(device=dev, cell=cell, device_time_s=t0 + k, sample_rate_hz=31.25,
                                       x_gal=[0.1] * 32, y_gal=[0.0] * 32, z_gal=[0.0] * 32)
    out.append(("consent", protocol.ConsentMsg(device=dev, cell=cell, sent_s=t0, raw_consent=True)))
    out.append(("hello", protocol.HelloMsg(device=dev, cell=cell, sent_s=t0, kind="phone", raw_consent=True)))
    out += [("pkt", pkt(k)) for k in range(3)]
    out.append(("consent", protocol.ConsentMsg(device=dev, cell=cell, sent_s=t0 + 3, raw_consent=False)))
    out.append(("pkt", pkt(3)))
    return out, dev


async def _wait(pred, timeout_s: float, what: str):
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        if pred():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def _sse(url: str, into: list, stop: asyncio.Event):
    async with httpx.AsyncClient(timeout=None) as cl:
        async with cl.stream("GET", url) as r:
            async for line in r.aiter_lines():
                into.append(line)
                if stop.is_set():
                    return


async def _session(tmp: Path, my_net, replay_phones: int, replay_seed: int) -> dict:
    log_file = tmp / "serve.log"
    handler = logging.FileHandler(log_file)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # the server's log: everything but the test's own HTTP client (httpx logs its URLs)
    handler.addFilter(lambda r: not r.name.startswith(("httpx", "httpcore")))
    root = logging.getLogger()
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    srv = Server(ServeOptions(port=0, mqtt_port=0, store=f"sqlite:///{tmp / 'yujing.db'}", log_http=True,
                              config=ServiceConfig(alert_retain_s=60)))
    seen: dict = {"responses": []}
    try:
        await srv.start()
        for name in ("uvicorn.access", "uvicorn.error"):  # uvicorn's loggers do not propagate
            logging.getLogger(name).addHandler(handler)
        svc = srv.service
        days = _days_around(LUDING.origin_time_s)[1:]
        msgs, consenting = _my_phones(my_net, days, time.time())
        seen["consenting"] = consenting
        signer = Signer(svc.issuer)
        phone = MqttClient(srv.opts.mqtt_host, srv.broker.port, f"phones-{uuid.uuid4().hex[:6]}")
        await phone.connect()
        base = svc.stats.received
        for i, (kind, m) in enumerate(msgs):
            topic, payload = signer.wire(kind, m)
            await phone.publish(topic, payload, qos=1 if i == len(msgs) - 1 else 0)
        await _wait(lambda: svc.stats.received >= base + len(msgs), 30, "the phones' messages")
        stream: list = []
        stop = asyncio.Event()
        sse = asyncio.get_running_loop().create_task(_sse(srv.http_url + "/api/stream", stream, stop))
        op_key = srv.operator_key_file.read_text().strip()
        res_key = await asyncio.to_thread(create_key, srv.store, "privacy-test-researcher", "researcher", "test:privacy")
        op = {"Authorization": f"Bearer {op_key}"}
        rs = {"Authorization": f"Bearer {res_key}"}
        async with httpx.AsyncClient(base_url=srv.http_url, timeout=60) as api:
            async def call(method, route, url, headers=None, **kw):
                r = await api.request(method, url, headers=headers, **kw)
                seen["responses"].append(((method, route), url, r.status_code, r.headers.get("content-type", ""), r.text))
                return r

            await asyncio.sleep(0.3)  # the stream is subscribed
            r = await call("POST", "/api/replay", "/api/replay", op,
                           json={"source": "scenario", "scenario": "luding2022", "phones": replay_phones,
                                 "seed": replay_seed, "lead_s": 1.0})
            assert r.status_code == 202, r.text
            await _wait(lambda: any(line == "event: alert" for line in stream), 60, "an alert on the live stream")
            await asyncio.sleep(3)  # a few updates more
            ev = (await call("GET", "/api/events", "/api/events")).json()["events"]
            eid = ev[0]["event_id"]
            alerts = (await call("GET", "/api/alerts", "/api/alerts")).json()["alerts"]
            aid = alerts[0]["alert_id"]
            # the device rights: a phone enrols, exports and deletes its data
            fresh = daily_pseudonym(my_net.secret(1), days[1])
            await call("POST", "/api/enrol", "/api/enrol", json={"pseudonyms": [uuid.uuid4().hex[:16]]})
            # a long-lived account and its blind-signed token for tomorrow's pseudonym
            acct = (await call("POST", "/api/account", "/api/account")).json()
            pub = tokens.PublicKey.from_json((await call("GET", "/api/token/keys", "/api/token/keys")).json()["new"])
            tday = tokens.utc_day(svc.clock() + 86_400.0)
            b = tokens.blind(pub, tokens.message(tday, daily_pseudonym(my_net.secret(2), tday)))
            r = await call("POST", "/api/token", "/api/token",
                           json={"account": acct["account"], "day": tday, "key": "new", "blinded": b.blinded.hex(),
                                 "proof": tokens.request_proof(bytes.fromhex(acct["key"]), tday, b.blinded)})
            assert r.status_code == 200, r.text
            cred = svc.issuer.credential(fresh)
            now = int(svc.clock())
            for action in ("export", "delete"):
                r = await call("POST", "/api/device/data", "/api/device/data",
                               json={"device": fresh, "action": action, "t_s": now, "proof": data_proof(cred, action, now)})
                assert r.status_code == 200, r.text
            get = {
                "/health": ["/health"],
                "/api/events": ["/api/events?limit=1000"],
                "/api/events.geojson": ["/api/events.geojson"],
                "/api/events/{event_id}": [f"/api/events/{eid}"],
                "/api/events/{event_id}/mmi.geojson": [f"/api/events/{eid}/mmi.geojson"],
                "/api/quakeml": ["/api/quakeml"],
                "/api/alerts": ["/api/alerts?limit=1000"],
                "/api/alerts/{alert_id}/cap": [f"/api/alerts/{aid}/cap"],
                "/api/cap": ["/api/cap"],
                "/api/network": [f"/api/network?res={k}" for k in range(0, 6)],
                "/api/triggers": ["/api/triggers", "/api/triggers?since=0"],
                "/api/research/network": [f"/api/research/network?res={k}" for k in range(0, 8)],
                "/api/replay": ["/api/replay"],
                "/api/replay/sources": ["/api/replay/sources"],
                "/metrics": ["/metrics"],
                "/api/ops/triggers": ["/api/ops/triggers?purpose=privacy-test&since=0"],
                "/api/ops/devices/{pseudonym}": [f"/api/ops/devices/{consenting}?purpose=privacy-test"],
                "/api/ops/audit": ["/api/ops/audit?purpose=privacy-test&limit=10000&verify=true"],
                "/": ["/"],
                "/api/token/keys": ["/api/token/keys"],
            }
            for (method, route) in ROUTE_ROLES:
                if method != "GET" or route == "/api/stream":
                    continue
                assert route in get, f"the privacy test does not read {method} {route}: add it here"
                for url in get[route]:
                    hdr = rs if ROUTE_ROLES[(method, route)] == "researcher" else op
                    r = await call("GET", route, url, hdr, follow_redirects=True)
                    assert r.status_code == 200, (url, r.status_code, r.text[:300])
            called = {rt for rt, *_ in seen["responses"]}
            missing = set(ROUTE_ROLES) - called - {("GET", "/api/stream")}
            assert not missing, f"routes not read by the privacy test: {sorted(missing)}"
        stop.set()
        sse.cancel()
        await asyncio.gather(sse, return_exceptions=True)
        seen["stream"] = stream
        seen["registry"] = dict(svc.registry.devs)
        seen["rejects"] = svc.rejects.by_reason()
        seen["accepted_pkt"] = svc.stats.accepted["pkt"]
        await phone.disconnect()
    finally:
        await srv.stop()
        for name in ("", "uvicorn.access", "uvicorn.error"):
            logging.getLogger(name).removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    return seen


def test_served_session(tmp_path):
    my_net = simulate(LUDING, 300, seed=11)
    replay_phones, replay_seed = 3000, 3
    seen = asyncio.run(_session(tmp_path, my_net, replay_phones, replay_seed))
    days = _days_around(LUDING.origin_time_s)
    c = Checker()
    c.know_network("mine", my_net, days)
    c.know_network("replay", simulate(LUDING, replay_phones, seed=replay_seed), days)
    c.know_epicentre(LUDING.latitude, LUDING.longitude)
    tables = sqlite3.connect(tmp_path / "yujing.db")
    for (js,) in tables.execute("SELECT json FROM event_updates"):
        u = json.loads(js)
        c.know_epicentre(u["latitude"], u["longitude"])
    tables.close()
    # the session worked: an event, the phones heard on both days, consent honoured
    assert c.epicentres[1:], "no event was detected: the session did not exercise the event routes"
    assert seen["accepted_pkt"] == 3 and seen["rejects"].get("no_consent") == 1, seen["rejects"]

    # every response and live-stream message
    for (method, route), url, status, ctype, text in seen["responses"]:
        where = f"{method} {url}"
        if ROUTE_ROLES[(method, route)] == "public" and route != "/api/device/data":
            c.no_pseudonyms(where, text)  # (a device's own data request answers with its own)
        if "json" in ctype:
            c.json_obj(where, json.loads(text), text)
        elif "xml" in ctype:
            c.xml(where, text)
        else:
            c.text_lines(where, text)
    data = [line[6:] for line in seen["stream"] if line.startswith("data: ")]
    assert len(data) > 10
    for i, d in enumerate(data):
        c.json_obj(f"SSE message {i}", json.loads(d), d)
        c.no_pseudonyms(f"SSE message {i}", d)
    # every file the server wrote (the database, its WAL, the operator key, the log)
    files = sorted(f for f in tmp_path.iterdir() if f.is_file())
    assert {f.name for f in files} >= {"yujing.db", "yujing.db.operator-key", "serve.log"}, files
    for f in files:
        c.file(f, tmp_path)
    # identifiers: the store and the registry know only the session's pseudonyms
    db = sqlite3.connect(tmp_path / "yujing.db")
    stored = [r[0] for r in db.execute("SELECT pseudonym FROM devices")]
    # the phone that withdrew its raw-upload consent is on record as not consenting
    consent = db.execute("SELECT raw_consent FROM devices WHERE pseudonym = ?", (seen["consenting"],)).fetchall()
    db.close()
    assert consent == [(0,)], consent
    unknown = [d for d in set(stored) | set(seen["registry"]) if d not in c.pseudonyms]
    assert stored and not unknown, f"device ids that are no pseudonym of the session: {unknown[:5]}"
    both = {c.pseudonyms[d][:2] for d in stored if c.pseudonyms[d][2] == days[1]} & \
           {c.pseudonyms[d][:2] for d in stored if c.pseudonyms[d][2] == days[2]}
    assert both, "the session did not put two days of one phone in the store"
    print(f"privacy: {c.records} records, {c.pairs_checked} positions checked over {len(seen['responses'])} responses, "
          f"{len(data)} stream messages, {len(files)} files")
    assert c.findings == [], "\n".join(c.findings[:30])


# ---------------------------------------------------------------- consent to raw uploads

def _consent_service():
    from yujing.service import ManualClock, Service

    svc = Service(clock=ManualClock(1000.0))
    cell = h3.latlng_to_cell(29.6, 102.1, 7)
    sign = Signer(svc.issuer).wire
    pkt = lambda t: sign("pkt", protocol.PacketMsg(device="ph1", cell=cell, device_time_s=t, sample_rate_hz=31.25,
                                                   x_gal=[0.1] * 32, y_gal=[0.0] * 32, z_gal=[0.0] * 32))
    return svc, cell, sign, pkt


def test_consent_withdrawn_stops_raw_packets_and_is_recorded():
    svc, cell, sign, pkt = _consent_service()
    svc.receive(*sign("hello", protocol.HelloMsg(device="ph1", cell=cell, sent_s=1000.0, raw_consent=True)), 1000.0)
    svc.receive(*pkt(1001.0), 1001.0)
    svc.receive(*sign("consent", protocol.ConsentMsg(device="ph1", cell=cell, sent_s=1002.0, raw_consent=False)), 1002.0)
    svc.receive(*pkt(1003.0), 1003.0)
    svc.process_queue()
    assert svc.stats.accepted["pkt"] == 1 and svc.rejects.by_reason() == {"no_consent": 1}
    assert svc.registry.devs["ph1"].raw_consent is False and "ph1" in svc.registry.dirty  # flushed to the store next


def test_consent_given_later_opens_raw_uploads():
    svc, cell, sign, pkt = _consent_service()
    svc.receive(*sign("hello", protocol.HelloMsg(device="ph1", cell=cell, sent_s=1000.0)), 1000.0)
    svc.receive(*sign("consent", protocol.ConsentMsg(device="ph1", cell=cell, sent_s=1001.0, raw_consent=True)), 1001.0)
    svc.receive(*pkt(1002.0), 1002.0)
    svc.process_queue()
    assert svc.stats.accepted["pkt"] == 1, svc.rejects.by_reason()
