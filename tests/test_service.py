"""The live service's core on message time: wire bytes in, events and alerts out."""

from __future__ import annotations

import asyncio

import h3
import msgspec
import pytest

from yujing import protocol, scenarios
from yujing.bus.memory import MemoryBus
from yujing.demo import run as demo_run
from yujing.geo import distance_km
from yujing.security import Signer
from yujing.service import ManualClock, Registry, Service, ServiceConfig, drive
from yujing.sources.simulator import simulate
from yujing.sources.wire_feed import scenario_wire

PHONES = 20_000


@pytest.fixture(scope="module")
def luding_wire():
    sc = scenarios.get("luding2022")
    net = simulate(sc, PHONES, seed=3)
    return sc, list(scenario_wire(net))


def _run(msgs, store=None, config=None):
    """Drive a service over the messages; returns it with every update and alert seen
    on its bus (``svc.seen_updates``, ``svc.seen_alerts``)."""
    clock = ManualClock()

    async def go():
        svc = Service(clock=clock, store=store, config=config)
        svc.seen_updates, svc.seen_alerts = [], []
        svc.bus.subscribe("yj.event.>", lambda s, u: svc.seen_updates.append(u), critical=True)
        svc.bus.subscribe("yj.alert.>", lambda s, a: svc.seen_alerts.append(a), critical=True)
        await svc.start()
        drive(svc, clock, msgs)
        await svc.stop()
        return svc

    return asyncio.run(go())


def test_a_scenario_over_the_wire_is_detected_and_alerted(luding_wire):
    sc, msgs = luding_wire
    svc = _run(msgs)
    assert svc.rejects.total == 0, svc.rejects.by_reason()
    real = [u for u in svc.latest.values() if not u.retracted]
    assert len(real) == 1, [(u.event_id, u.magnitude) for u in real]
    final = real[0]
    assert distance_km(final.latitude, final.longitude, sc.latitude, sc.longitude) < 15.0
    assert abs(final.magnitude - sc.magnitude) < 0.5
    alert = svc.latest_alert[final.event_id]
    assert alert.tiers and alert.magnitude > 5.5
    assert [a.version for a in svc.seen_alerts] == list(range(1, len(svc.seen_alerts) + 1))
    assert len(svc.seen_updates) == svc.stats.updates
    # the same quake through the demo (records straight into the engine): the service
    # path (bytes, cell centres, clock correction, a timer instead of the next message)
    # alerts within a step or two of it
    direct = demo_run("luding2022", PHONES, seed=3)
    first = min(a.issued_at_s for a in svc.seen_alerts) - sc.origin_time_s
    print(f"first alert: service {first:.2f} s, demo {direct.first_alert_s:.2f} s after origin")
    assert abs(first - direct.first_alert_s) <= 0.5, (first, direct.first_alert_s)


