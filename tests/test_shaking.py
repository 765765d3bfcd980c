"""Shaking forecast: the models against pygmm, the intensity conversion at the paper's
anchor points, the vectorised code against its one-site twin, and the physics that must
hold (decay with distance, the finite-fault correction)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pygmm  # test dependency: the independent implementation the models are checked against
import pytest

from yujing import shaking as S
from yujing.geo import KM_PER_DEG

RTOL = 0.01  # the brief's tolerance; the implementations agree to ~1e-14

MAGNITUDES = np.arange(4.0, 8.01, 0.5)
DISTANCES_KM = [0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0]
VS30S = [200.0, 300.0, 450.0, 760.0, 1000.0, 1500.0]


@pytest.fixture(autouse=True)
def _quiet_pygmm():
    # pygmm logs a warning for every scenario outside its recommended ranges (e.g. normal
    # faulting above M7); those are part of the grid on purpose.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _rel(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) / np.asarray(b) - 1.0)))


# ----------------------------------------------------------------------- against pygmm


@pytest.mark.parametrize("mechanism", S.MECHANISMS)
def test_bssa14_matches_pygmm(mechanism):
    worst = 0.0
    for m in MAGNITUDES:
        for vs30 in VS30S:
            pga, pgv = S.bssa14(m, np.array(DISTANCES_KM), vs30, mechanism)
            for i, r in enumerate(DISTANCES_KM):
                ref = pygmm.BooreStewartSeyhanAtkinson2014(
                    pygmm.Scenario(mag=m, dist_jb=r, v_s30=vs30, mechanism=mechanism, region="global")
                )
                worst = max(worst, _rel(pga[i], ref.pga), _rel(pgv[i], ref.pgv))
    assert worst < RTOL


def test_bssa14_sigma_matches_pygmm():
    for m in (4.0, 4.8, 5.2, 6.0, 7.5):
        for vs30 in (180.0, 250.0, 760.0):
            s_pga, s_pgv = S.total_sigma_ln("bssa14", m, np.array(DISTANCES_KM), vs30)
            for i, r in enumerate(DISTANCES_KM):
                ref = pygmm.BooreStewartSeyhanAtkinson2014(pygmm.Scenario(mag=m, dist_jb=r, v_s30=vs30, mechanism="U"))
                assert s_pga[i] == pytest.approx(ref.ln_std_pga, rel=RTOL)
                assert s_pgv[i] == pytest.approx(ref.ln_std_pgv, rel=RTOL)


@pytest.mark.parametrize(
    ("event_type", "depth_km", "backarc"),
    [("interface", 20.0, False), ("intraslab", 50.0, False), ("intraslab", 130.0, False),
     ("interface", 20.0, True), ("intraslab", 70.0, True)],
)  # fmt: skip
def test_bchydro_matches_pygmm(event_type, depth_km, backarc):
    """PGA against pygmm's PGA; PGV against the Newmark-Hall conversion of pygmm's
    PSA(1.0 s), which is how this module defines BC Hydro's PGV."""
    worst = 0.0
    for m in np.arange(4.0, 8.51, 0.5):
        for vs30 in VS30S:
            dist = np.array(DISTANCES_KM[1:])  # BC Hydro distances are Rrup/Rhypo: > 0
            pga, pgv = S.bchydro(m, dist, depth_km, vs30, event_type, backarc)
            for i, r in enumerate(dist):
                ref = pygmm.AbrahamsonGregorAddo2016(
                    pygmm.Scenario(
                        mag=m, dist_rup=r, dist_hyp=r, depth_hyp=depth_km, v_s30=vs30, event_type=event_type,
                        tectonic_region="backarc" if backarc else "forearc",
                    )
                )  # fmt: skip
                psa1 = ref.interp_spec_accels([1.0])[0]
                worst = max(worst, _rel(pga[i], ref.pga), _rel(pgv[i], psa1 * S.PGV_CM_S_PER_PSA1_G))
    assert worst < RTOL


def test_bchydro_sigma_matches_pygmm():
    ref = pygmm.AbrahamsonGregorAddo2016(
        pygmm.Scenario(mag=7.0, dist_rup=50.0, dist_hyp=50.0, depth_hyp=20.0, v_s30=760.0, event_type="interface")
    )
    s_pga, s_pgv = S.total_sigma_ln("bchydro_interface", 7.0, np.array([10.0, 100.0]))
    assert s_pga == pytest.approx(ref.ln_std_pga, rel=RTOL)
    assert s_pgv == pytest.approx(ref.interp_ln_stds([1.0])[0], rel=RTOL)


