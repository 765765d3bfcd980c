"""Grid-search locator (yujing.locate) on synthetic, seeded networks.

Onsets are made with the same iasp91 table the locator uses, plus Gaussian pick noise, so
any error here comes from the search (grid, robust origin time, S reading, silent-device,
first-device and depth-prior terms), not from a velocity-model mismatch.
"""

from __future__ import annotations

import numpy as np
import pytest

from yujing.geo import KM_PER_DEG, distance_km
import yujing.locate as locate_module
from yujing.locate import Location, depth_prior, depth_prior_at, in_polygon, locate
from yujing.settings import CALIFORNIA_CRUST, DepthRegion, LocateSettings
from yujing.traveltime import default_table

LAT0, LON0 = 16.5, -98.5  # Guerrero / Oaxaca coast, where the OpenEEW devices are
HALF_KM = 200.0  # the network covers about 400 km x 400 km
OT = 1_600_000_000.0  # origin time (UNIX s)
PICK_SIGMA_S = 0.15


def network(seed: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``n`` devices scattered uniformly over a 400 x 400 km square around (LAT0, LON0)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-HALF_KM, HALF_KM, n)
    y = rng.uniform(-HALF_KM, HALF_KM, n)
    lat = LAT0 + y / KM_PER_DEG
    lon = LON0 + x / (KM_PER_DEG * np.cos(np.radians(LAT0)))
    return lat, lon


def p_onsets(lat, lon, elat, elon, depth_km, rng, sigma=PICK_SIGMA_S) -> np.ndarray:
    d = distance_km(elat, elon, lat, lon)
    return OT + default_table().p_time_s(d, depth_km) + rng.normal(0.0, sigma, len(lat))


def epi_error_km(loc: Location, elat: float, elon: float) -> float:
    return float(distance_km(loc.latitude, loc.longitude, elat, elon))


# (name, seed, latitude, longitude, depth_km); "edge" lies offshore, 25 km south of the
# southernmost device of its network (its latitude is set from the network below)
CASES = [
    ("inside_10km", 1, 16.60, -98.30, 10.0),
    ("inside_30km", 2, 16.30, -98.80, 30.0),
    ("inside_60km", 3, 16.45, -98.55, 60.0),
    ("edge_offshore_20km", 4, None, -98.40, 20.0),
    ("edge_offshore_30km", 5, None, -98.70, 30.0),
]


def make_case(seed, elat, elon, depth, n=20):
    lat, lon = network(seed, n)
    if elat is None:  # offshore at the network's edge
        elat = float(lat.min()) - 25.0 / KM_PER_DEG
    rng = np.random.default_rng(1000 + seed)
    t = p_onsets(lat, lon, elat, elon, depth, rng)
    return lat, lon, t, elat


@pytest.mark.parametrize("n_picks", [8, 12, 20])
@pytest.mark.parametrize("name,seed,elat,elon,depth", CASES, ids=[c[0] for c in CASES])
def test_epicentre_and_origin_time(name, seed, elat, elon, depth, n_picks):
    lat, lon, t, elat = make_case(seed, elat, elon, depth)
    k = np.argsort(t)[:n_picks]  # the earliest triggers, as the engine would have them
    loc = locate(lat[k], lon[k], t[k], now_s=float(t[k].max()) + 1.0)
    err = epi_error_km(loc, elat, elon)
    assert err < 10.0, f"{name}, {n_picks} picks: epicentre {err:.1f} km off"
    assert abs(loc.origin_time_s - OT) < 1.0, f"origin time off by {loc.origin_time_s - OT:+.2f} s"
    assert not loc.is_s.any(), "no pick is an S arrival here"
    # clean P picks: the P residual RMS is of the order of the pick noise
    assert loc.rms_s < 4 * PICK_SIGMA_S
    assert loc.residual_s.shape == (n_picks,)


