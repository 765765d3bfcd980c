"""The NATS JetStream scale-out against a real 3-node nats-server cluster started here, on
ports of its own (JetStream and the MQTT listener on every node).

- a quake replayed in real time by devices over MQTT, spread over the three nodes, while
  one node (the leader of the device stream, where a worker is connected) is SIGKILLed
  mid-quake: a phone on a surviving node gets the alert, every acknowledged trigger is
  in the stream, the quake is announced under one event id and one alert id;
- a quake on the border of two workers' regions: both engines see it, one announces;
- a worker killed mid-quake: the other takes its region and the announcing over, under
  the same ids.

The last two replay the quake into the stream at full speed with each message's scripted
arrival time in a header (``WorkerConfig.arrival="header"``): same code, message time.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import replace

import h3
import nats
import nats.errors
import nats.js.errors
import pytest

from yujing import protocol, scenarios, wire
from yujing.bus import nats as ynats
from yujing.bus.mqtt import MqttClient
from yujing.geo import distance_km
from yujing.scaleout import Worker, WorkerConfig
from yujing.sources.simulator import simulate
from yujing.sources.wire_feed import scenario_wire

EXE = shutil.which("nats-server") or "/usr/sbin/nats-server"
WINDOW_S = (-10.0, 25.0)  # the part of the quake replayed, s from origin (alerts come at ~5.5 s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``n`` nats-server processes with JetStream, MQTT and routes to each other."""

    def __init__(self, d, n: int = 3):
        if not os.path.exists(EXE):
            pytest.fail("nats-server binary not found (install it, e.g. /usr/sbin/nats-server); these tests need a real cluster")
        self.d, self.n = d, n
        self.ports = [_free_port() for _ in range(n)]
        self.mports = [_free_port() for _ in range(n)]
        self.cports = [_free_port() for _ in range(n)]
        self.procs: list[subprocess.Popen | None] = [None] * n

    def _conf(self, i: int) -> str:
        routes = ", ".join(f"nats://127.0.0.1:{p}" for j, p in enumerate(self.cports) if j != i)
        return (f"server_name: n{i}\nlisten: 127.0.0.1:{self.ports[i]}\n"
                f'jetstream {{ store_dir: "{self.d}/n{i}" }}\n'
                # NATS sizes its MQTT streams (sessions, retained, QoS 1) by the servers it knows when
                # the first MQTT client connects (2 here, once): an R2 stream stalls when a node dies
                f"mqtt {{ listen: 127.0.0.1:{self.mports[i]}, stream_replicas: 3, consumer_replicas: 3 }}\n"
                f"cluster {{ name: yjtest, listen: 127.0.0.1:{self.cports[i]}, routes: [{routes}] }}\n")

    def start(self) -> None:
        for i in range(self.n):
            conf = self.d / f"n{i}.conf"
            conf.write_text(self._conf(i))
            self.procs[i] = subprocess.Popen([EXE, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                             stderr=open(self.d / f"n{i}.log", "w"))
        for i in range(self.n):
            t = time.monotonic()
            while True:
                try:
                    socket.create_connection(("127.0.0.1", self.mports[i]), 0.2).close()
                    break
                except OSError:
                    if self.procs[i].poll() is not None or time.monotonic() - t > 15:
                        pytest.fail(f"nats-server n{i} did not start: {(self.d / f'n{i}.log').read_text()[-2000:]}")
                    time.sleep(0.05)

    def urls(self, first: int = 0) -> list[str]:
        order = [(first + k) % self.n for k in range(self.n)]
        return [f"nats://127.0.0.1:{self.ports[i]}" for i in order]

    def mqtt_urls(self, first: int = 0) -> list[str]:
        order = [(first + k) % self.n for k in range(self.n)]
        return [f"tcp://127.0.0.1:{self.mports[i]}" for i in order]

    def kill(self, i: int) -> None:
        self.procs[i].send_signal(signal.SIGKILL)
        self.procs[i].wait()

    def stop(self) -> None:
        """Every node ends, whatever state the test left it in: SIGTERM, then SIGKILL
        after 10 s (a node that does not end would hold the run)."""
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in self.procs:
            if p is None:
                continue
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path, 3)
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def luding():
    sc = scenarios.get("luding2022")
    msgs = [m for m in scenario_wire(simulate(sc, 20_000, seed=3)) if WINDOW_S[0] <= m[0] - sc.origin_time_s <= WINDOW_S[1]]
    return sc, msgs