def test_forecast_uses_the_model_at_its_own_distance():
    """End to end: forecast == pygmm at the distance forecast reports it used."""
    lat, lon, depth = 17.0, -99.0, 20.0
    site_lat = lat + np.array([0.05, 0.4, 1.5])
    site_lon = np.full(3, lon)
    for m in (5.0, 7.2):
        sh = S.forecast(lat, lon, depth, m, site_lat, site_lon, vs30=350.0, model="bssa14")
        for i, r in enumerate(sh.distance_km):
            ref = pygmm.BooreStewartSeyhanAtkinson2014(pygmm.Scenario(mag=m, dist_jb=r, v_s30=350.0, mechanism="U"))
            assert sh.pga_g[i] == pytest.approx(ref.pga, rel=RTOL)
            assert sh.pgv_cm_s[i] == pytest.approx(ref.pgv, rel=RTOL)
        sh = S.forecast(lat, lon, depth, m, site_lat, site_lon, vs30=350.0, model="bchydro_intraslab")
        for i, r in enumerate(sh.distance_km):
            ref = pygmm.AbrahamsonGregorAddo2016(
                pygmm.Scenario(mag=m, dist_rup=r, dist_hyp=r, depth_hyp=depth, v_s30=350.0, event_type="intraslab")
            )
            assert sh.pga_g[i] == pytest.approx(ref.pga, rel=RTOL)
        assert sh.distance_metric == "rhypo"
        assert sh.distance_km == pytest.approx(np.hypot(sh.epicentral_km, depth))


# -------------------------------------------------------------------------- intensity


def test_worden2012_anchor_points():
    # Worden et al. (2012) Table 1: PGA c1..c4 = 1.78, 1.55, -1.60, 3.70, break at
    # log10 PGA = 1.57 (cm/s^2) where MMI = t2 = 4.22; PGV 3.78, 1.47, 2.89, 3.16, break at
    # log10 PGV = 0.53 (cm/s), MMI 4.56.
    pga_break, pgv_break = 10**1.57, 10**0.53
    assert S.worden2012_mmi(pga_break) == pytest.approx(1.78 + 1.55 * 1.57)
    assert S.worden2012_mmi(pga_break) == pytest.approx(4.22, abs=0.01)
    assert S.worden2012_mmi(pga_break * (1 + 1e-9)) == pytest.approx(-1.60 + 3.70 * 1.57, abs=1e-6)
    assert S.worden2012_mmi(pga_break * (1 + 1e-9)) == pytest.approx(4.22, abs=0.015)  # continuous at the break
    assert S.worden2012_mmi(1e-3, pgv_break) == pytest.approx(3.78 + 1.47 * 0.53)
    assert S.worden2012_mmi(1e-3, pgv_break) == pytest.approx(4.56, abs=0.01)
    assert S.worden2012_mmi(1e-3, pgv_break * (1 + 1e-9)) == pytest.approx(2.89 + 3.16 * 0.53, abs=1e-6)
    # one point on each of the four lines
    assert S.worden2012_mmi(10.0) == pytest.approx(1.78 + 1.55)  # 10 gal
    assert S.worden2012_mmi(100.0) == pytest.approx(-1.60 + 3.70 * 2)  # 100 gal: MMI 5.8
    assert S.worden2012_mmi(1e-3, 1.0) == pytest.approx(3.78)  # 1 cm/s
    assert S.worden2012_mmi(1e-3, 100.0) == pytest.approx(2.89 + 3.16 * 2)  # 100 cm/s: MMI 9.21


def test_worden2012_takes_the_larger_and_clips():
    # 10 gal alone is MMI 3.33, 10 cm/s alone is 6.05: the larger wins
    assert S.worden2012_mmi(10.0, 10.0) == pytest.approx(2.89 + 3.16)
    assert S.worden2012_mmi(500.0, 0.01) == pytest.approx(-1.60 + 3.70 * math.log10(500.0))
    assert S.worden2012_mmi(0.0, 0.0) == 1.0
    assert S.worden2012_mmi(1e-6, 1e-6) == 1.0
    assert S.worden2012_mmi(5000.0, 500.0) == 10.0
    mmi = S.worden2012_mmi(np.geomspace(1e-3, 1e4, 200), np.geomspace(1e-4, 1e3, 200))
    assert np.all((mmi >= 1.0) & (mmi <= 10.0)) and np.all(np.diff(mmi) >= 0.0)


