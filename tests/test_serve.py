"""``yujing serve`` end to end, with real parts: HTTP over a socket, an MQTT phone, the
embedded broker or Mosquitto, SQLite or PostgreSQL. A simulated quake is replayed into
the running service in real time through the API's replay control."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
import xml.etree.ElementTree as ET

import h3
import httpx
import pytest

from yujing import protocol, scenarios, wire
from yujing.bus.mqtt import MqttClient
from yujing.geo import distance_km
from yujing.serve import ServeOptions, Server
from yujing.service import ServiceConfig
from yujing.store import open_store

LUDING = scenarios.get("luding2022")


async def _wait(pred, timeout_s: float, what: str):
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


async def _sse(url: str, into: list, stop: asyncio.Event):
    async with httpx.AsyncClient(timeout=None) as c:
        async with c.stream("GET", url) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            name = None
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    into.append((name, json.loads(line[6:])))
                if stop.is_set():
                    return


async def _quake_through_the_service(opts: ServeOptions, phones: int = 20_000):
    """Start a server, put a phone near Luding on MQTT, replay the Luding scenario through
    the API, and return what the phone, the stream and the API saw."""
    srv = Server(opts)
    await srv.start()
    seen = {}
    try:
        host, port = (srv.opts.mqtt_host, srv.broker.port) if srv.broker else protocol_host(opts.mqtt)
        got = []
        phone = MqttClient(host, port, f"phone-{uuid.uuid4().hex[:6]}", on_message=lambda t, p, r: got.append((time.time(), t, p, r)))
        await phone.connect()
        await phone.subscribe([(protocol.alert_topic_for_position(29.75, 102.25), 1)])
        stream: list = []
        stop = asyncio.Event()
        sse = asyncio.get_running_loop().create_task(_sse(srv.http_url + "/api/stream", stream, stop))
        await asyncio.sleep(0.3)
        # the operator key the server made on its first start (a memory store: returned, not written)
        op = {"Authorization": f"Bearer {operator_key(srv)}"}
        async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api, \
                httpx.AsyncClient(base_url=srv.http_url, timeout=30, headers=op) as ops:
            r = await ops.post("/api/replay", json={"source": "scenario", "scenario": "luding2022", "phones": phones, "seed": 3, "lead_s": 1.0})
            assert r.status_code == 202, r.text
            info = r.json()
            origin = info["origin_time_s"]
            r2 = await ops.post("/api/replay", json={"source": "scenario"})
            assert r2.status_code == 409 and r2.json()["error"]["code"] == "conflict"
            # this phone's own alert: decoded on the device, which then works out its warning
            fresh = lambda: [g for g in got if g[2] and wire.decode_alert(g[2]).origin_time_s > origin - 60]
            await _wait(fresh, 40, "an alert on the phone's area topic")
            first = fresh()[0]
            seen["phone_alert_after_origin_s"] = first[0] - origin
            seen["phone_alert"] = wire.decode_alert(first[2])
            await _wait(lambda: any(n == "alert" for n, _ in stream), 10, "an alert on the SSE stream")
            await asyncio.sleep(8)  # a few updates more
            seen["stream"] = list(stream)
            ev = (await api.get("/api/events")).json()["events"]
            seen["events"] = ev
            eid = [e for e in ev if not e["retracted"]][0]["event_id"]
            seen["event"] = (await api.get(f"/api/events/{eid}")).json()
            seen["alerts"] = (await api.get("/api/alerts", params={"event_id": eid})).json()["alerts"]
            aid = seen["alerts"][0]["alert_id"]
            seen["cap"] = await api.get(f"/api/alerts/{aid}/cap")
            seen["cap_feed"] = await api.get("/api/cap")
            seen["quakeml"] = await api.get("/api/quakeml")
            seen["geojson"] = (await api.get("/api/events.geojson")).json()
            seen["mmi"] = (await api.get(f"/api/events/{eid}/mmi.geojson")).json()
            seen["network"] = (await api.get("/api/network", params={"res": 5})).json()
            seen["triggers"] = (await api.get("/api/triggers")).json()
            seen["metrics"] = (await ops.get("/metrics")).text
            seen["health"] = (await api.get("/health")).json()
            seen["replay"] = (await ops.get("/api/replay")).json()
        stop.set()
        sse.cancel()
        await asyncio.gather(sse, return_exceptions=True)
        await phone.disconnect()
        seen["latency_s"] = list(srv.service.alert_latency_s)
        seen["pseudonyms"] = [d for d in srv.service.registry.devs if len(d) >= 8]
        seen["rejects"] = srv.service.rejects.by_reason()
    finally:
        await srv.stop()
    return seen


def operator_key(srv: Server) -> str:
    """The operator key the server made on its first start, found as its user would: printed
    (memory or PostgreSQL store) or in the 0600 file beside a SQLite database."""
    if srv.operator_key is not None:
        return srv.operator_key
    assert srv.operator_key_file is not None, "the server made no operator key on its first start"
    assert srv.operator_key_file.stat().st_mode & 0o077 == 0, "the operator key file is readable by others"
    return srv.operator_key_file.read_text().strip()


def protocol_host(url: str):
    from yujing.bus.mqtt import parse_mqtt_url

    return parse_mqtt_url(url)


def _check(seen: dict, store_url: str):
    assert seen["rejects"] == {}, seen["rejects"]
    # the phone near the epicentre got its alert a few seconds after the origin
    assert 2.0 < seen["phone_alert_after_origin_s"] < 10.0, seen["phone_alert_after_origin_s"]
    a = seen["phone_alert"]
    assert a.msg_type in ("alert", "update") and a.tiers
    ev = [e for e in seen["events"] if not e["retracted"]]
    assert len(ev) == 1, seen["events"]
    final = seen["event"]["event"]
    assert distance_km(final["latitude"], final["longitude"], LUDING.latitude, LUDING.longitude) < 20
    assert 6.0 <= final["magnitude"] <= 7.3
    assert [u["version"] for u in seen["event"]["updates"]] == list(range(1, final["version"] + 1))
    assert seen["alerts"] and all(x["event_id"] == final["event_id"] for x in seen["alerts"])
    # standard formats
    assert seen["cap"].headers["content-type"].startswith("application/cap+xml")
    cap = ET.fromstring(seen["cap"].content)
    assert cap.tag == "{urn:oasis:names:tc:emergency:cap:1.2}alert"
    feed = ET.fromstring(seen["cap_feed"].content)
    assert len(feed.findall("{http://www.w3.org/2005/Atom}entry")) >= 1
    qml = ET.fromstring(seen["quakeml"].content)
    assert qml.tag.endswith("quakeml")
    assert final["event_id"] in {f["properties"]["code"] for f in seen["geojson"]["features"]}
    assert len(seen["mmi"]["features"]) >= 3
    # network health: k-anonymous areas only, no pseudonyms anywhere public
    areas = seen["network"]["areas"]
    assert areas and all(x["devices"] >= seen["network"]["k"] for x in areas)
    assert seen["triggers"]["areas"]
    names = {n for n, _ in seen["stream"]}
    assert {"update", "alert", "trigger"} <= names
    for n, d in seen["stream"]:
        if n == "trigger":
            assert set(d) == {"cell", "latitude", "longitude", "time", "onset_time", "pga_gal"}
    assert "yujing_alerts_total" in seen["metrics"] and 'kind="trig"' in seen["metrics"]
    assert 'yujing_gc_collections_total{generation="2"}' in seen["metrics"]
    assert seen["health"]["status"] == "ok" and seen["health"]["devices_online"] > 1000
    assert seen["replay"]["running"] is True and seen["replay"]["sent"] > 0  # its heartbeats go on for minutes
    # no public response carries a pseudonym: every simulated phone's id is looked for
    public = json.dumps([seen[k] for k in ("events", "event", "alerts", "geojson", "network", "triggers", "health")])
    public += seen["metrics"] + json.dumps(seen["stream"]) + seen["cap"].text + seen["quakeml"].text
    assert not any(pid in public for pid in seen["pseudonyms"]), "a device pseudonym reached a public response"
    # after the server stopped, its store holds the event, all its updates and alerts
    st = open_store(store_url)
    try:
        ups = st.updates(final["event_id"])
        assert [u.version for u in ups][: final["version"]] == list(range(1, final["version"] + 1))
        assert {x.alert_id for x in st.alerts(event_id=final["event_id"])} == {seen["alerts"][0]["alert_id"]}
        # the replay sent real alerts: who started it is on record
        started = [(r["actor"], r["target"]) for r in st.audit_log() if r["action"] == "start_replay"]
        assert started == [("operator:operator", "scenario:luding2022")], started
    finally:
        st.close()


def test_serve_embedded_broker_and_sqlite(tmp_path):
    url = "sqlite:///" + str(tmp_path / "yj.db")  # absolute path: sqlite:////abs/path
    opts = ServeOptions(port=0, mqtt_port=0, store=url, config=ServiceConfig(alert_retain_s=60))
    seen = asyncio.run(_quake_through_the_service(opts))
    print(f"phone alerted {seen['phone_alert_after_origin_s']:.2f} s after origin; alert latency "
          f"p50 {1000 * sorted(seen['latency_s'])[len(seen['latency_s']) // 2]:.1f} ms over {len(seen['latency_s'])} alerts")
    _check(seen, url)


def test_serve_mosquitto_and_postgresql(pg_schema_url):
    opts = ServeOptions(port=0, mqtt="tcp://127.0.0.1:1883", store=pg_schema_url, config=ServiceConfig(alert_retain_s=30))
    seen = asyncio.run(_quake_through_the_service(opts))
    _check(seen, pg_schema_url)


def test_every_error_has_one_json_shape(tmp_path):
    async def go():
        srv = Server(ServeOptions(port=0, mqtt_port=0, store="sqlite://:memory:"))
        await srv.start()
        try:
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
                spec = (await api.get("/openapi.json")).json()
                bad = []
                for path, ops in spec["paths"].items():
                    for method, op in ops.items():
                        params = {p["name"]: p for p in op.get("parameters", [])}
                        url = path
                        for name in params:
                            url = url.replace("{" + name + "}", "no-such-thing")
                        query = {n: "not-a-number" for n, p in params.items() if p["in"] == "query" and p["schema"].get("type") in ("integer", "number")}
                        if path != url or query or method == "post":
                            bad.append((method, url, query))
                bad += [("get", "/no/such/route", {}), ("delete", "/api/events", {}), ("post", "/api/replay", {"x": 1})]
                seen_codes = set()
                for method, url, query in bad:
                    if method == "post":
                        r = await api.post(url, content=b"{not json")
                    else:
                        r = await api.request(method.upper(), url, params=query)
                    assert r.status_code >= 400, (method, url, r.status_code)
                    body = r.json()
                    assert set(body) == {"error"} and set(body["error"]) == {"status", "code", "message"}, (url, body)
                    assert body["error"]["status"] == r.status_code and body["error"]["message"]
                    seen_codes.add(r.status_code)
                assert {404, 405, 422} <= seen_codes
                op = {"Authorization": f"Bearer {operator_key(srv)}"}
                r = await api.post("/api/replay", json={"source": "scenario", "scenario": "atlantis"}, headers=op)
                assert r.status_code == 422 and "atlantis" in r.json()["error"]["message"]
                r = await api.post("/api/replay", json={"source": "openeew", "event": "2018_2_16"}, headers=op)
                assert r.status_code == 422 and "--data" in r.json()["error"]["message"]
        finally:
            await srv.stop()

    asyncio.run(go())


def test_replay_can_be_switched_off():
    async def go():
        srv = Server(ServeOptions(port=0, mqtt_port=0, store="sqlite://:memory:", replay=False))
        await srv.start()
        try:
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
                r = await api.post("/api/replay", json={"source": "scenario"},
                                   headers={"Authorization": f"Bearer {operator_key(srv)}"})
                assert r.status_code == 503 and "--no-replay" in r.json()["error"]["message"]
        finally:
            await srv.stop()

    asyncio.run(go())


def test_serve_keeps_device_credentials_beside_its_database(tmp_path):
    """A restart of ``yujing serve`` on the same SQLite file keeps the devices' credentials
    (<database>.credentials, mode 0600): an enrolled phone's signed messages pass after it,
    and its pseudonym cannot be enrolled again by someone else. Unsigned messages are
    refused unless the server runs with --allow-unsigned."""
    from yujing import security
    from yujing.security import Signer

    db = tmp_path / "y.db"
    cell = h3.latlng_to_cell(29.75, 102.25, 7)

    async def life(enrol: bool, allow_unsigned: bool = False):
        srv = Server(ServeOptions(port=0, mqtt_port=0, store=f"sqlite:///{db}", allow_unsigned=allow_unsigned))
        await srv.start()
        try:
            svc = srv.service
            assert svc.config.credentials_file == str(db) + ".credentials"
            assert svc.config.allow_unsigned is allow_unsigned
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=30) as api:
                r = await api.post("/api/enrol", json={"pseudonyms": ["ph-today"]})
                assert r.status_code == 200, r.text
                body = r.json()
                if enrol:
                    # an operator's gateway vouches for its devices: they are never new
                    key = (db.parent / (db.name + ".operator-key")).read_text().strip()
                    r = await api.post("/api/enrol", json={"pseudonyms": ["gw-sensor"]},
                                       headers={"Authorization": f"Bearer {key}"})
                    assert r.status_code == 200 and r.json()["credentials"], r.text
            assert svc.issuer.vouched == {"gw-sensor"}, "a self-enrolled phone was vouched for, or the gateway was not"
            hb = protocol.HeartbeatMsg(device="ph-today", cell=cell, sent_s=svc.clock(), seq=1 if enrol else 2)
            unsigned = protocol.encode(protocol.HeartbeatMsg(device="ph-other", cell=cell, sent_s=svc.clock()))
            return body, svc.issuer.kid, svc.receive(protocol.topic_for("hb", cell), unsigned, svc.clock()), svc
        finally:
            await srv.stop()

    first, kid1, unsigned_ok, _ = asyncio.run(life(enrol=True))
    assert first["credentials"] and not first["refused"] and not unsigned_ok
    path = tmp_path / "y.db.credentials"
    assert path.exists() and (path.stat().st_mode & 0o777) == 0o600
    second, kid2, unsigned_ok2, svc2 = asyncio.run(life(enrol=False, allow_unsigned=True))
    assert kid2 == kid1, "the signing master changed across the restart"
    assert second["refused"] and not second["credentials"], "a pseudonym enrolled before the restart was enrolled again"
    assert unsigned_ok2, "--allow-unsigned did not open the door to unsigned messages"
    # the phone's credential from the first life still signs for it
    cred = svc2.issuer.credential("ph-today")
    msg = security.sign(cred, protocol.topic_for("hb", cell),
                        protocol.HeartbeatMsg(device="ph-today", cell=cell, sent_s=svc2.clock(), seq=5))
    assert svc2.receive(protocol.topic_for("hb", cell), msg, svc2.clock()), svc2.rejects.by_reason()


# ------------------------------------ a QoS 1 message is acknowledged once it is journaled


class _Journal:
    """A journal in memory whose writes can fail or hang (the database down)."""

    def __init__(self):
        self.rows: list = []
        self.fail = False
        self.gate = None  # a threading.Event the write waits on (a hung database)

    def append(self, rows):
        if self.gate is not None:
            self.gate.wait(10)
        if self.fail:
            raise OSError("database down")
        self.rows.extend(rows)
        return len(rows)

    def since(self, since_s):
        return list(self.rows)

    def purge(self, before_s, max_rows=None):
        return 0

    def clear(self, final=False):
        self.rows.clear()
        return 0


def _hb(svc, i: int, signed: bool = False) -> tuple[str, bytes]:
    from yujing import security

    cell = h3.latlng_to_cell(29.75, 102.25, 7)
    topic = protocol.topic_for("hb", cell)
    msg = protocol.HeartbeatMsg(device=f"ph-{i}", cell=cell, sent_s=svc.clock(), seq=1)
    if signed:
        return topic, security.sign(svc.issuer.credential(msg.device), topic, msg)
    return topic, protocol.encode(msg)


def test_journaled_is_done_when_the_batch_holding_the_message_is_written():
    """Service.journaled(): None without a journal or with nothing waiting; else a future
    done at the write of the batch that holds everything taken so far; a failed write keeps
    the acknowledgements waiting for the next round, at most journal_ack_max_s (counted);
    a clean stop releases them."""
    import threading

    from yujing.service import Service

    async def go():
        cfg = ServiceConfig(allow_unsigned=True, journal_flush_s=3600.0, journal_ack_max_s=0.5)
        bare = Service(config=cfg)
        assert bare.receive(*_hb(bare, 0)) and bare.journaled() is None  # no journal: at once

        j = _Journal()
        svc = Service(config=cfg, journal=j)
        assert svc.journaled() is None  # nothing waits
        assert svc.receive(*_hb(svc, 1))
        f1 = svc.journaled()
        assert svc.receive(*_hb(svc, 2)) and svc.journaled() is f1  # one future per batch
        assert not svc.receive("yj/v1/hb/nonsense", b"\x00") and svc.journaled() is f1  # refused: waits too
        assert not f1.done() and len(svc._queue) == 2  # the engine has them already
        # a write in flight: what comes meanwhile waits for the next batch, a re-send for this one
        j.gate = threading.Event()
        flush = asyncio.get_running_loop().create_task(svc._flush_journal())
        await asyncio.sleep(0.05)
        assert svc.journaled() is f1  # nothing new in the buffer: the batch being written
        assert svc.receive(*_hb(svc, 3))
        f2 = svc.journaled()
        assert f2 is not f1 and not f1.done()
        j.gate.set()
        await flush
        assert f1.done() and f1.result() is True and not f2.done() and len(j.rows) == 2
        # the database down: the batch stays, and so do its acknowledgements, merged with the newer ones
        j.gate, j.fail = None, True
        with pytest.raises(OSError):
            await svc._flush_journal()
        assert not f2.done() and len(svc._jbuf) == 1
        assert svc.receive(*_hb(svc, 4)) and svc.journaled() is f2
        j.fail = False
        await svc._flush_journal()  # the next round writes them
        assert f2.result() is True and len(j.rows) == 4 and svc.journal_acks_unwritten == 0
        # down for longer than journal_ack_max_s: acknowledged unwritten, counted; rows kept
        j.fail = True
        assert svc.receive(*_hb(svc, 5))
        f3 = svc.journaled()
        t0 = time.monotonic()
        with pytest.raises(OSError):
            await svc._flush_journal()
        assert not f3.done()
        await asyncio.wait_for(f3, 2.0)
        assert f3.result() is False and svc.journal_acks_unwritten == 1 and time.monotonic() - t0 >= 0.4
        assert len(svc._jbuf) == 1 and svc.journaled() is not f3  # still waiting to be written; a new batch
        # a clean stop releases what waits (everything taken was processed)
        j.fail = False
        assert svc.receive(*_hb(svc, 6))
        f4 = svc.journaled()
        await svc.start()
        await svc.stop()
        assert f4.done() and f4.result() is False

    asyncio.run(go())


def test_serve_acknowledges_a_device_message_only_once_it_is_journaled(tmp_path):
    """``yujing serve`` (embedded broker, SQLite file): the engine has a QoS 1 message at
    once, its PUBACK comes only once the journal row is written (so a SIGKILL loses nothing
    acknowledged: the device sends it again); QoS 0 is not acknowledged at all; after the
    link stops taking input, nothing is acknowledged (the device sends it to the next
    server)."""
    import sqlite3

    db = tmp_path / "y.db"

    async def go():
        cfg = ServiceConfig(journal_flush_s=3600.0)  # the test writes the journal itself
        srv = Server(ServeOptions(port=0, mqtt_port=0, store=f"sqlite:///{db}", replay=False, allow_unsigned=True,
                                  config=cfg))
        await srv.start()
        svc = srv.service
        con = sqlite3.connect(db)
        rows = lambda: con.execute("SELECT count(*) FROM journal").fetchone()[0]
        at_ack: list = []  # journal rows when each PUBACK came
        dev = MqttClient("127.0.0.1", srv.broker.port, "dev", on_ack=lambda t, p: at_ack.append(rows()))
        try:
            await dev.connect()
            topic, payload = _hb(svc, 1, signed=True)
            dev.publish_nowait(topic, payload, qos=1)
            await _wait(lambda: "ph-1" in svc.registry.devs, 5, "the engine to take the message")
            await asyncio.sleep(0.2)
            assert dev.acked == 0 and dev.inflight == 1 and rows() == 0  # taken, not yet journaled: no PUBACK
            await svc._flush_journal()
            await _wait(lambda: dev.acked == 1, 5, "the PUBACK")
            assert at_ack == [1]
            # a re-send of it (DUP): refused as a copy, acknowledged at once (it is journaled)
            dev.publish_nowait(topic, payload, qos=1)
            await _wait(lambda: dev.acked == 2, 1, "the PUBACK of the copy")
            assert svc.rejects.by_reason().get("replayed") == 1 and at_ack == [1, 1]
            dev.publish_nowait(*_hb(svc, 2), qos=0)
            await _wait(lambda: "ph-2" in svc.registry.devs, 5, "the QoS 0 message")
            # stopping: not taken, never acknowledged
            await srv.link.stop_input()
            dev.publish_nowait(*_hb(svc, 3), qos=1)
            await _wait(lambda: srv.broker.counts["ack_withheld"] == 1, 5, "the message refused at stop")
            assert dev.acked == 2 and dev.inflight == 1 and "ph-3" not in svc.registry.devs
        finally:
            con.close()
            await dev.disconnect()
            await srv.stop()

    asyncio.run(go())


def _metrics(text: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text page: name -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_count_the_acknowledgements_of_device_messages(tmp_path):
    """/metrics (operator) exposes the embedded broker's acknowledgements: sent, waiting
    for the journal, dropped with their connection (the device sends those messages
    again), withheld (not taken: stopping), and the journal batches acknowledged before
    they were written (journal_ack_max_s: a failing database)."""
    db = tmp_path / "y.db"

    async def go():
        cfg = ServiceConfig(journal_flush_s=3600.0, journal_ack_max_s=0.3)  # the test writes the journal itself
        srv = Server(ServeOptions(port=0, mqtt_port=0, store=f"sqlite:///{db}", replay=False, allow_unsigned=True,
                                  config=cfg))
        await srv.start()
        svc = srv.service
        api = httpx.AsyncClient(base_url=f"http://127.0.0.1:{srv.http_port}",
                                headers={"Authorization": f"Bearer {operator_key(srv)}"})
        names = ("yujing_mqtt_acks_sent_total", "yujing_mqtt_acks_waiting", "yujing_mqtt_acks_dropped_total",
                 "yujing_mqtt_acks_withheld_total", "yujing_journal_acks_unwritten_total")

        async def m() -> tuple:
            r = await api.get("/metrics")
            assert r.status_code == 200
            got = _metrics(r.text)
            return tuple(got[n] for n in names)

        dev = MqttClient("127.0.0.1", srv.broker.port, "dev")
        dev2 = MqttClient("127.0.0.1", srv.broker.port, "dev2")
        try:
            await dev.connect()
            await dev2.connect()
            assert await m() == (0, 0, 0, 0, 0)
            dev.publish_nowait(*_hb(svc, 1), qos=1)
            await _wait(lambda: "ph-1" in svc.registry.devs, 5, "the engine to take the message")
            assert await m() == (0, 1, 0, 0, 0)  # taken, not journaled: its PUBACK waits
            await svc._flush_journal()
            await _wait(lambda: dev.acked == 1, 5, "the PUBACK")
            assert await m() == (1, 0, 0, 0, 0)
            # a connection lost with its acknowledgement waiting: dropped (the device sends it again)
            dev2.publish_nowait(*_hb(svc, 2), qos=1)
            await _wait(lambda: "ph-2" in svc.registry.devs, 5, "the second message")
            assert await m() == (1, 1, 0, 0, 0)
            await dev2.disconnect()
            await _wait(lambda: srv.broker.counts["ack_lost"] == 1, 5, "the connection closed")
            assert await m() == (1, 0, 1, 0, 0)
            # the database failing: the batch is acknowledged unwritten after journal_ack_max_s, counted
            svc.journal.append = lambda rows: (_ for _ in ()).throw(OSError("database down"))
            dev.publish_nowait(*_hb(svc, 3), qos=1)
            await _wait(lambda: "ph-3" in svc.registry.devs, 5, "the third message")
            with pytest.raises(OSError):
                await svc._flush_journal()
            await _wait(lambda: dev.acked == 2, 5, "the PUBACK of a message the journal could not write")
            assert await m() == (2, 0, 1, 0, 1)
            del svc.journal.append
            # stopping: not taken, never acknowledged
            await srv.link.stop_input()
            dev.publish_nowait(*_hb(svc, 4), qos=1)
            await _wait(lambda: srv.broker.counts["ack_withheld"] == 1, 5, "the message refused at stop")
            assert await m() == (2, 0, 1, 1, 1)
        finally:
            await api.aclose()
            await dev.disconnect()
            await srv.stop()

    asyncio.run(go())


def test_the_embedded_broker_takes_no_device_before_the_link_is_in_place(tmp_path, monkeypatch):
    """A device connecting as soon as the port accepts (a fleet reconnecting to a restarted
    server): every connection the broker accepts already has the service's hook and device
    rules, and its message reaches the service."""
    import socket
    import threading

    from yujing.bus.mqtt import _device_may_publish
    from yujing.bus.mqtt_broker import _Conn
    from yujing.bus.mqtt_codec import connect_packet, publish_packet

    made: list = []
    orig = _Conn.connection_made

    def connection_made(self, tr):
        made.append((self.b.on_message is not None, self.b.may_publish is _device_may_publish))
        orig(self, tr)

    monkeypatch.setattr(_Conn, "connection_made", connection_made)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    stop = threading.Event()
    sent: list = []

    def device():  # tries from before the server starts, every millisecond
        cell = h3.latlng_to_cell(29.75, 102.25, 7)
        topic = protocol.topic_for("hb", cell)
        while not stop.is_set():
            try:
                c = socket.create_connection(("127.0.0.1", port), timeout=5)
            except OSError:
                time.sleep(0.001)
                continue
            payload = protocol.encode(protocol.HeartbeatMsg(device="early", cell=cell, sent_s=time.time()))
            c.sendall(connect_packet("early", 30) + publish_packet(topic, payload, 1, False, 1))
            got = b""
            while len(got) < 8 and not stop.is_set():
                chunk = c.recv(64)
                if not chunk:
                    break
                got += chunk
            sent.append(got)
            c.close()
            return

    th = threading.Thread(target=device, daemon=True)
    th.start()

    async def go():
        srv = Server(ServeOptions(port=0, mqtt_port=port, store=f"sqlite:///{tmp_path / 'y.db'}", replay=False,
                                  allow_unsigned=True))
        await srv.start()
        try:
            await _wait(lambda: sent, 10, "the early device's answer")
            await _wait(lambda: "early" in srv.service.registry.devs, 5, "its message in the engine")
        finally:
            stop.set()
            await srv.stop()

    asyncio.run(go())
    th.join(5)
    assert made and all(m == (True, True) for m in made), made
    assert sent[0][:4] == b"\x20\x02\x00\x00" and sent[0][4:8] == b"\x40\x02\x00\x01"  # CONNACK, then PUBACK
