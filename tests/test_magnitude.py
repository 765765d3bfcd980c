"""Magnitude scalings: anchor points of the published formulas and their inversion."""

from __future__ import annotations

import numpy as np
import pytest

from yujing.magnitude import (
    combine,
    event_magnitude,
    local_magnitude,
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
    assert pgv_moment_magnitude([pgv], [hypo_km], depth)[0] == pytest.approx(mw, abs=0.02)


def test_pgv_magnitude_does_not_saturate_at_m7():
    depth = 20.0
    ms = [7.0, 7.4, 7.8]
    pgvs = [10 ** si_midorikawa_log_pgv(m, 150.0 - 0.5 * 10 ** (0.69 * m - 3.22), depth) for m in ms]
    est = pgv_moment_magnitude(pgvs, [150.0] * 3, depth)
    assert np.all(np.diff(est) > 0.3)


def test_combine_is_robust_and_sigma_shrinks():
    m, s = combine([5.0, 5.1, 4.9, 9.0])
    assert m == pytest.approx(5.05, abs=0.01)
    _, s_few = combine([5.0, 5.4, 4.6])
    _, s_many = combine([5.0, 5.4, 4.6] * 5)
    assert s_many < s_few


def test_event_magnitude_switches_to_pgv_for_large_quakes():
    depth = 20.0
    hypo = np.array([80.0, 150.0, 220.0, 300.0])
    mw = 7.4
    half = 0.5 * 10 ** (0.69 * mw - 3.22)
    pgv = 10 ** si_midorikawa_log_pgv(mw, np.maximum(hypo - half, depth), depth)
    # a saturated ML of ~6.8
    wa = 10 ** (6.8 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    m, sigma = event_magnitude(wa, pgv, hypo, depth, [True] * 4, [True] * 4)
    assert m == pytest.approx(7.4, abs=0.05)
    assert 0 < sigma < 0.5
    # and stays with ML for a moderate one
    wa5 = 10 ** (5.0 - (1.11 * np.log10(hypo) + 0.00189 * hypo - 2.09))
    m5, _ = event_magnitude(wa5, pgv / 100, hypo, depth, [True] * 4, [True] * 4)
    assert m5 == pytest.approx(5.0, abs=0.01)