def test_forecast_mmi_is_worden_of_its_own_pga_pgv():
    rng = np.random.default_rng(7)
    lat, lon = 16.5 + rng.uniform(0, 3, 2000), -100.0 + rng.uniform(0, 3, 2000)
    for model in S.MODELS:
        sh = S.forecast(16.5, -99.0, 30.0, 7.0, lat, lon, vs30=rng.uniform(150, 1500, 2000), model=model)
        np.testing.assert_allclose(sh.mmi, S.worden2012_mmi(sh.pga_gal, sh.pgv_cm_s), rtol=1e-12)


# -------------------------------------------------------------------- vectorised vs twin


@pytest.mark.parametrize(
    ("model", "magnitude", "depth_km", "mechanism", "seed"),
    [("bssa14", 5.3, 10.0, "RS", 1), ("bssa14", 7.4, 15.0, "U", 2),
     ("bchydro_interface", 7.2, 20.0, "U", 3), ("bchydro_intraslab", 6.8, 57.0, "U", 4)],
)  # fmt: skip
def test_vectorised_equals_one_site_at_a_time(model, magnitude, depth_km, mechanism, seed):
    """25,000 random sites per case, 100,000 in all: every field equal to forecast_site."""
    n = 25_000
    rng = np.random.default_rng(seed)
    ev_lat, ev_lon = 17.0, -98.5
    lat = ev_lat + rng.uniform(-4.0, 4.0, n)
    lon = ev_lon + rng.uniform(-4.0, 4.0, n)
    lat[:5], lon[:5] = ev_lat, ev_lon  # the epicentre itself
    vs30 = rng.uniform(150.0, 1600.0, n)
    backarc = rng.random(n) < 0.3 if model != "bssa14" else np.zeros(n, dtype=bool)
    sh = S.forecast(ev_lat, ev_lon, depth_km, magnitude, lat, lon, vs30, model, mechanism=mechanism, backarc=backarc)
    one = [
        S.forecast_site(
            ev_lat, ev_lon, depth_km, magnitude, lat[i], lon[i], vs30[i], model,
            mechanism=mechanism, backarc=bool(backarc[i]),
        )  # fmt: skip
        for i in range(n)
    ]
    for field in S.SiteShaking._fields:
        twin = np.array([getattr(o, field) for o in one])
        np.testing.assert_allclose(getattr(sh, field), twin, rtol=1e-9, atol=1e-12, err_msg=field)


def test_single_site_scalars():
    sh = S.forecast(17.0, -99.0, 20.0, 6.0, 17.2, -99.1)
    assert np.ndim(sh.mmi) == 0 and np.ndim(sh.pga_g) == 0
    one = S.forecast_site(17.0, -99.0, 20.0, 6.0, 17.2, -99.1)
    assert float(sh.mmi) == pytest.approx(one.mmi, rel=1e-12)
    assert float(sh.pgv_cm_s) == pytest.approx(one.pgv_cm_s, rel=1e-12)
    # a one-element array stays an array (what a device holding arrays passes)
    assert S.forecast(17.0, -99.0, 20.0, 6.0, np.array([17.2]), np.array([-99.1])).mmi.shape == (1,)


def test_vs30_array_broadcasts_and_validates():
    lat = np.array([17.1, 17.2, 17.3])
    lon = np.full(3, -99.0)
    a = S.forecast(17.0, -99.0, 20.0, 6.0, lat, lon, vs30=np.array([200.0, 760.0, 1500.0]))
    for i, v in enumerate((200.0, 760.0, 1500.0)):
        b = S.forecast(17.0, -99.0, 20.0, 6.0, lat[i], lon[i], vs30=v)
        assert a.pga_g[i] == pytest.approx(float(b.pga_g), rel=1e-12)
    with pytest.raises(ValueError):
        S.forecast(17.0, -99.0, 20.0, 6.0, lat, lon, vs30=np.array([200.0, np.nan, 300.0]))
    with pytest.raises(ValueError):
        S.forecast(17.0, -99.0, 20.0, 6.0, lat, lon, vs30=np.array([200.0, 0.0, 300.0]))