REGION_EPI = "8140fffffffffff"  # res-1 region of Luding's epicentre
REGIONS_REST = ("81403ffffffffff", "81407ffffffffff", "813c7ffffffffff")  # the other regions with phones


async def _read_all(js, filter_subject: str, stream: str) -> list:
    """Every message of ``stream`` on ``filter_subject``, in order (retried while the
    cluster is still settling after a node died)."""
    for attempt in range(20):
        try:
            return await _read_all_once(js, filter_subject, stream)
        except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
            await asyncio.sleep(1.0)
    return await _read_all_once(js, filter_subject, stream)


async def _read_all_once(js, filter_subject: str, stream: str) -> list:
    # no acks: an explicit-ack consumer stops after max_ack_pending (1000) messages
    from nats.js.api import AckPolicy, ConsumerConfig

    sub = await js.pull_subscribe(filter_subject, stream=stream, config=ConsumerConfig(ack_policy=AckPolicy.NONE))
    out = []
    while True:
        try:
            got = await sub.fetch(1000, timeout=1)
        except nats.errors.TimeoutError:
            break
        out += got
        if got[-1].metadata.num_pending == 0:
            break
    await sub.unsubscribe()
    return out


async def _announced(js) -> tuple[list, list]:
    """(event updates, alerts) on YJ_OUT, in order, decoded."""
    import msgspec

    from yujing.records import Alert, EventUpdate

    msgs = await _read_all(js, "yj.>", ynats.STREAM_OUT)
    ev = [msgspec.json.decode(m.data, type=EventUpdate) for m in msgs if m.subject.startswith("yj.event.")]
    al = [msgspec.json.decode(m.data, type=Alert) for m in msgs if m.subject.startswith("yj.alert.")]
    return ev, al


def _no_errors(*workers) -> None:
    """No worker counted an error, and no shard's bus caught one (an exception in an
    announcement is caught there, not in the worker)."""
    for w in workers:
        assert w.errors == 0, w.errors
        for sh in w.shards:
            assert sum(sh.svc.bus.handler_errors.values()) == 0, (sh.name, dict(sh.svc.bus.handler_errors))


def _assert_once(ev, al, sc) -> None:
    """One quake: one event id, one alert id, versions rising with no repeat (a version
    may be missing after a takeover: the dead announcer counted it, then died before
    sending it; the new announcer goes on from its count)."""
    near = [u for u in ev if distance_km(u.latitude, u.longitude, sc.latitude, sc.longitude) < 100]
    assert near, "no event announced near the epicentre"
    assert {u.event_id for u in near} == {near[0].event_id}, [
        (u.event_id, u.version, round(u.latitude, 3), round(u.longitude, 3), round(u.origin_time_s - sc.origin_time_s, 2),
         round(u.magnitude, 2), u.n_devices, round(u.issued_at_s - sc.origin_time_s, 2)) for u in near]
    vs = [u.version for u in near]
    assert vs[0] == 1 and all(b > a for a, b in zip(vs, vs[1:])), vs
    assert al, "no alert announced"
    assert {a.alert_id for a in al} == {f"{near[0].event_id}-alert"}
    vs = [a.version for a in al]
    assert vs[0] == 1 and all(b > a for a, b in zip(vs, vs[1:])), vs
    assert al[0].msg_type == "alert" and all(a.msg_type == "update" for a in al[1:])


