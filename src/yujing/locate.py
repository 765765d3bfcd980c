"""Hypocentre by grid search over latitude, longitude, depth and origin time.

For every node of a grid (a local flat projection around the triggered devices, times the
trial depths) the iasp91 P and S travel times to every device come from the shipped table
(:mod:`yujing.traveltime`). The origin time of a node is the median of (onset - travel
time), which makes one bad pick harmless; residuals are scored with a capped square (a
pick off by more than ``3 sigma`` costs the same however far off it is). A pick may also be
read as an S arrival (small fixed penalty): far, small-amplitude devices often trigger only
on S.

Devices that have *not* triggered are evidence too (as in ElarmS/EPIC and OpenEEW's
Bayesian locator): at a node where a streaming device lies closer than the farthest
triggered device and the P wave should have reached it more than ``silent_grace_s`` ago,
the node pays a penalty. This pulls the epicentre away from silent devices and, with few
picks, is what keeps one corner of the network from being mistaken for another. A weak
prior on the distance to the first-triggered device settles the one-dimensional family of
equally good solutions that three picks leave (see ``first_device_prior_km``).

A soft prior on depth (:func:`depth_prior`) does for depth what that prior does for the
epicentre. With a few picks, depth trades off against origin time almost exactly (measured
on simulated phone networks: 3-10 picks of a 16 km deep quake scored 5 to 100 km within
about 1.5 chi-square units of each other), and without a prior the argmin fell on any
trial depth (45-80 km in four of seven simulated first alerts of 10-16 km deep quakes),
which made every hypocentral distance and the magnitude too large. Operational systems
fix or start the depth shallow for this reason (ElarmS/EPIC fix 8 km, JMA starts at
10 km); here the prior is soft, so picks that do
resolve depth (near the epicentre, at distances comparable to the depth) still place an
intraslab event at 60-100 km. Where the region's quakes are known to be shallow (a depth
region of the settings, such as California's crust) the prior is that region's: two late
picks near a crustal quake can then no longer pull it to 45 km, as they did for Napa 2014.

All whole-grid work is one numpy expression over (nodes x devices).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .geo import EARTH_RADIUS_KM, KM_PER_DEG, distance_km
from .settings import LocateSettings
from .traveltime import default_table

RESIDUAL_CAP = 3.0  # in units of pick sigma
S_PENALTY = RESIDUAL_CAP**2  # reading a pick as S costs as much as calling it an outlier
#: chi-square units per device that should have triggered but did not: -2 ln(1 - q) for a
#: device that triggers on a P wave that reached it with probability q. A streaming sensor
#: triggers on an STA/LTA over its own noise (hundredths of a gal on a quiet one) and seldom
#: misses a P that reached it: q ~0.86. A phone triggers at a fixed acceleration (0.015 g;
#: the P wave carries about a quarter of the S wave's) and misses often: of the ready
#: phones within the inner half of the P-detecting distance, 37-60 % triggered on P in the
#: simulated M6.0-6.6 quakes (94 % at M7.9), q ~0.63. At the streams' 4 units the dozens of
#: quiet phones among a large quake's triggered ones outweighed the move-out of its picks:
#: the demo's M6.6 Lushan was moved 41 km and 6.6 s from 40 picks that fit the truth (and
#: its magnitude from M6.3 to M7.2 and back).
SILENT_PENALTY = 4.0
PHONE_SILENT_PENALTY = 2.0
MAX_SILENT = 64  # silent devices considered, nearest the search centre first
COARSE_KEEP = 200  # best coarse nodes scanned for distinct minima to refine
CHI2_1SIGMA = 2.3  # chi-square of the 1-sigma region of 2 parameters (the epicentre)
# The mild centre of the depth prior: the cost at the bottom of the free zone
# (``depth_prior_free_km``) relative to ``depth_prior_typical_km``, in chi-square units.
# Picks that cannot tell 5, 10, 20 and 30 km apart differ by a few tenths (noise); a free
# zone with no slope at all then ends at whichever trial depth the noise favours, most often
# its bottom (30 km for a 16 km quake, measured). Half a chi-square unit is well under a
# 1-sigma difference (1 unit): picks that prefer 20 km (0.056) or 30 km (0.5) by more than
# that still get it, a weaker preference is overruled towards the depth where crustal quakes
# cluster (the dev set's 2020_6_23: 30 km preferred by 0.09, now 10 km). A region with its
# own depth range (LocateSettings.depth_regions) gets its own centre and free zone. (A
# centre rather than a slope: a slope would favour 5 km, shallower than most quakes.)
DEPTH_TIE_COST = 0.5


@dataclass(frozen=True)
class Location:
    latitude: float
    longitude: float
    depth_km: float
    origin_time_s: float
    misfit: float  # the minimised cost, chi-square units, priors included
    rms_s: float  # RMS of the P residuals of the picks read as P
    horizontal_error_km: float
    is_s: np.ndarray  # per pick: read as S
    residual_s: np.ndarray  # per pick residual (s) for its phase
    n_silent_violations: int


def _grid(center_lat: float, center_lon: float, half_km: float, step_km: float):
    n = int(round(half_km / step_km))
    off = np.arange(-n, n + 1) * step_km
    dlat = off / KM_PER_DEG
    dlon = off / (KM_PER_DEG * max(math.cos(math.radians(center_lat)), 0.05))
    lat, lon = np.meshgrid(center_lat + dlat, center_lon + dlon, indexing="ij")
    return lat.ravel(), lon.ravel()


def _prior_row(d: np.ndarray, typ: float, free: float, scale: float) -> np.ndarray:
    cost = (np.maximum(d - free, 0.0) / scale) ** 2
    if free > typ:  # (a typical depth at or below the free zone's bottom: no centre)
        cost = cost + DEPTH_TIE_COST * ((np.minimum(d, free) - typ) / (free - typ)) ** 2
    return cost


def depth_prior(depths_km, s: LocateSettings) -> np.ndarray:
    """Cost (chi-square units) of each trial depth before any pick is read, outside every
    depth region: a mild centre at ``depth_prior_typical_km`` that rises to
    ``DEPTH_TIE_COST`` at ``depth_prior_free_km`` and stays there, plus
    ``((d - free) / scale)^2`` below the free zone."""
    d = np.asarray(depths_km, dtype=float)
    return _prior_row(d, s.depth_prior_typical_km, s.depth_prior_free_km, s.depth_prior_scale_km)


def in_polygon(lat, lon, polygon) -> np.ndarray:
    """Whether each point (degrees) lies inside ``polygon`` ((lat, lon) vertices, not
    crossing the antimeridian), by the even-odd rule on the plate carree plane: regions
    are drawn in those coordinates."""
    lat = np.asarray(lat, dtype=float)
    lon = np.asarray(lon, dtype=float)
    inside = np.zeros(lat.shape, dtype=bool)
    v = np.asarray(polygon, dtype=float)
    box = (lat >= v[:, 0].min()) & (lat <= v[:, 0].max()) & (lon >= v[:, 1].min()) & (lon <= v[:, 1].max())
    if not box.any():
        return inside
    la, lo = lat[box], lon[box]
    odd = np.zeros(la.shape, dtype=bool)
    for (y1, x1), (y2, x2) in zip(v, np.roll(v, -1, axis=0)):
        crosses = (y1 > la) != (y2 > la)
        if crosses.any():
            with np.errstate(divide="ignore", invalid="ignore"):
                x_at = x1 + (la - y1) * (x2 - x1) / (y2 - y1)
            odd ^= crosses & (lo < x_at)
    inside[box] = odd
    return inside


def depth_prior_at(lat, lon, depths_km, s: LocateSettings) -> np.ndarray:
    """The depth prior (chi-square units) of every trial epicentre and depth, shaped
    (nodes, depths): a depth region's own prior inside it (``s.depth_regions``, the first
    that holds the node), the global :func:`depth_prior` elsewhere."""
    d = np.asarray(depths_km, dtype=float)
    lat = np.asarray(lat, dtype=float)
    out = np.broadcast_to(depth_prior(d, s), (len(lat), len(d)))
    if not s.depth_regions:
        return out
    out = out.copy()
    left = np.ones(len(lat), dtype=bool)
    for r in s.depth_regions:
        hit = left.copy()
        hit[left] = in_polygon(lat[left], np.asarray(lon, dtype=float)[left], r.polygon)
        if hit.any():
            out[hit] = _prior_row(d, r.typical_km, r.free_km, r.scale_km)
            left &= ~hit
    return out


def _median_last(x: np.ndarray) -> np.ndarray:
    """Median over the last axis, NaNs left out (NaN where all are); by sorting, which for
    the few picks of a location is several times faster than ``np.median``/``nanmedian``."""
    srt = np.sort(x, axis=-1)  # NaNs sort last
    cnt = np.count_nonzero(~np.isnan(x), axis=-1)
    lo = np.maximum(cnt - 1, 0) // 2
    hi = np.minimum(cnt // 2, x.shape[-1] - 1)
    a = np.take_along_axis(srt, lo[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(srt, hi[..., None], axis=-1)[..., 0]
    out = 0.5 * (a + b)
    out[cnt == 0] = np.nan
    return out


def _score(lat, lon, depths, picks, silent, silent_seen_s, s: LocateSettings):
    """Misfit of every (node, depth); returns arrays shaped (nodes, depths) and details."""
    rows = default_table().at_depths(depths)
    plat, plon, pt, late = picks
    epi = distance_km(lat[:, None], lon[:, None], plat[None, :], plon[None, :])  # (G, N)
    tp, ts = rows.times_s(epi)  # (G, D, N)
    sig = s.pick_sigma_s
    arrive = pt[None, None, :] - tp  # origin time each pick implies, if P
    # a late onset (Trigger.late_onset) is no arrival time: it bounds the first arrival
    # from above and takes no part in the origin time while timed picks exist
    timed = ~late if late.any() and not late.all() else np.ones(len(pt), dtype=bool)
    ot0 = _median_last(arrive if timed.all() else np.where(timed, arrive, np.nan))  # (G, D)
    rp = arrive - ot0[..., None]
    rs = pt[None, None, :] - ts - ot0[..., None]
    as_s = (np.abs(rs) < np.abs(rp)) & (np.abs(rp) > 2 * sig) & timed
    # re-estimate origin time from the picks read as P (fall back to all when none)
    use_p = ~as_s & timed
    cnt = use_p.sum(axis=2)
    ot = np.where(cnt > 0, _median_last(np.where(use_p, arrive, np.nan)), ot0)
    rp = arrive - ot[..., None]
    rs = pt[None, None, :] - ts - ot[..., None]
    res = np.where(as_s, rs, rp)
    if not timed.all():
        # P may have come any time before a late onset, never after it
        res = np.where(timed, res, np.minimum(rp, 0.0))
    cost = np.minimum((res / sig) ** 2, RESIDUAL_CAP**2).sum(axis=2) + S_PENALTY * as_s.sum(axis=2)
    first = int(np.argmin(np.where(timed, pt, np.inf)))
    d_first = epi[:, first]  # (G,)
    cost = cost + (d_first[:, None] / s.first_device_prior_km) ** 2
    cost = cost + depth_prior_at(lat, lon, depths, s)
    viol = np.zeros_like(cost, dtype=np.int64)
    if silent is not None and len(silent[0]):
        viol, viol_cost = _silent_violations(lat, lon, rows, epi, as_s, ot, silent, silent_seen_s, s)
        cost = cost + viol_cost
    return cost, ot, res, as_s, viol, epi


def _coarse_cost(lat, lon, depths, picks, silent, silent_seen_s, s: LocateSettings, step: float) -> np.ndarray:
    """The coarse grid's misfit (nodes, depths), exact wherever it can matter and +inf
    elsewhere: at every node whose misfit is within ``CHI2_1SIGMA`` of the best (the
    error estimate) and at the best nodes in order as far as the search for distinct
    minima (:func:`_coarse_seeds`) reads them.

    The silent devices' cost (the expensive part: their travel times from every node and
    depth) only adds to the picks' misfit, so the picks' misfit is a lower bound: nodes
    are scored with their silent devices in order of that bound, in doubling batches,
    until the next bound exceeds everything the search will read. A new-event search
    over 400 km scores a few hundred of its 6,561 nodes instead of all (40-120 ms a
    locate on a 100,000-phone network before; the results are the same)."""
    base = _score(lat, lon, depths, picks, None, silent_seen_s, s)
    if silent is None or not len(silent[0]):
        return base[0]
    cost_b, ot, _, as_s, _, epi = base
    rows = default_table().at_depths(depths)
    lb = cost_b.min(axis=1)
    by_lb = np.argsort(lb, kind="stable")
    cost = np.full_like(cost_b, np.inf)
    n_done, n = 0, min(len(lb), 256)
    while True:
        idx = by_lb[n_done:n]
        _, vc = _silent_violations(lat[idx], lon[idx], rows, epi[idx], as_s[idx], ot[idx], silent, silent_seen_s, s)
        cost[idx] = cost_b[idx] + vc
        n_done = n
        if n_done >= len(lb):
            return cost
        bound = lb[by_lb[n_done]]  # no node left unscored costs less than this
        node_cost = cost.min(axis=1)
        if node_cost.min() + CHI2_1SIGMA < bound and _coarse_seeds(lat, lon, node_cost, step, below=bound) is not None:
            return cost
        n = min(len(lb), 2 * n)


def _coarse_seeds(lat, lon, node_cost, step: float, below: float = np.inf) -> list[int] | None:
    """Up to three distinct minima (nodes more than 2.5 coarse steps apart) among the
    ``COARSE_KEEP`` best coarse nodes, read in order of cost; None when that reading
    reaches a node costing ``below`` or more before it is complete (the order past it is
    not known yet)."""
    top = np.argsort(node_cost, kind="stable")[:COARSE_KEEP]
    free = np.ones(len(top), dtype=bool)  # not within 2.5 steps of a seed chosen so far
    seeds: list[int] = []
    while len(seeds) < 3:
        nxt = np.flatnonzero(free)
        # the reading goes on to the next free node, or to the end of the list
        last = top[nxt[0]] if len(nxt) else top[-1]
        if node_cost[last] >= below:
            return None if below < np.inf else seeds  # (+inf: a node never scored, the end)
        if not len(nxt):
            break
        seeds.append(int(last))
        free &= distance_km(lat[last], lon[last], lat[top], lon[top]) > 2.5 * step
    return seeds


def _silent_violations(lat, lon, rows, epi, as_s, ot, silent, silent_seen_s, s: LocateSettings) -> np.ndarray:
    """Per (node, depth): how many silent devices should have triggered by now, and the
    cost of their silence (the sum of their penalties)."""
    slat, slon, count, penalty = silent
    viol = np.zeros(ot.shape, dtype=np.int64)
    viol_cost = np.zeros(ot.shape, dtype=float)
    sepi = distance_km(lat[:, None], lon[:, None], slat[None, :], slon[None, :])  # (G, M)
    reach = np.max(np.where(as_s, 0.0, epi[:, None, :]), axis=2)  # farthest P-triggered
    # only devices closer than the farthest P pick at some depth can object: the
    # others' travel times are not needed
    cand = (sepi < reach.max(axis=1)[:, None]).any(axis=0)
    if cand.any():
        sepi = sepi[:, cand]
        stp = rows.p_time_s(sepi)  # (G, D, M)
        # P must have reached the device before the end of the data it has delivered
        should = (sepi[:, None, :] < reach[..., None]) & (
            ot[..., None] + stp + s.silent_grace_s < silent_seen_s[cand][None, None, :]
        )
        viol = should @ count[cand]
        viol_cost = should @ (count * penalty)[cand]
    return viol, viol_cost


def _nearest(lat0: float, lon0: float, lat: np.ndarray, lon: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` points nearest (great circle) to (lat0, lon0), nearest first.

    On a million phones a haversine of every row and a full sort cost ~170 ms per
    locate, several locates a step: the alert path stalled for seconds in a burst. So
    the ``k`` nearest by a flat-earth proxy (no trigonometry) bound the radius ``R``
    that holds the true ``k`` nearest; only the rows inside the box that contains every
    point within ``R`` get the haversine. The same points as the full computation (rows
    at equal distance may be taken in another order)."""
    n = len(lat)
    if n <= 4 * k:
        return np.argsort(distance_km(lat0, lon0, lat, lon), kind="stable")[:k]
    c = math.cos(math.radians(lat0))
    proxy = (lat - lat0) ** 2 + ((lon - lon0) * c) ** 2
    first = np.argpartition(proxy, k)[:k]
    r_km = float(distance_km(lat0, lon0, lat[first], lon[first]).max()) * (1 + 1e-9) + 1e-6
    ang = r_km / EARTH_RADIUS_KM
    dlat = math.degrees(ang)
    if abs(lat0) + dlat >= 89.0 or ang >= math.pi / 4:
        inside = np.arange(n)  # near a pole or very sparse: the box is no help
    else:
        dlon = math.degrees(math.asin(min(1.0, math.sin(ang) / math.cos(math.radians(abs(lat0) + dlat)))))
        wrapped = (lon - lon0 + 180.0) % 360.0 - 180.0  # across the antimeridian too
        inside = np.flatnonzero((np.abs(lat - lat0) <= dlat) & (np.abs(wrapped) <= dlon))
    d = distance_km(lat0, lon0, lat[inside], lon[inside])
    return inside[np.argsort(d, kind="stable")[:k]]