@pytest.mark.parametrize("depth", [10.0, 30.0, 60.0])
def test_depth_is_resolved_inside_a_dense_network(depth):
    """With 20 picks around the epicentre, the trial depth nearest the truth wins (or a
    neighbouring trial depth: the grid has 5-20 km spacing at these depths)."""
    lat, lon, t, elat = make_case(7, 16.5, -98.5, depth)
    loc = locate(lat, lon, t, now_s=float(t.max()) + 1.0)
    assert abs(loc.depth_km - depth) <= 15.0, f"depth {loc.depth_km} km for a {depth} km source"


@pytest.mark.parametrize("name,seed,elat,elon,depth", CASES, ids=[c[0] for c in CASES])
def test_one_gross_outlier_does_not_move_the_epicentre(name, seed, elat, elon, depth):
    lat, lon, t, elat = make_case(seed, elat, elon, depth)
    k = np.argsort(t)[:12]
    la, lo, tt = lat[k], lon[k], t[k]
    now = float(tt.max()) + 10.0
    clean = locate(la, lo, tt, now_s=now)
    bad_t = tt.copy()
    bad = 4  # the fifth trigger: not the first device, which anchors the search
    bad_t[bad] += 8.0
    dirty = locate(la, lo, bad_t, now_s=now)
    shift = float(distance_km(clean.latitude, clean.longitude, dirty.latitude, dirty.longitude))
    assert shift <= 10.0, f"{name}: one +8 s pick moved the epicentre {shift:.1f} km"
    assert epi_error_km(dirty, elat, elon) < 12.0
    assert abs(dirty.origin_time_s - OT) < 1.0
    # the bad pick is recognised as not fitting P: read as S, or a large P residual
    assert dirty.is_s[bad] or abs(dirty.residual_s[bad]) > 5.0, (dirty.is_s[bad], dirty.residual_s[bad])
    good = np.arange(len(tt)) != bad
    assert not dirty.is_s[good].any()


@pytest.mark.parametrize("name,seed,elat,elon,depth", CASES, ids=[c[0] for c in CASES])
def test_s_arrival_is_flagged(name, seed, elat, elon, depth):
    lat, lon, t, elat = make_case(seed, elat, elon, depth)
    tab = default_table()
    d = distance_km(elat, elon, lat, lon)
    # one device at 100-250 km (S-P of 12 s or more) reports the S arrival instead of P
    cand = np.flatnonzero((d > 100.0) & (d < 250.0))
    assert len(cand), "test network has no device at 100-250 km"
    s_dev = int(cand[np.argmin(np.abs(d[cand] - 150.0))])
    rng = np.random.default_rng(seed)
    t = t.copy()
    t[s_dev] = OT + float(tab.s_time_s(d[s_dev], depth)) + rng.normal(0.0, PICK_SIGMA_S)
    loc = locate(lat, lon, t, now_s=float(t.max()) + 1.0)
    assert loc.is_s[s_dev], f"{name}: the S pick (device {s_dev}, {d[s_dev]:.0f} km) was read as P"
    assert loc.is_s.sum() == 1, f"other picks read as S: {np.flatnonzero(loc.is_s)}"
    assert abs(loc.residual_s[s_dev]) < 1.0  # residual is for the phase it was read as
    assert epi_error_km(loc, elat, elon) < 10.0
    assert abs(loc.origin_time_s - OT) < 1.0


# --------------------------------------------------------------- silent devices, 3 picks

TRIG_LAT = np.array([16.0, 16.5, 17.0])
TRIG_LON = np.array([-98.5, -98.5, -98.5])
# streaming devices that did not trigger: three just west of the triggered line (closer to
# any western trial epicentre than the triggered devices are), the rest farther away
SIL_LAT = np.array([16.2, 16.5, 16.8, 16.0, 17.0, 16.5, 15.3, 17.7])
SIL_LON = np.array([-98.8, -98.85, -98.8, -99.2, -99.2, -96.9, -97.9, -97.9])


