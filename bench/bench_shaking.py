"""Time of the shaking forecast (PGA, PGV and MMI) for a million cells, in one process.

    python bench/bench_shaking.py [--cells 1000000] [--repeats 7] [--random] [--json PATH]

The cells are the centres of H3 resolution-8 cells (~0.74 km^2 each; a million of them
reach ~575 km from the epicentre) around an epicentre off Guerrero, Mexico (16.9 N, 99.9 W),
or with ``--random`` uniformly random points over the same area. Vs30 per cell is either
the default 760 m/s (a scalar) or a seeded random array of 150-1500 m/s.

Each case is timed around one call of ``yujing.shaking.forecast`` (distances, model, MMI:
everything a caller gets back) after one untimed warm-up call; the best and the median of
``--repeats`` calls are reported. The same-run reference is
``yujing.geo.distance_km`` for the same cells (the haversine distances alone, the least any
forecast has to do), timed the same way; the ratio forecast / reference is the number to
compare across machines. The target is 1 s per forecast of 1,000,000 cells; the script
prints PASS/MISS and exits 0 either way (non-zero only if a forecast returns nonsense).
numpy runs these element-wise operations on one core, so the second core does not help.

Also reported: the one-off cost of the finite-fault table (built on first use), and the
cost per call of ``forecast_site``, the plain one-site twin a device runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone

import h3
import numpy as np

from yujing import shaking
from yujing.geo import distance_km

EPICENTRE = (16.9, -99.9)  # off Guerrero, near Acapulco
TARGET_S = 1.0
H3_RES = 8


def h3_centres(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the first n cells of an H3 disk around the epicentre."""
    edge_cells = int(math.ceil((-3 + math.sqrt(9 + 12 * (n - 1))) / 6))  # disk of k rings has 3k(k+1)+1 cells
    cells = h3.grid_disk(h3.latlng_to_cell(*EPICENTRE, H3_RES), edge_cells)[:n]
    ll = np.array([h3.cell_to_latlng(c) for c in cells])
    return ll[:, 0].copy(), ll[:, 1].copy()


def random_sites(n: int, lat: np.ndarray, lon: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(lat.min(), lat.max(), n), rng.uniform(lon.min(), lon.max(), n)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    out = fn()  # warm-up (and the result to check)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--random", action="store_true", help="uniform random sites instead of H3 cell centres")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)

    env = {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "commit": git_commit(),
        "loadavg_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    print(f"bench_shaking  {env['date_utc']}  {env['cpus']} CPUs  Python {env['python']}  numpy {env['numpy']}  "
          f"commit {env['commit']}  load average {env['loadavg_start']}")

    t0 = time.perf_counter()
    lat, lon = h3_centres(args.cells)
    kind = f"H3 res-{H3_RES} cell centres"
    if args.random:
        lat, lon = random_sites(args.cells, lat, lon, args.seed)
        kind = "uniform random sites"
    n = len(lat)
    vs30_cells = np.random.default_rng(args.seed).uniform(150.0, 1500.0, n)
    backarc_cells = lon < EPICENTRE[1] - 3.0  # an arbitrary half, to exercise the per-cell backarc term
    reach = distance_km(*EPICENTRE, lat, lon).max()
    print(f"{n:,} {kind} within {reach:.0f} km of {EPICENTRE} (set up in {time.perf_counter() - t0:.1f} s); "
          f"best and median of {args.repeats} calls\n")

    shaking._strike_averaged_table.cache_clear()
    t0 = time.perf_counter()
    shaking._strike_averaged_table()
    table_ms = (time.perf_counter() - t0) * 1e3

    ev_lat, ev_lon = EPICENTRE
    ref_best, ref_med, _ = timed(lambda: distance_km(ev_lat, ev_lon, lat, lon), args.repeats)
    cases = [
        ("bssa14 M5.5, point source, Vs30 760", "bssa14", 5.5, 15.0, 760.0, False),
        ("bssa14 M7.4, finite fault, Vs30 760", "bssa14", 7.4, 15.0, 760.0, False),
        ("bssa14 M7.4, finite fault, Vs30 per cell", "bssa14", 7.4, 15.0, vs30_cells, False),
        ("bchydro_interface M7.4, Vs30 760", "bchydro_interface", 7.4, 20.0, 760.0, False),
        ("bchydro_interface M7.4, Vs30 + backarc per cell", "bchydro_interface", 7.4, 20.0, vs30_cells, backarc_cells),
        ("bchydro_intraslab M7.1, Vs30 per cell", "bchydro_intraslab", 7.1, 57.0, vs30_cells, False),
    ]
    rows = [{"case": "reference: haversine distances only", "best_ms": ref_best * 1e3, "median_ms": ref_med * 1e3,
             "ratio": 1.0}]
    sane = True
    width = max(len(c[0]) for c in cases) + 2
    print(f"{'case':<{width}} {'best ms':>8} {'median ms':>10} {'/ haversine':>12}  target <= {TARGET_S * 1e3:.0f} ms")
    print(f"{rows[0]['case']:<{width}} {ref_best * 1e3:8.1f} {ref_med * 1e3:10.1f} {1.0:11.1f}x")
    for name, model, mag, depth, vs30, backarc in cases:
        best, med, sh = timed(
            lambda: shaking.forecast(ev_lat, ev_lon, depth, mag, lat, lon, vs30, model, backarc=backarc), args.repeats
        )
        finite = np.all(np.isfinite(sh.pga_g)) and np.all(np.isfinite(sh.pgv_cm_s))
        ok = bool(finite and sh.mmi.min() >= 1.0 and sh.mmi.max() <= 10.0)
        sane &= ok
        verdict = "PASS" if best <= TARGET_S else "MISS"
        rows.append({"case": name, "best_ms": best * 1e3, "median_ms": med * 1e3, "ratio": best / ref_best,
                     "verdict": verdict, "max_mmi": float(sh.mmi.max()), "cells_mmi_ge_5": int((sh.mmi >= 5.0).sum())})
        print(f"{name:<{width}} {best * 1e3:8.1f} {med * 1e3:10.1f} {best / ref_best:11.1f}x  {verdict}"
              f"   (max MMI {sh.mmi.max():.1f}, {int((sh.mmi >= 5).sum()):,} cells >= 5){'' if ok else '  NONSENSE'}")

    # the one-site twin, per call
    k = 20_000
    idx = np.random.default_rng(args.seed).integers(0, n, k)
    t0 = time.perf_counter()
    for i in idx:
        shaking.forecast_site(ev_lat, ev_lon, 20.0, 7.4, lat[i], lon[i], vs30_cells[i], "bchydro_interface")
    site_us = (time.perf_counter() - t0) / k * 1e6
    vec_ns = rows[4]["best_ms"] * 1e6 / n
    env["loadavg_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nfinite-fault table, first use: {table_ms:.0f} ms (once per process)")
    print(f"forecast_site (one site, plain math): {site_us:.1f} us per call; the vectorised forecast "
          f"costs {vec_ns:.0f} ns per cell (bchydro_interface, Vs30 760)")
    print(f"load average {env['loadavg_start']} -> {env['loadavg_end']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "cells": n, "sites": kind, "rows": rows, "table_ms": table_ms,
                       "forecast_site_us": site_us}, fh, indent=2)
            fh.write("\n")
        print(f"wrote {args.json}")
    return 0 if sane else 1


if __name__ == "__main__":
    sys.exit(main())
