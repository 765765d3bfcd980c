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
* **P-wave magnitude from Pd** (Wu & Zhao 2006), the peak vertical P displacement
  high-passed at 0.075 Hz: ``log10 Pd = -3.463 + 0.729 M - 1.374 log10 R``. For a device
  that has seen only P, the long-period Pd scales with M where the Wood-Anderson reading of
  the first P cycles does not (it is what ElarmS/ShakeAlert size events by).

Distances are the finite-fault effective distance ``sqrt(R^2 + h(M)^2)`` of Yenier &
Atkinson (2015) (:func:`near_source_h_km`): near a large rupture amplitudes saturate, and
the hypocentral distance would read a station on the fault as if all of it were there.

While a device has seen only P waves, its ML is raised by the average S-to-P amplitude
ratio of body waves (``P_TO_S_LOG10``). A device's amplitude is an *estimate* only once the
phase it stands for has passed whole; before that it is a lower bound (it can only grow),
and a complete record at noise level is an upper bound. The network magnitude is the
maximum-likelihood value given all three kinds of evidence (:func:`censored_magnitude`),
which is what keeps the early estimate of a large, still-growing rupture from saturating at
whatever the first seconds showed. ML hands over to the PGV moment magnitude once it
reaches ``ML_SATURATION`` — the same handover catalogues make between ML and Mw.
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
#: seconds of P after which a device has seen the P pulse of a moderate quake whole (the
#: 3 s P window of Kanamori 2005 and Wu & Zhao 2006): from then on a noise-level P
#: amplitude bounds the magnitude from above.
P_BOUND_WINDOW_S = 3.0
#: seconds after the S onset by which the S peak of a point-like (small) rupture has
#: passed; the rupture duration is added for large ones.
S_WINDOW_S = 5.0
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


_MW_GRID = np.round(np.arange(2.0, 9.501, 0.01), 2)
#: least growth of log10 PGV per unit Mw (at the station's distance) for its PGV to count
#: as a magnitude estimate (far field: ~0.5)
MIN_PGV_SLOPE = 0.25
#: a station closer to the hypocentre than this many rupture lengths (of the Mw it would
#: give) lies along the rupture itself, where the fault distance is unknown (it is taken
#: as the depth) and the saturation term makes its Mw a guess
NEAR_FAULT_LENGTHS = 0.5


def _rupture_length_km(m):
    """Wells & Coppersmith (1994) surface rupture length, all mechanisms (km)."""
    return 10.0 ** (0.69 * np.asarray(m, dtype=float) - 3.22)


def pgv_moment_magnitude(pgv_cm_s, hypo_km, depth_km):
    """Invert Si & Midorikawa (1999) for Mw, device by device (vectorised over devices).

    The fault distance is approximated by the hypocentral distance less half the rupture
    length of Wells & Coppersmith (1994) (``L = 10^(0.69 M - 3.22)`` km), never below the
    depth. NaN where the station is too near the fault for PGV to grow with Mw (slope
    below ``MIN_PGV_SLOPE``, or within half the rupture length of the Mw it would give) or
    its PGV exceeds the grid's M9.5.
    """
    pgv = np.atleast_1d(np.asarray(pgv_cm_s, dtype=float))
    r = np.atleast_1d(np.asarray(hypo_km, dtype=float))
    obs = np.log10(np.maximum(pgv, 1e-9))
    dmin = max(depth_km, 1.0)

    def pred(k):  # log10 PGV at grid index k (one per station)
        m = _MW_GRID[k]
        return si_midorikawa_log_pgv(m, np.maximum(r - 0.5 * _rupture_length_km(m), dmin), depth_km)

    # The prediction grows monotonically with Mw: bisect for the first grid point that
    # reaches the observation (a dozen evaluations per station, not the whole grid: a
    # quake felt by thousands of phones is re-sized every engine step).
    n = len(_MW_GRID)
    lo = np.zeros(len(obs), dtype=np.int64)
    hi = np.full(len(obs), n - 1, dtype=np.int64)
    found = pred(hi) >= obs
    for _ in range(int(np.ceil(np.log2(n))) + 1):
        mid = (lo + hi) // 2
        up = pred(mid) >= obs
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid + 1)
        if np.all(lo >= hi):
            break
    idx = np.where(found, hi, n - 1)
    # Near the fault PGV saturates (the 10^(0.5 Mw) term): log PGV grows by only ~0.1 per
    # magnitude unit there, so a station's scatter of 0.23 would become 2 units of Mw. Such
    # stations (and ones beyond the grid) say nothing about Mw.
    a, b = np.maximum(idx - 1, 0), np.minimum(idx + 1, n - 1)
    slope = (pred(b) - pred(a)) / np.maximum(_MW_GRID[b] - _MW_GRID[a], 1e-9)
    mw = _MW_GRID[idx].astype(float)
    near = r < NEAR_FAULT_LENGTHS * _rupture_length_km(mw)
    mw[~found | (slope < MIN_PGV_SLOPE) | near] = np.nan
    return mw