@pytest.mark.parametrize("elon", [-97.9, -98.1])
@pytest.mark.parametrize("depth", [10.0, 20.0, 30.0])
def test_three_picks_silent_devices_keep_the_solution_on_the_triggered_side(elon, depth):
    """Three triggered devices on a N-S line leave an east/west mirror ambiguity. The event
    is east of the line; silent devices west of the line (closer to a western solution
    than the triggered ones) must keep the solution east of it."""
    elat = 16.5
    rng = np.random.default_rng(int(depth) + int(-elon * 10))
    t = p_onsets(TRIG_LAT, TRIG_LON, elat, elon, depth, rng, sigma=0.1)
    # the truth is consistent with the silence: every silent device is farther from the
    # epicentre than every triggered one
    assert distance_km(elat, elon, SIL_LAT, SIL_LON).min() > distance_km(elat, elon, TRIG_LAT, TRIG_LON).max()
    now = float(t.max()) + 2.0
    without = locate(TRIG_LAT, TRIG_LON, t, now_s=now)
    with_silent = locate(TRIG_LAT, TRIG_LON, t, now_s=now, silent_lat=SIL_LAT, silent_lon=SIL_LON)
    e0, e1 = epi_error_km(without, elat, elon), epi_error_km(with_silent, elat, elon)
    assert with_silent.longitude > TRIG_LON[0], (
        f"solution {with_silent.latitude:.2f}, {with_silent.longitude:.2f} is on the silent side"
    )
    assert with_silent.n_silent_violations == 0
    assert e1 <= e0 + 0.5, f"silent devices made it worse: {e0:.1f} -> {e1:.1f} km"
    assert e1 < 45.0
    assert with_silent.horizontal_error_km <= without.horizontal_error_km + 0.5


def test_three_picks_silent_devices_help_in_some_cases():
    """Across the mirrored cases above, the silent devices must actually change (improve)
    the answer in several: a locator ignoring them would give identical answers."""
    gains = []
    for elon in (-97.9, -98.1):
        for depth in (10.0, 20.0, 30.0):
            rng = np.random.default_rng(int(depth) + int(-elon * 10))
            t = p_onsets(TRIG_LAT, TRIG_LON, 16.5, elon, depth, rng, sigma=0.1)
            now = float(t.max()) + 2.0
            a = locate(TRIG_LAT, TRIG_LON, t, now_s=now)
            b = locate(TRIG_LAT, TRIG_LON, t, now_s=now, silent_lat=SIL_LAT, silent_lon=SIL_LON)
            gains.append(epi_error_km(a, 16.5, elon) - epi_error_km(b, 16.5, elon))
    assert sum(g > 10.0 for g in gains) >= 3, [round(g, 1) for g in gains]


def test_three_picks_random_networks_silent_devices_never_hurt():
    """Offshore events 45 km beyond the network's southern edge, 3 earliest picks; the
    devices that have not triggered yet are passed as silent. Over 10 seeded networks the
    silent devices never make the epicentre worse and improve it in total."""
    tab = default_table()
    e_without, e_with = [], []
    for seed in range(10):
        lat, lon = network(seed)
        rng = np.random.default_rng(100 + seed)
        elat, elon, depth = float(lat.min()) - 0.4, LON0 + rng.uniform(-0.5, 0.5), 20.0
        t = OT + tab.p_time_s(distance_km(elat, elon, lat, lon), depth) + rng.normal(0, PICK_SIGMA_S, len(lat))
        order = np.argsort(t)
        k, rest = order[:3], order[3:]
        now = float(t[k].max()) + 2.0
        a = locate(lat[k], lon[k], t[k], now_s=now)
        b = locate(lat[k], lon[k], t[k], now_s=now, silent_lat=lat[rest], silent_lon=lon[rest])
        e_without.append(epi_error_km(a, elat, elon))
        e_with.append(epi_error_km(b, elat, elon))
        assert e_with[-1] <= e_without[-1] + 1.0, f"seed {seed}: {e_without[-1]:.1f} -> {e_with[-1]:.1f} km"
        assert b.n_silent_violations == 0
    assert sum(e_with) < sum(e_without) - 20.0, (np.round(e_without, 1), np.round(e_with, 1))


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_horizontal_error_larger_with_3_picks_than_with_15(seed):
    lat, lon = network(seed)
    rng = np.random.default_rng(seed)
    elat, elon = LAT0 + rng.uniform(-0.8, 0.8), LON0 + rng.uniform(-0.8, 0.8)
    t = p_onsets(lat, lon, elat, elon, 20.0, rng)
    order = np.argsort(t)
    k3, k15 = order[:3], order[:15]
    few = locate(lat[k3], lon[k3], t[k3], now_s=float(t[k3].max()) + 1.0)
    many = locate(lat[k15], lon[k15], t[k15], now_s=float(t[k15].max()) + 1.0)
    assert many.horizontal_error_km < 10.0
    assert few.horizontal_error_km > 1.5 * many.horizontal_error_km, (
        few.horizontal_error_km,
        many.horizontal_error_km,
    )
    # and the 15-pick error is an honest 1-sigma radius: the true epicentre is inside ~3x it
    assert epi_error_km(many, elat, elon) < 3 * many.horizontal_error_km + 2.0


