"""Association on device triggers: what must and must not become an earthquake."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from yujing.engine import Engine
from yujing.geo import KM_PER_DEG, distance_km
from yujing.records import Device, Trigger
from yujing.traveltime import default_table

T0 = 1_700_000_000.0
LAT0, LON0 = 16.5, -98.5


def network(n: int, seed: int, spread_km: float = 150.0) -> dict[str, Device]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        dx, dy = rng.uniform(-spread_km, spread_km, 2)
        out[f"d{i:02d}"] = Device(f"d{i:02d}", LAT0 + dy / KM_PER_DEG, LON0 + dx / (KM_PER_DEG * np.cos(np.radians(LAT0))))
    return out


def trig(dev: Device, onset_s: float, issued_s: float | None = None, pga: float = 5.0) -> Trigger:
    return Trigger(
        device_id=dev.device_id,
        latitude=dev.latitude,
        longitude=dev.longitude,
        onset_time_s=onset_s,
        issued_at_s=onset_s + 0.5 if issued_s is None else issued_s,
        window_s=0.5,
        pga_gal=pga,
        pgv_cm_s=0.1,
        pd_cm=0.01,
        wa_horizontal_nm=2e5,
        wa_vertical_nm=1e5,
        noise_wa_nm=5e3,
    )


def quake_triggers(devs, lat, lon, depth_km, origin_s, n):
    tab = default_table()
    arr = []
    for d in devs.values():
        epi = float(distance_km(lat, lon, d.latitude, d.longitude))
        arr.append((origin_s + float(tab.p_time_s(epi, depth_km)), d))
    arr.sort(key=lambda x: x[0])
    return [trig(d, t) for t, d in arr[:n]]


def feed(eng: Engine, triggers):
    out = []
    for t in sorted(triggers, key=lambda t: t.issued_at_s):
        out += eng.feed_trigger(t)
    return out + eng.flush()  # the stream ends: process the last step


def test_a_real_quake_is_announced_and_located():
    devs = network(20, seed=1)
    trs = quake_triggers(devs, LAT0 + 0.1, LON0 - 0.2, 20.0, T0, 10)
    ups = feed(Engine(devs), trs)
    assert ups and ups[0].version == 1
    final = ups[-1]
    assert float(distance_km(final.latitude, final.longitude, LAT0 + 0.1, LON0 - 0.2)) < 10.0
    assert abs(final.origin_time_s - T0) < 1.0
    assert final.n_devices >= 8
    assert len({u.event_id for u in ups}) == 1


def test_one_noisy_device_never_makes_an_event():
    devs = network(20, seed=2)
    noisy = devs["d03"]
    ups = feed(Engine(devs), [trig(noisy, T0 + 7.0 * k) for k in range(30)])
    assert ups == []


def test_a_bump_in_one_building_is_not_an_earthquake():
    """Five devices within a few hundred metres shaken at once (a door, a truck, a crowd,
    or fakes in one place): one site, not five."""
    devs = network(15, seed=3)
    base = devs["d00"]
    for i in range(5):
        d = Device(f"b{i}", base.latitude + 0.001 * i, base.longitude - 0.001 * i)
        devs[d.device_id] = d
    bump = [trig(devs[f"b{i}"], T0 + 0.05 * i) for i in range(5)]
    assert feed(Engine(devs), bump) == []


def test_triggers_scattered_at_random_are_not_an_earthquake():
    """An hour of independent false triggers across a live network, one per device every
    ~12 minutes (about what the building sensors of the development set show): the silent
    devices around every chance coincidence keep it from becoming an event."""
    devs = network(25, seed=4, spread_km=250.0)
    rng = np.random.default_rng(5)
    names = list(devs)
    trs = [trig(devs[names[rng.integers(len(names))]], T0 + rng.uniform(30, 3600)) for _ in range(120)]
    eng = Engine(devs)
    msgs = [(t.issued_at_s, 1, t) for t in trs] + [(T0 + k, 0, d) for k in range(3700) for d in names]
    ups = []
    for when, kind, item in sorted(msgs, key=lambda m: (m[0], m[1])):
        ups += eng.feed_trigger(item) if kind else eng.feed_heartbeat(item, when)
    ups += eng.flush()
    # not even announced and retracted: a withdrawn alarm is still a false alarm
    assert ups == [], [(u.event_id, u.n_devices, u.version, u.retracted) for u in ups]
    # the same triggers without the silent network's evidence do fool a 3-device rule,
    # which is why silence is counted
    blind = feed(Engine(devs), trs)
    assert blind


@pytest.mark.parametrize("n", [3, 4])
def test_announced_with_three_or_four_devices(n):
    devs = network(20, seed=6)
    trs = quake_triggers(devs, LAT0, LON0, 30.0, T0, n)
    ups = feed(Engine(devs), trs)
    assert ups and ups[0].n_devices == 3  # announced as soon as three agree
    assert ups[-1].n_devices == n


def test_an_early_false_trigger_far_away_does_not_hold_up_a_quake():
    """Phones picked up ~200 km away seconds before the quake are still within P move-out
    of the real triggers. Groups are built from the nearest triggers and judged on the picks
    that fit, so the quake is announced as soon as without it."""
    devs = network(30, seed=7, spread_km=60.0)
    far = [Device("far1", LAT0 + 200.0 / KM_PER_DEG, LON0), Device("far2", LAT0, LON0 + 180.0 / KM_PER_DEG)]
    quake = dict(devs)
    for d in far:
        devs[d.device_id] = d
    trs = quake_triggers(quake, LAT0, LON0, 10.0, T0, 8)

    def run(triggers):
        # every device checks in each second: the quiet ones are evidence
        eng = Engine(devs)
        msgs = [(t.issued_at_s, 1, t) for t in triggers] + [(T0 + k, 0, d) for k in range(-40, 30) for d in devs]
        ups = []
        for when, kind, item in sorted(msgs, key=lambda m: (m[0], m[1])):
            ups += eng.feed_trigger(item) if kind else eng.feed_heartbeat(item, when)
        return ups + eng.flush()

    clean = run(trs)
    noisy = run(trs + [trig(far[0], T0 - 6.0), trig(far[1], T0 - 5.0)])
    assert clean and noisy
    assert noisy[0].issued_at_s == pytest.approx(clean[0].issued_at_s)
    assert not {"far1", "far2"} & set(noisy[-1].device_ids)
    assert float(distance_km(noisy[-1].latitude, noisy[-1].longitude, LAT0, LON0)) < 10.0


def test_false_triggers_among_many_quiet_phones_are_not_an_earthquake():
    """Three phones picked up within seconds of each other, 20-40 km apart, among 2,000
    phones lying still and checking in: however the locator places them, the quiet phones
    closer to that place than the farthest trigger outnumber them (the triggered
    fraction), so no event is announced."""
    rng = np.random.default_rng(11)
    n = 2000
    lat = LAT0 + rng.uniform(-0.6, 0.6, n)
    lon = LON0 + rng.uniform(-0.6, 0.6, n)
    ids = [f"p{i}" for i in range(n)]
    eng = Engine({})
    ups = []
    for k in range(60):
        ups += eng.feed_heartbeats(ids, lat, lon, T0 + k)
    picked = [Device(ids[i], lat[i], lon[i]) for i in (3, 500, 1200)]
    onsets = [T0 + 60.0, T0 + 61.5, T0 + 62.0]
    falses = sorted((trig(d, t, issued_s=t + 2.5) for d, t in zip(picked, onsets)), key=lambda t: t.issued_at_s)
    for k in range(60, 75):
        while falses and falses[0].issued_at_s <= T0 + k:
            ups += eng.feed_trigger(falses.pop(0))
        ups += eng.feed_heartbeats(ids, lat, lon, T0 + k)
    ups += eng.flush()
    assert ups == [], [(u.event_id, u.n_devices) for u in ups]


def test_updates_are_stamped_when_their_step_is_processed():
    """A first trigger (update 0) is processed on arrival: the event it completes carries
    that arrival. Amplitude updates wait in their step, whose updates carry the step's
    closing time (a live server's timer), never the arrival of an earlier message."""
    import msgspec

    devs = network(20, seed=1)
    trs = quake_triggers(devs, LAT0 + 0.1, LON0 - 0.2, 20.0, T0, 6)
    eng = Engine(devs)
    ups = []
    for t in trs[:3]:
        ups += eng.feed_trigger(t)
    assert ups and ups[0].version == 1
    assert ups[0].issued_at_s == trs[2].issued_at_s  # the third trigger formed it, at once
    # a bigger amplitude from the first device: batched, stamped when the step closes
    amp = msgspec.structs.replace(
        trs[0], update=1, pga_gal=50.0, pgv_cm_s=1.0, pd_cm=0.1, wa_horizontal_nm=2e6, wa_vertical_nm=1e6,
        window_s=3.0, issued_at_s=trs[2].issued_at_s + 0.05,
    )
    assert eng.feed_trigger(amp) == []
    step_end = eng._step_end  # the closing time of the step that holds it
    assert amp.issued_at_s < step_end <= amp.issued_at_s + eng.step_s
    later = eng.feed_heartbeat("d19", step_end + 1.0)  # the next message comes after the step's end
    assert later and all(u.issued_at_s == step_end for u in later)


def test_a_heartbeat_batch_behind_the_clock_does_not_backdate_an_update():
    """A heartbeat batch stamped before the newest trigger closes the step no earlier than
    the engine clock: an update that uses that trigger is never issued before it arrived."""
    devs = network(60, seed=3, spread_km=60.0)
    trs = sorted(quake_triggers(devs, LAT0, LON0, 10.0, T0, 45), key=lambda t: t.issued_at_s)
    eng = Engine(devs)
    for t in trs[:-1]:
        eng.feed_trigger(t)
    eng.flush()
    last = trs[-1]
    eng.feed_trigger(last)
    out = eng.feed_heartbeats(["zz"], [LAT0 + 3.0], [LON0 + 3.0], last.issued_at_s - 0.2)
    assert out, "the batch closes the step that holds the last trigger"
    assert all(u.issued_at_s >= last.issued_at_s for u in out)


def test_a_p_pick_earlier_than_a_loose_location_predicts_is_tried_as_p():
    """Three picks on one side of a network say little about how far away the quake is.
    The 2018-02-16 M7.2 (Pinotepa; catalogue epicentre 16.218 -98.013): OpenEEW sensors
    006, 008 and 009, all 66-131 km north-west of it, triggered first (their recorded onsets
    and arrivals below); their location put the epicentre 29 km from 006 (really 66), with
    a horizontal error of ~125 km. The P of sensor 001, 173 km east-south-east, then came
    11.5 s before that location's P time there: too early to be taken as P at once, yet
    what the location predicts once moved within its own uncertainty. Tried by relocating
    with it, it joins as P, and the distances to the other sensors come out near the true
    ones (without it, later picks from the same side put 006 at 8 km and the final
    magnitude fell by 0.4)."""
    pos = {"006": (16.68, -98.40), "008": (16.61, -98.98), "009": (16.72, -99.12), "001": (15.67, -96.50)}
    devs = {k: Device(k, *v) for k, v in pos.items()}
    onset = {"006": 8.561, "008": 17.021, "009": 18.534, "001": 27.651}  # s after the origin
    arrival = {"006": 8.694, "008": 17.901, "009": 19.371, "001": 28.957}
    ups = feed(Engine(devs), [trig(devs[k], T0 + onset[k], T0 + arrival[k]) for k in onset])
    assert ups and ups[0].n_devices == 3
    assert float(distance_km(ups[0].latitude, ups[0].longitude, *pos["006"])) < 40.0  # the loose start
    assert "001" in ups[-1].device_ids
    assert float(distance_km(ups[-1].latitude, ups[-1].longitude, *pos["006"])) > 50.0  # true: 66 km


def _still_phones(n: int, seed: int, half_deg: float = 0.6):
    rng = np.random.default_rng(seed)
    lat = LAT0 + rng.uniform(-half_deg, half_deg, n)
    lon = LON0 + rng.uniform(-half_deg, half_deg, n)
    return [f"p{i}" for i in range(n)], lat, lon


def test_a_chance_group_among_quiet_phones_is_refused_without_locating():
    """Three false triggers 50-90 km apart, the first 12 s before the last (pairwise within
    P move-out), around 2,000 phones lying still: the phones inside their triangle near
    the early sites are long overdue, so the group is refused by the cheap polygon test
    and never located (a locate costs tens of ms; a million phones bring many such
    groups a second)."""
    ids, lat, lon = _still_phones(2000, 12)
    eng = Engine({})
    for k in range(60):
        eng.feed_heartbeats(ids, lat, lon, T0 + k)
    corners = [(-0.35, -0.35), (0.35, -0.3), (0.0, 0.4)]
    picked = [Device(f"x{i}", LAT0 + dy, LON0 + dx) for i, (dy, dx) in enumerate(corners)]
    onsets = [T0 + 48.0, T0 + 55.0, T0 + 60.0]
    group = [trig(d, t, issued_s=t + 2.0) for d, t in zip(picked, onsets)]
    assert eng.assoc._hull_fraction(group, T0 + 62.0) < 0.05
    located = []
    real = eng.assoc._locate
    eng.assoc._locate = lambda *a, **k: located.append(1) or real(*a, **k)
    ups = []
    for t in group:
        eng.feed_heartbeats(ids, lat, lon, t.issued_at_s - 0.01)
        ups += eng.feed_trigger(t)
    ups += eng.flush()
    assert ups == []
    assert located == []


def test_a_quakes_first_sites_pass_the_polygon_test():
    """The first three phones to pick a quake's P, tested when the third report arrives:
    the phones between them were reached by P only seconds ago, so they do not count
    against the group yet and the group goes on to be located."""
    ids, lat, lon = _still_phones(2000, 13)
    eng = Engine({})
    for k in range(60):
        eng.feed_heartbeats(ids, lat, lon, T0 + k)
    tab = default_table()
    origin = T0 + 55.0
    epi = distance_km(LAT0, LON0, lat, lon)
    tp = origin + tab.p_time_s(epi, 10.0)
    first = np.argsort(tp)
    # three distinct sites among the earliest: the nearest phones to the epicentre
    chosen: list[int] = []
    for i in first:
        if all(float(distance_km(lat[i], lon[i], lat[j], lon[j])) > 3.0 for j in chosen):
            chosen.append(int(i))
        if len(chosen) == 3:
            break
    group = [trig(Device(ids[i], lat[i], lon[i]), float(tp[i])) for i in chosen]
    now = max(t.onset_time_s for t in group) + 1.5
    assert eng.assoc._hull_fraction(group, now) >= 0.5


def test_a_large_events_amplitude_updates_are_sized_once_a_second():
    """A large event whose P picks stay the same has only amplitude updates to follow:
    its magnitude is re-solved once per RESIZE_LARGE_S, not at every step; a pick that
    joins is sized at its step's end, and the input's end sizes everything pending."""
    import msgspec

    from yujing import associate

    devs = network(160, seed=11, spread_km=120.0)
    trs = quake_triggers(devs, LAT0, LON0, 10.0, T0, 160)
    eng = Engine(devs)
    feed(eng, trs[:140])
    (ev,) = eng.assoc._open_events()
    assert len(ev.picks) >= associate.RELOCATE_LARGE_PICKS
    sized = []
    real = eng.assoc._magnitude
    eng.assoc._magnitude = lambda e, now: (sized.append(now), real(e, now))
    t = max(tr.issued_at_s for tr in trs[:140]) + 0.3
    picks = list(ev.picks.values())
    for k in range(12):  # 3 s of amplitude updates, one per 0.25 s step
        p = picks[k]
        eng.feed_trigger(msgspec.structs.replace(p, update=1, issued_at_s=t, pga_gal=p.pga_gal * 2))
        t += 0.25
    eng.flush()
    assert 2 <= len(sized) <= 4  # about 3 s / RESIZE_LARGE_S, against 12 steps
    assert all(b - a >= associate.RESIZE_LARGE_S - 1e-9 for a, b in zip(sized, sized[1:]))
    # a new P pick is sized at the end of its step, whenever the last sizing was
    n = len(sized)
    late = trs[140]
    eng.feed_trigger(msgspec.structs.replace(late, issued_at_s=t))
    eng.flush()
    if late.device_id in ev.picks:
        assert len(sized) == n + 1
    # amplitude updates still pending at the end are in the final solution
    eng.feed_trigger(msgspec.structs.replace(picks[0], update=2, issued_at_s=t + 0.1, pga_gal=picks[0].pga_gal * 3))
    eng.finish()
    assert sized[-1] >= t + 0.1


def test_a_second_event_inside_an_open_ruptures_area_and_time_is_not_formed():
    """A large quake's edge phones (S read as P, a late wave front) can agree on a second
    source beside it; one inside the open event's rupture length (plus both location
    errors) and its rupture duration is taken for part of it, not announced apart. A
    candidate farther away, or after the rupture has ended, is a quake of its own."""
    from yujing.event import Event
    from yujing.locate import Location
    from yujing.magnitude import _rupture_length_km, rupture_duration_s

    eng = Engine({})
    assoc = eng.assoc

    def loc(dlat_km: float, dt_s: float, herr_km: float) -> Location:
        return Location(LAT0 + dlat_km / KM_PER_DEG, LON0, 10.0, T0 + dt_s, 1.0, 0.3, herr_km,
                        np.zeros(0, bool), np.zeros(0), 0)

    big = Event(event_id="big", location=loc(0.0, 0.0, 3.0), picks={}, magnitude=7.0)
    assoc.events.append(big)
    length, duration = float(_rupture_length_km(7.0)), rupture_duration_s(7.0)  # 42 km, 17 s
    assert assoc._inside_open_rupture(loc(length, 5.0, 3.0))  # along the rupture, during it
    assert assoc._inside_open_rupture(loc(18.0, -2.8, 16.0))  # the Wenchuan demo's split
    assert not assoc._inside_open_rupture(loc(length + 40.0, 5.0, 3.0))  # beyond it
    assert not assoc._inside_open_rupture(loc(10.0, duration + 20.0, 3.0))  # after it
    big.magnitude = 4.0  # a small open event has a rupture of ~1 km: a quake 20 km off is new
    assert not assoc._inside_open_rupture(loc(20.0, 2.0, 2.0))
    big.retracted = True  # a retracted event holds nothing back
    big.magnitude = 7.0
    assert not assoc._inside_open_rupture(loc(length, 5.0, 3.0))


def _pooled(n: int, seed: int, origin: float) -> list[Trigger]:
    """``n`` pooled first triggers around (LAT0, LON0): a third P onsets of a quake at
    ``origin`` (10 km deep), the rest at random times, a few devices twice."""
    rng = np.random.default_rng(seed)
    lat = LAT0 + rng.uniform(-1.0, 1.0, n)
    lon = LON0 + rng.uniform(-1.0, 1.0, n)
    tp = origin + default_table().p_time_s(distance_km(LAT0, LON0, lat, lon), 10.0)
    onset = np.where(rng.random(n) < 1 / 3, tp + rng.normal(0.0, 0.3, n), origin + rng.uniform(-20.0, 60.0, n))
    names = [f"q{i % (n - n // 20)}" for i in range(n)]  # the last 5 % repeat a device
    return [trig(Device(names[i], lat[i], lon[i]), float(onset[i])) for i in range(n)]


def test_adopting_the_pool_is_the_same_as_asking_each_trigger_its_role():
    """A newly formed event takes the pooled P onsets it explains. The pool's roles are
    one array expression (a burst pools tens of thousands: one role each cost 6.5 s in
    one engine step); it must take exactly the triggers the one-by-one rule takes, in
    the same order, a device at most once."""
    from yujing.event import Event
    from yujing.locate import Location

    eng = Engine({})
    a = eng.assoc
    loc = Location(latitude=LAT0 + 0.02, longitude=LON0 - 0.03, depth_km=10.0, origin_time_s=T0 + 100.0, misfit=0.0,
                   rms_s=0.3, horizontal_error_km=8.0, is_s=np.zeros(3, bool), residual_s=np.zeros(3), n_silent_violations=0)
    pool = _pooled(3000, 5, T0 + 100.0)
    first = pool[0]
    expect_ev = Event(event_id="ref", location=loc, picks={first.device_id: first})
    rest = []
    for p in pool:  # the rule, one trigger at a time
        if a._role(expect_ev, p) == "P" and p.device_id not in expect_ev.picks:
            expect_ev.picks[p.device_id] = p
        else:
            rest.append(p)
    ev = Event(event_id="new", location=loc, picks={first.device_id: first})
    a.pool = list(pool)
    a._adopt_pool(ev)
    assert list(ev.picks) == list(expect_ev.picks) and len(ev.picks) > 500
    assert all(ev.picks[k] is expect_ev.picks[k] for k in ev.picks)
    assert a.pool == rest


def test_the_polygon_test_counts_the_pooled_triggers_inside_as_one_at_a_time():
    """The polygon test counts the distinct pooled devices strictly inside a candidate's
    hull as triggered; over a pool of thousands that is one array test, which must count
    what the point-by-point test counted."""
    from yujing.evidence import _convex_hull, _inside_convex

    ids, lat, lon = _still_phones(3000, 17)
    eng = Engine({})
    for k in range(5):
        eng.feed_heartbeats(ids, lat, lon, T0 + 125.0 + k)
    a = eng.assoc
    a.pool = _pooled(4000, 7, T0 + 100.0)
    picked = [Device(f"x{i}", LAT0 + dy, LON0 + dx) for i, (dy, dx) in enumerate([(-0.4, -0.4), (0.4, -0.3), (0.1, 0.5)])]
    group = [trig(d, T0 + 102.0 + i) for i, d in enumerate(picked)]
    got = a._hull_fraction(group, T0 + 130.0)
    # the reference: the count of the pool's devices inside, point by point
    lat0 = sum(g.latitude for g in group) / 3
    lon0 = sum(g.longitude for g in group) / 3
    kx = KM_PER_DEG * np.cos(np.radians(lat0))
    hull = _convex_hull([((g.longitude - lon0) * kx, (g.latitude - lat0) * KM_PER_DEG) for g in group])
    hx, hy = np.array([h[0] for h in hull]), np.array([h[1] for h in hull])
    inside = {g.device_id for g in group}
    for p in a.pool:
        x, y = (p.longitude - lon0) * kx, (p.latitude - lat0) * KM_PER_DEG
        if _inside_convex(np.array([x]), np.array([y]), hx, hy)[0]:
            inside.add(p.device_id)
    k = len(inside)
    assert 100 < k < 4000
    # fraction = k / (k + Q), Q the quiet devices due, which the pool does not change (its
    # devices are not among the phones): Q from the group alone, 3 / (3 + Q)
    pool, a.pool = a.pool, []
    alone = a._hull_fraction(group, T0 + 130.0)
    q = 3.0 / alone - 3.0
    assert q > 50
    assert got == pytest.approx(k / (k + q), rel=1e-9)


def test_the_pools_columns_follow_appends_and_new_lists():
    """PoolColumns keeps the pool's positions, onsets and devices as arrays beside the list:
    extended when the list grows, unchanged by an amplitude update replacing a record in
    place, rebuilt when the pool is another list; always equal to reading the records."""
    from yujing.evidence import PoolColumns

    pool = _pooled(200, 9, T0)
    cols = PoolColumns()

    def check(p):
        c = cols.of(p)
        assert np.array_equal(c.lat, [t.latitude for t in p]) and np.array_equal(c.lon, [t.longitude for t in p])
        assert np.array_equal(c.onset, [t.onset_time_s for t in p]) and c.devices == {t.device_id for t in p}

    live = pool[:50]
    check(live)
    live += pool[50:120]  # appends to the same list
    check(live)
    live[7] = msgspec.structs.replace(live[7], update=3, pga_gal=40.0)  # an amplitude update, in place
    check(live)
    check([t for t in live if t.onset_time_s > T0])  # a filtered, new list
    check([])
    check(pool)


def _report(dev: Device, onset_s: float, delay_s: float = 1.55) -> Trigger:
    """A phone's trigger as the load generator sends it: every report takes the same time."""
    return trig(dev, onset_s, issued_s=onset_s + delay_s)


def _city(n: int, seed: int, half_km: float = 8.0):
    rng = np.random.default_rng(seed)
    k = KM_PER_DEG * np.cos(np.radians(LAT0))
    lat = LAT0 + rng.uniform(-half_km, half_km, n) / KM_PER_DEG
    lon = LON0 + rng.uniform(-half_km, half_km, n) / k
    return [f"c{i}" for i in range(n)], lat, lon


def _run(eng: Engine, ids, lat, lon, triggers, t_from: float, t_to: float, every_s: float = 1.0):
    """Heartbeats of every phone each ``every_s`` and the triggers on their arrival times."""
    ups = []
    trs = sorted(triggers, key=lambda t: t.issued_at_s)
    t = t_from
    while t <= t_to:
        while trs and trs[0].issued_at_s <= t:
            ups += eng.feed_trigger(trs.pop(0))
        ups += eng.feed_heartbeats(ids, lat, lon, t)
        t += every_s
    return ups + eng.flush()


def test_three_chance_triggers_in_a_city_wait_for_the_quiet_phones_to_be_due():
    """Three phones of a city of 20,000 still ones, picked up within 0.3 s of each other:
    they fit a source right under them, whose P reached the whole city a second before the
    third report arrived, and no phone there is due to have reported yet. The 1M-device
    load run announced such groups as M8 quakes with alerts (retracted seconds later). The
    group must wait until the phones around are due, and their silence refuses it."""
    ids, lat, lon = _city(20_000, 21)
    eng = Engine({})
    picked = [Device(ids[i], lat[i], lon[i]) for i in (5, 9000, 17000)]
    group = [_report(d, T0 + 60.0 + 0.15 * i) for i, d in enumerate(picked)]
    _run(eng, ids, lat, lon, [], T0, T0 + 59.0)
    # when the third report arrives: nobody is due yet, thousands soon will be
    now = group[-1].issued_at_s
    for g in group:
        eng.assoc.pool.append(g)
    loc = eng.assoc._locate(group, now, exclude={g.device_id for g in group})
    k, quiet, pending = eng.assoc._fraction_terms(loc, group, now)
    eng.assoc.pool.clear()
    assert quiet < 1.0 and pending > 1000, (k, quiet, pending)  # the fraction alone says 1.0
    ups = _run(eng, ids, lat, lon, group, T0 + 60.0, T0 + 75.0)
    assert ups == [], [(u.event_id, u.magnitude, u.n_devices) for u in ups]


def test_a_quake_under_a_city_is_announced_once_its_phones_report():
    """The same city, a real quake under it: a third of the phones report P (the others
    miss it), each 1.55 s after its onset. The wait for the phones around to be due costs
    at most the report delay after the third report; the event is then announced on the
    phones that did report."""
    ids, lat, lon = _city(20_000, 21)
    tab = default_table()
    origin = T0 + 60.0
    epi = distance_km(LAT0, LON0, lat, lon)
    tp = origin + tab.p_time_s(epi, 10.0)
    rng = np.random.default_rng(5)
    reporting = np.flatnonzero(rng.uniform(size=len(ids)) < 1 / 3)
    quake = [_report(Device(ids[i], lat[i], lon[i]), float(tp[i])) for i in reporting]
    eng = Engine({})
    _run(eng, ids, lat, lon, [], T0, T0 + 59.0)
    ups = _run(eng, ids, lat, lon, quake, T0 + 60.0, T0 + 75.0, every_s=0.25)
    assert ups, "the quake was not announced"
    third = sorted(t.issued_at_s for t in quake)[2]
    first = ups[0]
    assert first.issued_at_s - third <= 1.55 + 0.25 + 1e-6, first.issued_at_s - third
    assert float(distance_km(first.latitude, first.longitude, LAT0, LON0)) < 10.0
    assert not any(u.retracted for u in ups)


def test_phone_events_wait_while_phones_check_in_after_a_start():
    """A cold start: the engine has heard heartbeats for 0.3 s (a million phones with a
    10-minute period send 1,700 a second: a few hundred known), then three phones a few
    km apart trigger within 0.2 s; the other phones check in over the next 10 s. They fit a source far away, and the quiet phones around
    are unknown. The group waits ``presence_settle_s`` and is refused once the phones have
    checked in; with no wait (0) it is announced, as such groups were on the load run's
    cold start."""
    import msgspec as _m

    from yujing.settings import Settings

    ids, lat, lon = _still_phones(3000, 31, half_deg=1.5)
    # phone 2990 and the two nearest to it beyond a site's size: a group that fits a
    # source under them (the phones that checked in first are far away)
    d = distance_km(lat[2990], lon[2990], lat, lon)
    near = [2990] + [int(i) for i in np.argsort(d) if d[i] > 5.0][:2]
    group = [_report(Device(ids[i], lat[i], lon[i]), T0 + 0.1 * k) for k, i in enumerate(near)]

    def run(settle_s: float):
        s = Settings()
        # without the move-out rule, which refuses this group too (its onsets span 0.2 s):
        # what is tested here is the wait alone
        s = _m.structs.replace(s, associate=_m.structs.replace(s.associate, presence_settle_s=settle_s, min_moveout_s=0.0))
        eng = Engine({}, s)
        ups = eng.feed_heartbeats(ids[:5], lat[:5], lon[:5], T0 - 0.3)  # the first few checked in
        # the rest check in over the next 10 s (their connect heartbeats), then every second
        trs = sorted(group, key=lambda t: t.issued_at_s)
        for k in range(1, 61):
            t = T0 - 0.3 + 0.25 * k
            while trs and trs[0].issued_at_s <= t:
                ups += eng.feed_trigger(trs.pop(0))
            n = min(len(ids), 5 + k * 75)
            ups += eng.feed_heartbeats(ids[:n], lat[:n], lon[:n], t)
        return ups + eng.flush()

    assert run(0.0), "without the wait the chance group is announced (else this test shows nothing)"
    assert run(10.0) == []


def test_a_phone_is_present_for_one_and_a_half_declared_periods():
    """A phone that beats every 10 minutes is a witness for 15 minutes after its heartbeat;
    one that declares nothing, for 90 s (1.5 x the protocol's default minute)."""
    from yujing.presence import Presence

    p = Presence()
    p.note_heartbeats(["slow"], [LAT0], [LON0], T0, every_s=np.array([600.0]))
    p.note_heartbeats(["plain"], [LAT0 + 0.1], [LON0], T0)
    alive = lambda t: len(p.silent(t, set(), 30.0)[0])  # noqa: E731
    assert alive(T0 + 60.0) == 2
    assert alive(T0 + 89.0) == 2 and alive(T0 + 91.0) == 1
    assert alive(T0 + 899.0) == 1 and alive(T0 + 901.0) == 0


def test_the_silence_around_a_place_read_from_a_box_is_the_same():
    """``Presence.silent`` with a box around a place returns, of the devices within a
    radius, exactly what the full read does (busy devices left out in both), and the
    triggered-fraction terms computed from the box equal those from every row."""
    from yujing.presence import Presence, box_around

    ids, lat, lon = _still_phones(20_000, 41, half_deg=3.0)
    p = Presence()
    p.note_heartbeats(ids, lat, lon, T0, ready=np.arange(len(ids)) % 7 != 0, every_s=np.full(len(ids), 600.0))
    busy = {ids[i] for i in range(0, 20_000, 13)}
    # a burst's busy set: more ids than a box holds rows (then each row is asked), some unknown
    burst = {ids[i] for i in range(0, 20_000, 2)} | {f"unknown{k}" for k in range(500)}
    for b in (busy, burst):
        for (la, lo, r) in [(LAT0, LON0, 40.0), (LAT0 + 1.0, LON0 - 2.0, 150.0), (LAT0 - 2.9, LON0 + 2.9, 5.0)]:
            full = p.silent(T0 + 30.0, b, 30.0, kinds=True)
            part = p.silent(T0 + 30.0, b, 30.0, kinds=True, box=box_around(la, lo, r))
            within = lambda got: set(zip(*(np.asarray(x)[distance_km(la, lo, got[0], got[1]) < r].tolist() for x in got)))  # noqa: E731
            assert within(full) == within(part) and (len(within(full)) > 0 or (b is burst and r < 10))
            # and as many as a plain count of the live, not busy phones within r
            near = distance_km(la, lo, lat, lon) < r
            want = sum(1 for i in np.flatnonzero(near).tolist() if i % 7 != 0 and ids[i] not in b)
            assert int((distance_km(la, lo, part[0], part[1]) < r).sum()) == want
    assert box_around(88.5, 0.0, 100.0) is None and box_around(0.0, 179.5, 100.0) is None
    # the terms of a candidate, as the engine computes them, from the box and from all rows
    eng = Engine({})
    eng.assoc.presence = p
    group = [_report(Device(ids[i], lat[i], lon[i]), T0 + 20.0 + 0.2 * k) for k, i in enumerate((3, 4, 5))]
    loc = eng.assoc._locate(group, T0 + 30.0, exclude={g.device_id for g in group})
    import yujing.evidence as ev_mod

    boxed = eng.assoc._fraction_terms(loc, group, T0 + 30.0)
    real = ev_mod.box_around
    ev_mod.box_around = lambda *a: None  # every row
    try:
        assert eng.assoc._fraction_terms(loc, group, T0 + 30.0) == boxed
    finally:
        ev_mod.box_around = real


def test_the_locators_silent_devices_read_near_its_centre_give_the_same_location():
    """The locator uses the 64 silent devices nearest its search centre; read from a box
    around the centre (when they lie within it) or from every row, the location is the
    same, for a group among a million-like crowd and for one in an empty corner (there
    the box holds too few and every row is read)."""
    import yujing.evidence as ev_mod

    ids, lat, lon = _still_phones(200_000, 43, half_deg=3.0)
    eng = Engine({})
    eng.assoc.presence.note_heartbeats(ids, lat, lon, T0, ready=np.arange(len(ids)) % 5 != 0,
                                       every_s=np.full(len(ids), 600.0))
    d = distance_km(lat[7], lon[7], lat, lon)
    city = [7] + [int(i) for i in np.argsort(d)[1:300] if d[i] > 3.2][:2]
    far = [Device(f"far{k}", LAT0 + 8.0 + 0.05 * k, LON0 + 8.0 - 0.04 * k) for k in range(3)]
    for group in ([_report(Device(ids[i], lat[i], lon[i]), T0 + 29.0 + 0.1 * k) for k, i in enumerate(city)],
                  [_report(dv, T0 + 29.0 + 0.3 * k) for k, dv in enumerate(far)]):
        near = eng.assoc._locate(group, T0 + 31.0, exclude={g.device_id for g in group})
        real = ev_mod.box_around
        ev_mod.box_around = lambda *a: None  # every row
        try:
            full = eng.assoc._locate(group, T0 + 31.0, exclude={g.device_id for g in group})
        finally:
            ev_mod.box_around = real
        assert (near.latitude, near.longitude, near.depth_km, near.origin_time_s, near.n_silent_violations) == (
            full.latitude, full.longitude, full.depth_km, full.origin_time_s, full.n_silent_violations)


def test_a_large_event_is_sized_from_an_even_spread_of_its_devices():
    """An event of 8,000 phones is sized from ``MAX_SIZE_DEVICES`` of them (the alert path
    solved the magnitude over a burst's 45,000 every step): an even spread in the order
    they joined, near and far, each with all its phases, the same set every time; and the
    magnitude within 0.05 of the one solved over every device."""
    from yujing.associate import MAX_SIZE_DEVICES, Associator
    from yujing.event import Event
    from yujing.locate import Location
    from yujing.magnitude import local_magnitude
    from yujing.sizing import size_event

    rng = np.random.default_rng(11)
    n, depth, m_true = 8_000, 10.0, 6.2
    r = 150.0 * np.sqrt(rng.uniform(0.0, 1.0, n))
    az = rng.uniform(0.0, 2 * np.pi, n)
    lat = LAT0 + r * np.cos(az) / KM_PER_DEG
    lon = LON0 + r * np.sin(az) / (KM_PER_DEG * np.cos(np.radians(LAT0)))
    tab = default_table()
    tp = T0 + tab.p_time_s(r, depth)
    hypo = np.hypot(r, depth)
    # the amplitude of an M6.2 at each distance (ML's attenuation), scattered by 0.3 units,
    # read over a minute: complete
    wa = 10.0 ** (m_true - local_magnitude(1.0, hypo) + rng.normal(0.0, 0.3, n))
    order = np.argsort(tp)
    picks, later = {}, {}
    for i in order.tolist():
        t = Trigger(device_id=f"p{i}", latitude=float(lat[i]), longitude=float(lon[i]), onset_time_s=float(tp[i]),
                    issued_at_s=float(tp[i]) + 60.0, window_s=60.0, pga_gal=5.0, pgv_cm_s=0.1, pd_cm=0.0,
                    wa_horizontal_nm=float(wa[i]), wa_vertical_nm=float(wa[i]) / 2, noise_wa_nm=1.0)
        picks[t.device_id] = t
        if i % 3 == 0:  # a later phase with a somewhat larger amplitude
            later[t.device_id] = msgspec.structs.replace(t, onset_time_s=t.onset_time_s + 5.0,
                                                         wa_horizontal_nm=float(wa[i]) * 1.2)
    loc = Location(latitude=LAT0, longitude=LON0, depth_km=depth, origin_time_s=T0, misfit=0.0, rms_s=0.1,
                   horizontal_error_km=1.0, is_s=np.zeros(0, bool), residual_s=np.zeros(0), n_silent_violations=0)
    ev = Event("yjT", loc, picks, later)
    chosen = Associator._size_set(ev)
    devices = {t.device_id for t in chosen}
    assert len(devices) == MAX_SIZE_DEVICES
    assert chosen == Associator._size_set(ev)
    # each chosen device with all its phases
    assert len(chosen) == MAX_SIZE_DEVICES + sum(d in later for d in devices)
    assert all((d in later) == any(t is later.get(d) for t in chosen) for d in devices)
    # near and far, evenly: the chosen distances' quartiles match all devices'
    rr = np.array([r[int(d[1:])] for d in devices])
    assert np.allclose(np.percentile(rr, [10, 50, 90]), np.percentile(r, [10, 50, 90]), rtol=0.08)
    m_all, _ = size_event(loc, list(picks.values()) + list(later.values()), 2.0, float("nan"))
    m_sub, _ = size_event(loc, chosen, 2.0, float("nan"))
    assert abs(m_all - m_true) < 0.3, m_all
    assert abs(m_sub - m_all) < 0.05, (m_sub, m_all)
    # a small event is sized from everything it has
    small = Event("yjS", loc, dict(list(picks.items())[:500]), {})
    assert Associator._size_set(small) == list(small.picks.values())


def _event_at(picks: list[Trigger], depth_km: float = 10.0):
    """An event located at (LAT0, LON0), ``depth_km``, origin T0, holding ``picks``."""
    from yujing.event import Event
    from yujing.locate import Location

    loc = Location(latitude=LAT0, longitude=LON0, depth_km=depth_km, origin_time_s=T0, misfit=0.0, rms_s=0.0,
                   horizontal_error_km=1.0, is_s=np.zeros(len(picks), bool), residual_s=np.zeros(len(picks)),
                   n_silent_violations=0)
    return Event(event_id="e", location=loc, picks={p.device_id: p for p in picks})


def test_the_wave_must_be_seen_travelling_before_a_first_announcement():
    """``Associator._seen_travelling`` on constructed events: 40 phones within 40 km whose
    onsets follow the P travel times (0.3 s of pick noise) pass; the same phones with
    onsets drawn within 0.2 s, or scattered over 3 s regardless of distance, do not; three
    sparse sites pass when their onsets span 0.5 s (a flash of a few fakes does not)."""
    rng = np.random.default_rng(4)
    eng = Engine({})
    tab = default_table()
    devs = list(network(40, 9, spread_km=28.0).values())
    epi = np.array([float(distance_km(LAT0, LON0, d.latitude, d.longitude)) for d in devs])
    tp = tab.p_time_s(epi, 10.0)
    def seen(ev):
        return eng.assoc._seen_travelling(ev)
    wave = [trig(d, T0 + float(t) + rng.normal(0, 0.3)) for d, t in zip(devs, tp)]
    flash = [trig(d, T0 + 5.0 + rng.uniform(0, 0.2)) for d in devs]
    scattered = [trig(d, T0 + 5.0 + rng.uniform(0, 3.0)) for d in devs]
    assert seen(_event_at(wave))
    assert not seen(_event_at(flash))
    assert not seen(_event_at(scattered))
    # fewer than MOVEOUT_REGRESSION_PICKS: the onsets' spread decides
    three = devs[:3]
    assert seen(_event_at([trig(d, T0 + 3.0 + 0.3 * i) for i, d in enumerate(three)]))
    assert not seen(_event_at([trig(d, T0 + 3.0 + 0.1 * i) for i, d in enumerate(three)]))
    # 0 turns the rule off
    s = msgspec.structs.replace(eng.s, associate=msgspec.structs.replace(eng.s.associate, min_moveout_s=0.0))
    assert Engine({}, s).assoc._seen_travelling(_event_at(flash))