@pytest.mark.parametrize(
    "kwargs",
    [dict(model="gmpe_of_my_own"), dict(mechanism="thrust"), dict(magnitude=float("nan")), dict(depth_km=-1.0)],
)
def test_bad_input_fails_loud(kwargs):
    args = dict(lat=17.0, lon=-99.0, depth_km=20.0, magnitude=6.0, site_lat=17.2, site_lon=-99.1)
    args.update(kwargs)
    with pytest.raises(ValueError):
        S.forecast(**args)
    with pytest.raises(ValueError):
        S.forecast_site(**args)


# ---------------------------------------------------------------------------- physics


def _line_of_sites(lat: float, lon: float, max_km: float = 800.0, n: int = 400):
    d = np.linspace(0.0, max_km, n)
    return lat + d / KM_PER_DEG, np.full(n, lon)


@pytest.mark.parametrize("model", S.MODELS)
@pytest.mark.parametrize("magnitude", [4.0, 5.5, 6.5, 7.5, 8.5])
@pytest.mark.parametrize("vs30", [150.0, 760.0, 1500.0])
def test_shaking_decays_with_distance(model, magnitude, vs30):
    lat, lon = _line_of_sites(16.0, -98.0)
    depth = 60.0 if model == "bchydro_intraslab" else 15.0
    for backarc in (False, True) if model != "bssa14" else (False,):
        sh = S.forecast(16.0, -98.0, depth, magnitude, lat, lon, vs30, model, backarc=backarc)
        assert np.all(np.diff(sh.epicentral_km) > 0)
        for y in (sh.pga_g, sh.pgv_cm_s, sh.mmi):
            assert np.all(np.diff(y) <= 1e-12 * y[:-1])
        assert sh.mmi[-1] < sh.mmi[0]


def test_more_magnitude_more_shaking():
    lat, lon = _line_of_sites(16.0, -98.0, 300.0, 50)
    for model in S.MODELS:
        prev = None
        for m in np.arange(4.0, 8.6, 0.25):
            sh = S.forecast(16.0, -98.0, 30.0, m, lat, lon, 760.0, model, finite_fault=False)
            if prev is not None:
                assert np.all(sh.pga_g >= prev.pga_g) and np.all(sh.pgv_cm_s >= prev.pgv_cm_s)
            prev = sh


def test_finite_fault_shortens_distances_for_large_quakes():
    repi = np.array([0.0, 1.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1000.0])
    depth = 20.0
    rhypo = np.hypot(repi, depth)
    for m in (6.5, 7.0, 7.5, 8.0):
        rjb, rrup = S.finite_fault_distances_km(m, depth, repi)
        assert rjb[0] == 0.0
        assert np.all(rjb[1:] < repi[1:]) and np.all(rjb >= 0.0)
        assert np.all(rrup < rhypo) and np.all(rrup >= rjb)
        assert np.all(np.diff(rjb) > 0) and np.all(np.diff(rrup) > 0)
        # far away (50 rupture lengths) the rupture is nearer than the epicentre by the mean
        # reach of the rupture towards the site, L/pi
        length = S.rupture_length_km(m)
        far = S.finite_fault_distances_km(m, depth, 50.0 * length)[0]
        assert 50.0 * length - far == pytest.approx(length / math.pi, rel=0.02)
    # and the larger the quake, the larger the reduction
    red = [repi[4] - S.finite_fault_distances_km(m, depth, repi)[0][4] for m in (6.5, 7.0, 7.5, 8.0)]
    assert np.all(np.diff(red) > 0)