def test_deterministic():
    lat, lon, t, elat = make_case(4, None, -98.4, 20.0)
    a = locate(lat, lon, t, now_s=float(t.max()) + 1.0)
    b = locate(lat, lon, t, now_s=float(t.max()) + 1.0)
    assert (a.latitude, a.longitude, a.depth_km, a.origin_time_s) == (b.latitude, b.longitude, b.depth_km, b.origin_time_s)


# ------------------------------------------------------------------------- depth prior


def test_depth_prior_shape():
    """Flat-bottomed in the crust with a mild centre, quadratic below the free zone."""
    s = LocateSettings()
    d = np.array(s.depths_km)
    cost = depth_prior(d, s)
    crust = d <= s.depth_prior_free_km
    assert d[np.argmin(cost)] in (10.0, 20.0)
    assert cost[crust].max() <= locate_module.DEPTH_TIE_COST + 1e-12  # ties only, in the crust
    deep = ~crust
    expect = locate_module.DEPTH_TIE_COST + ((d[deep] - s.depth_prior_free_km) / s.depth_prior_scale_km) ** 2
    assert np.allclose(cost[deep], expect)
    assert np.all(np.diff(cost[d >= s.depth_prior_typical_km]) >= 0)
    # soft: an intraslab depth costs what a few well-placed picks outweigh, not a wall
    assert cost[d == 100.0][0] < 10.0


def test_in_polygon_even_odd_rule():
    """A concave (L-shaped) region: the notch is outside, both arms inside."""
    ell = ((0.0, 0.0), (0.0, 10.0), (5.0, 10.0), (5.0, 5.0), (10.0, 5.0), (10.0, 0.0))
    lat = np.array([2.0, 2.0, 8.0, 8.0, -1.0, 2.0])
    lon = np.array([2.0, 8.0, 2.0, 8.0, 2.0, 11.0])
    assert in_polygon(lat, lon, ell).tolist() == [True, True, True, False, False, False]


def test_the_shipped_california_region_holds_its_quakes_and_not_cascadia_or_mexico():
    inside = {"Napa 2014": (38.22, -122.31), "Ridgecrest 2019": (35.77, -117.60), "Loma Prieta 1989": (37.04, -121.88),
              "Northridge 1994": (34.21, -118.54), "Landers 1992": (34.20, -116.44)}
    outside = {"Nisqually 2001": (47.15, -122.73), "Cape Mendocino 1992": (40.33, -124.23),
               "Puebla 2017": (18.55, -98.49), "Las Vegas": (36.17, -115.14), "Luding 2022": (29.59, 102.08)}
    lat = np.array([v[0] for v in {**inside, **outside}.values()])
    lon = np.array([v[1] for v in {**inside, **outside}.values()])
    got = in_polygon(lat, lon, CALIFORNIA_CRUST.polygon)
    assert got.tolist() == [True] * len(inside) + [False] * len(outside)


