"""The scenario simulator: phones where people live, triggers as the quake's waves pass."""

from __future__ import annotations

import math
import re
import time

import h3
import numpy as np
import pytest

from yujing import scenarios
from yujing.device.features import EARLY_WINDOW_POST_S
from yujing.geo import distance_km
from yujing.magnitude import local_magnitude
from yujing.records import Trigger
from yujing.sources.simulator import (
    KIND_FALSE,
    KIND_P,
    KIND_S,
    Heartbeat,
    HeartbeatBatch,
    SimSettings,
    _rises_s,
    daily_pseudonym,
    simulate,
    stationary_fraction,
)
from yujing.traveltime import default_table

LUDING = scenarios.get("luding2022")


@pytest.fixture(scope="module")
def luding():
    return simulate(LUDING, 20_000, seed=7)


# ------------------------------------------------------------------ the scenario table


def test_scenario_table_holds_the_issue_events():
    for key, mag in [
        ("wenchuan2008", 7.9),
        ("lushan2013", 6.6),
        ("luxian2021", 6.0),
        ("luding2022", 6.6),
        ("oaxaca2020", 7.4),
        ("ridgecrest2019", 7.1),
        ("kahramanmaras2023", 7.8),
    ]:
        sc = scenarios.get(key)
        assert sc.magnitude == mag
        assert sc.cities and sc.source
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sc.origin_time_iso)
        assert sc.origin_time_iso.startswith(key[-4:])
    assert LUDING.origin_time_iso == "2022-09-05T04:52:19Z"
    assert abs(LUDING.local_hour - (12 + 52 / 60)) < 0.01  # 12:52 CST
    assert scenarios.get("luding") is LUDING
    assert "Chengdu" in [c.name for c in LUDING.cities]
    with pytest.raises(KeyError):
        scenarios.get("atlantis")


def test_custom_scenario():
    sc = scenarios.custom(5.5, 30.0, 104.0, 12.0, origin_time_s=1_650_000_000.0, cities=[("X", 30.1, 104.1)])
    assert sc.magnitude == 5.5 and sc.depth_km == 12.0 and sc.utc_offset_h == 7.0
    assert sc.cities[0].name == "X"
    with pytest.raises(ValueError):
        scenarios.custom(5.0, 95.0, 0.0, 10.0)
    with pytest.raises(ValueError):
        scenarios.custom(5.0, 30.0, 100.0, 900.0)


# ------------------------------------------------------------------ determinism, counts