def run_bounded(go, timeout_s: float):
    """``asyncio.run(go(live))`` that ends within ``timeout_s`` (a clear failure, not the
    whole run killed by pytest-timeout) and crashes every worker ``go`` put in ``live``
    whatever happened (a failed test must not leave tasks that keep the loop from closing)."""
    live: list[Worker] = []

    async def main():
        try:
            async with asyncio.timeout(timeout_s):
                return await go(live)
        except TimeoutError:
            raise AssertionError(f"the test did not end within {timeout_s} s") from None
        finally:
            for w in live:
                await w.crash()  # bounded; a no-op for a worker stopped already

    return asyncio.run(main())


async def _wait(pred, timeout_s: float, what: str, step_s: float = 0.05, why=None) -> float:
    t = time.monotonic()
    while not pred():
        if time.monotonic() - t > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}" + (f": {why()}" if why else ""))
        await asyncio.sleep(step_s)
    return time.monotonic() - t


async def _publish_scripted(js, msgs) -> None:
    """Into YJ_IN at full speed, in order, each with its scripted arrival time."""
    for i in range(0, len(msgs), 500):
        await asyncio.gather(*(js.publish(t.replace("/", "."), p, headers={ynats.ARRIVAL_HEADER: repr(a)})
                               for a, t, p in msgs[i:i + 500]))


def _who_announced(*workers) -> str:
    """What each worker announced and what its shards' engines hold (for a failure's message)."""
    return "; ".join(
        f"{w.cfg.worker_id} announced {[(x.kind, x.obj.event_id) for x in w.announced]}, owns {sorted(w.owned)}, "
        f"shards {[(s.name, s.t, dict(s.pending), [(u.event_id, u.version, round(u.latitude, 2), round(u.longitude, 2), u.n_devices, u.retracted) for u in s.svc.latest.values()]) for s in w.shards]}"
        for w in workers)


def _caught_up(workers, n: int) -> bool:
    return all(s.live and (s.reader.next_seq or 1) > n for w in workers for s in w.shards)


# ----------------------------------------------------------------------------- devices


def _devices(msgs, mqtt_ports, shift_s, out_path, n_gateways=6):
    """A separate process: devices publish ``msgs`` over MQTT QoS 1 when their (shifted)
    arrival time comes, through ``n_gateways`` connections spread over the nodes; a
    connection that dies moves to the next node and re-sends what was not acknowledged."""

    async def main():
        node = [k % len(mqtt_ports) for k in range(n_gateways)]
        clients: list[MqttClient | None] = [None] * n_gateways
        locks = [asyncio.Lock() for _ in range(n_gateways)]
        acked: list[int] = []
        stats = {"resent": 0, "reconnects": 0}

        async def client(k):
            async with locks[k]:
                c = clients[k]
                if c is not None and c.connected:
                    return c
                while True:
                    c = MqttClient("127.0.0.1", mqtt_ports[node[k]], f"gw{k}")
                    try:
                        await c.connect(timeout_s=1.0)
                        clients[k] = c
                        if stats.get(f"up{k}"):
                            stats["reconnects"] += 1
                        stats[f"up{k}"] = 1
                        return c
                    except (ConnectionError, OSError, asyncio.TimeoutError):
                        node[k] = (node[k] + 1) % len(mqtt_ports)
                        await asyncio.sleep(0.05)

        async def send(i, topic, payload, k):
            while True:
                c = await client(k)
                try:
                    await c.publish(topic, payload, qos=1, timeout_s=3.0)
                    acked.append((i, time.time()))
                    return
                except (ConnectionError, asyncio.TimeoutError):
                    stats["resent"] += 1
                    if clients[k] is c:
                        node[k] = (node[k] + 1) % len(mqtt_ports)
                        clients[k] = None

        tasks = []
        for i, (arr, topic, payload) in enumerate(msgs):
            wait = arr + shift_s - time.time()
            if wait > 0.002:
                await asyncio.sleep(wait)
            k = hash(topic.rsplit("/", 1)[-1]) % n_gateways  # a device's messages keep one gateway
            tasks.append(asyncio.ensure_future(send(i, topic, payload, k)))
        await asyncio.gather(*tasks)
        with open(out_path, "w") as f:
            json.dump({"acked": acked, "resent": stats["resent"], "reconnects": stats["reconnects"]}, f)

    asyncio.run(main())