def test_depth_prior_at_is_the_region_s_inside_it_and_the_global_one_outside():
    s = LocateSettings()
    d = np.array(s.depths_km)
    lat = np.array([38.2, 16.5])  # Napa (in the shipped California region), Oaxaca (not)
    lon = np.array([-122.3, -98.5])
    cost = depth_prior_at(lat, lon, d, s)
    assert np.allclose(cost[1], depth_prior(d, s))
    r = CALIFORNIA_CRUST
    assert d[np.argmin(cost[0])] == r.typical_km
    assert cost[0][d == 45.0][0] >= ((45.0 - r.free_km) / r.scale_km) ** 2  # 36 units: as good as excluded
    assert depth_prior(d, s)[d == 45.0][0] < 1.0  # where the global prior lets picks choose
    # first match wins; no regions: the global prior everywhere
    deep = DepthRegion(name="deep", polygon=((37.0, -124.0), (37.0, -121.0), (39.0, -121.0), (39.0, -124.0)),
                       typical_km=60.0, free_km=90.0, scale_km=20.0)
    both = LocateSettings(depth_regions=(deep, CALIFORNIA_CRUST))
    assert d[np.argmin(depth_prior_at(lat, lon, d, both)[0])] == 60.0
    assert np.allclose(depth_prior_at(lat, lon, d, LocateSettings(depth_regions=())), depth_prior(d, s)[None, :])


def test_a_shallow_region_keeps_few_ambiguous_picks_in_its_crust():
    """Four picks (0.5 s noise) leave depth and origin time trading off: located outside any
    region they go where the noise leans (45-60 km for 6 of these 8 networks); inside a
    region whose quakes are shallow, the same picks stay in its crust."""
    region = DepthRegion(name="crust", polygon=((LAT0 - 3, LON0 - 3), (LAT0 - 3, LON0 + 3), (LAT0 + 3, LON0 + 3),
                                                 (LAT0 + 3, LON0 - 3)), typical_km=10.0, free_km=15.0, scale_km=5.0)
    free, held = [], []
    for seed in range(8):
        lat, lon = network(seed)
        rng = np.random.default_rng(900 + seed)
        elat, elon = LAT0 + rng.uniform(-0.5, 0.5), LON0 + rng.uniform(-0.5, 0.5)
        t = p_onsets(lat, lon, elat, elon, 45.0, rng, sigma=0.5)
        k = np.argsort(t)[:4]
        now = float(t[k].max()) + 1.0
        free.append(locate(lat[k], lon[k], t[k], now_s=now).depth_km)
        held.append(locate(lat[k], lon[k], t[k], now_s=now, settings=LocateSettings(depth_regions=(region,))).depth_km)
    assert max(held) <= 20.0, held
    assert sum(d >= 45.0 for d in free) >= 4, free  # the test has teeth


def _shallow_few_pick_cases(n_picks: int, depth_km: float = 10.0, n_cases: int = 20):
    """The earliest ``n_picks`` of seeded 20-device networks above a shallow event, with
    phone-like pick noise (0.5 s, the locator's own sigma)."""
    for seed in range(n_cases):
        lat, lon = network(seed)
        rng = np.random.default_rng(500 + seed)
        elat, elon = LAT0 + rng.uniform(-0.5, 0.5), LON0 + rng.uniform(-0.5, 0.5)
        t = p_onsets(lat, lon, elat, elon, depth_km, rng, sigma=0.5)
        k = np.argsort(t)[:n_picks]
        yield lat[k], lon[k], t[k], float(t[k].max()) + 1.0