_M_GRID = np.round(np.arange(1.0, 9.501, 0.01), 2)
#: residual (in station sigmas) beyond which a station counts as an outlier: the capped
#: square keeps one bad site from dragging the network estimate
OUTLIER_SIGMAS = 2.5


def censored_magnitude(detected, upper=(), lower=(), sigma: float = STATION_SIGMA) -> tuple[float, float]:
    """Robust (Huber) network magnitude from detections and bounds.

    ``detected``: station magnitudes from complete, clearly-above-noise amplitudes.
    ``upper``: station magnitudes from complete amplitudes at the noise level — the signal
    was at most that big (Ringdal 1976: leaving such stations out biases a network
    magnitude upwards). ``lower``: station magnitudes from amplitudes that are still growing
    (the phase has not been seen whole) — the final value can only be larger; counting
    them as estimates is what makes early magnitudes of large quakes saturate.

    The cost is a Huber function of each detection's residual (in units of ``sigma``) and
    a Cauchy function of each bound's violation (zero while the bound holds), both
    quadratic near zero with ``OUTLIER_SIGMAS`` as the scale, so that one bad site cannot
    carry the estimate. Returns the best M and its 1-sigma (where the cost
    rises by 1). With bounds only: what the lower bounds say the magnitude is at least
    (:func:`_lower_bound_magnitude`), else the median of the upper bounds.
    """
    det = _finite(detected)
    up = _finite(upper)
    lo = _finite(lower)
    if len(det) == 0:
        if len(lo):
            return _lower_bound_magnitude(lo), max(STATION_SIGMA, 0.5)
        if len(up):
            return float(np.median(up)), max(STATION_SIGMA, 0.5)
        return float("nan"), float("nan")
    # Detections cost a Huber function (quadratic, then linear beyond OUTLIER_SIGMAS):
    # never flat, so M cannot run off to where a lone detection stops mattering. Bounds
    # cost a Cauchy function of their violation (quadratic, then ever flatter): they pull
    # while close, but a bound far off - a site reading low, a growing amplitude - cannot
    # outvote the detections. The lower bounds enter as the one magnitude they say the
    # event has at least (what they give alone, _lower_bound_magnitude), weighted by
    # their number: each one on its own pushed M above nearly all of them, to the
    # largest station scatters, so that the first complete record among hundreds of
    # growing ones lifted M by half a unit (the demo's M6.6 read M7.3 from 20 s to 30 s).
    floor = _lower_bound_magnitude(lo) if len(lo) else float("nan")
    allm = np.concatenate([det, up, lo])
    grid = _M_GRID[(_M_GRID >= allm.min() - 1.0 - 1e-9) & (_M_GRID <= allm.max() + 1.0 + 1e-9)]
    if len(grid) == 0:
        grid = _M_GRID[[0]] if allm.max() < _M_GRID[0] else _M_GRID[[-1]]
    huber = _HuberSum(det, sigma)
    # upper bounds pooled to 0.005 magnitude units (far below any station's scatter):
    # thousands of quiet phones would otherwise cost thousands of columns per grid point
    up_v, up_n = np.unique(np.round(up * 200.0) / 200.0, return_counts=True) if len(up) else (up, up)

    def cost(g):
        nll = huber(g)
        if len(up_v):
            nll += (_cauchy(np.maximum(0.0, (g[:, None] - up_v[None, :]) / sigma)) * up_n[None, :]).sum(axis=1)
        if len(lo):
            nll += len(lo) * _cauchy(np.maximum(0.0, (floor - g) / sigma))
        return nll

    # coarse to fine (0.05 then 0.01): thousands of phones times hundreds of grid points
    # at every engine step would cost more than the rest of the engine
    coarse = grid[::5]
    nll_c = cost(coarse)
    i = int(np.argmin(nll_c))
    fine = grid[(grid >= coarse[i] - 0.06) & (grid <= coarse[i] + 0.06)]
    nll_f = cost(fine)
    j = int(np.argmin(nll_f))
    best = min(float(nll_f[j]), float(nll_c[i]))
    inside = np.concatenate([coarse[nll_c <= best + 1.0], fine[nll_f <= best + 1.0]])
    half = 0.5 * float(inside.max() - inside.min()) if len(inside) > 1 else 0.01
    return float(fine[j]), max(half, 0.1)


LOWER_BOUND_QUANTILE = 0.84


