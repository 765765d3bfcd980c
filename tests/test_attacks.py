"""Attacks on the live service (issue 12, "Device security"), on real service objects and
message time (seeded, no timed assertions). Each prints its figure.

(a) 1,000 fake devices, enrolled (their signatures pass), trigger together in one area;
(b) a real quake's triggers replayed by enrolled fakes an hour later, 2 degrees east;
(c) 100,000 garbage messages (random bytes, bad topics, bad signatures, replays) while a
    real quake is replayed: the quake is still detected, every garbage message is counted.

Where the engine alerts although it should not, the test is a strict xfail with the
measured figure: the signature layer stops forgers and floods; an attacker who enrols many
credentials is stopped by the engine's physics (a: onsets that do not follow the P travel
times are not announced, ``min_moveout_s``). Devices that enrolled themselves less
than ``new_device_s`` (6 h) before do not count toward announcing (b: fakes enrolled that
day); fakes enrolled a day ahead are the measured limit (two strict xfails).
"""

from __future__ import annotations

import asyncio

import h3
import msgspec
import numpy as np
import pytest

from yujing import protocol, scenarios
from yujing.geo import distance_km
from yujing.security import Issuer, Signer
from yujing.service import ManualClock, Service, drive
from yujing.settings import Settings
from yujing.sources.simulator import simulate
from yujing.sources.wire_feed import scenario_wire

PHONES = 20_000


def _run(svc: Service, clock: ManualClock, msgs) -> Service:
    async def go():
        svc.seen_alerts = []
        svc.bus.subscribe("yj.alert.>", lambda s, a: svc.seen_alerts.append(a), critical=True)
        await svc.start()
        drive(svc, clock, msgs)
        await svc.stop()
        return svc

    return asyncio.run(go())


@pytest.fixture(scope="module")
def luding():
    sc = scenarios.get("luding2022")
    return sc, simulate(sc, PHONES, seed=3)


def _devices_of(msgs) -> set[str]:
    return {protocol.decode(t, p).device for _, t, p in msgs}


def _fake_trigger(dev: str, cell: str, onset_s: float, pga_gal: float, update: int = 0, window_s: float = 1.5):
    """A trigger message shaped like a real phone's near a M5-6 (amplitudes in the ranges
    the simulator gives phones 20-50 km away)."""
    w = 2.0 * np.pi * 2.0
    return protocol.TriggerMsg(device=dev, cell=cell, sent_s=onset_s + window_s + 0.1, onset_s=onset_s,
                               window_s=window_s + update, pga_gal=pga_gal, pgv_cm_s=pga_gal / w, pd_cm=pga_gal / w**2,
                               tau_c_s=0.8, snr=30.0, update=update, noise_pd_cm=1e-4, noise_pga_gal=0.5,
                               wa_horizontal_nm=pga_gal / w**2 * 1e7, wa_vertical_nm=pga_gal / w**2 * 1e7, noise_wa_nm=50.0)


def _synchronised_fakes(k_disk: int, within_s: float, settings: Settings | None = None, first: int = 0,
                        lead_s: float = 0.0) -> Service:
    """1,000 enrolled fakes (one credential each, so every signature verifies) in the res-7
    cells within ``k_disk`` rings of one point, heartbeats for a minute, then one onset each
    within ``within_s`` of the others (amplitudes of a felt quake) and 5 updates. Nobody
    else is around. The triggers of all but the ``first`` fakes are held back ``lead_s``
    (so that a few can form an event before the rest join it). Returns the service after
    the attack."""
    rng = np.random.default_rng(12)
    iss = Issuer(bytes(range(32)))
    clock = ManualClock()
    svc = Service(settings=settings, clock=clock, issuer=iss)
    sign = Signer(iss).wire
    centre = h3.latlng_to_cell(30.0, 104.0, 7)
    cells = sorted(h3.grid_disk(centre, k_disk))
    t0 = 1_700_000_000.0
    msgs = []
    for i in range(1000):
        # enrolled a day ahead: not new, so that what refuses them is the physics alone
        iss.enrol(f"fake{i:04d}", t0 - 86_400.0)
    for i in range(1000):
        dev, cell = f"fake{i:04d}", cells[i % len(cells)]
        hb = protocol.HeartbeatMsg(device=dev, cell=cell, sent_s=t0 + rng.uniform(0, 60))
        msgs.append((hb.sent_s + 0.1, *sign("hb", hb)))
    onset = t0 + 120.0
    for i in range(1000):
        dev, cell = f"fake{i:04d}", cells[i % len(cells)]
        on = onset + rng.uniform(0, within_s)
        pga = float(rng.lognormal(np.log(20.0), 0.5))
        held = lead_s if i >= first else 0.0
        for u in range(6):
            m = _fake_trigger(dev, cell, on, pga * (1 + u), update=u)
            msgs.append((m.sent_s + 0.2 + held, *sign("trig", m)))
    msgs.sort(key=lambda m: m[0])
    return _run(svc, clock, msgs)