def test_seeded_runs_are_identical_and_seeds_differ():
    a = simulate(LUDING, 5_000, seed=3)
    b = simulate(LUDING, 5_000, seed=3)
    c = simulate(LUDING, 5_000, seed=4)
    for name in ("latitude", "longitude", "cell", "online", "stationary", "pga_gal", "trig_onset_s", "msg_arrival_s", "hb_arrival_s"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.first_triggers() == b.first_triggers()
    assert not np.array_equal(a.latitude, c.latitude)


@pytest.mark.parametrize("n", [1, 997, 20_000])
def test_n_phones_is_exact(n):
    net = simulate(LUDING, n, seed=1)
    assert net.n_phones == n
    assert len(net.latitude) == len(net.cell) == len(net.online) == n


def test_participation_gives_the_phone_count():
    net = simulate(scenarios.get("ridgecrest2019"), participation=1e-3, seed=1)
    assert net.n_phones == round(1e-3 * net.population)
    assert abs(net.participation - 1e-3) < 1e-6


# ------------------------------------------------------------------ where phones are


def test_phones_are_near_their_towns_and_most_are_in_big_cities(luding):
    net = luding
    pl = net.places
    d = distance_km(pl.latitude[net.place], pl.longitude[net.place], net.latitude, net.longitude)
    sigma = pl.sigma_km[net.place]
    assert np.mean(d <= 3.0 * sigma) > 0.98  # a 2-D Gaussian holds 98.9 % within 3 sigma
    assert np.all(d <= 8.0 * sigma)
    # population weighting: each big place gets its share of phones (multinomial)
    counts = np.bincount(net.place, minlength=len(pl))
    share = pl.population / pl.population.sum()
    big = np.argsort(pl.population)[::-1][:5]
    expected = share[big] * net.n_phones
    assert np.all(np.abs(counts[big] - expected) <= 5.0 * np.sqrt(expected) + 1)
    assert pl.name[big[0]] == "Chengdu"
    # the 5 % most populous places hold most of the phones
    top = np.argsort(pl.population)[::-1][: max(1, len(pl) // 20)]
    assert counts[top].sum() > 0.5 * net.n_phones


def test_every_phone_is_within_the_radius_up_to_the_scatter(luding):
    s = luding.settings
    assert np.quantile(luding.epicentral_km, 0.999) <= s.radius_km + 60.0


def test_near_population_puts_villages_near_the_epicentre(luding):
    rural = luding.places.rural
    assert rural.any()
    d = distance_km(LUDING.latitude, LUDING.longitude, luding.places.latitude[rural], luding.places.longitude[rural])
    assert d.max() <= 100.0
    in20 = luding.places.population[rural][d < 20].sum()
    assert abs(in20 - 39_000) < 1  # no GeoNames town within 20 km: all 39,000 are villagers


# ------------------------------------------------------------------ privacy


def test_messages_carry_only_the_cell_centre_and_a_daily_pseudonym(luding):
    net = luding
    trs = net.first_triggers()
    assert trs
    phone = net.trig_phone[net.msg_trigger[net.msg_update == 0]]
    for t, p in list(zip(trs, phone))[:200]:
        cell = h3.latlng_to_cell(net.latitude[p], net.longitude[p], 7)
        assert h3.int_to_str(int(net.cell[p])) == cell
        assert (t.latitude, t.longitude) == pytest.approx(h3.cell_to_latlng(cell), abs=1e-12)
        assert (t.latitude, t.longitude) != (net.latitude[p], net.longitude[p])
        assert re.fullmatch(r"[0-9a-f]{16}", t.device_id)
    ids = {t.device_id for t in trs}
    assert len(ids) == len(set(phone.tolist()))  # one pseudonym per phone


def test_pseudonyms_rotate_daily():
    secret = bytes(range(16))
    a = daily_pseudonym(secret, "2022-09-05")
    assert a == daily_pseudonym(secret, "2022-09-05")
    assert a != daily_pseudonym(secret, "2022-09-06")
    assert a != daily_pseudonym(bytes(16), "2022-09-05")


def test_a_span_across_midnight_utc_rotates_the_pseudonym():
    midnight = 1_662_336_000.0  # 2022-09-05 00:00:00 UTC
    sc = scenarios.custom(6.5, 29.59, 102.08, 16.0, origin_time_s=midnight - 20.0)
    net = simulate(sc, 10_000, seed=2)
    s = net.settings
    sent = net.trig_onset_true_s[net.msg_trigger] + net.trig_window_s[net.msg_trigger] + net.msg_update * s.update_interval_s
    ids: dict[tuple[int, bool], set] = {}
    for t, ph, after in zip(net.trigger_messages(), net.trig_phone[net.msg_trigger].tolist(), (sent >= midnight).tolist()):
        ids.setdefault((ph, after), set()).add(t.device_id)
    assert all(len(v) == 1 for v in ids.values())  # one pseudonym per phone and day
    both = [ph for ph, after in ids if after and (ph, False) in ids]
    assert both
    assert all(ids[(ph, False)] != ids[(ph, True)] for ph in both)


# ------------------------------------------------------------------ behaviour


def test_stationary_share_follows_the_local_hour():
    assert stationary_fraction(3.0) == pytest.approx(0.90)
    assert stationary_fraction(15.0) == pytest.approx(0.65)
    night = simulate(scenarios.get("luxian2021"), 20_000, seed=1)  # 04:33 local
    day = simulate(LUDING, 20_000, seed=1)  # 12:52 local
    f_night = night.stationary.sum() / night.online.sum()
    f_day = day.stationary.sum() / day.online.sum()
    assert f_night > 0.85 and f_day < 0.72
    assert abs(night.online.mean() - 0.9) < 0.01


def test_false_trigger_rate_is_close_to_configured():
    # a quake too small to trigger anyone: every trigger is a false one
    sc = scenarios.custom(2.0, 30.0, 104.0, 60.0)
    s = SimSettings(false_triggers_per_day_moving=24.0, false_triggers_per_day_stationary=2.4, pre_s=300.0, post_s=300.0)
    net = simulate(sc, 20_000, seed=5, settings=s)
    assert (net.trig_kind != KIND_FALSE).sum() == 0
    span_day = (net.end_s - net.start_s) / 86400.0
    ph = net.trig_phone
    for still, rate in ((False, 24.0), (True, 2.4)):
        n_phones = ((net.stationary == still) & net.online).sum()
        expected = n_phones * rate * span_day
        got = (net.stationary[ph] == still).sum()
        assert abs(got - expected) <= 5.0 * math.sqrt(expected), (still, got, expected)
    assert not (~net.online[ph]).any()
    onset = net.trig_onset_true_s
    assert onset.min() >= net.start_s and onset.max() <= net.end_s


def test_default_false_trigger_rate_is_the_issue_target():
    s = SimSettings()
    assert s.false_triggers_per_day_moving <= 1.0 and s.false_triggers_per_day_stationary <= 1.0


# ------------------------------------------------------------------ the quake


def test_p_onsets_follow_iasp91_from_the_true_hypocentre_within_the_pick_errors(luding):
    net, s = luding, luding.settings
    p = net.trig_kind == KIND_P
    assert p.sum() > 20
    ph = net.trig_phone[p]
    epi = distance_km(LUDING.latitude, LUDING.longitude, net.latitude[ph], net.longitude[ph])
    tp = LUDING.origin_time_s + default_table().p_time_s(epi, LUDING.depth_km)
    true_onset = net.trig_onset_s[p] - net.clock_offset_s[ph]
    resid = true_onset - tp
    lo = -(5.0 - s.pick_bias) * s.pick_sigma_weak_s
    hi = (5.0 + s.pick_bias) * s.pick_sigma_weak_s
    assert resid.min() >= lo and resid.max() <= hi
    assert abs(np.median(resid)) <= s.pick_sigma_weak_s
    # phones with good clocks report onsets within the pick error plus a few clock sigmas
    good = np.abs(net.clock_offset_s[ph]) < 5 * s.clock_sigma_s
    assert np.all(np.abs(net.trig_onset_s[p][good] - tp[good]) <= hi + 5 * s.clock_sigma_s)
    # S-triggered phones pick the S arrival
    sk = net.trig_kind == KIND_S
    if sk.any():
        ps = net.trig_phone[sk]
        r = net.trig_onset_true_s[sk] - net.s_arrival_s[ps]
        assert np.abs(r).max() <= hi


def test_more_phones_trigger_near_the_epicentre(luding):
    net = luding
    still = net.stationary
    det = net.detected > 0
    near = still & (net.epicentral_km < 40)
    mid = still & (net.epicentral_km >= 80) & (net.epicentral_km < 200)
    far = still & (net.epicentral_km >= 300)
    f_near, f_mid, f_far = det[near].mean(), det[mid].mean(), det[far].mean()
    assert f_near > 0.8
    assert f_near > f_mid > f_far
    assert f_far < 0.02
    # P triggers are near, S triggers farther out
    kp = net.detected == KIND_P
    ks = net.detected == KIND_S
    assert np.median(net.epicentral_km[kp]) < np.median(net.epicentral_km[ks])
    # moving phones mostly cannot detect
    moving = net.online & ~net.stationary & (net.epicentral_km < 40)
    if moving.sum() >= 20:
        assert det[moving].mean() < 0.3


def test_amplitudes_tell_the_engine_the_scenario_magnitude(luding):
    """The final update of each P-triggered phone has seen the S wave whole: the IASPEI ML
    from its Wood-Anderson amplitude at the true hypocentral distance is the magnitude."""
    net = luding
    last = {}
    for r in range(len(net.msg_arrival_s)):
        j = int(net.msg_trigger[r])
        if net.trig_kind[j] == KIND_P:
            last[j] = max(last.get(j, -1), r if net.msg_update[r] > net.msg_update[last.get(j, r)] else last.get(j, r))
    rows = np.array(sorted(last.values()))
    trs = net._triggers(rows)
    ph = net.trig_phone[net.msg_trigger[rows]]
    complete = np.array([t.onset_time_s + t.window_s for t in trs]) - net.clock_offset_s[ph] > net.s_arrival_s[ph] + 25
    hypo = np.hypot(net.epicentral_km[ph], LUDING.depth_km)
    ml = local_magnitude([t.wa_horizontal_nm for t in trs], hypo)[complete]
    assert len(ml) > 10
    assert abs(np.median(ml) - LUDING.magnitude) < 0.15
    assert all(t.wa_horizontal_nm > 2 * t.noise_wa_nm for t in np.array(trs, dtype=object)[complete])


def test_updates_grow_and_come_once_a_second(luding):
    net = luding
    by_trig: dict[int, list[Trigger]] = {}
    for t, r in zip(net.trigger_messages(), range(len(net.msg_arrival_s))):
        by_trig.setdefault(int(net.msg_trigger[r]), []).append(t)
    s = net.settings
    n_checked = 0
    for j, msgs in by_trig.items():
        if net.trig_kind[j] == KIND_FALSE:
            continue
        assert [m.update for m in msgs] == sorted(m.update for m in msgs)  # arrival order per device
        assert len({m.onset_time_s for m in msgs}) == 1
        for a, b in zip(msgs, msgs[1:]):
            assert b.window_s > a.window_s
            assert b.pga_gal >= a.pga_gal and b.pgv_cm_s >= a.pgv_cm_s and b.wa_horizontal_nm >= a.wa_horizontal_nm
        w = [m.window_s for m in msgs]
        # the first message may be lost: whole update intervals after the trigger's window
        k = (w[0] - net.trig_window_s[j]) / s.update_interval_s
        assert k > -1e-9 and abs(k - round(k)) < 1e-9 and w[-1] <= s.update_duration_s + 1e-9
        assert net.trig_window_s[j] in (s.early_window_s, s.trigger_window_s)
        n_checked += 1
    assert n_checked > 20
    k_max = int((s.update_duration_s - s.trigger_window_s) / s.update_interval_s) + 1
    assert net.msg_update.max() == k_max - 1


def test_thrifty_updates_send_fewer_messages():
    full = simulate(LUDING, 5_000, seed=2)
    thrifty = simulate(LUDING, 5_000, seed=2, settings=SimSettings(update_min_growth=0.2))
    assert len(thrifty.msg_arrival_s) < 0.7 * len(full.msg_arrival_s)
    np.testing.assert_array_equal(full.trig_onset_s, thrifty.trig_onset_s)


# ------------------------------------------------------------------ the stream


def test_messages_come_in_arrival_order_and_never_before_their_data(luding):
    net = luding
    last = -math.inf
    kinds = {Trigger: 0, HeartbeatBatch: 0}
    for m in net.messages(heartbeats="batch"):
        t = m.issued_at_s if isinstance(m, Trigger) else m.arrival_time_s
        assert t >= last
        last = t
        kinds[type(m)] += 1
        if isinstance(m, HeartbeatBatch):
            assert np.all(m.arrivals_s <= m.arrival_time_s)
            assert m.ready.dtype == bool
    assert kinds[Trigger] == len(net.msg_arrival_s)
    assert kinds[HeartbeatBatch] > 100
    # causality: a message arrives after the data it reports were recorded
    s = net.settings
    rows = np.arange(len(net.msg_arrival_s))
    recorded = net.trig_onset_true_s[net.msg_trigger] + net.trig_window_s[net.msg_trigger] + net.msg_update * s.update_interval_s
    assert np.all(net.msg_arrival_s[rows] > recorded)


def test_heartbeats_one_by_one_and_liveness(luding):
    net = luding
    s = net.settings
    span = net.end_s - net.start_s
    per_phone = np.bincount(net.hb_phone, minlength=net.n_phones)
    assert per_phone[~net.online].sum() == 0
    expected = span / s.heartbeat_interval_s
    assert abs(per_phone[net.online].mean() - expected * (1 - s.loss_fraction)) < 0.1
    hbs = [m for m, _ in zip((m for m in net.messages(heartbeats="each") if isinstance(m, Heartbeat)), range(500))]
    assert len(hbs) == 500
    for h in hbs[:50]:
        assert re.fullmatch(r"[0-9a-f]{16}", h.device_id) and h.cell.startswith("87")
    live = net.live(LUDING.origin_time_s)
    assert 0.97 * net.online.sum() <= len(live) <= net.online.sum()
    assert np.all(live.last_seen_s <= LUDING.origin_time_s)
    cells = live.by_cell()
    assert cells["n_phones"].sum() == live.ready.sum()
    assert len(cells["cell"]) < len(live)


def test_city_table_for_warning_times(luding):
    rows = {c["name"]: c for c in luding.cities()}
    chengdu = rows["Chengdu"]
    assert 220 < chengdu["epicentral_km"] < 232  # CENC: 226 km
    assert chengdu["s_after_origin_s"] > chengdu["p_after_origin_s"] > 0
    assert rows["Luding (Luqiao)"]["mmi"] > chengdu["mmi"]


def test_subduction_scenario_uses_its_model():
    net = simulate(scenarios.get("oaxaca2020"), 3_000, seed=1)
    assert net.gmpe.startswith("bchydro")


# ------------------------------------------------------------------ speed


def test_100k_phones_simulate_in_a_few_seconds():
    simulate(LUDING, 1_000, seed=0)  # loads the city table once
    t = time.perf_counter()
    net = simulate(LUDING, 100_000, seed=11)
    first = net.first_triggers()
    elapsed = time.perf_counter() - t
    assert net.n_phones == 100_000 and len(first) > 1000
    assert elapsed < 8.0, f"{elapsed:.1f} s"


def test_early_sends_follow_the_measured_shares():
    """The early model's sends: only P triggers, at early_window_s, about the measured share
    of them; none when the table is empty, and then every trigger keeps its full window."""
    sc = scenarios.get("luding2022")
    net = simulate(sc, 50_000, seed=3)
    s = net.settings
    early = net.trig_window_s == s.early_window_s
    assert np.all(net.trig_kind[early] == KIND_P)
    assert np.all(net.trig_window_s[~early] == s.trigger_window_s)
    # per amplitude bin, the share sent early is the table's (4 binomial sigmas)
    p = net.trig_kind == KIND_P
    rise = _rises_s(sc.magnitude)[0]
    seen = s.p_to_s_pga * net.pga_gal[net.trig_phone[p]] * (0.3 + 0.7 * min(1.0, EARLY_WINDOW_POST_S / rise))
    edges = [lo for lo, _ in s.early_pass_by_peak_gal] + [math.inf]
    checked = 0
    for (lo, frac), hi in zip(s.early_pass_by_peak_gal, edges[1:]):
        m = (seen >= lo) & (seen < hi)
        n = int(m.sum())
        if n >= 30:
            assert abs(early[p][m].mean() - frac) <= 4.0 * math.sqrt(frac * (1.0 - frac) / n) + 1.0 / n, (lo, n)
            checked += 1
    assert checked >= 2
    off = simulate(sc, 50_000, seed=3, settings=SimSettings(early_pass_by_peak_gal=()))
    assert np.all(off.trig_window_s == s.trigger_window_s)
    # the same phones trigger at the same onsets: only the send time moves
    np.testing.assert_array_equal(off.trig_onset_true_s, net.trig_onset_true_s)
    with pytest.raises(ValueError, match="early_pass_by_peak_gal"):
        SimSettings(early_pass_by_peak_gal=((10.0, 0.5), (5.0, 0.5)))
    with pytest.raises(ValueError, match="early_window_s"):
        SimSettings(early_window_s=2.0)


def test_the_strength_gate_drops_the_strongest_windows():
    """With the agent's strength gate set low, the phones whose window peaks above it send
    nothing; with it off, all send. The rest of the simulation does not change."""
    sc = scenarios.get("luding2022")
    base = simulate(sc, 20_000, seed=4, settings=SimSettings(peak_max_gal=math.inf, early_pass_by_peak_gal=()))
    low = simulate(sc, 20_000, seed=4, settings=SimSettings(peak_max_gal=20.0, early_pass_by_peak_gal=()))
    assert base.n_too_strong == 0 and low.n_too_strong > 10
    kept_real = (low.trig_kind != KIND_FALSE).sum()
    assert kept_real == (base.trig_kind != KIND_FALSE).sum() - low.n_too_strong
    # the phones dropped are the strongest of the full run
    gone = np.setdiff1d(base.trig_phone[base.trig_kind != KIND_FALSE], low.trig_phone[low.trig_kind != KIND_FALSE])
    stay = low.trig_phone[low.trig_kind != KIND_FALSE]
    assert len(gone) == low.n_too_strong and base.pga_gal[gone].min() > np.median(base.pga_gal[stay])
    np.testing.assert_array_equal(low.pga_gal, base.pga_gal)