def _lower_bound_magnitude(lo: np.ndarray) -> float:
    """The magnitude the event has at least, from station lower bounds alone.

    The 84th percentile (one sigma above the median), rounded up to a station's value:
    the largest bound for up to 7 stations (a growing rupture must not be held at what
    its weakest station has seen so far), a quantile for many. With hundreds of phones
    the largest bound is mostly station scatter: the largest of N draws of sigma 0.35
    lies ~sigma sqrt(2 ln N) above their centre, +1.2 magnitude units for 500 phones."""
    return float(np.quantile(lo, LOWER_BOUND_QUANTILE, method="higher"))


class _HuberSum:
    """``sum_i huber((d_i - g) / sigma)`` for many ``g`` at once, exactly, from prefix sums
    over the sorted ``d``: O((N + G) log N) instead of the O(N G) of a residual matrix
    (30,000 phones times 100 grid points, at every step of every bisection, took half the
    engine's time in the demo)."""

    def __init__(self, d: np.ndarray, sigma: float, c: float = OUTLIER_SIGMAS):
        self.d = np.sort(np.asarray(d, dtype=float))
        self.s1 = np.concatenate([[0.0], np.cumsum(self.d)])
        self.s2 = np.concatenate([[0.0], np.cumsum(self.d * self.d)])
        self.sigma, self.c = sigma, c

    def __call__(self, g) -> np.ndarray:
        g = np.asarray(g, dtype=float)
        d, s1, s2, sig, c = self.d, self.s1, self.s2, self.sigma, self.c
        n = len(d)
        i1 = np.searchsorted(d, g - c * sig, side="left")  # below: linear branch
        i2 = np.searchsorted(d, g + c * sig, side="right")  # above: linear branch
        nq = i2 - i1
        quad = (s2[i2] - s2[i1] - 2.0 * g * (s1[i2] - s1[i1]) + nq * g * g) / (sig * sig)
        below = (g * i1 - s1[i1]) / sig
        above = (s1[n] - s1[i2] - g * (n - i2)) / sig
        return quad + 2.0 * c * (below + above) - c * c * (i1 + n - i2)


def _huber(z, c: float = OUTLIER_SIGMAS):
    a = np.abs(z)
    return np.where(a <= c, a * a, 2.0 * c * a - c * c)


def _cauchy(z, c: float = OUTLIER_SIGMAS):
    return c * c * np.log1p((z / c) ** 2)


