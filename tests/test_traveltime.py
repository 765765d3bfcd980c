"""Tests of the iasp91 first-arrival travel-time table (yujing.traveltime)."""

from __future__ import annotations

import numpy as np
import pytest
from obspy.geodetics import kilometer2degrees
from obspy.taup import TauPyModel

from yujing.traveltime import TravelTimeTable, default_table

P_TOL_S = 0.05
S_TOL_S = 0.1
# "ttp"/"tts" are TauP's P and S families (incl. Pn/Sn, diffracted and core phases);
# Pg/Sg are added so crustal branches are certainly included.
P_REFERENCE_PHASES = ["ttp", "Pg"]
S_REFERENCE_PHASES = ["tts", "Sg"]


@pytest.fixture(scope="module")
def taup():
    return TauPyModel("iasp91")


@pytest.fixture(scope="module")
def table():
    return default_table()


def _taup_first(model, depth_km, distance_km, phases):
    arrivals = model.get_travel_times(
        source_depth_in_km=float(depth_km),
        distance_in_degree=kilometer2degrees(float(distance_km)),
        phase_list=phases,
    )
    assert len(arrivals) > 0, (depth_km, distance_km, phases)
    return min(a.time for a in arrivals)


def _points():
    rng = np.random.default_rng(91)
    dist = rng.uniform(0.0, 1500.0, 40)
    depth = rng.uniform(0.0, 150.0, 40)
    # plus a few hand-picked awkward spots: epicentre, surface source, crossover zone,
    # just above/below the 20 km and 35 km interfaces, corners of the accuracy region
    extra = [(0.0, 0.0), (0.0, 10.0), (3.3, 0.7), (151.0, 0.0), (123.4, 19.9), (87.6, 35.2), (1500.0, 150.0)]
    dist = np.concatenate([dist, [e[0] for e in extra]])
    depth = np.concatenate([depth, [e[1] for e in extra]])
    return dist, depth


def test_matches_taup(taup, table):
    dist, depth = _points()
    ref_p = np.array([_taup_first(taup, z, d, P_REFERENCE_PHASES) for d, z in zip(dist, depth)])
    ref_s = np.array([_taup_first(taup, z, d, S_REFERENCE_PHASES) for d, z in zip(dist, depth)])
    p = table.p_time_s(dist, depth)
    s = table.s_time_s(dist, depth)
    err_p = np.abs(p - ref_p)
    err_s = np.abs(s - ref_s)
    worst_p, worst_s = int(np.argmax(err_p)), int(np.argmax(err_s))
    assert err_p.max() < P_TOL_S, (dist[worst_p], depth[worst_p], p[worst_p], ref_p[worst_p])
    assert err_s.max() < S_TOL_S, (dist[worst_s], depth[worst_s], s[worst_s], ref_s[worst_s])


def test_table_nodes_are_taup_values(taup, table):
    """Spot-check stored nodes (float32) against TauP directly."""
    for j, i in [(0, 0), (0, 1), (10, 100), (60, 150), (100, 200), (-1, -1)]:
        z, d = table.depth_km[j], table.distance_km[i]
        assert table.p_table_s[j, i] == pytest.approx(_taup_first(taup, z, d, P_REFERENCE_PHASES), abs=1e-3)
        assert table.s_table_s[j, i] == pytest.approx(_taup_first(taup, z, d, S_REFERENCE_PHASES), abs=1e-3)


def test_broadcasting_shapes(table):
    rng = np.random.default_rng(3)
    dist = rng.uniform(0.0, 600.0, size=(100, 100, 1, 30))  # grid nodes x stations
    depth = np.linspace(0.0, 60.0, 20).reshape(1, 1, 20, 1)
    p = table.p_time_s(dist, depth)
    s = table.s_time_s(dist, depth)
    assert p.shape == s.shape == (100, 100, 20, 30)
    assert p.dtype == s.dtype == np.float64
    # broadcasting must give the same numbers as explicit element-wise evaluation
    d_full, z_full = np.broadcast_arrays(dist, depth)
    sel = (slice(0, 3), slice(7, 9), slice(None), slice(0, 5))
    np.testing.assert_array_equal(p[sel], table.p_time_s(d_full[sel].ravel(), z_full[sel].ravel()).reshape(p[sel].shape))
    np.testing.assert_array_equal(s[sel], table.s_time_s(d_full[sel].ravel(), z_full[sel].ravel()).reshape(s[sel].shape))
    p2, s2 = table.times_s(dist, depth)
    np.testing.assert_array_equal(p2, p)
    np.testing.assert_array_equal(s2, s)

    # scalars and lists
    t = table.p_time_s(100.0, 10.0)
    assert isinstance(t, np.ndarray) and t.shape == () and t.dtype == np.float64
    assert float(t) == pytest.approx(float(table.p_time_s(np.array([100.0]), np.array([10.0]))[0]))
    assert table.s_time_s([10.0, 20.0, 30.0], 5.0).shape == (3,)
    assert table.p_time_s(50.0, [[1.0], [2.0]]).shape == (2, 1)