@pytest.mark.parametrize("n_picks", [3, 4])
def test_few_noisy_picks_keep_a_shallow_event_shallow(n_picks, monkeypatch):
    """With 3-4 picks depth trades off against origin time, and noise alone used to put a
    10 km event anywhere down to 100 km (and its magnitude far too high). The depth prior
    keeps it in the crust."""
    depths = [locate(la, lo, t, now_s=now).depth_km for la, lo, t, now in _shallow_few_pick_cases(n_picks)]
    assert max(depths) <= 30.0, depths
    if n_picks == 3:  # the test has teeth: without the prior, many of these go deep
        monkeypatch.setattr(locate_module, "DEPTH_TIE_COST", 0.0)
        off = LocateSettings(depth_prior_free_km=1000.0)
        free = [locate(la, lo, t, now_s=now, settings=off).depth_km for la, lo, t, now in _shallow_few_pick_cases(3)]
        assert sum(d > 30.0 for d in free) >= 5, free


@pytest.mark.parametrize("depth", [60.0, 80.0, 100.0])
@pytest.mark.parametrize("seed", [3, 7, 9])
def test_dense_network_resolves_an_intraslab_depth_despite_the_prior(seed, depth):
    """Twelve picks of a 60-100 km deep event under the network, 0.3 s noise: the picks
    near the epicentre resolve the depth and outweigh the prior (the nearest trial depth,
    or its neighbour)."""
    lat, lon = network(seed)
    rng = np.random.default_rng(2000 + seed)
    elat, elon = LAT0 + 0.05, LON0 - 0.05
    t = p_onsets(lat, lon, elat, elon, depth, rng, sigma=0.3)
    k = np.argsort(t)[:12]
    loc = locate(lat[k], lon[k], t[k], now_s=float(t[k].max()) + 1.0)
    assert abs(loc.depth_km - depth) <= 20.0, f"depth {loc.depth_km} km for a {depth} km source"
    assert epi_error_km(loc, elat, elon) < 10.0


def test_median_last_is_nanmedian():
    """The sort-based median the locator uses equals numpy's, NaNs left out, for odd and
    even counts and rows that are all NaN."""
    from yujing.locate import _median_last

    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3, 7))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, 0, :] = np.nan
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            ref = np.nanmedian(x, axis=2)
    got = _median_last(x)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=0, atol=1e-12)


def test_silent_devices_sharing_a_place_count_once_each():
    """Phones in one cell share its centre: scored once with a weight, they cost what
    each scored alone does."""
    from yujing.locate import _silent_violations
    from yujing.settings import LocateSettings
    from yujing.traveltime import default_table

    s = LocateSettings()
    rows = default_table().at_depths(s.depths_km)
    rng = np.random.default_rng(9)
    lat = 30.0 + rng.uniform(-1, 1, 30)
    lon = 102.0 + rng.uniform(-1, 1, 30)
    epi = rng.uniform(5, 150, (30, 4))
    as_s = np.zeros((30, len(s.depths_km), 4), dtype=bool)
    ot = np.full((30, len(s.depths_km)), 100.0)
    places = np.array([[30.1, 102.1], [29.9, 101.8], [30.4, 102.3]])
    pick = np.array([0, 0, 0, 1, 2, 2])  # three phones in the first cell, two in the third
    slat, slon = places[pick, 0], places[pick, 1]
    seen = np.full(len(pick), 160.0)
    pen = np.array([2.0, 2.0, 2.0, 4.0, 2.0, 2.0])  # phones, and a streaming sensor
    alone = _silent_violations(lat, lon, rows, epi, as_s, ot, (slat, slon, np.ones(6), pen), seen, s)
    shared = _silent_violations(
        lat, lon, rows, epi, as_s, ot,
        (places[:, 0], places[:, 1], np.array([3.0, 1.0, 2.0]), np.array([2.0, 4.0, 2.0])), np.full(3, 160.0), s,
    )
    assert alone[0].max() > 0  # the case is not empty
    np.testing.assert_array_equal(alone[0], shared[0])  # devices that should have triggered
    np.testing.assert_allclose(alone[1], shared[1])  # and the cost of their silence