@pytest.mark.parametrize("k_disk,within_s,first,label", [
    (5, 0.2, 0, "the issue's case: a 25 km wide area, onsets within 0.2 s"),
    (15, 0.5, 0, "a 74 km wide area: the source that fits lies 100 km deep, its travel times span 1 s"),
    (10, 3.0, 0, "a 50 km wide area, onsets scattered over 3 s"),
    (10, 1.0, 9, "a 50 km wide area, onsets within 1 s, 9 fakes' triggers 3 s ahead of the rest"),
    (10, 2.0, 9, "a 50 km wide area, onsets within 2 s, 9 fakes' triggers 3 s ahead of the rest"),
])
def test_a_1000_enrolled_fake_devices_triggering_together_in_one_area(k_disk, within_s, first, label):
    """Fakes enrolled a day ahead, so that what refuses them is the physics alone: no quiet
    phone is around, and a source deep under the area fits their onsets. What gives them
    away is that the onsets do not follow the travel times (the P wave is not seen
    travelling: ``AssociateSettings.min_moveout_s``)."""
    svc = _synchronised_fakes(k_disk, within_s, first=first, lead_s=3.0 if first else 0.0)
    by = svc.rejects.by_reason()
    alerts = len({a.alert_id for a in svc.seen_alerts})
    evs = svc.engine.assoc.events
    print(f"\n(a) 1,000 enrolled fakes, {label}: {svc.stats.accepted['trig']} triggers accepted, rejects {by}, "
          f"events formed {[(len(e.picks), round(e.location.depth_km), round(e.magnitude, 1)) for e in evs]}, "
          f"announced {len(svc.latest)}, alerts caused: {alerts}")
    # nothing was refused at the door: the signatures are good and each fake stays under
    # its own and its cell's trigger limits
    assert by == {}
    assert alerts == 0 and not svc.latest
    # the engine saw them (an event of hundreds of picks, located and sized) and held it
    # back because their onsets do not show the wave moving, not for want of seeing it
    assert evs and max(len(e.picks) for e in evs) >= 500, "the engine never formed the fake event: the test shows nothing"
    assert all(e.version == 0 and not svc.engine.assoc._seen_travelling(e) for e in evs)


def test_a_without_the_moveout_rule_the_fakes_are_announced():
    """The control: the issue's case with ``min_moveout_s = 0`` is an alert (measured
    2026-12-06: an M7.2 45 km deep), so the rule above is what refuses it."""
    s = Settings()
    s = msgspec.structs.replace(s, associate=msgspec.structs.replace(s.associate, min_moveout_s=0.0))
    svc = _synchronised_fakes(5, 0.2, settings=s)
    alerts = len({a.alert_id for a in svc.seen_alerts})
    print(f"\n(a) without the move-out rule: announced {len(svc.latest)}, alerts caused: {alerts}")
    assert alerts >= 1