def test_p_before_s_and_monotonic_in_distance(table):
    dist = np.arange(0.0, 2000.0 + 1e-9, 0.25)
    depths = np.array([0.0, 0.3, 1.0, 5.0, 10.0, 19.9, 20.0, 27.3, 35.0, 50.0, 100.0, 150.0, 200.0])
    p = table.p_time_s(dist[None, :], depths[:, None])
    s = table.s_time_s(dist[None, :], depths[:, None])
    assert np.all(p >= 0.0)
    assert np.all(p[:, 1:] < s[:, 1:])
    assert np.all(p <= s)  # equal only at the origin of a surface source (both 0)
    assert np.all(np.diff(p, axis=1) > 0), "P not increasing with distance"
    assert np.all(np.diff(s, axis=1) > 0), "S not increasing with distance"
    # zero distance: vertical travel time, 0 at the surface
    assert float(table.p_time_s(0.0, 0.0)) == 0.0
    assert float(table.p_time_s(0.0, 10.0)) == pytest.approx(10.0 / 5.8, abs=1e-4)  # iasp91 upper crust
    assert float(table.s_time_s(0.0, 10.0)) == pytest.approx(10.0 / 3.36, abs=1e-4)


def test_out_of_range(table):
    dmax = table.distance_km[-1]
    zmax = table.depth_km[-1]
    # depth clamped
    np.testing.assert_array_equal(table.p_time_s([100.0, 900.0], 250.0), table.p_time_s([100.0, 900.0], zmax))
    np.testing.assert_array_equal(table.s_time_s(100.0, -5.0), table.s_time_s(100.0, 0.0))
    # distance: negative -> 0, beyond the table -> linear with the last slope
    assert float(table.p_time_s(-3.0, 10.0)) == float(table.p_time_s(0.0, 10.0))
    for f in (table.p_time_s, table.s_time_s):
        t1, t2 = float(f(dmax - 10.0, 30.0)), float(f(dmax, 30.0))
        slope = (t2 - t1) / 10.0
        assert float(f(dmax + 500.0, 30.0)) == pytest.approx(t2 + 500.0 * slope, rel=1e-9)
    assert np.isnan(table.p_time_s(np.nan, 10.0))
    assert np.isnan(table.p_time_s(100.0, np.nan))


def test_default_table_cached_and_described():
    t = default_table()
    assert t is default_table()
    assert isinstance(t, TravelTimeTable)
    assert t.meta_dict.get("model") == "iasp91"
    assert t.distance_km[0] == 0.0 and t.distance_km[-1] >= 2000.0
    assert t.depth_km[0] == 0.0 and t.depth_km[-1] >= 200.0


def test_depth_rows_match_the_bilinear_table():
    """The fixed-depth fast path gives the table's own times: inside the table, beyond
    its last distance (extrapolated), at 0 and below it, and NaN for NaN."""
    t = default_table()
    depths = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0)
    rows = t.at_depths(depths)
    rng = np.random.default_rng(3)
    epi = rng.uniform(-5.0, 2500.0, (50, 40))
    epi[0, :4] = [0.0, 2000.0, 0.25, np.nan]
    tp, ts = rows.times_s(epi)
    d = np.asarray(depths)[None, :, None]
    ref_p = t.p_time_s(epi[:, None, :], d)
    ref_s = t.s_time_s(epi[:, None, :], d)
    assert tp.shape == (50, len(depths), 40)
    np.testing.assert_allclose(tp, ref_p, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ts, ref_s, rtol=0, atol=1e-9)
    np.testing.assert_allclose(rows.p_time_s(epi), ref_p, rtol=0, atol=1e-9)
    assert np.isnan(tp[0, :, 3]).all()
    assert t.at_depths(list(depths)) is rows  # cached per depth set


def test_one_at_a_time_lookups_are_the_same_bits_as_the_array_ones(table):
    """p_time1/s_time1 (plain Python, for code that asks one trigger at a time) give the
    same float64 as p_time_s/s_time_s: inside the table, beyond its last distance
    (extrapolated), off its depth range (clamped), on its nodes, and NaN for NaN."""
    rng = np.random.default_rng(3)
    d = np.r_[rng.uniform(0.0, 3000.0, 5000), rng.uniform(0.0, 30.0, 500), table.distance_km[:50],
              [-5.0, table.distance_km[-1], table.distance_km[-1] + 800.0]]
    z = np.r_[rng.uniform(-10.0, 900.0, len(d) - 3), [10.0, table.depth_km[-1], 1e4]]
    for arr, one in ((table.p_time_s, table.p_time1), (table.s_time_s, table.s_time1)):
        expect = arr(d, z)
        got = np.array([one(x, y) for x, y in zip(d.tolist(), z.tolist())])
        assert np.array_equal(got, expect)
        assert np.isnan(one(float("nan"), 10.0)) and np.isnan(one(100.0, float("nan")))
