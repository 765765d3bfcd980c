"""``yujing load``: the bounded load generator against a real server (embedded broker) and
against NATS; what it refuses. Counts are asserted, never speeds."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from yujing import protocol
from yujing.load import LoadError, LoadOptions, check, format_report, prepare, run
from yujing.serve import ServeOptions, Server

NATS_URL = "nats://127.0.0.1:4222"


def test_load_against_a_running_server_with_a_quake():
    """100,000 devices over 8 connections for 12 s with the Luding quake 1 s in: the server
    receives every message sent, refuses none, issues an alert, and the alert reaches the
    load generator's subscribers."""

    async def go():
        srv = Server(ServeOptions(port=0, mqtt_port=0, store="sqlite://:memory:"))
        await srv.start()
        try:
            got0 = srv.service.stats.received
            o = LoadOptions(mqtt=f"tcp://127.0.0.1:{srv.broker.port}", devices=100_000, duration_s=12.0,
                            quake="luding2022", quake_at_s=1.0, subscribers=50, drain_s=3.0, api=srv.http_url,
                            api_key=srv.operator_key, seed=1)  # /metrics is operator-only
            rep = await run(o)
            received = srv.service.stats.received - got0
            return rep, received, srv.service.rejects.by_reason(), srv.service.stats.alerts, srv.link.counts["alert_publish"]
        finally:
            await srv.stop()

    rep, received, rejects, alerts, published = asyncio.run(go())
    print(format_report(rep))
    sent = rep["sent"]
    assert sent["hb"] > 1000 and sent["trig_quake"] > 50, sent
    assert rep["publish_errors_total"] == 0 and rep["connections_lost"] == 0
    # every device connected first (its connect heartbeat), and the run began once the
    # server had taken those: the server knew every device before the quake
    assert rep["connect"]["sent"] == 100_000 and "server_settled_s" in rep["connect"], rep["connect"]
    assert rep["server"]["health_after"]["devices_online"] >= 100_000
    assert received == rep["sent_total"] + rep["connect"]["sent"], (received, rep["sent_total"], rep["connect"])
    assert rejects == {}
    assert alerts >= 1 and published >= 1
    # the server's own view, read over its API, agrees
    sv = rep["server"]
    assert sv["received"] == rep["sent_total"] and sv["received_equals_sent"] and sv["rejected"] == 0
    assert sv["alerts_issued"] >= 1
    assert sv["metrics_delta"]["yujing_messages_received_total"] == rep["sent_total"]
    # and the alert came back out to subscribers on their area topics
    a = rep["alerts"]
    assert a["subscribers"] == 50 and a["alerted"] >= 1 and a["undecodable"] == 0
    assert a["first_alert_from_issued_s"]["n"] == a["alerted"]


def test_load_over_native_nats_every_message_on_its_subject():
    """Against NATS: device messages on yj.v1.<kind>.<res5 cell>, every one delivered and a
    valid protocol message."""
    nats = pytest.importorskip("nats")

    async def go():
        try:
            nc = await nats.connect(NATS_URL, connect_timeout=3, max_reconnect_attempts=0, allow_reconnect=False)
        except Exception as exc:
            pytest.fail(f"NATS not reachable at {NATS_URL} ({exc}); the machine should run it")
        got = []

        async def cb(msg):
            got.append((msg.subject, msg.data))

        await nc.subscribe("yj.v1.*.*", cb=cb)
        await nc.flush()
        o = LoadOptions(nats=NATS_URL, devices=20_000, duration_s=3.0, heartbeat_s=30.0, trigger_rate_per_device_day=200.0,
                        connections=3, drain_s=0.0, seed=2, client_prefix="yjload-test")
        rep = await run(o)
        for _ in range(50):
            if len(got) >= rep["sent_total"] + rep["connect"]["sent"]:
                break
            await asyncio.sleep(0.05)
        await nc.close()
        return rep, got

    rep, got = asyncio.run(go())
    assert rep["publish_errors_total"] == 0
    assert rep["sent"]["hb"] > 1000 and rep["sent"]["trig_false"] > 50
    assert rep["connect"]["sent"] == 20_000  # each device's connect heartbeat, before the run
    assert len(got) == rep["sent_total"] + rep["connect"]["sent"]
    kinds = {s.split(".")[2] for s, _ in got}
    assert kinds == {"hb", "trig"}
    for subject, data in got[:: max(1, len(got) // 200)]:
        protocol.decode(subject, data)  # raises on anything the server would refuse


def test_refuses_other_hosts_and_unbounded_runs():
    for url in ("tcp://10.1.2.3:1883", "tcp://8.8.8.8:1883", "tcp://example.com:1883"):
        with pytest.raises(LoadError, match="loopback|resolve"):
            check(LoadOptions(mqtt=url))
    with pytest.raises(LoadError, match="loopback"):
        check(LoadOptions(nats="nats://192.168.1.1:4222"))
    with pytest.raises(LoadError, match="loopback"):
        check(LoadOptions(mqtt="tcp://127.0.0.1:1883", api="http://10.0.0.1:8000"))
    check(LoadOptions(mqtt="tcp://127.0.0.1:1883"))
    check(LoadOptions(mqtt="tcp://localhost:1883"))
    check(LoadOptions(nats="nats://[::1]:4222"))
    with pytest.raises(LoadError, match="duration"):
        check(LoadOptions(mqtt="tcp://127.0.0.1:1883", duration_s=3600))
    with pytest.raises(LoadError, match="max-rate"):
        check(LoadOptions(mqtt="tcp://127.0.0.1:1883", max_rate=1e7))
    with pytest.raises(LoadError, match="background alone"):
        check(LoadOptions(mqtt="tcp://127.0.0.1:1883", devices=1_000_000, heartbeat_s=10))
    with pytest.raises(LoadError, match="exactly one target"):
        check(LoadOptions())
    # the command says why and exits 2 before doing anything
    p = subprocess.run([sys.executable, "-m", "yujing.load", "--mqtt", "tcp://10.1.2.3:1883"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "loopback" in p.stderr, p.stderr


def test_plan_is_seeded_and_realistic():
    o = LoadOptions(mqtt="tcp://127.0.0.1:1883", devices=5_000, duration_s=60, heartbeat_s=60, trigger_rate_per_device_day=100,
                    quake="luding2022", burst=500, subscribers=10, seed=4)
    a, b = prepare(o), prepare(o)
    assert np.array_equal(a.hb_t, b.hb_t) and np.array_equal(a.ft_phone, b.ft_phone) and a.sub_topics == b.sub_topics
    # each device beats once per period; false triggers at the asked rate (Poisson)
    assert len(a.hb_t) == 5_000 and len(np.unique(a.hb_phone)) == 5_000
    assert abs(len(a.ft_t) - 5_000 * 100 / 86400 * 60) < 5 * np.sqrt(5_000 * 100 / 86400 * 60)
    # the burst: the devices the P wave reaches first, evenly over burst_s from the origin
    assert len(a.burst_t) == 500 and a.burst_t[0] == o.quake_at_s and a.burst_t[-1] < o.quake_at_s + o.burst_s
    p_first = a.net.p_arrival_s[a.burst_phone]
    assert np.all(np.diff(p_first) >= 0) and p_first[-1] <= np.sort(a.net.p_arrival_s)[500]
    assert all(t.startswith("yj/v1/alert/") for t in a.sub_topics)