def test_garbage_is_counted_and_does_not_stop_detection(luding_wire):
    sc, msgs = luding_wire
    cell = h3.latlng_to_cell(sc.latitude, sc.longitude, 7)
    bad = []
    for i, (arr, topic, payload) in enumerate(msgs[:4000]):
        if i % 10 == 0:
            bad.append((arr, topic, payload[: len(payload) // 2]))  # truncated
            bad.append((arr, "yj/v1/trig/zz", payload))  # bad topic cell
            bad.append((arr, protocol.topic_for("trig", cell), b"\x00" * 40))
    mixed = sorted(msgs + bad, key=lambda m: m[0])
    svc = _run(mixed)
    by = svc.rejects.by_reason()
    assert sum(by.values()) == len(bad), by
    assert set(by) <= {"corrupt_msgpack", "bad_field", "cell_mismatch"}
    assert any(not u.retracted and u.magnitude > 6 for u in svc.latest.values())


def test_packets_need_a_hello_and_phones_need_consent():
    clock = ManualClock(1000.0)
    svc = Service(clock=clock)
    sign = Signer(svc.issuer).wire
    cell = h3.latlng_to_cell(19.4, -99.1, 7)
    pkt = protocol.PacketMsg(device="s1", cell=cell, device_time_s=1000.0, sample_rate_hz=31.25,
                             x_gal=[0.0] * 32, y_gal=[0.0] * 32, z_gal=[0.0] * 32)
    svc.receive(*sign("pkt", pkt), 1000.1)
    svc.process_queue()
    assert svc.rejects.by_reason() == {"unknown_device": 1}
    # a phone that says hello without consent: still refused
    hello = protocol.HelloMsg(device="s1", cell=cell, sent_s=1000.0, kind="phone")
    svc.receive(*sign("hello", hello), 1000.2)
    svc.receive(*sign("pkt", pkt), 1000.3)
    svc.process_queue()
    assert svc.rejects.by_reason() == {"unknown_device": 2}
    # consent given: the phone becomes a streaming device at its cell's centre
    hello = protocol.HelloMsg(device="s1", cell=cell, sent_s=1001.0, kind="phone", raw_consent=True)
    svc.receive(*sign("hello", hello), 1001.1)
    pkt2 = protocol.PacketMsg(device="s1", cell=cell, device_time_s=1001.0, sample_rate_hz=31.25,
                              x_gal=[0.0] * 32, y_gal=[0.0] * 32, z_gal=[0.0] * 32)
    svc.receive(*sign("pkt", pkt2), 1001.2)
    svc.process_queue()
    assert svc.stats.accepted["pkt"] == 1
    assert svc.engine.devices["s1"].latitude == pytest.approx(h3.cell_to_latlng(cell)[0])
    # consent withdrawn: refused again, with its own reason
    c = protocol.ConsentMsg(device="s1", cell=cell, sent_s=1002.0, raw_consent=False)
    svc.receive(*sign("consent", c), 1002.1)
    svc.receive(*sign("pkt", pkt2), 1002.2)
    svc.process_queue()
    assert svc.rejects.by_reason()["no_consent"] == 1


def test_registry_areas_are_k_anonymous():
    reg = Registry(1000)
    a = h3.latlng_to_cell(29.6, 102.1, 7)
    b = h3.latlng_to_cell(30.7, 104.1, 7)
    for i in range(12):
        reg.seen(f"a{i}", a, 100.0)
    for i in range(3):
        reg.seen(f"b{i}", b, 100.0)
    reg.seen("old", b, 0.0)
    shown, hidden = reg.per_area(200.0, 150.0, 5, k=10)
    assert shown == {h3.cell_to_parent(a, 5): 12}
    assert hidden == 3  # "old" is offline: not counted at all
    # never finer than the devices' own cells
    shown, _ = reg.per_area(200.0, 150.0, 9, k=1)
    assert set(shown) == {a, b}


def test_a_slow_consumer_loses_only_its_own_messages():
    async def go():
        bus = MemoryBus(queue_size=5)
        got, slow = [], []

        async def slow_handler(s, o):
            await asyncio.sleep(0.01)
            slow.append(o)

        bus.subscribe("yj.alert.>", lambda s, o: got.append(o), critical=True)
        bus.subscribe("yj.>", slow_handler)
        for i in range(100):
            bus.publish(f"yj.alert.e{i}", i)
        await bus.drain()
        await bus.close()
        return bus, got, slow

    bus, got, slow = asyncio.run(go())
    assert got == list(range(100))
    assert bus.dropped["yj.>"] == 100 - len(slow) and len(slow) < 100
    assert slow == sorted(slow)


def test_a_forged_heartbeat_from_the_future_does_not_move_a_phones_triggers(luding_wire):
    sc, msgs = luding_wire
    # one heartbeat "sent" 10^6 s ahead for every phone that triggers, before the quake
    t0 = msgs[0][0]
    forged = []
    for arr, topic, payload in msgs:
        if "/trig/" in topic:
            m = protocol.decode(topic, payload)
            hb = protocol.HeartbeatMsg(device=m.device, cell=m.cell, sent_s=t0 + 1e6)
            forged.append((t0, protocol.topic_for("hb", m.cell), protocol.encode(hb)))
    forged = list({p: (a, t, p) for a, t, p in forged}.values())
    # a served network refuses them outright (they carry no signature)...
    svc = _run(sorted(forged + msgs, key=lambda m: m[0]))
    assert svc.rejects.by_reason() == {"unsigned": len(forged)}
    # ...and a development server that takes unsigned messages bounds their effect
    svc = _run(sorted(forged + msgs, key=lambda m: m[0]), config=ServiceConfig(allow_unsigned=True))
    assert svc.guard.unsigned_accepted == len(forged)
    real = [u for u in svc.latest.values() if not u.retracted and u.magnitude > 6]
    assert real and svc.seen_alerts


def test_stop_processes_everything_queued_and_skips_a_record_the_store_refuses(tmp_path):
    from yujing.records import EventUpdate
    from yujing.store import open_store

    store = open_store("sqlite:///" + str(tmp_path / "s.db"))

    async def go():
        clock = ManualClock(1000.0)
        svc = Service(clock=clock, store=store)
        sign = Signer(svc.issuer).wire
        await svc.start()
        cell = h3.latlng_to_cell(29.6, 102.1, 7)
        for i in range(60_000):  # more than one process_queue() batch
            hb = protocol.HeartbeatMsg(device=f"d{i}", cell=cell, sent_s=1000.0)
            svc.receive(*sign("hb", hb), 1000.0)
        bad = EventUpdate(event_id="bad", version=1, issued_at_s=1000.0, origin_time_s=990.0, latitude=float("nan"),
                          longitude=102.0, depth_km=10.0, magnitude=5.0, magnitude_sigma=0.3, n_devices=3)
        good = msgspec.structs.replace(bad, event_id="good", latitude=29.6)
        svc.bus.publish("yj.event.bad", bad)
        svc.bus.publish("yj.event.good", good)
        await asyncio.wait_for(svc.stop(), 30)
        return svc

    svc = asyncio.run(go())
    assert svc.stats.accepted["hb"] == 60_000 and len(svc._queue) == 0
    assert svc.rejects.by_reason().get("store_refused") == 1
    assert store.event("good") is not None and store.event("bad") is None
    store.close()


def test_a_trigger_delivered_twice_is_taken_once(luding_wire):
    sc, msgs = luding_wire
    # MQTT QoS 1 is at least once: every first trigger arrives a second time, 8 s late;
    # the signed message's seq is seen before (a replay by anyone else looks the same)
    again = [(arr + 8.0, topic, payload) for arr, topic, payload in msgs if "/trig/" in topic][:3000]
    svc = _run(sorted(msgs + again, key=lambda m: m[0]))
    assert svc.rejects.by_reason() == {"replayed": len(again)}
    real = [u for u in svc.latest.values() if not u.retracted]
    assert len(real) == 1 and real[0].magnitude > 6


def test_batched_path_matches_message_by_message(luding_wire):
    """drive() hands the messages of each engine step over at once (receive_many, then
    the engine's feed_triggers); the same stream taken one message at a time (receive,
    and each queued message through the engine alone) gives the same updates, alerts and
    counts."""
    sc, msgs = luding_wire
    batched = _run(msgs)

    clock = ManualClock()

    async def one_by_one():
        svc = Service(clock=clock)
        svc.seen_updates, svc.seen_alerts = [], []
        svc.bus.subscribe("yj.event.>", lambda s, u: svc.seen_updates.append(u), critical=True)
        svc.bus.subscribe("yj.alert.>", lambda s, a: svc.seen_alerts.append(a), critical=True)
        await svc.start()

        def process():
            while svc._queue:
                svc._one(*svc._queue.popleft())

        step = svc.config.step_s
        next_tick = msgs[0][0] + step
        for arr, topic, payload in msgs:
            while next_tick <= arr:
                clock.t_s = next_tick
                process()
                svc.fire_timer()
                next_tick += step
            clock.t_s = arr
            svc.receive(topic, payload, arr)
        process()
        clock.t_s = max(clock.t_s, next_tick)
        svc.fire_timer()
        await svc.stop()
        return svc

    single = asyncio.run(one_by_one())
    assert batched.seen_updates and batched.seen_updates == single.seen_updates
    assert batched.seen_alerts == single.seen_alerts
    assert batched.stats.accepted == single.stats.accepted and batched.stats.received == single.stats.received == len(msgs)


def test_a_bad_message_in_a_batch_is_counted_and_the_good_ones_go_on(luding_wire):
    """Garbage, a forged tag and a replay in the middle of a batch: each is refused and
    counted with its reason; every good message of the batch is accepted and reaches the
    engine."""
    sc, msgs = luding_wire
    trig = [m for m in msgs if "/trig/" in m[1]][:40]
    t0 = trig[0][0]
    forged = bytearray(trig[5][2])
    forged[-1] ^= 0x01
    bad = [(t0, trig[0][1], b"\xc1\xff"), (t0, trig[5][1], bytes(forged)), (t0, "yj/v1/bogus/x", trig[1][2])]
    items = trig[:3] + bad + trig[3:] + [trig[2]]  # and a replay of the third at the end
    items = [(max(t0, it[0]), it[1], it[2]) for it in items]
    items.sort(key=lambda it: it[0])
    clock = ManualClock(t0)
    svc = Service(clock=clock)
    n = svc.receive_many(items)
    assert n == len(trig)
    assert svc.rejects.by_reason() == {"corrupt_msgpack": 1, "bad_signature": 1, "bad_topic": 1, "replayed": 1}
    svc.process_queue()
    assert svc.stats.accepted["trig"] == len(trig)
    firsts = sum(1 for _, topic, p in trig if protocol.decode(topic, p).update == 0)
    assert firsts and svc.engine.n_triggers == firsts


def test_triggers_taken_from_the_queue_reach_the_engine_when_a_later_message_raises(luding_wire, monkeypatch):
    """process_queue gathers a run of triggers for the engine; a message after them that
    raises (a bug) must not lose the run: it is fed before the error goes on to the live
    loop (which counts it as engine_error)."""
    sc, msgs = luding_wire
    trig = [m for m in msgs if "/trig/" in m[1]][:20]
    svc = Service(clock=ManualClock(trig[0][0]))
    assert svc.receive_many(trig) == len(trig)
    hello = Signer(svc.issuer).wire("hello", protocol.HelloMsg(device="s9", cell=h3.latlng_to_cell(29.6, 102.1, 7),
                                                              sent_s=trig[-1][0], kind="sensor"))
    assert svc.receive(*hello, trig[-1][0])

    def boom(self, arr, msg):
        raise RuntimeError("a bug")

    monkeypatch.setattr(Service, "_one", boom)
    with pytest.raises(RuntimeError):
        svc.process_queue()
    firsts = sum(1 for _, topic, p in trig if protocol.decode(topic, p).update == 0)
    assert svc.stats.accepted["trig"] == len(trig) and svc.engine.n_triggers == firsts > 0


def test_a_trigger_run_waits_for_at_most_run_span_messages(luding_wire, monkeypatch):
    """With a backlog queued (a busy engine), the triggers gathered for a batch go to the
    engine once RUN_SPAN messages were taken since the first of them, not at the end of
    the backlog: batching bounds what an alert waits behind."""
    import yujing.service as service_mod

    sc, msgs = luding_wire
    monkeypatch.setattr(service_mod, "RUN_SPAN", 50)
    first = next(k for k, m in enumerate(msgs) if "/trig/" in m[1])
    part = msgs[first:first + 3000]
    svc = Service(clock=ManualClock(part[0][0]))
    assert svc.receive_many(part) == len(part)
    fed_at = []
    real = Service._feed_triggers

    def spy(self, run):
        fed_at.append((len(self._queue), len(run)))
        return real(self, run)

    monkeypatch.setattr(Service, "_feed_triggers", spy)
    svc.process_queue()
    assert len(fed_at) > 1 and sum(k for _, k in fed_at) == svc.stats.accepted["trig"]
    pos = [k for k, m in enumerate(part) if "/trig/" in m[1]]  # where each trigger sits in the queue
    done = 0
    for left, k in fed_at:
        taken = len(part) - left
        # fed no later than 50 messages after its first trigger was taken
        assert taken - pos[done] <= 51, (taken, pos[done])
        done += k


def test_a_run_of_triggers_is_fed_in_pieces_each_published_before_the_next(luding_wire, monkeypatch):
    """The engine takes a run in pieces of FEED_CHUNK and what each piece makes is
    published before the next is associated: an update does not wait for the new-event
    attempts of the rest of the run."""
    import yujing.service as service_mod

    sc, msgs = luding_wire
    monkeypatch.setattr(service_mod, "FEED_CHUNK", 4)
    first = next(k for k, m in enumerate(msgs) if "/trig/" in m[1])
    part = [m for m in msgs[first:] if "/trig/" in m[1]][:400]
    svc = Service(clock=ManualClock(part[0][0]))
    assert svc.receive_many(part) == len(part)
    calls = []
    real_feed, real_emit = svc.engine.feed_triggers, svc._emit
    monkeypatch.setattr(svc.engine, "feed_triggers", lambda run: calls.append(("feed", len(run))) or real_feed(run))
    monkeypatch.setattr(svc, "_emit", lambda out: calls.append(("emit", len(out))) or real_emit(out))
    svc.process_queue()
    feeds = [k for what, k in calls if what == "feed"]
    assert len(feeds) > 1 and max(feeds) <= 4 and sum(feeds) == svc.stats.accepted["trig"]
    # every piece's updates go out before the next piece is fed
    assert all(calls[i][0] == "feed" and calls[i + 1][0] == "emit" for i in range(0, len(calls), 2))
    assert svc.stats.updates > 0


def test_the_engine_loop_closes_a_step_at_its_end_not_at_the_next_period():
    """A step opened by a trigger closes when the engine says it ends (first trigger +
    step_s); the timer does not wait for its own next beat (up to a whole step later),
    which the updates of a large event would otherwise wait for."""
    step = 1.0
    fired = []

    async def go():
        svc = Service(config=ServiceConfig(step_s=step))
        real = svc.fire_timer

        def spy():
            fired.append((svc.clock(), svc._step_due_s()))
            real()

        svc.fire_timer = spy
        await svc.start()
        await asyncio.sleep(0.1)  # the timer's beats fall at start + k s; the step ends 0.1 s after one
        now = svc.clock()
        msg = protocol.TriggerMsg(device="d1", cell=h3.latlng_to_cell(29.6, 102.1, 7), sent_s=now, onset_s=now - 1.0,
                                  window_s=1.0, pga_gal=5.0, pgv_cm_s=0.1, pd_cm=0.001, snr=10.0)
        assert svc.receive(*Signer(svc.issuer).wire("trig", msg))
        opened = svc.engine.n_triggers, svc._queue[-1][0]
        await asyncio.sleep(1.4)
        await svc.stop()
        return opened

    (n0, arrival) = asyncio.run(go())
    end = arrival + step
    closing = [t for t, due in fired if due <= t and t >= end]
    assert closing, fired
    assert closing[0] - end < 0.1, (closing[0] - end, fired)


def test_a_heartbeats_declared_period_reaches_the_engine_and_starts_its_settling():
    """A heartbeat's ``every_s`` sets how long the engine counts the phone present, and the
    first heartbeat received starts the settling time of a (re)start, on receipt: before
    the step that feeds the heartbeat, so a trigger in the same step already waits."""
    clock = ManualClock(1000.0)
    svc = Service(clock=clock)
    sign = Signer(svc.issuer).wire
    cell = h3.latlng_to_cell(29.59, 102.08, 7)
    pres = svc.engine.assoc.presence
    assert pres.since_s is None
    svc.receive(*sign("hb", protocol.HeartbeatMsg(device="p1", cell=cell, sent_s=1000.0, every_s=600.0)), 1000.1)
    svc.receive(*sign("hb", protocol.HeartbeatMsg(device="p2", cell=cell, sent_s=1000.0)), 1000.2)
    svc.process_queue()
    assert pres.since_s == 1000.1 and pres.n == 0  # heard, not yet fed
    assert pres.settling(1000.2, 10.0)  # nobody known yet
    clock.t_s = 1000.25
    svc.fire_timer()
    assert pres.n == 2
    assert pres.window[pres.index["p1"]] == 900.0 and pres.window[pres.index["p2"]] == 90.0
    # still checking in while phones join (both joined within the last second), settled
    # once a second passes without new ones, and in any case settle_s after the first
    assert pres.settling(1000.5, 10.0) and not pres.settling(1001.5, 10.0)
    for k in range(3, 40):
        svc.receive(*sign("hb", protocol.HeartbeatMsg(device=f"p{k}", cell=cell, sent_s=1000.0 + k / 4)), 1000.0 + k / 4)
        svc.process_queue()
        clock.t_s = 1000.05 + k / 4
        svc.fire_timer()
        assert pres.settling(clock.t_s, 10.0) == (clock.t_s - 1000.1 < 10.0), k


@pytest.mark.parametrize("burst", [0, 2_000])
def test_an_alert_goes_out_before_the_steps_new_event_tries_and_nothing_else_changes(burst):
    """The live service runs each engine step's new-event tries after publishing the step's
    updates and alerts (``Engine.split_ticks``): an alert does not wait behind tries for
    other groups. The updates and alerts are the same, in the same order, as with the
    tries inside the step: the load generator's messages (10,000 devices with a background
    of 30 false triggers per phone a day and the Luding quake, or a burst) through both."""
    import numpy as np

    from yujing import load

    t0 = 1_800_000_000.0
    o = load.LoadOptions(devices=10_000, duration_s=18.0, quake="luding2022", quake_at_s=6.0, burst=burst, seed=4,
                         trigger_rate_per_device_day=30.0)
    msgs = load._Messages(o, load.prepare(o), t0)
    rng = np.random.default_rng(4)
    stream = []
    for t, (ph, topic, _) in zip(np.sort(rng.uniform(-15.0, 0.0, o.devices)).tolist(), msgs.connect_beats()):
        dev, cell, _ = msgs._dev(ph)
        m = protocol.HeartbeatMsg(device=dev, cell=cell, sent_s=t0 + t, every_s=o.heartbeat_s)
        stream.append((t0 + t, topic, msgs.signer.payload(topic, m)))
    stream += [(t0 + t, topic, payload) for t, _k, topic, payload, _kind in msgs]

    def run(split: bool):
        async def go():
            clock = ManualClock(t0 - 20.0)
            svc = Service(config=ServiceConfig(allow_unsigned=True), clock=clock)
            svc.engine.split_ticks = split
            got, seeded = [], []
            inner = svc.engine.assoc.tick_new

            def tick_new(now_s):  # count the tries left for after the publishing
                seeded.append(bool(svc.engine.assoc._fresh or svc.engine.assoc._deferred))
                return inner(now_s)
            svc.engine.assoc.tick_new = tick_new
            svc.bus.subscribe("yj.event.>", lambda s, u: got.append(("u", u.event_id, u.version, u.issued_at_s,
                                                                     u.latitude, u.longitude, u.magnitude, u.retracted)),
                              critical=True)
            svc.bus.subscribe("yj.alert.>", lambda s, a: got.append(("a", a.alert_id, a.version, a.msg_type, a.tiers)),
                              critical=True)
            drive(svc, clock, iter(stream))
            await svc.stop()
            return got, sum(seeded)

        return asyncio.run(go())

    split, deferred = run(True)
    whole, _ = run(False)
    assert split == whole
    assert deferred > 0  # tries did wait for the publishing
    assert sum(1 for g in split if g[0] == "a") >= 1  # the quake alerted