def _finite(x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


#: Wu & Zhao (2006), southern California, vertical P displacement over the first 3 s
#: high-passed at 0.075 Hz (the picker's ``pd_cm``), R hypocentral km:
#: ``log10 Pd[cm] = -3.463 + 0.729 M - 1.374 log10 R`` (+- 0.305). The same scaling is the
#: basis of ElarmS/ShakeAlert's P-wave magnitude (Kuyuk & Allen 2013 fit it globally).
PD_INTERCEPT, PD_SLOPE_M, PD_SLOPE_R = -3.463, 0.729, 1.374
#: hypocentral distance (km) beyond which a device's Pd does not size an event. Wu & Zhao
#: fit near-source records; far out the 3 s of P are weak, the relation is extrapolated,
#: and the few far devices whose P cleared their trigger at all are those with the largest
#: site and path amplification (a selection bias): in the demo's M7.8 Kahramanmaras the
#: last P-only phones, 200-450 km out, read Pd magnitudes of 8.2-8.9 and carried the
#: estimate there while 30,000 others were still growing.
PD_MAX_HYPO_KM = 100.0


def pd_magnitude(pd_cm, hypo_km):
    """Station magnitude from the peak P displacement (Wu & Zhao 2006), vectorised."""
    pd = np.maximum(np.asarray(pd_cm, dtype=float), 1e-12)
    r = np.maximum(np.asarray(hypo_km, dtype=float), 1.0)
    return (np.log10(pd) - PD_INTERCEPT + PD_SLOPE_R * np.log10(r)) / PD_SLOPE_M


def near_source_h_km(magnitude: float) -> float:
    """Finite-fault saturation distance ``h = 10^(-0.405 + 0.235 M)`` km of Yenier &
    Atkinson (2015): amplitudes of an extended rupture scale with ``sqrt(R^2 + h^2)``, not
    with the hypocentral distance ``R`` (a station 6 km from a 50 km long rupture is not
    6 km from most of it). 3 km at M4, 10 km at M6, 18 km at M7.1; 0 for an unknown M."""
    if not math.isfinite(magnitude):
        return 0.0
    return 10.0 ** (-0.405 + 0.235 * magnitude)


def rupture_duration_s(magnitude: float) -> float:
    """Rough rupture duration (s): Wells & Coppersmith (1994) subsurface rupture length
    ``L = 10^(0.69 M - 3.22)`` km, unilateral at 2.5 km/s."""
    if not math.isfinite(magnitude):
        return 0.0
    return _rupture_length_km(magnitude) / 2.5


def event_magnitude(
    wa_nm,
    pgv_cm_s,
    hypo_km,
    depth_km: float,
    seen_until_s,
    p_arrival_s,
    s_arrival_s,
    usable,
    previous_magnitude: float = float("nan"),
    pd_cm=None,
    pd_usable=None,
    pgv_mw=None,
) -> tuple[float, float]:
    """Event magnitude and 1-sigma from per-device amplitudes.

    Per device: ``wa_nm`` peak Wood-Anderson amplitude since onset (geometric mean of the
    two horizontal components, the IASPEI reading); ``pgv_cm_s`` peak ground velocity since onset; ``hypo_km`` hypocentral
    distance; ``seen_until_s`` the time (UNIX s) up to which its amplitudes reach;
    ``p_arrival_s`` / ``s_arrival_s`` the predicted P and S arrival times there;
    ``usable`` amplitude clearly above the device's noise.

    A device that has seen S stands for the S amplitude; one that has seen only P stands
    for it through ``P_TO_S_LOG10``. Its amplitude is *complete* once the phase has been
    seen for ``S_WINDOW_S`` (S) or ``P_BOUND_WINDOW_S`` (P) plus the rupture duration of
    ``previous_magnitude`` (a big rupture keeps radiating). Complete and usable: a
    detection; complete at noise level: an upper bound; incomplete and usable: a lower
    bound; incomplete at noise level: no information.

    ``pgv_mw``: the devices' PGV moment magnitudes (:func:`device_pgv_mw`) when the caller
    already has them; they do not depend on ``previous_magnitude``, so a caller that
    searches over it computes them once.
    """
    wa = np.asarray(wa_nm, dtype=float)
    r = np.asarray(hypo_km, dtype=float)
    seen = np.asarray(seen_until_s, dtype=float)
    ts = np.asarray(s_arrival_s, dtype=float)
    tp = np.asarray(p_arrival_s, dtype=float)
    ok = np.asarray(usable, dtype=bool)
    s_arr = seen >= ts
    dur = rupture_duration_s(previous_magnitude)
    complete = np.where(s_arr, seen >= ts + S_WINDOW_S + dur, seen >= tp + max(P_BOUND_WINDOW_S, dur))
    det = ok & complete
    upper = ~ok & complete
    lower = ok & ~complete

    def network(station_m):
        return censored_magnitude(station_m[det], station_m[upper], station_m[lower])

    # amplitudes of an extended rupture fall off with the distance to the fault, not to the
    # hypocentre: the effective distance of Yenier & Atkinson (2015), with the magnitude
    # assumed (the self-consistent value, :func:`yujing.sizing.self_consistent_magnitude`)
    r_eff = np.hypot(r, near_source_h_km(previous_magnitude))
    ml = local_magnitude(wa, r_eff) + np.where(s_arr, 0.0, P_TO_S_LOG10)
    if pd_cm is not None:
        # A device that has seen only P measures the P displacement Pd that EEW magnitudes
        # are built on (Wu & Zhao 2006): a long-period amplitude (0.075 Hz high-pass) that
        # scales with M far better than the 0.8 s Wood-Anderson reading of the first P
        # second (Nisqually: ML+0.8 read M4.5 from 0.5 s of P where Pd read M5.5-6.8). Read
        # from whatever P window there is, as ElarmS does (Kuyuk et al. 2014), it is an
        # estimate, not a bound; once S has arrived the Pd window holds S and is not used.
        pdu = ~s_arr & np.asarray(pd_usable if pd_usable is not None else np.ones(len(r), bool), dtype=bool)
        pdu &= r <= PD_MAX_HYPO_KM
        m_pd = pd_magnitude(pd_cm, r_eff)
        ml_det = np.where(det, ml, np.nan)
        station = np.concatenate([ml_det[det], m_pd[pdu]])
        m, sigma = censored_magnitude(station, ml[upper], ml[lower])
    else:
        m, sigma = network(ml)
    if m >= ML_SATURATION:
        mw = device_pgv_mw(pgv_cm_s, r, depth_km, s_arr) if pgv_mw is None else np.asarray(pgv_mw, dtype=float)
        m_w, sigma_w = network(mw)
        if m_w > m:
            return m_w, sigma_w
    return m, sigma


def device_pgv_mw(pgv_cm_s, hypo_km, depth_km: float, s_arrived) -> np.ndarray:
    """Per-device Mw from PGV (:func:`pgv_moment_magnitude`); a device that has seen only
    P (``s_arrived`` False) stands for the S-wave PGV: its amplitude is scaled by
    ``P_TO_S_LOG10``, not its magnitude."""
    pgv_s = np.asarray(pgv_cm_s, dtype=float) * np.where(s_arrived, 1.0, 10.0**P_TO_S_LOG10)
    return pgv_moment_magnitude(pgv_s, hypo_km, depth_km)
