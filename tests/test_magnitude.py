"""Magnitude scalings: anchor points of the published formulas and their inversion."""

from __future__ import annotations

import math

import msgspec
import numpy as np
import pytest

from yujing.magnitude import (
    P_TO_S_LOG10,
    censored_magnitude,
    event_magnitude,
    local_magnitude,
    near_source_h_km,
    pd_magnitude,
    pgv_moment_magnitude,
    si_midorikawa_log_pgv,
)


def test_local_magnitude_anchor():
    # Richter's definition as IASPEI restates it: ML 3 is 1 mm on a Wood-Anderson
    # (gain 2080) at 100 km, i.e. 1e6/2080 nm of ground-equivalent amplitude.
    assert local_magnitude(1e6 / 2080, 100.0) == pytest.approx(3.0, abs=0.01)
    # ten times the amplitude is one magnitude unit more
    assert local_magnitude(1e7 / 2080, 100.0) - local_magnitude(1e6 / 2080, 100.0) == pytest.approx(1.0)


@pytest.mark.parametrize("mw", [4.0, 5.5, 7.0, 7.4, 8.0])
@pytest.mark.parametrize("hypo_km", [30.0, 120.0, 400.0])
def test_pgv_magnitude_inverts_si_midorikawa(mw, hypo_km):
    depth = 20.0
    half_len = 0.5 * 10 ** (0.69 * mw - 3.22)
    x = max(hypo_km - half_len, depth)
    pgv = 10 ** si_midorikawa_log_pgv(mw, x, depth)
    est = pgv_moment_magnitude([pgv], [hypo_km], depth)[0]
    if hypo_km < half_len:
        # a station along the rupture itself (M7.4 and M8 at 30 km): no estimate
        assert np.isnan(est)
    else:
        assert est == pytest.approx(mw, abs=0.02)


def test_pgv_magnitude_does_not_saturate_at_m7():
    depth = 20.0
    ms = [7.0, 7.4, 7.8]
    pgvs = [10 ** si_midorikawa_log_pgv(m, 150.0 - 0.5 * 10 ** (0.69 * m - 3.22), depth) for m in ms]
    est = pgv_moment_magnitude(pgvs, [150.0] * 3, depth)
    assert np.all(np.diff(est) > 0.3)


def _arrivals(hypo, seen_after_s_s):
    """Predicted P/S arrival times (origin 0) and how far each device has seen."""
    tp = hypo / 7.0
    ts = hypo / 4.0
    return ts + seen_after_s_s, tp, ts


