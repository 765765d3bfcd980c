#!/usr/bin/env python
"""Build the P/S first-arrival travel-time table used by :mod:`yujing.traveltime`.

How to run (from the repository root)::

    python scripts/make_traveltime_table.py

Options: ``--jobs N`` (worker processes, default: all CPUs), ``--check N`` (number of
seeded random points compared against ``TauPyModel.get_travel_times`` after the build,
default 400; 0 skips the check), ``--out PATH``.  Needs ``obspy`` (a test dependency)
and takes a few minutes on two cores.

What it computes
----------------
For every node of a (source depth x epicentral distance) grid, the FIRST arrival of
any P-type phase and of any S-type phase from ObsPy's TauP with the ``iasp91`` model,
receiver at the surface (depth 0 km):

* P: minimum over ``["p", "P", "Pn", "Pg", "Pb"]`` (all branches of every phase);
* S: minimum over ``["s", "S", "Sn", "Sg", "Sb"]``.

In iasp91 TauP has no Conrad discontinuity, so ``Pb``/``Sb`` do not exist and are
skipped (recorded in ``meta``); TauP's ``P``/``S`` already contain the crustal
(``Pg``-like) branches.  Below 2000 km the ``ttp``/``tts`` families add only core and
diffracted phases, which arrive much later, so these lists give the true first
arrival (the seeded check and ``tests/test_traveltime.py`` confirm this against
``ttp``/``tts``).  Distances are converted with ``obspy.geodetics.kilometer2degrees``
(sphere of radius 6371 km, the same as :mod:`yujing.geo`).

Distance 0: TauP returns the vertical ray (time = vertical travel time, 0 for a
surface source).  Should it return no arrival at some exact node, the node is
retried at 1e-3 km (a bilinear-interpolation-irrelevant offset) and the script
fails loudly if that does not help either.

Speed: TauP's ``get_travel_times`` refines EVERY arrival of every phase by ray
shooting (~40 ms per point).  Per source depth this script builds the same
depth-corrected model and ``SeismicPhase`` objects TauP builds, estimates all arrivals
from TauP's own ray samples (TauP's linear estimate, vectorised; within ~0.03 s of
the refined value), and then calls ``SeismicPhase.calc_time`` -- the same refined
computation as ``get_travel_times`` -- only for the phases whose estimate is within
0.5 s of the earliest one.  The result is TauP's refined first arrival; the final
check compares against ``get_travel_times`` itself.

Grid (non-uniform, piecewise regular; all nodes on a 0.5 km / 0.25 km lattice)
------------------------------------------------------------------------------
The first-arrival surface has kinks where the earliest branch changes (Pg/Pn and
Sg/Sn crossovers at 50-170 km for crustal sources, the reflected/refracted
branches from the 20 km and 35 km interfaces, upper-mantle triplications beyond
~1500 km) and high curvature next to shallow sources.  Spacing was chosen by
measuring the bilinear interpolation error at 8x8 sub-points of every cell; see
``DISTANCE_SEGMENTS_KM``/``DEPTH_SEGMENTS_KM``.  The interfaces at 20 km and 35 km
are nodes, so the depth kinks there cost nothing.

Output: ``src/yujing/data/traveltime_iasp91.npz`` with ``distance_km`` (nd,),
``depth_km`` (nz,), ``p_s`` and ``s_s`` (nz, nd) float32 in seconds, and ``meta``
(a JSON string: model, obspy version, date, command, grid, phases).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

MODEL_NAME = "iasp91"
EARTH_RADIUS_KM = 6371.0
P_PHASES = ["p", "P", "Pn", "Pg", "Pb"]
S_PHASES = ["s", "S", "Sn", "Sg", "Sb"]
RECEIVER_DEPTH_KM = 0.0

# (start, stop, step) in km, stop included; pieces must join up.
DISTANCE_SEGMENTS_KM = [
    (0.0, 2.0, 0.5),  # hyperbolic moveout of very shallow sources
    (2.0, 10.0, 1.0),
    (10.0, 60.0, 2.5),
    (60.0, 170.0, 1.0),  # Pg/Pn, Sg/Sn crossovers
    (170.0, 200.0, 5.0),
    (200.0, 1100.0, 20.0),  # mantle P/S: smooth
    (1100.0, 2000.0, 10.0),  # 210/410 km structure, triplications
]
DEPTH_SEGMENTS_KM = [
    (0.0, 2.0, 0.25),
    (2.0, 35.0, 0.5),  # crust (interfaces at 20 and 35 km are nodes)
    (35.0, 40.0, 1.25),
    (40.0, 200.0, 2.5),
]

CANDIDATE_MARGIN_S = 0.5  # refine every phase whose TauP estimate is this close to the earliest
EPSILON_DISTANCE_KM = 1e-3

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "yujing" / "data" / "traveltime_iasp91.npz"


def grid_from_segments(segments) -> np.ndarray:
    """Concatenate regular pieces ``(start, stop, step)`` (stop included) into one axis."""
    parts = []
    prev_stop = None
    for start, stop, step in segments:
        if prev_stop is not None and start != prev_stop:
            raise ValueError(f"segments must join up: {prev_stop} != {start}")
        n = int(round((stop - start) / step))
        if abs(n * step - (stop - start)) > 1e-9:
            raise ValueError(f"step {step} does not divide [{start}, {stop}]")
        parts.append(start + step * np.arange(n + 1))
        prev_stop = stop
    return np.unique(np.round(np.concatenate(parts), 9))


# --------------------------------------------------------------------------- TauP


_MODEL = None


def _model():
    global _MODEL
    if _MODEL is None:
        from obspy.taup import TauPyModel

        _MODEL = TauPyModel(MODEL_NAME)
    return _MODEL


def _phases(depth_km: float, names):
    """SeismicPhase objects exactly as ``TauPyModel.get_travel_times`` builds them."""
    from obspy.taup.helper_classes import TauModelError
    from obspy.taup.seismic_phase import SeismicPhase

    tau_model = _model().model.depth_correct(depth_km)
    if RECEIVER_DEPTH_KM != depth_km:  # as obspy.taup.taup_time.TauPTime.depth_correct
        tau_model = tau_model.split_branch(RECEIVER_DEPTH_KM)
    phases, skipped = [], []
    for name in names:
        try:
            phases.append(SeismicPhase(name, tau_model, RECEIVER_DEPTH_KM))
        except TauModelError:
            skipped.append(name)
    return phases, skipped


def _estimate(phase, x_rad: np.ndarray) -> np.ndarray:
    """Earliest unrefined arrival of ``phase`` at each distance (radians); inf if none.

    Vectorised copy of TauP's ``seismic_phase_calc_time_inner_loop`` (branch search)
    and ``SeismicPhase.linear_interp_arrival`` (tau-stationarity estimate).  Valid for
    distances below 180 degrees (no wrap-around), which is all this table needs.
    """
    d, p, t = phase.dist, phase.ray_param, phase.time
    n = len(d)
    if n < 2:
        return np.full(x_rad.shape, np.inf)
    x = x_rad[:, None]
    d0, d1, p0, p1, t0, t1 = d[None, :-1], d[None, 1:], p[None, :-1], p[None, 1:], t[None, :-1], t[None, 1:]
    ok = ((d0 - x) * (x - d1) >= 0) & (x <= phase.max_distance)
    not_last = np.ones(n - 1, dtype=bool)
    not_last[-1] = False
    ok &= ~((x == d1) & not_last[None, :])  # no double arrival at a sample
    if n > 2:
        ok &= p0 != p1  # shadow zone
    th0 = t0 + p0 * (x - d0)
    th1 = t1 + p1 * (x - d1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dpdx = (p0 - p1) / (d0 - d1)
    est = np.where(dpdx > 0, np.maximum(th0, th1), np.minimum(th0, th1))
    est = np.where(x == d0, t0, np.where(x == d1, t1, est))
    return np.where(ok, est, np.inf).min(axis=1)


def _refined_first(phases, degrees: float) -> float:
    """TauP refined first arrival (same call as get_travel_times) over ``phases``."""
    times = [a.time for ph in phases for a in ph.calc_time(degrees)]
    return min(times) if times else np.inf


def first_arrival_row(depth_km: float, distance_km: np.ndarray):
    """First-arrival P and S times (s) at one source depth for all distances (km)."""
    from obspy.geodetics import kilometer2degrees

    out = {}
    skipped_all = []
    for key, names in (("p", P_PHASES), ("s", S_PHASES)):
        phases, skipped = _phases(float(depth_km), names)
        skipped_all += skipped
        x_rad = np.asarray(distance_km, dtype=np.float64) / EARTH_RADIUS_KM
        est = np.array([_estimate(ph, x_rad) for ph in phases])  # (nphase, nd)
        best = est.min(axis=0)
        row = np.empty(len(distance_km))
        for i, dist in enumerate(distance_km):
            value = np.inf
            if np.isfinite(best[i]):
                cand = [ph for ph, e in zip(phases, est[:, i]) if e <= best[i] + CANDIDATE_MARGIN_S]
                value = _refined_first(cand, kilometer2degrees(float(dist)))
                if not np.isfinite(value):
                    value = _refined_first(phases, kilometer2degrees(float(dist)))
            if not np.isfinite(value):  # no arrival exactly here: nudge the distance
                value = _refined_first(phases, kilometer2degrees(float(dist) + EPSILON_DISTANCE_KM))
            if not np.isfinite(value):
                if dist == 0.0 and depth_km == 0.0:
                    value = 0.0
                else:
                    raise RuntimeError(
                        f"TauP gives no {key.upper()} arrival at depth {depth_km} km, distance {dist} km"
                    )
            row[i] = value
        out[key] = row
    return out["p"], out["s"], sorted(set(skipped_all))


def _row_job(args):
    depth_km, distance_km = args
    return first_arrival_row(depth_km, distance_km)


# --------------------------------------------------------------------------- check


def check_against_taup(path: Path, n: int, seed: int = 20240601):
    """Compare a bilinear interpolation of the saved table with get_travel_times."""
    from obspy.geodetics import kilometer2degrees
    from scipy.interpolate import RegularGridInterpolator

    z = np.load(path)
    interp_p = RegularGridInterpolator((z["depth_km"], z["distance_km"]), z["p_s"].astype(np.float64))
    interp_s = RegularGridInterpolator((z["depth_km"], z["distance_km"]), z["s_s"].astype(np.float64))
    rng = np.random.default_rng(seed)
    n_core = (3 * n) // 4  # the accuracy region of the brief: 0-1500 km, 0-150 km
    dist = np.concatenate([rng.uniform(0, 1500, n_core), rng.uniform(0, 2000, n - n_core)])
    dep = np.concatenate([rng.uniform(0, 150, n_core), rng.uniform(0, 200, n - n_core)])
    model = _model()
    err = {"p": [], "s": []}
    for d, h in zip(dist, dep):
        for key, names in (("p", ["ttp", "Pg"]), ("s", ["tts", "Sg"])):
            arr = model.get_travel_times(h, kilometer2degrees(d), phase_list=names)
            ref = min(a.time for a in arr)
            val = (interp_p if key == "p" else interp_s)([[h, d]])[0]
            err[key].append(val - ref)
    e = {k: np.abs(np.array(v)) for k, v in err.items()}
    return {
        "n": n,
        "p_max_core": float(e["p"][:n_core].max()),
        "s_max_core": float(e["s"][:n_core].max()),
        "p_max_all": float(e["p"].max()),
        "s_max_all": float(e["s"].max()),
    }


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--check", type=int, default=400, help="random points checked against TauP (0: skip)")
    args = ap.parse_args(argv)

    import obspy

    distance = grid_from_segments(DISTANCE_SEGMENTS_KM)
    depth = grid_from_segments(DEPTH_SEGMENTS_KM)
    print(f"grid: {len(distance)} distances (0-{distance[-1]:g} km) x {len(depth)} depths (0-{depth[-1]:g} km)", flush=True)

    t0 = time.time()
    jobs = [(float(h), distance) for h in depth]
    p_tab = np.empty((len(depth), len(distance)))
    s_tab = np.empty_like(p_tab)
    skipped = set()
    if args.jobs > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as ex:
            rows = ex.map(_row_job, jobs, chunksize=1)
            for j, (p_row, s_row, sk) in enumerate(rows):
                p_tab[j], s_tab[j] = p_row, s_row
                skipped.update(sk)
                if (j + 1) % 20 == 0:
                    print(f"  {j + 1}/{len(depth)} depths ({time.time() - t0:.0f} s)", flush=True)
    else:
        for j, job in enumerate(jobs):
            p_tab[j], s_tab[j], sk = _row_job(job)
            skipped.update(sk)
            if (j + 1) % 20 == 0:
                print(f"  {j + 1}/{len(depth)} depths ({time.time() - t0:.0f} s)", flush=True)
    if not (np.isfinite(p_tab).all() and np.isfinite(s_tab).all()):
        raise RuntimeError("non-finite travel times in the table")
    if not (p_tab < s_tab + 1e-9).all():
        raise RuntimeError("P later than S somewhere")

    meta = {
        "model": MODEL_NAME,
        "software": f"obspy {obspy.__version__} (obspy.taup.TauPyModel), numpy {np.__version__}, "
        f"python {platform.python_version()}",
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join(["python scripts/make_traveltime_table.py", *(sys.argv[1:] if argv is None else argv)]),
        "quantity": "first-arrival travel time in seconds, receiver at the surface",
        "p_phases": P_PHASES,
        "s_phases": S_PHASES,
        "phases_absent_from_model": sorted(skipped),
        "distance": "epicentral great-circle distance in km on a 6371 km sphere (kilometer2degrees)",
        "distance_segments_km": DISTANCE_SEGMENTS_KM,
        "depth_segments_km": DEPTH_SEGMENTS_KM,
        "interpolation": "bilinear in (depth_km, distance_km)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        distance_km=distance.astype(np.float32),
        depth_km=depth.astype(np.float32),
        p_s=p_tab.astype(np.float32),
        s_s=s_tab.astype(np.float32),
        meta=np.array(json.dumps(meta)),
    )
    size = args.out.stat().st_size
    print(
        f"wrote {args.out} ({size / 1024:.1f} kB) in {time.time() - t0:.0f} s: "
        f"distance_km {distance.shape} [0, {distance[-1]:g}], depth_km {depth.shape} [0, {depth[-1]:g}], "
        f"p_s/s_s {p_tab.shape} float32; P {p_tab.min():.3f}-{p_tab.max():.3f} s, "
        f"S {s_tab.min():.3f}-{s_tab.max():.3f} s; skipped phases {sorted(skipped)}"
    )

    if args.check > 0:
        t1 = time.time()
        res = check_against_taup(args.out, args.check)
        print(
            f"check vs TauP get_travel_times at {res['n']} seeded random points ({time.time() - t1:.0f} s): "
            f"max |error| 0-1500 km/0-150 km: P {res['p_max_core']:.4f} s, S {res['s_max_core']:.4f} s; "
            f"whole table: P {res['p_max_all']:.4f} s, S {res['s_max_all']:.4f} s"
        )
        if res["p_max_core"] >= 0.05 or res["s_max_core"] >= 0.1:
            print("CHECK FAILED: interpolation error above 0.05 s (P) / 0.1 s (S)")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
