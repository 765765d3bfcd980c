"""Magnitude from amplitudes and distances, updated as the shaking grows.

Two published scalings, each used where it is valid:

* **Local magnitude** from the peak Wood-Anderson amplitude (IASPEI 2013 standard form of
  Hutton & Boore 1987): ``ML = log10(A_nm) + 1.11 log10(R) + 0.00189 R - 2.09`` with
  ``A_nm`` the zero-to-peak Wood-Anderson amplitude in nm (unit gain) and ``R`` the
  hypocentral distance in km. ML is the magnitude small and moderate catalogue events are
  reported in; like every band-limited amplitude it saturates above about M6.5 because the
  0.8 s seismometer no longer sees the growing long-period energy.
* **Moment magnitude from PGV** by inverting Si & Midorikawa (1999), derived for Japanese
  crustal, interplate and intraslab quakes up to Mw 8.3:
  ``log10 PGV = 0.58 Mw + 0.0038 D + d - 1.29 - log10(X + 0.0028 10^(0.5 Mw)) - 0.002 X``
  (PGV in cm/s, X fault distance km, D depth km, d = -0.02 for interplate events). Its
  near-fault term keeps growing with Mw, so it does not saturate at M7.

While a device has seen only P waves, its ML is raised by the average S-to-P amplitude
ratio of body waves (``P_TO_S_LOG10``); it still underestimates while the P window is
short, and is replaced by the S-phase estimate as soon as S arrives. The event magnitude is the median
of the device estimates (robust to a bad site) with a 1-sigma from their spread, shrinking as
devices join. ML switches to the PGV moment magnitude once ML reaches ``ML_SATURATION`` —
the same handover catalogues make between ML and Mw.
"""

from __future__ import annotations

import math

import numpy as np

ML_SATURATION = 6.0
#: log10 of the S-to-P amplitude ratio of far-field body waves at equal distance:
#: (<R_S>/<R_P>) (alpha/beta)^3 with the focal-sphere averages of the radiation pattern of
#: Boore & Boatwright (1984), 0.63 and 0.52, and alpha/beta = sqrt(3) (Poisson solid):
#: log10(1.21 * 5.20) = 0.80. A device that has seen only P waves predicts the S amplitude
#: that ML is defined on by this factor.
P_TO_S_LOG10 = 0.80
#: scatter of one station's magnitude (published station scatter of ML and of the
#: Si & Midorikawa GMPE, 0.23 log10 units of PGV / 0.58 per Mw unit ~ 0.4)
STATION_SIGMA = 0.35


def local_magnitude(wa_nm, hypo_km):
    """IASPEI/Hutton-Boore ML from zero-to-peak Wood-Anderson amplitude (nm) and R (km)."""
    wa_nm = np.maximum(np.asarray(wa_nm, dtype=float), 1e-9)
    r = np.maximum(np.asarray(hypo_km, dtype=float), 1.0)
    return np.log10(wa_nm) + 1.11 * np.log10(r) + 0.00189 * r - 2.09


def si_midorikawa_log_pgv(mw, fault_km, depth_km, source_term=-0.02):
    """log10 PGV (cm/s, Vs30 ~ 600 m/s) of Si & Midorikawa (1999); source_term -0.02 for
    interplate, 0 crustal, +0.12 intraslab."""
    mw = np.asarray(mw, dtype=float)
    x = np.asarray(fault_km, dtype=float)
    return (
        0.58 * mw
        + 0.0038 * depth_km
        + source_term
        - 1.29
        - np.log10(x + 0.0028 * 10.0 ** (0.5 * mw))
        - 0.002 * x
    )


_MW_GRID = np.arange(2.0, 9.51, 0.01)


def pgv_moment_magnitude(pgv_cm_s, hypo_km, depth_km):
    """Invert Si & Midorikawa (1999) for Mw, device by device (vectorised over devices).

    The fault distance is approximated by the hypocentral distance less half the rupture
    length of Wells & Coppersmith (1994) (``L = 10^(0.69 M - 3.22)`` km), never below the
    depth.
    """
    pgv = np.atleast_1d(np.asarray(pgv_cm_s, dtype=float))
    r = np.atleast_1d(np.asarray(hypo_km, dtype=float))
    half_len = 0.5 * 10.0 ** (0.69 * _MW_GRID - 3.22)
    x = np.maximum(r[:, None] - half_len[None, :], max(depth_km, 1.0))
    pred = si_midorikawa_log_pgv(_MW_GRID[None, :], x, depth_km)
    obs = np.log10(np.maximum(pgv, 1e-9))[:, None]
    # prediction grows monotonically with Mw: first grid point that reaches the observation
    reached = pred >= obs
    idx = np.where(reached.any(axis=1), reached.argmax(axis=1), len(_MW_GRID) - 1)
    return _MW_GRID[idx]


def combine(estimates) -> tuple[float, float]:
    """Median of station magnitudes and its 1-sigma (spread, shrinking with sqrt(n))."""
    m = np.asarray(estimates, dtype=float)
    m = m[np.isfinite(m)]
    if len(m) == 0:
        return float("nan"), float("nan")
    med = float(np.median(m))
    spread = 1.4826 * float(np.median(np.abs(m - med))) if len(m) >= 3 else STATION_SIGMA
    spread = max(spread, 0.2)
    return med, math.sqrt(spread**2 / len(m) + 0.1**2)


def event_magnitude(wa_nm, pgv_cm_s, hypo_km, depth_km, s_arrived, usable) -> tuple[float, float]:
    """Event magnitude and 1-sigma from per-device amplitudes.

    ``wa_nm``: peak Wood-Anderson amplitude since onset (max of vertical and horizontals);
    ``pgv_cm_s``: peak ground velocity since onset; ``hypo_km``: hypocentral distances;
    ``s_arrived``: True where the S wave has reached the device (its amplitudes include S);
    ``usable``: amplitudes clearly above the device's noise.
    """
    wa = np.asarray(wa_nm, dtype=float)
    r = np.asarray(hypo_km, dtype=float)
    s_arr = np.asarray(s_arrived, dtype=bool)
    ok = np.asarray(usable, dtype=bool)
    if not ok.any():
        ok = np.ones_like(ok)
    ml = local_magnitude(wa[ok], r[ok]) + np.where(s_arr[ok], 0.0, P_TO_S_LOG10)
    m, sigma = combine(ml)
    sel = ok
    if m >= ML_SATURATION:
        mw = pgv_moment_magnitude(np.asarray(pgv_cm_s, dtype=float)[sel], r[sel], depth_km)
        m_w, sigma_w = combine(mw)
        if m_w > m:
            return m_w, sigma_w
    return m, sigma