def test_a_quiet_phone_costs_less_than_a_quiet_sensor():
    """A phone misses a P that reached it far more often than a streaming sensor does
    (fixed 0.015 g threshold against an STA/LTA over the sensor's noise): its silence is
    weaker evidence, and the locator pays less for it."""
    from yujing.locate import PHONE_SILENT_PENALTY, SILENT_PENALTY

    lat = np.array([30.0, 30.3, 29.8, 30.1, 30.25])
    lon = np.array([102.0, 102.2, 101.9, 102.4, 101.85])
    t0 = 1_000.0
    src = (30.05, 102.1, 10.0)
    pt = t0 + default_table().p_time_s(distance_km(src[0], src[1], lat, lon), src[2])
    quiet = ([30.06], [102.11])  # one quiet device at the source, reached by P long ago
    as_sensor = locate(lat, lon, pt, t0 + 30, *quiet)
    as_phone = locate(lat, lon, pt, t0 + 30, *quiet, silent_phone=[True])
    assert as_sensor.n_silent_violations == as_phone.n_silent_violations == 1
    assert (as_sensor.latitude, as_sensor.longitude) == (as_phone.latitude, as_phone.longitude)
    assert as_sensor.misfit - as_phone.misfit == pytest.approx(SILENT_PENALTY - PHONE_SILENT_PENALTY)


def test_bounded_coarse_search_equals_the_exhaustive_one(monkeypatch):
    """The coarse grid scores its silent devices only at the nodes whose picks' misfit
    (a lower bound) can still matter (``_coarse_cost``). Over seeded networks with 3-8
    picks, silent devices (some of them due, so that silence moves the solution) and both
    search sizes, every location equals the one from scoring every node, to the bit; and
    at least one case left nodes unscored (else the test would show nothing)."""
    full = lambda lat, lon, depths, picks, silent, seen, s, step: locate_module._score(  # noqa: E731
        lat, lon, depths, picks, silent, seen, s)[0]
    bounded = locate_module._coarse_cost
    skipped = []

    def counting(*a):
        cost = bounded(*a)
        skipped.append(int(np.isinf(cost).all(axis=1).sum()))
        return cost

    tab = default_table()
    n_cases = silenced = 0
    for seed in range(12):
        lat, lon = network(seed, 60)
        rng = np.random.default_rng(500 + seed)
        elat, elon = LAT0 + rng.uniform(-1.5, 1.5), LON0 + rng.uniform(-1.5, 1.5)
        t = OT + tab.p_time_s(distance_km(elat, elon, lat, lon), 15.0) + rng.normal(0, PICK_SIGMA_S, len(lat))
        order = np.argsort(t)
        k_picks = 3 + seed % 6
        # every other early device triggered: the ones between stayed quiet although P
        # reached them (phones miss), so their silence is due and weighs on the search
        k = order[: 2 * k_picks : 2]
        rest = np.setdiff1d(order, k)
        now = float(t[k].max()) + 1.0 + seed % 3
        for kw in ({}, {"center": (float(lat[k[0]]), float(lon[k[0]])), "half_km": 120.0}):
            args = (lat[k], lon[k], t[k])
            kwargs = dict(now_s=now, silent_lat=lat[rest], silent_lon=lon[rest], **kw)
            monkeypatch.setattr(locate_module, "_coarse_cost", full)
            a = locate(*args, **kwargs)
            monkeypatch.setattr(locate_module, "_coarse_cost", counting)
            b = locate(*args, **kwargs)
            for f in ("latitude", "longitude", "depth_km", "origin_time_s", "misfit", "horizontal_error_km",
                      "n_silent_violations", "rms_s"):
                assert getattr(a, f) == getattr(b, f), (seed, kw, f, getattr(a, f), getattr(b, f))
            assert np.array_equal(a.residual_s, b.residual_s) and np.array_equal(a.is_s, b.is_s)
            n_cases += 1
            silenced += a.n_silent_violations > 0
    assert n_cases == 24 and max(skipped) > 0, skipped
    assert silenced > 0, "no case where silence was due: the test would not see a wrong silent cost"