def search_centre(picks_lat, picks_lon, picks_t, picks_late=None) -> tuple[float, float]:
    """Where :func:`locate` centres its search when given no ``center`` (degrees): the
    first three timed picks' places, the earliest weighted most (late onsets left out
    unless every pick is late). Its ``MAX_SILENT`` silent devices are the nearest to it."""
    plat = np.asarray(picks_lat, dtype=float)
    plon = np.asarray(picks_lon, dtype=float)
    pt = np.asarray(picks_t, dtype=float)
    late = np.zeros(len(pt), dtype=bool) if picks_late is None else np.asarray(picks_late, dtype=bool)
    timed = ~late if late.any() and not late.all() else slice(None)
    return _search_centre(plat[timed], plon[timed], pt[timed])


def _search_centre(plat, plon, pt) -> tuple[float, float]:
    """Default search centre: the first three picks' places, the earliest weighted most."""
    first = np.argsort(pt)[: min(3, len(pt))]
    w = 1.0 / (1.0 + (pt[first] - pt[first].min()))
    return float(np.average(plat[first], weights=w)), float(np.average(plon[first], weights=w))


def locate(
    picks_lat,
    picks_lon,
    picks_t,
    now_s: float,
    silent_lat=(),
    silent_lon=(),
    settings: LocateSettings | None = None,
    center: tuple[float, float] | None = None,
    half_km: float | None = None,
    silent_seen_s=None,
    silent_phone=None,
    picks_late=None,
) -> Location:
    """Locate an event from P onsets (UNIX s) at devices (degrees).

    ``silent_*``: devices streaming normally that have not triggered;
    ``silent_seen_s``: for each, the time up to which its data has arrived (default
    ``now_s``): P is expected there only before that; ``silent_phone``: for each, whether
    it is a phone (its silence costs ``PHONE_SILENT_PENALTY``, a streaming sensor's
    ``SILENT_PENALTY``; default: all streams). Only the ``MAX_SILENT`` silent
    devices nearest the search centre are used, which bounds the cost on a large network
    (the far ones cannot tell nearby nodes apart anyway). ``center`` and ``half_km``
    restrict the search (an update of a known event searches near it); by default the
    search covers ``search_radius_km`` around the earliest pick.

    ``picks_late``: for each pick, whether its onset is late (``Trigger.late_onset``: the
    energy rose while the device warmed up): such an onset is no arrival time but a bound,
    P came at or before it; it costs only when the P predicted comes after it, and takes no
    part in the origin time, the RMS or the search centre (unless every pick is late).
    """
    s = settings or LocateSettings()
    plat = np.asarray(picks_lat, dtype=float)
    plon = np.asarray(picks_lon, dtype=float)
    pt = np.asarray(picks_t, dtype=float)
    late = np.zeros(len(pt), dtype=bool) if picks_late is None else np.asarray(picks_late, dtype=bool)
    picks = (plat, plon, pt, late)
    slat = np.asarray(silent_lat, dtype=float)
    slon = np.asarray(silent_lon, dtype=float)
    seen = np.full(len(slat), now_s) if silent_seen_s is None else np.asarray(silent_seen_s, dtype=float)
    pen = np.full(len(slat), SILENT_PENALTY)
    if silent_phone is not None:
        pen[np.asarray(silent_phone, dtype=bool)] = PHONE_SILENT_PENALTY
    if center is None:
        center = search_centre(plat, plon, pt, late)
    if len(slat) > MAX_SILENT:
        near = _nearest(center[0], center[1], slat, slon, MAX_SILENT)
        slat, slon, seen, pen = slat[near], slon[near], seen[near], pen[near]
    # Phones report their cell's centre and share one 'quiet up to' time, so the nearest
    # silent devices are often a handful of distinct rows: each is scored once, weighted
    # by how many devices it stands for (the same cost, a fraction of the work)
    count = np.ones(len(slat))
    if len(slat) > 1:
        rows, n = np.unique(np.stack([slat, slon, seen, pen], axis=1), axis=0, return_counts=True)
        if len(rows) < len(slat):
            slat, slon, seen, pen, count = rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].copy(), rows[:, 3].copy(), n.astype(float)
    silent = (slat, slon, count, pen)
    half = s.search_radius_km if half_km is None else half_km
    depths = np.asarray(s.depths_km)

    step = s.coarse_step_km if half > 60 else max(s.fine_step_km * 2, half / 10)
    lat, lon = _grid(center[0], center[1], half, step)
    cost = _coarse_cost(lat, lon, depths, picks, silent, seen, s, step)
    # fine search around the best few distinct coarse minima: a coarse grid can rank a
    # wrong basin first when the true one falls between its nodes
    seeds = _coarse_seeds(lat, lon, cost.min(axis=1), step)
    best_fine = None
    for g in seeds:
        lat2, lon2 = _grid(float(lat[g]), float(lon[g]), 1.5 * step, s.fine_step_km)
        fine = _score(lat2, lon2, depths, picks, silent, seen, s)[:5]
        if best_fine is None or fine[0].min() < best_fine[2][0].min():
            best_fine = (lat2, lon2, fine)
    lat2, lon2, (cost2, ot2, res2, as_s2, viol2) = best_fine
    g2, d2 = np.unravel_index(np.argmin(cost2), cost2.shape)
    best = cost2[g2, d2]
    # 1-sigma epicentre: nodes within chi-square 2.3 of the best (2 degrees of freedom),
    # over the coarse grid too so that a flat misfit surface shows as a large error
    near = np.concatenate(
        [
            distance_km(lat2[g2], lon2[g2], lat2, lon2)[cost2.min(axis=1) <= best + CHI2_1SIGMA],
            distance_km(lat2[g2], lon2[g2], lat, lon)[cost.min(axis=1) <= best + CHI2_1SIGMA],
        ]
    )
    herr = float(max(near.max(initial=0.0), s.fine_step_km / 2))
    r = res2[g2, d2]
    isS = as_s2[g2, d2]
    rp = r[~isS & ~late] if not late.all() else r[~isS]
    rms = float(np.sqrt(np.mean(rp**2))) if len(rp) else float("inf")
    return Location(
        latitude=float(lat2[g2]),
        longitude=float(lon2[g2]),
        depth_km=float(depths[d2]),
        origin_time_s=float(ot2[g2, d2]),
        misfit=float(best),
        rms_s=rms,
        horizontal_error_km=herr,
        is_s=isS.copy(),
        residual_s=r.copy(),
        n_silent_violations=int(viol2[g2, d2]),
    )
