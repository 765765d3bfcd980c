"""``yujing serve --bus nats://... --mqtt tcp://...`` end to end: the scale-out worker as the
command starts it (:class:`yujing.serve.Server`), against one real nats-server with
JetStream and its MQTT listener (conftest.py's ``nats_mqtt_urls``), through its real HTTP
port.

The worker's API must use the store the server opened (the shards' Services have none):
the operator key bootstrapped into it is accepted on an operator route, the audited writes
land in it, and the history routes read the events and alerts the worker stores from the
announcements. The quake comes through the real device path: the dashboard's replay
control publishes signed triggers to NATS's MQTT listener, the stream feeds the worker's
engine.

Run: ``python -m pytest -q tests/test_serve_bus.py``
"""

from __future__ import annotations

import asyncio
import time

import httpx

from yujing.serve import ServeOptions, Server

from test_serve import operator_key


async def _wait(fetch, timeout_s: float, what: str):
    """Poll the coroutine function ``fetch`` until it returns something true."""
    t = time.monotonic()
    while time.monotonic() - t < timeout_s:
        v = await fetch()
        if v:
            return v
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_serve_bus_api_uses_the_workers_store(nats_mqtt_urls, tmp_path, monkeypatch):
    nats_url, mqtt_url = nats_mqtt_urls
    monkeypatch.setenv("YJ_WORKER_ID", "serve-bus")  # read by config_from_env, as the command does
    monkeypatch.delenv("YJ_REGIONS", raising=False)

    async def go():
        srv = Server(ServeOptions(port=0, bus=nats_url, mqtt=mqtt_url, store=f"sqlite:///{tmp_path / 'y.db'}"))
        await srv.start()
        try:
            assert srv.worker is not None and srv.service.store is None  # a shard's Service: no store of its own
            key = operator_key(srv)  # bootstrapped into the worker's store, written beside the database
            async with httpx.AsyncClient(base_url=srv.http_url, timeout=10) as api, \
                    httpx.AsyncClient(base_url=srv.http_url, timeout=10,
                                      headers={"Authorization": f"Bearer {key}"}) as ops:
                r = await api.get("/health")
                assert r.status_code == 200, r.text

                # the operator key is found (KeyRing over the worker's store) and the read is
                # audited there: 401 'unknown key' when the API had the shard's store (None)
                r = await ops.get("/api/ops/audit", params={"purpose": "test-serve-bus", "limit": 5})
                assert r.status_code == 200, r.text
                assert r.json()["rows"][0]["action"] == "read_audit_log"

                # a quake through NATS's MQTT listener and the stream, started by the operator
                r = await ops.post("/api/replay", json={"source": "scenario", "scenario": "luding2022",
                                                        "phones": 20_000, "seed": 3, "lead_s": 1.0})
                assert r.status_code == 202, r.text
                t0 = time.monotonic()

                async def alerts():
                    return (await api.get("/api/alerts")).json()["alerts"]

                got = await _wait(alerts, 45, "an alert in /api/alerts")
                alert_s = time.monotonic() - t0
                events = (await api.get("/api/events")).json()["events"]
                stored_events = await asyncio.to_thread(srv.store.events, limit=50)
                stored_alerts = await asyncio.to_thread(srv.store.alerts, limit=1000)
                # what the API shows is what the worker stored from its announcements
                # (read after the API: the store only gains rows meanwhile)
                assert events and {e["event_id"] for e in events} <= {e["event_id"] for e in stored_events}
                assert {a["alert_id"] for a in got} <= {a.alert_id for a in stored_alerts}
                assert got[0]["event_id"] in {e["event_id"] for e in events}
                eid = got[0]["event_id"]
                r = await api.get(f"/api/events/{eid}")
                assert r.status_code == 200, r.text

                # the replay's start is in the worker's audit log
                r = await ops.get("/api/ops/audit", params={"purpose": "test-serve-bus", "limit": 5})
                assert r.status_code == 200, r.text
                actions = [row["action"] for row in r.json()["rows"]]
                assert "start_replay" in actions, actions
            print(f"\nworker API: operator key accepted; first alert in /api/alerts {alert_s:.1f} s after the replay "
                  f"started; {len(events)} event(s), {len(got)} alert(s) served from the worker's store")
            assert srv.worker.errors == 0
        finally:
            await asyncio.wait_for(srv.stop(), 30)

    async def bounded():
        async with asyncio.timeout(120):
            await go()

    asyncio.run(bounded())