def _replayed_quake(net, *, enrolled_ago_s: float, fake_quiet: bool, real_phones: int):
    """The Luding quake's messages taken by an attacker and sent again one hour later and 2
    degrees (~190 km) east through pseudonyms of his own ("x..."), each enrolled (through
    the public door: not vouched for) ``enrolled_ago_s`` before the attack begins.
    ``fake_quiet``: the attacker also runs the phones that stay quiet (their heartbeats);
    ``real_phones``: the area attacked has this many real phones ("r<k>...", there all
    day: not new) for each phone of the quake's network, which hear nothing. Returns
    (service, messages)."""
    iss = Issuer(bytes(range(1, 33)))
    clock = ManualClock()
    svc = Service(clock=clock, issuer=iss)
    sign = Signer(iss).wire
    dt, dlon = 3600.0, 2.0
    moved: dict[str, str] = {}
    msgs = []
    talkers = {m.device_id for m in net.messages(heartbeats="none")}
    for arr, topic, payload in scenario_wire(net, heartbeats=True, signer=False):
        m = protocol.decode(topic, payload)
        lat, lon = h3.cell_to_latlng(m.cell)
        cell = moved.get(m.cell)
        if cell is None:
            cell = moved[m.cell] = h3.latlng_to_cell(lat, lon + dlon, protocol.DEVICE_CELL_RES)
        if isinstance(m, protocol.TriggerMsg):
            m2 = msgspec.structs.replace(m, device="x" + m.device[1:], cell=cell, sent_s=m.sent_s + dt,
                                         onset_s=m.onset_s + dt, seq=0)
            msgs.append((arr + dt, *sign("trig", m2)))
            continue
        if fake_quiet or m.device in talkers:
            m2 = msgspec.structs.replace(m, device="x" + m.device[1:], cell=cell, sent_s=m.sent_s + dt, seq=0)
            msgs.append((arr + dt, *sign("hb", m2)))
        for k in range(real_phones):
            # a real phone in the attacked area keeps its own schedule; it never triggered
            m3 = msgspec.structs.replace(m, device=f"r{k}" + m.device[1:], cell=cell, sent_s=m.sent_s + dt + 0.01 * k, seq=0)
            msgs.append((arr + dt + 0.001 + 0.01 * k, *sign("hb", m3)))
    msgs.sort(key=lambda x: x[0])
    t_attack = msgs[0][0]
    for d in sorted({protocol.decode(t, p).device for _, t, p in msgs}):
        if d.startswith("x"):
            iss.enrol(d, t_attack - enrolled_ago_s)
    _run(svc, clock, msgs)
    return svc, msgs


def _figures(label: str, svc: Service, msgs) -> int:
    events = [u for u in svc.latest.values() if not u.retracted]
    alerts = len({a.alert_id for a in svc.seen_alerts})
    fakes = len({protocol.decode(t, p).device for _, t, p in msgs} & set(svc.issuer.enrolled))
    print(f"\n{label}: {fakes} enrolled fakes; rejects {svc.rejects.by_reason()}; events announced {len(events)} "
          f"({', '.join(f'M{u.magnitude:.1f} n={u.n_devices}' for u in events)}); alerts caused: {alerts}")
    assert svc.rejects.total == 0  # every message passes the door: the engine is the defence
    return alerts


def test_b_a_real_quake_replayed_by_fakes_enrolled_that_day(luding):
    """Fakes that enrolled themselves an hour before the attack: a physically perfect
    quake, validly signed, that no established device felt. Not announced (the engine
    counts only devices older than ``new_device_s`` toward announcing)."""
    sc, net = luding
    svc, msgs = _replayed_quake(net, enrolled_ago_s=3600.0, fake_quiet=True, real_phones=0)
    assert _figures("(b) Luding replayed +1 h, +2 deg east by fakes enrolled 1 h before", svc, msgs) == 0
    # the engine did form the fake quake (located and sized from dozens of picks) and kept it
    # unannounced: the novelty rule refused it, not a failure to see it
    evs = svc.engine.assoc.events
    assert evs and max(len(e.picks) for e in evs) >= 50, "the engine never formed the fake event: the test shows nothing"
    assert all(e.version == 0 for e in evs)