def test_event_magnitude_switches_to_pgv_for_large_quakes():
    depth = 20.0
    hypo = np.array([80.0, 150.0, 220.0, 300.0])
    mw = 7.4
    half = 0.5 * 10 ** (0.69 * mw - 3.22)
    pgv = 10 ** si_midorikawa_log_pgv(mw, np.maximum(hypo - half, depth), depth)
    # a saturated ML of ~6.8
    wa = 10 ** (6.8 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    seen, tp, ts = _arrivals(hypo, 120.0)
    m, sigma = event_magnitude(wa, pgv, hypo, depth, seen, tp, ts, [True] * 4, 7.0)
    assert m == pytest.approx(7.4, abs=0.05)
    assert 0 < sigma < 0.5
    # and stays with ML for a moderate one
    wa5 = 10 ** (5.0 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    m5, _ = event_magnitude(wa5, pgv / 100, hypo, depth, seen, tp, ts, [True] * 4, 5.0)
    assert m5 == pytest.approx(5.0, abs=0.02)


def test_growing_amplitudes_are_lower_bounds_not_estimates():
    """Devices still inside a large rupture's S window only say 'at least': the network
    magnitude must not be dragged down to their current values."""
    hypo = np.array([60.0, 120.0, 200.0])
    ml_now = np.array([6.9, 6.0, 5.8])  # last two still growing
    wa = 10 ** (ml_now - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    tp, ts = hypo / 7.0, hypo / 4.0
    seen = np.array([ts[0] + 120.0, ts[1] + 2.0, ts[2] + 1.0])
    m, _ = event_magnitude(wa, wa * 0, hypo, 20.0, seen, tp, ts, [True] * 3, float("nan"))
    assert m >= 6.85
    # counted as estimates they would have pulled it to the median
    assert float(np.median(ml_now)) < 6.1


def test_noise_level_devices_bound_from_above():
    """Ringdal (1976): a complete record at noise level caps the magnitude."""
    m_det_only, _ = censored_magnitude([5.6])
    m_with_bounds, _ = censored_magnitude([5.6], upper=[5.0, 5.1])
    assert m_with_bounds < m_det_only - 0.2
    # a bound far below is one bad site, not a reason to give up the detection
    m_far, _ = censored_magnitude([5.6, 5.5, 5.7], upper=[3.0])
    assert m_far == pytest.approx(5.6, abs=0.15)


def test_p_only_devices_stand_for_the_s_amplitude():
    hypo = np.array([100.0])
    tp, ts = hypo / 7.0, hypo / 4.0
    wa = 10 ** (4.2 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    seen = tp + 5.0  # 5 s of P, S not yet there
    m, _ = event_magnitude(wa, wa * 0, hypo, 20.0, seen, tp, ts, [True], 5.0)
    assert m == pytest.approx(4.2 + P_TO_S_LOG10, abs=0.02)


@pytest.mark.parametrize("value", [-3.0, 0.0, 11.0, 40.0])
def test_absurd_station_magnitudes_do_not_crash(value):
    m, sigma = censored_magnitude([value], upper=[value - 1], lower=[value + 1])
    assert 1.0 <= m <= 9.5 and sigma > 0


def test_p_only_devices_scale_pgv_before_the_moment_magnitude():
    """P_TO_S_LOG10 is an amplitude ratio: it multiplies PGV, it is not added to Mw."""
    hypo = np.array([60.0, 90.0, 120.0])
    depth, mw = 20.0, 7.3
    half = 0.5 * 10 ** (0.69 * mw - 3.22)
    pgv_s = 10 ** si_midorikawa_log_pgv(mw, np.maximum(hypo - half, depth), depth)
    pgv_p = pgv_s / 10**P_TO_S_LOG10  # what the P wave shows
    wa = 10 ** (6.9 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09)) / 10**P_TO_S_LOG10
    tp, ts = hypo / 7.0, hypo / 4.0
    seen = tp + 60.0  # plenty of P (not S): complete as P for an M7 rupture? not yet -
    seen = np.minimum(seen, ts - 0.1)  # P only
    m, _ = event_magnitude(wa, pgv_p, hypo, depth, seen, tp, ts, [True] * 3, float("nan"))
    assert m == pytest.approx(mw, abs=0.1)


def test_many_lower_bounds_are_not_read_at_their_largest():
    """500 phones still seeing a growing amplitude: the largest of 500 station scatters
    lies ~1 unit above the rest; the network's lower bound must not follow it."""
    rng = np.random.default_rng(3)
    lo = 6.0 + 0.35 * rng.standard_normal(500)
    m, _ = censored_magnitude([], lower=lo)
    assert 6.2 <= m <= 6.5
    few = [5.0, 5.4, 5.9]
    assert censored_magnitude([], lower=few)[0] == pytest.approx(5.9)


def test_pgv_next_to_the_fault_says_nothing_about_mw():
    """Within a few km of a large rupture PGV hardly grows with Mw: such a station gives
    no moment magnitude rather than a runaway one."""
    near = pgv_moment_magnitude([200.0], [12.0], 10.0)
    far = pgv_moment_magnitude([5.0], [150.0], 10.0)
    assert np.isnan(near[0])
    assert np.isfinite(far[0])


def test_one_complete_record_among_many_growing_ones_does_not_lift_the_magnitude():
    """The demo's M6.6 read M7.3 for ten seconds: the first complete record among hundreds
    of growing ones made every one of them push M above itself. The lower bounds say the
    same thing with one detection as without it."""
    rng = np.random.default_rng(5)
    lo = 6.6 + 0.35 * rng.standard_normal(400)
    alone, _ = censored_magnitude([], lower=lo)
    with_one, _ = censored_magnitude([6.2], lower=lo)
    assert abs(with_one - alone) <= 0.05, (alone, with_one)
    # many detections below the bounds' floor do outvote it (the bounds are still growing
    # amplitudes; detections are complete ones)
    many, _ = censored_magnitude(list(6.0 + 0.3 * rng.standard_normal(400)), lower=lo)
    assert many < alone - 0.2


def test_self_consistent_magnitude_does_not_depend_on_the_last_value():
    """Which amplitudes are complete depends on the magnitude assumed; the answer must be a
    function of the data, not of where the last step left it."""
    from yujing.sizing import self_consistent_magnitude

    # a longer rupture (larger M assumed) leaves one record incomplete: the estimate falls
    est = lambda m: (7.3, 0.2) if m < 7.05 else (6.9, 0.2)
    got = {g: self_consistent_magnitude(est, g)[0] for g in (float("nan"), 5.0, 6.9, 7.3, 8.5)}
    assert all(m == pytest.approx(7.05, abs=0.02) for m in got.values()), got  # the jump's place, from every start
    # a smooth dependence (NaN: no rupture duration assumed, as event_magnitude takes it)
    smooth = lambda m: (6.0 + 0.1 * (7.0 - (m if math.isfinite(m) else 7.0)), 0.1)
    for g in (float("nan"), 5.0, 8.0):
        assert self_consistent_magnitude(smooth, g)[0] == pytest.approx(6.7 / 1.1, abs=0.02)


# --------------------------------------------------------------- Pd and finite-fault distance


def _wu_zhao_pd(m, r):
    """Wu & Zhao (2006): log10 Pd = -3.463 + 0.729 M - 1.374 log10 R (cm, km)."""
    return 10 ** (-3.463 + 0.729 * m - 1.374 * np.log10(r))


@pytest.mark.parametrize("m", [4.0, 5.5, 6.5])
@pytest.mark.parametrize("r", [15.0, 60.0, 150.0])
def test_pd_magnitude_inverts_wu_zhao(m, r):
    assert pd_magnitude(_wu_zhao_pd(m, r), r) == pytest.approx(m, abs=1e-6)


def test_near_source_h_is_yenier_atkinson():
    # h = 10^(-0.405 + 0.235 M): ~10 km at M6, ~18 km at M7.1, nothing for an unknown M
    assert near_source_h_km(6.0) == pytest.approx(10 ** (-0.405 + 1.41), rel=1e-9)
    assert 17.5 < near_source_h_km(7.1) < 19.0
    assert near_source_h_km(float("nan")) == 0.0


def test_a_station_on_the_rupture_reads_the_magnitude_of_the_far_ones():
    """Amplitudes of an extended rupture fall off with sqrt(R^2 + h(M)^2): a station 6 km
    from the hypocentre of an M7 is not 6 km from most of the rupture. Read with R alone its
    ML is ~0.6 units low; with the effective distance (at the magnitude assumed) it agrees
    with a station 80 km away."""
    from yujing.sizing import self_consistent_magnitude

    m_true = 7.0
    hypo = np.array([6.0, 80.0])
    r_eff = np.hypot(hypo, near_source_h_km(m_true))
    wa = 10 ** (m_true - (1.11 * np.log10(r_eff) + 0.00189 * r_eff - 2.09))
    seen, tp, ts = _arrivals(hypo, 200.0)
    assert local_magnitude(wa[0], hypo[0]) < m_true - 0.5  # the point-source reading
    m, _ = self_consistent_magnitude(
        lambda g: event_magnitude(wa, wa * 0, hypo, 8.0, seen, tp, ts, [True] * 2, g), float("nan"))
    assert m == pytest.approx(m_true, abs=0.05)


def test_p_only_devices_are_sized_by_pd_not_by_a_second_of_wood_anderson():
    """Half a second of P: the Wood-Anderson reading of the first P cycles (+ the S/P
    ratio) says M4.5 'at least', the long-period Pd already says M6.3 (Nisqually's first
    announcement read M4.5 for an M6.8). Pd of a device is used while it has seen P only."""
    hypo = np.array([55.0, 60.0, 65.0])
    tp, ts = hypo / 7.0, hypo / 4.0
    seen = tp + 0.5
    wa = 10 ** (4.5 - P_TO_S_LOG10 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    pd = _wu_zhao_pd(6.3, hypo)
    m_wa, _ = event_magnitude(wa, wa * 0, hypo, 45.0, seen, tp, ts, [True] * 3)
    assert m_wa == pytest.approx(4.5, abs=0.05)
    m_pd, sigma = event_magnitude(wa, wa * 0, hypo, 45.0, seen, tp, ts, [True] * 3, pd_cm=pd, pd_usable=[True] * 3)
    assert m_pd == pytest.approx(6.3, abs=0.05)
    assert sigma > 0
    # Pd at noise level is no reading
    m_noise, _ = event_magnitude(wa, wa * 0, hypo, 45.0, seen, tp, ts, [True] * 3, pd_cm=pd, pd_usable=[False] * 3)
    assert m_noise == pytest.approx(m_wa)


def test_pd_is_not_read_once_s_has_arrived():
    """The picker's Pd window runs on past S (up to 9 s): once S is there it is no P reading."""
    hypo = np.array([20.0, 25.0, 30.0])
    tp, ts = hypo / 7.0, hypo / 4.0
    seen = ts + 200.0  # complete S records of an M5
    wa = 10 ** (5.0 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    m, _ = event_magnitude(wa, wa * 0, hypo, 10.0, seen, tp, ts, [True] * 3, 5.0,
                           pd_cm=_wu_zhao_pd(7.5, hypo), pd_usable=[True] * 3)
    assert m == pytest.approx(5.0, abs=0.05)


def test_huber_prefix_sums_equal_the_residual_matrix():
    # the network cost is summed from prefix sums over sorted station magnitudes; it must
    # be the same number as the plain sum of Huber terms, inside, across and beyond the data
    from yujing.magnitude import OUTLIER_SIGMAS, STATION_SIGMA, _huber, _HuberSum

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 500):
        d = rng.normal(6.0, 0.8, n)
        g = np.round(np.arange(2.0, 9.5, 0.01), 2)
        exact = _huber((d[None, :] - g[:, None]) / STATION_SIGMA, OUTLIER_SIGMAS).sum(axis=1)
        fast = _HuberSum(d, STATION_SIGMA)(g)
        np.testing.assert_allclose(fast, exact, rtol=1e-9, atol=1e-7)


def test_a_late_onset_is_sized_as_the_later_phase_it_holds():
    """Napa's NP.1765 warmed up through its P and triggered on S: Pd 12.9 cm and PGV 90
    cm/s read as P made the event M8.3. A trigger marked ``late_onset`` gives no Pd and its
    amplitudes stand for S as they are (not scaled up from P). Three P-only devices read M6
    by Pd; with the late S reading the event is M6.6, with the same amplitudes taken as P
    (Pd of an S, WA and PGV scaled up from P) M7.0."""
    from yujing.geo import KM_PER_DEG
    from yujing.locate import Location
    from yujing.records import Trigger
    from yujing.sizing import size_event
    from yujing.traveltime import default_table

    ot, depth = 1_000_000.0, 10.0
    loc = Location(latitude=0.0, longitude=0.0, depth_km=depth, origin_time_s=ot, misfit=0.0, rms_s=0.1,
                   horizontal_error_km=2.0, is_s=np.zeros(4, bool), residual_s=np.zeros(4), n_silent_violations=0)

    def trig(dev, epi_km, window_s, pd_cm, wa_nm, pgv, late=False, after_p_s=0.0):
        r = math.hypot(epi_km, depth)
        tp = float(default_table().p_time_s(epi_km, depth))
        return Trigger(device_id=dev, latitude=epi_km / KM_PER_DEG, longitude=0.0, onset_time_s=ot + tp + after_p_s,
                       issued_at_s=ot + tp + after_p_s + window_s, window_s=window_s, pga_gal=50.0, pgv_cm_s=pgv,
                       pd_cm=pd_cm, noise_pd_cm=1e-4, wa_horizontal_nm=wa_nm, noise_wa_nm=100.0, late_onset=late)

    def pd_for(m, epi_km):
        r = math.hypot(epi_km, depth)
        return 10 ** (0.729 * m - 3.463 - 1.374 * math.log10(r))

    p_only = [trig(f"p{i}", e, 2.0, pd_for(6.0, e), 1e4, 0.3) for i, e in enumerate((30.0, 40.0, 50.0))]
    # the location has fitted the late onset as P (as Napa's did): without the mark its
    # window looks like 1 s of P, S not yet due
    s_phase = trig("late", 11.0, 1.0, 12.9, 4.9e7, 90.0, late=True)
    m3, _ = size_event(loc, p_only, 2.0, float("nan"))
    m_late, _ = size_event(loc, p_only + [s_phase], 2.0, float("nan"))
    m_as_p, _ = size_event(loc, p_only + [msgspec.structs.replace(s_phase, late_onset=False)], 2.0, float("nan"))
    assert abs(m3 - 6.0) < 0.3, m3
    assert m_late < m3 + 0.9, (m3, m_late)
    assert m_as_p > m_late + 0.3, (m_late, m_as_p)