def test_nearest_silent_devices_are_the_true_nearest():
    """``_nearest`` (a flat-earth proxy bounds the radius, the haversine only inside its
    box) returns the same devices, in the same order of distance, as sorting every
    great-circle distance: on a dense network of phones sharing cell centres (ties), and
    on a sparse global one around the antimeridian, near a pole and at the equator."""
    rng = np.random.default_rng(3)
    dense_lat = np.round(30 + rng.normal(0, 2, 200_000), 2)
    dense_lon = np.round(103 + rng.normal(0, 2, 200_000), 2)
    glob_lat, glob_lon = rng.uniform(-80, 80, 50_000), rng.uniform(-180, 180, 50_000)
    cases = [(dense_lat, dense_lon, 30.0, 103.0), (dense_lat, dense_lon, 35.5, 99.0),
             (glob_lat, glob_lon, 10.0, 179.9), (glob_lat, glob_lon, -10.0, -179.95),
             (glob_lat, glob_lon, 85.0, 0.0), (glob_lat, glob_lon, 0.0, 0.0)]
    for lat, lon, la, lo in cases:
        full = np.argsort(distance_km(la, lo, lat, lon), kind="stable")[: locate_module.MAX_SILENT]
        got = locate_module._nearest(la, lo, lat, lon, locate_module.MAX_SILENT)
        assert np.array_equal(got, full), (la, lo)


def test_a_late_onset_is_a_bound_on_p_not_an_arrival_time():
    """Eight timed picks of a 10 km deep quake, and two devices near it whose onsets are
    late (Trigger.late_onset: their energy rose while they warmed up) and 2-3 s after their
    P. Read as arrival times they drag the solution (origin, depth, epicentre); read as
    bounds (P came at or before them) they cost nothing and the solution is that of the
    timed picks. A late onset *before* the P the solution predicts does cost."""
    lat, lon = network(11)
    rng = np.random.default_rng(11)
    elat, elon = LAT0 + 0.2, LON0 - 0.1
    t = p_onsets(lat, lon, elat, elon, 10.0, rng, sigma=0.1)
    k = np.argsort(t)[:8]
    near_lat = np.array([elat + 0.12, elat - 0.1])
    near_lon = np.array([elon + 0.05, elon - 0.12])
    near_t = p_onsets(near_lat, near_lon, elat, elon, 10.0, rng, sigma=0.0) + np.array([2.6, 2.2])
    all_lat, all_lon = np.r_[lat[k], near_lat], np.r_[lon[k], near_lon]
    all_t = np.r_[t[k], near_t]
    now = float(all_t.max()) + 1.0
    timed_only = locate(lat[k], lon[k], t[k], now_s=now)
    as_times = locate(all_lat, all_lon, all_t, now_s=now)
    late = np.r_[np.zeros(8, bool), np.ones(2, bool)]
    as_bounds = locate(all_lat, all_lon, all_t, now_s=now, picks_late=late)
    assert epi_error_km(as_bounds, elat, elon) <= epi_error_km(timed_only, elat, elon) + 2.0
    assert abs(as_bounds.origin_time_s - timed_only.origin_time_s) < 0.2
    assert as_bounds.rms_s < 0.3 and not as_bounds.is_s[late].any()
    assert np.all(as_bounds.residual_s[late] == 0.0)  # bounds that hold cost nothing
    # the test has teeth: read as arrival times, the two late picks cost or move the solution
    assert as_times.misfit > as_bounds.misfit + 1.0 or as_times.is_s[late].any()
    # a late onset that comes before the predicted P breaks its bound
    early_t = np.r_[t[k], near_t - 4.0]
    broken = locate(all_lat, all_lon, early_t, now_s=now, picks_late=late)
    assert broken.misfit > as_bounds.misfit + 4.0