@pytest.mark.xfail(strict=True, reason=(
    "measured: fakes enrolled a day ahead replaying the quake's triggers into an area where four real phones "
    "live for each phone of the quake's network cause 1 alert (M6.9, 111 picks; 2 before undecided groups "
    "waited). The event forms on its first 3 picks with 4 triggered against 4.5 quiet phones due and 16.5 not "
    "yet due: were those all to stay quiet it would hold 0.16 of the phones around, above the retraction "
    "threshold (0.125), so it does not wait, and later it holds ~0.2. The attack sits at the thresholds by "
    "construction (one fake per four real phones): waiting for the full 0.25 refused it with one first group "
    "and not with another. Silence bounds such an attack only where real phones outnumber the fakes well"))
def test_b_pre_enrolled_fakes_into_an_area_with_real_phones(luding):
    """Fakes enrolled a day ahead (established) replaying the quake's triggers into an area
    where real phones live, four for each phone of the quake's network: those phones stay
    silent; must that silence refuse the event?"""
    sc, net = luding
    svc, msgs = _replayed_quake(net, enrolled_ago_s=86_400.0, fake_quiet=False, real_phones=4)
    assert _figures("(b) pre-enrolled fakes, area with 4x real phones", svc, msgs) == 0


@pytest.mark.xfail(strict=True, reason=(
    "the limit of this defence, measured: fakes enrolled a day ahead, replaying the quake's triggers and "
    "heartbeats into an area with no other phones (an attacker running the whole network there), are an "
    "earthquake by every test the engine can make (1 alert). What bounds it is the cost of enrolling and "
    "running thousands of fakes for a day: enrolment limits per address (yujing serve --enrol-per-address: "
    "1,000 established fakes an address a day at the default, so 19 addresses for these), an attestation (not built), "
    "and fixed sensors nearby as a cross-check"))
def test_b_pre_enrolled_fakes_into_an_area_without_phones(luding):
    sc, net = luding
    svc, msgs = _replayed_quake(net, enrolled_ago_s=86_400.0, fake_quiet=True, real_phones=0)
    assert _figures("(b) pre-enrolled fakes, area without other phones", svc, msgs) == 0