# ----------------------------------------------------------------------------- tests


def test_a_node_killed_mid_quake_loses_no_trigger_and_the_alert_arrives(cluster, luding, tmp_path):
    sc, msgs = luding
    procs = []  # the device process, ended whatever happens

    async def go(live):
        nc = await ynats.connect(cluster.urls(), "test")
        js = nc.jetstream(timeout=5)
        await ynats.ensure_jetstream(js, replicas=3, lease_ttl_s=3.0)
        info = await js.stream_info(ynats.STREAM_IN)
        victim = int(info.cluster.leader[1:])  # kill the node that leads the device stream ...
        survivor = (victim + 1) % 3
        # ... where worker w0 is connected (its NATS, and its MQTT for alerts)
        w0 = Worker(cluster.urls(victim), WorkerConfig(worker_id="w0", home_regions=(REGION_EPI,)),
                    mqtt_urls=cluster.mqtt_urls(victim))
        w1 = Worker(cluster.urls(survivor), WorkerConfig(worker_id="w1", home_regions=REGIONS_REST),
                    mqtt_urls=cluster.mqtt_urls(survivor))
        live += [w0, w1]
        await w0.start()
        await w1.start()
        await _wait(lambda: _caught_up([w0, w1], 0), 10, "workers live")
        # a phone near the epicentre, on a node that survives
        got = []
        phone = MqttClient("127.0.0.1", cluster.mports[(victim + 2) % 3], "phone-1",
                           on_message=lambda t, p, r: got.append((time.time(), t, p)))
        await phone.connect()
        await phone.subscribe([(protocol.alert_topic_for_position(sc.latitude, sc.longitude), 1)])
        # the quake, in real time, from devices in another process
        start = time.time() + 1.0
        shift = start - msgs[0][0]
        out = tmp_path / "devices.json"
        # a daemon, ended in the finally below: a device process still re-sending to a
        # cluster that never came back must not hold the test run at exit
        proc = multiprocessing.get_context("fork").Process(target=_devices, args=(msgs, cluster.mports, shift, str(out)),
                                                           daemon=True)
        procs.append(proc)
        proc.start()
        kill_at = sc.origin_time_s + 3.0 + shift  # P waves are out, no alert yet (it comes at ~5.5 s)
        await asyncio.sleep(kill_at - time.time())
        cluster.kill(victim)
        t_kill = time.time()
        leader = None
        while leader in (None, f"n{victim}"):
            if time.time() - t_kill > 60:
                raise AssertionError(f"no new leader of {ynats.STREAM_IN} 60 s after its leader was killed")
            try:
                leader = (await js.stream_info(ynats.STREAM_IN)).cluster.leader
            except (nats.errors.Error, nats.js.errors.Error, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        t_leader = time.time() - t_kill
        # the alert must arrive; how soon is a figure (printed below, docs/scale-out.md), not a
        # test: it is NATS's leader election (5-15 s seen) plus the devices' re-sends
        await _wait(lambda: got, 60, f"the alert on the phone (links: {w0.link.counts}, {w1.link.counts})")
        alert_delay = got[0][0] - shift - sc.origin_time_s
        await asyncio.to_thread(proc.join, 120)
        assert proc.exitcode == 0, "the device process failed"
        dev = json.loads(out.read_text())
        await asyncio.sleep(2.0)  # the workers finish what is in the stream
        # every acknowledged trigger is in the stream
        acked_at = {i: t for i, t in dev["acked"]}
        sent = {i: protocol.decode(msgs[i][1], msgs[i][2]) for i in acked_at if "/trig/" in msgs[i][1]}
        stored = {(m.device, m.seq) for m in (protocol.decode(x.subject, x.data)
                                              for x in await _read_all(js, "yj.v1.trig.*", ynats.STREAM_IN))}
        lost = {i: (m.device, m.seq) for i, m in sent.items() if (m.device, m.seq) not in stored}
        election = (t_kill, t_kill + t_leader + 0.5)  # the device stream had no leader
        outside = [k for i, k in lost.items() if not election[0] <= acked_at[i] <= election[1]]
        n_trig = sum("/trig/" in t for _, t, _ in msgs)
        ev, al = await _announced(js)
        print(f"\nnode n{victim} (device-stream leader, w0's server) killed {kill_at - shift - sc.origin_time_s:.1f} s "
              f"after origin; new stream leader {leader} after {t_leader:.2f} s; devices re-sent {dev['resent']} "
              f"messages; triggers acked {len(sent)}/{n_trig}, not in the stream {len(lost)} (all acked during the "
              f"election: {not outside}); alert on the phone {alert_delay:.2f} s after origin; {len(ev)} event updates, "
              f"{len(al)} alerts, by {sorted({a.worker for a in w0.announced + w1.announced})}")
        assert len(sent) == n_trig, "every trigger was acknowledged in the end (devices re-send)"
        assert not outside, f"{len(outside)} triggers acknowledged outside the leader election are lost: {outside[:5]}"
        _assert_once(ev, al, sc)
        a = wire.decode_alert(got[0][2])
        assert a.alert_id == al[0].alert_id
        _no_errors(w0, w1)
        assert all(s.task is not None and not s.task.done() for s in w0.shards + w1.shards), "a shard died"
        await phone.disconnect()
        await w1.stop()
        await w0.crash()  # its server is gone: no clean goodbye
        await nc.close()
        return alert_delay, len(lost), t_leader

    try:
        delay, n_lost, t_leader = run_bounded(go, 240)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(5)
    print(f"alert {delay:.1f} s after origin (single engine, no failure: ~5.5 s); new stream leader after {t_leader:.1f} s")
    if n_lost:
        # not silent: the test is reported as xfailed with this reason (pytest -rx)
        pytest.xfail(f"NATS's MQTT listener acknowledged (PUBACK) {n_lost} triggers while the device stream had no "
                     f"leader ({t_leader:.1f} s after the kill) and JetStream never stored them: a QoS 1 PUBACK from "
                     "NATS does not mean 'in the stream'. See docs/scale-out.md, 'What is weak'.")


def _border_quake():
    """Luding's quake moved onto the border of two res-1 regions (the nearest border point)."""
    sc = scenarios.get("luding2022")
    best = None
    b = h3.cell_to_boundary(REGION_EPI)
    for i in range(len(b)):
        (la0, lo0), (la1, lo1) = b[i], b[(i + 1) % len(b)]
        for f in [k / 200 for k in range(201)]:
            la, lo = la0 + (la1 - la0) * f, lo0 + (lo1 - lo0) * f
            d = distance_km(sc.latitude, sc.longitude, la, lo)
            if best is None or d < best[0]:
                best = (d, la, lo)
    return replace(sc, latitude=best[1], longitude=best[2])


def test_a_quake_on_a_border_is_announced_once(cluster):
    sc = _border_quake()
    here = h3.latlng_to_cell(sc.latitude, sc.longitude, 1)
    msgs = [m for m in scenario_wire(simulate(sc, 10_000, seed=5)) if WINDOW_S[0] <= m[0] - sc.origin_time_s <= WINDOW_S[1]]
    regions = sorted({h3.cell_to_parent(t.rsplit("/", 1)[-1], 1) for _, t, _ in msgs})

    async def go(live):
        # one worker owns the epicentre's region, the other every region around it
        ws = [Worker(cluster.urls(i), WorkerConfig(worker_id=f"w{i}", arrival="header",
                                                   home_regions=(here,) if i == 0 else tuple(r for r in regions if r != here)))
              for i in range(2)]
        live += ws
        for w in ws:
            await w.start()
        await _wait(lambda: _caught_up(ws, 0), 10, "workers live")
        nc = await ynats.connect(cluster.urls(), "test")
        js = nc.jetstream(timeout=5)
        await _publish_scripted(js, msgs)
        await _wait(lambda: _caught_up(ws, len(msgs)), 60, "workers through the quake")
        await asyncio.sleep(1.5)  # deferred claims (1 s of engine time) and announcements
        ev, al = await _announced(js)
        seen = [[u for u in s.svc.latest.values() if not u.retracted] for w in ws for s in w.shards]
        print(f"\nborder quake at {sc.latitude:.3f}, {sc.longitude:.3f} (region {here}): events per shard "
              f"{[[(u.event_id, round(u.latitude, 2), round(u.longitude, 2)) for u in x] for x in seen]}; "
              f"announced by {sorted({a.worker for w in ws for a in w.announced})}")
        assert sum(1 for x in seen if x) >= 2, "both workers' engines saw the quake (else the test shows nothing)"
        _assert_once(ev, al, sc)
        assert len({a.worker for w in ws for a in w.announced}) == 1
        _no_errors(*ws)
        for w in ws:
            await w.stop()
        await nc.close()

    run_bounded(go, 180)


def test_a_worker_killed_mid_quake_is_taken_over(cluster, luding):
    sc, msgs = luding
    cut = next(i for i, m in enumerate(msgs) if m[0] - sc.origin_time_s > 7.0)  # after the first alert

    async def go(live):
        a = Worker(cluster.urls(0), WorkerConfig(worker_id="a", arrival="header", home_regions=(REGION_EPI,)))
        b = Worker(cluster.urls(1), WorkerConfig(worker_id="b", arrival="header", home_regions=REGIONS_REST))
        live += [a, b]
        for w in (a, b):
            await w.start()
        await _wait(lambda: _caught_up([a, b], 0), 10, "workers live")
        nc = await ynats.connect(cluster.urls(2), "test")
        js = nc.jetstream(timeout=5)
        await _publish_scripted(js, msgs[:cut])
        await _wait(lambda: _caught_up([a, b], cut), 60, "workers through the first part")
        alerted = lambda w: any(x.kind == "alert" for x in w.announced)  # noqa: E731
        await _wait(lambda: alerted(a) or alerted(b), 10, "a first alert", why=lambda: _who_announced(a, b))
        # Usually a, the owner of the epicentre's region, announces; but b's shard claims
        # after defer_s of its own engine time, and with the stream published at full speed
        # a's shard can lag b's by that much (CI, 2026-12-06). Either way one worker
        # announces, and the test kills that one.
        assert alerted(a) != alerted(b), _who_announced(a, b)
        dead, heir = (a, b) if alerted(a) else (b, a)
        await dead.crash()
        t0 = time.monotonic()
        took = await _wait(lambda: set(dead.cfg.home_regions) <= set(heir.owned), 15,
                           f"{heir.cfg.worker_id} taking {dead.cfg.worker_id}'s regions")
        over = await _wait(lambda: alerted(heir), 15, f"{heir.cfg.worker_id} announcing") + took
        await _publish_scripted(js, msgs[cut:])
        await _wait(lambda: _caught_up([heir], len(msgs)), 60, f"{heir.cfg.worker_id} through the rest")
        await asyncio.sleep(1.0)
        ev, al = await _announced(js)
        print(f"\nworker {dead.cfg.worker_id} killed {msgs[cut][0] - sc.origin_time_s:.1f} s after origin (message time): "
              f"{heir.cfg.worker_id} holds its regions after {took:.2f} s, announces (same ids) after {over:.2f} s; "
              f"shards of {heir.cfg.worker_id}: {[(s.name, sorted(s.regions), s.fed) for s in heir.shards]}; "
              f"alerts {[(x.version, x.msg_type) for x in al]}")
        _assert_once(ev, al, sc)
        assert alerted(dead) and alerted(heir)
        assert {x.obj.alert_id for x in a.announced + b.announced if x.kind == "alert"} == {al[0].alert_id}
        _no_errors(heir)
        assert time.monotonic() - t0 < 60
        await heir.stop()
        await nc.close()

    run_bounded(go, 180)