def test_finite_fault_does_nothing_below_m65():
    repi = np.linspace(0.0, 500.0, 101)
    for m in (4.0, 6.0, 6.49):
        rjb, rrup = S.finite_fault_distances_km(m, 25.0, repi)
        np.testing.assert_array_equal(rjb, repi)
        np.testing.assert_array_equal(rrup, np.sqrt(repi**2 + 25.0**2))
    lat, lon = _line_of_sites(17.0, -99.0, 300.0, 30)
    for model in S.MODELS:
        a = S.forecast(17.0, -99.0, 25.0, 6.4, lat, lon, model=model)
        b = S.forecast(17.0, -99.0, 25.0, 6.4, lat, lon, model=model, finite_fault=False)
        np.testing.assert_array_equal(a.pga_g, b.pga_g)
    # at M7.5 the correction raises the forecast for BSSA14 and the interface model, and
    # leaves the intraslab model (defined on hypocentral distance) alone
    for model, raised in (("bssa14", True), ("bchydro_interface", True), ("bchydro_intraslab", False)):
        a = S.forecast(17.0, -99.0, 25.0, 7.5, lat, lon, model=model)
        b = S.forecast(17.0, -99.0, 25.0, 7.5, lat, lon, model=model, finite_fault=False)
        if raised:
            assert np.all(a.pga_g[1:] > b.pga_g[1:])
        else:
            np.testing.assert_array_equal(a.pga_g, b.pga_g)


def test_strike_average_agrees_with_monte_carlo():
    """The quadrature table against brute force: random strikes and epicentre positions."""
    rng = np.random.default_rng(2018)
    n = 400_000
    theta = rng.uniform(0.0, 2.0 * math.pi, n)
    s = rng.uniform(0.0, 1.0, n)
    length = S.rupture_length_km(7.5)
    repi = np.array([0.5, 5.0, 20.0, 60.0, 150.0, 400.0])
    rjb, _ = S.finite_fault_distances_km(7.5, 10.0, repi)
    for r, expected in zip(repi, rjb):
        # rupture from -s L to (1 - s) L along x; the site at angle theta
        x, y = r * np.cos(theta), r * np.sin(theta)
        beyond = x - np.clip(x, -s * length, (1.0 - s) * length)
        mc = np.sqrt(beyond**2 + y**2).mean()
        assert expected == pytest.approx(mc, rel=0.01, abs=0.05)


# ----------------------------------------------------------------------- model choice


def test_trench_distance_sign():
    # Mexico City is ~350 km inland of the Middle America Trench, a point in the Pacific
    # off Oaxaca is seaward (negative), and California is beyond the trace (NaN)
    assert 300.0 < S.trench_distance_km(19.43, -99.13) < 400.0
    assert S.trench_distance_km(13.0, -97.0) < -100.0
    assert math.isnan(S.trench_distance_km(34.0, -118.0))


@pytest.mark.parametrize(
    ("lat", "lon", "depth_km", "model"),
    [
        (18.55, -98.49, 57.0, "bchydro_intraslab"),  # ~ Puebla-Morelos 2017, M7.1, intraslab
        (15.02, -93.90, 47.0, "bchydro_intraslab"),  # ~ Chiapas (Tehuantepec) 2017, M8.2, intraslab
        (15.80, -96.13, 20.0, "bchydro_interface"),  # ~ Oaxaca (La Crucecita) 2020, M7.4, interface
        (16.25, -98.00, 20.0, "bchydro_interface"),  # ~ Pinotepa 2018, M7.2, interface
        (18.00, -102.0, 15.0, "bchydro_interface"),  # shallow, near the Michoacan coast
        (19.43, -99.13, 10.0, "bssa14"),  # shallow under Mexico City: crustal, far from the trench
        (19.80, -99.90, 10.0, "bssa14"),  # ~ Acambay 1912, crustal in the volcanic belt
        (13.00, -97.00, 10.0, "bssa14"),  # far out in the Pacific, seaward of the trench
        (34.00, -118.0, 10.0, "bssa14"),  # California: no trench known here
        (34.00, -118.0, 80.0, "bssa14"),
    ],
)
def test_choose_model(lat, lon, depth_km, model):
    assert S.choose_model(lat, lon, depth_km) == model


def test_auto_model_is_choose_model():
    sh = S.forecast(18.55, -98.49, 57.0, 7.1, 19.43, -99.13, model="auto")
    assert sh.model == "bchydro_intraslab"
    assert S.forecast(18.55, -98.49, 57.0, 7.1, 19.43, -99.13, model=None).model == "bchydro_intraslab"
    assert S.forecast_site(18.55, -98.49, 57.0, 7.1, 19.43, -99.13, model="auto").mmi == pytest.approx(float(sh.mmi))