def test_c_a_flood_of_garbage_while_a_real_quake_is_replayed(luding):
    """100,000 garbage messages among the Luding quake's: the quake is still detected and
    alerted, nothing raises, and every garbage message is counted under a reason."""
    sc, net = luding
    rng = np.random.default_rng(7)
    clock = ManualClock()
    svc = Service(clock=clock)
    real = list(scenario_wire(net))
    t_lo, t_hi = real[0][0], real[-1][0]
    cell = h3.latlng_to_cell(sc.latitude, sc.longitude, 7)
    other = Signer(Issuer(bytes(32)))  # an attacker's own issuer: a key id the server does not know
    garbage = []
    kinds = {"random": 0, "bad_topic": 0, "forged": 0, "other_key": 0, "replay": 0, "unsigned": 0}
    for i in range(100_000):
        arr = float(rng.uniform(t_lo, t_hi))
        k = i % 6
        if k == 0:
            garbage.append((arr, protocol.topic_for("trig", cell), rng.bytes(int(rng.integers(0, 300)))))
            kinds["random"] += 1
        elif k == 1:
            topic = ["yj/v1/trig", "yj/v9/trig/x", "x/y/z/w", "yj/v1/boom/" + cell, "", "yj/v1/trig/" + cell + "/x"][(i // 6) % 6]
            garbage.append((arr, topic, real[i % len(real)][2]))
            kinds["bad_topic"] += 1
        elif k == 2:  # a real message with one bit of its body flipped: the tag fails
            _, t, p = real[int(rng.integers(len(real)))]
            b = bytearray(p)
            pos = int(rng.integers(len(b) - 16, len(b)))  # in the tag: still decodes
            b[pos] ^= 1 << int(rng.integers(8))
            garbage.append((arr, t, bytes(b)))
            kinds["forged"] += 1
        elif k == 3:
            m = _fake_trigger(f"g{i}", cell, arr - 2.0, 50.0)
            garbage.append((arr, *other.wire("trig", m)))
            kinds["other_key"] += 1
        elif k == 4:  # a real message sent again after the original
            j = int(rng.integers(len(real)))
            a, t, p = real[j]
            garbage.append((max(arr, a + 0.001), t, p))
            kinds["replay"] += 1
        else:
            m = _fake_trigger(f"u{i}", cell, arr - 2.0, 50.0)
            garbage.append((arr, protocol.topic_for("trig", cell), protocol.encode(m)))
            kinds["unsigned"] += 1
    mixed = sorted(real + garbage, key=lambda m: m[0])
    _run(svc, clock, mixed)
    by = svc.rejects.by_reason()
    found = [u for u in svc.latest.values() if not u.retracted
             and distance_km(u.latitude, u.longitude, sc.latitude, sc.longitude) < 30 and abs(u.magnitude - sc.magnitude) < 0.7]
    print(f"\n(c) {len(garbage):,} garbage messages ({kinds}) among {len(real):,} real: rejects {by}; "
          f"quake found: {bool(found)}, alerts {len({a.alert_id for a in svc.seen_alerts})}")
    assert svc.rejects.total == len(garbage), (svc.rejects.total, len(garbage), by)
    assert "decode_error" not in by and "engine_error" not in by
    assert by.get("unsigned") == kinds["unsigned"] and by.get("unknown_credential") == kinds["other_key"]
    assert by.get("replayed", 0) + by.get("seq_too_old", 0) == kinds["replay"]
    assert svc.stats.accepted["trig"] + svc.stats.accepted["hb"] == len(real)
    assert found and svc.seen_alerts


def test_d_fakes_enrolled_that_day_cannot_inflate_a_real_quake(luding):
    """Fakes that enrolled themselves an hour ago join a real quake once its origin is
    public: each copies a real phone's triggers (its cell and onsets fit the travel times)
    with amplitudes 30 times larger. The quake's magnitude, and so its alert areas, must
    be what its established phones say."""
    sc, net = luding

    def run(with_fakes: bool):
        iss = Issuer(bytes(range(1, 33)))
        clock = ManualClock()
        svc = Service(clock=clock, issuer=iss)
        sign = Signer(iss).wire
        msgs = []
        fakes = set()
        for arr, topic, payload in scenario_wire(net, heartbeats=True, signer=False):
            m = protocol.decode(topic, payload)
            kind = "trig" if isinstance(m, protocol.TriggerMsg) else "hb"
            msgs.append((arr, *sign(kind, msgspec.structs.replace(m, seq=0))))
            if with_fakes and kind == "trig" and m.device[-1] in "02468ace":  # half the phones, seeded
                f = msgspec.structs.replace(m, device="x" + m.device[1:], seq=0, pga_gal=m.pga_gal * 30,
                                            pgv_cm_s=m.pgv_cm_s * 30, pd_cm=m.pd_cm * 30,
                                            wa_horizontal_nm=m.wa_horizontal_nm * 30, wa_vertical_nm=m.wa_vertical_nm * 30)
                msgs.append((arr + 0.001, *sign("trig", f)))
                fakes.add(f.device)
        for d in fakes:
            iss.enrol(d, msgs[0][0] - 3600.0)
        _run(svc, clock, msgs)
        ev = [u for u in svc.latest.values() if not u.retracted]
        return max(ev, key=lambda u: u.n_devices), len(fakes)

    clean, _ = run(False)
    attacked, n_fakes = run(True)
    print(f"\n(d) {n_fakes} fakes enrolled 1 h before, 30x amplitudes on a real quake: final M{attacked.magnitude:.2f} "
          f"(without them M{clean.magnitude:.2f}), {attacked.n_devices} P picks (was {clean.n_devices})")
    assert attacked.n_devices > clean.n_devices, "the fakes never joined the quake: the test shows nothing"
    assert abs(attacked.magnitude - clean.magnitude) <= 0.1
