"""Time and peak memory of the scenario simulator for 100,000 and 1,000,000 phones.

Each case runs in a fresh Python process (so that its peak RSS is its own) and reports:

* ``import``: importing yujing's simulator (numpy, scipy, h3, msgspec);
* ``simulate``: :func:`yujing.sources.simulator.simulate` (places, phones, cells, the quake
  at every phone, triggers, message and heartbeat schedules), the GeoNames table already
  loaded (its one-off load is reported separately);
* ``first triggers``: building the update-0 :class:`~yujing.records.Trigger` records;
* ``stream``: iterating :meth:`SimulatedNetwork.messages` to the end (every trigger and
  update as a record, heartbeats as batches), which is what an engine consumes;
* peak RSS of the process (``ru_maxrss``) after the simulation and after the stream, MB =
  10^6 bytes, with what the imports and the GeoNames table took before.

The same-run reference, timed in the same process after the simulation (its arrays freed): drawing as many standard
normal numbers as the simulation has phones times 8 (numpy's Generator), and the haversine
distances (:func:`yujing.geo.distance_km`) from the epicentre to that many points. Ratios
simulate / reference are the numbers to compare across machines.

    python bench/bench_simulator.py                       # Luding M6.6, 100k and 1M phones
    python bench/bench_simulator.py --phones 1000000 --scenario wenchuan2008 --repeats 3
    python bench/bench_simulator.py --json sim.json

Nothing here fails because a number is slow; it exits non-zero only if a simulation fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
t = time.perf_counter()
import numpy as np
from yujing import scenarios
from yujing.geo import distance_km
from yujing.sources.simulator import simulate, world_cities, SimSettings
t_import = time.perf_counter() - t
n, key, seed, stream = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
sc = scenarios.get(key)
t = time.perf_counter(); world_cities(SimSettings().min_city_population); t_cities = time.perf_counter() - t
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); net = simulate(sc, n, seed=seed); t_sim = time.perf_counter() - t
rss_sim = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); first = net.first_triggers(); t_first = time.perf_counter() - t
t_stream = float("nan"); n_items = 0
if stream:
    t = time.perf_counter()
    for _ in net.messages(heartbeats="batch"):
        n_items += 1
    t_stream = time.perf_counter() - t
rss_stream = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
summary = net.summary()
n_first = len(first)
del net, first
# the same-run reference, after the simulation so that its arrays do not count in its peak
rng = np.random.default_rng(0)
t = time.perf_counter(); x = rng.standard_normal(8 * n); t_rand = time.perf_counter() - t
lat = sc.latitude + x[:n] * 2.0; lon = sc.longitude + x[n:2 * n] * 2.0
t = time.perf_counter(); d = distance_km(sc.latitude, sc.longitude, lat, lon); t_hav = time.perf_counter() - t
out = dict(n=n, scenario=key, import_s=t_import, cities_s=t_cities, rand_s=t_rand, haversine_s=t_hav,
           simulate_s=t_sim, first_triggers_s=t_first, stream_s=t_stream, stream_items=n_items,
           n_first=n_first, summary=summary,
           rss_before_mb=rss_before * 1024 / 1e6, rss_after_simulate_mb=rss_sim * 1024 / 1e6,
           rss_after_stream_mb=rss_stream * 1024 / 1e6,
           peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6)
print(json.dumps(out))
"""


def run_case(n: int, key: str, seed: int, stream: bool) -> dict:
    p = subprocess.run(
        [sys.executable, "-c", CHILD, str(n), key, str(seed), "1" if stream else "0"],
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"simulation of {n} phones failed")
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--phones", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--scenario", default="luding2022")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-stream", action="store_true", help="skip iterating the message stream")
    ap.add_argument("--json", help="write all results here")
    a = ap.parse_args()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"# bench_simulator: {a.scenario}, commit {commit or '?'}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    results = []
    for n in a.phones:
        runs = [run_case(n, a.scenario, a.seed, not a.no_stream) for _ in range(a.repeats)]
        results += runs
        best = min(runs, key=lambda r: r["simulate_s"])
        med = sorted(runs, key=lambda r: r["simulate_s"])[len(runs) // 2]
        s = best["summary"]
        print(f"\n## {n:,} phones ({a.repeats} runs; best / median)")
        print(f"  triggers: {s['triggered_p']:,} P + {s['triggered_s']:,} S + {s['false_triggers']:,} false; "
              f"{s['trigger_messages']:,} trigger messages, {s['heartbeats']:,} heartbeats")
        print(f"  import                 {best['import_s']:7.2f} s")
        print(f"  GeoNames table (once)  {best['cities_s']:7.2f} s")
        print(f"  simulate               {best['simulate_s']:7.2f} s / {med['simulate_s']:.2f} s")
        print(f"  first triggers         {best['first_triggers_s']:7.2f} s   ({best['n_first']:,} records)")
        if not a.no_stream:
            print(f"  stream to the end      {best['stream_s']:7.2f} s   ({best['stream_items']:,} items)")
        print(f"  reference: randn(8n)   {best['rand_s']:7.3f} s   simulate / randn = {best['simulate_s'] / best['rand_s']:.0f}x")
        print(f"  reference: haversine n {best['haversine_s']:7.3f} s   simulate / haversine = {best['simulate_s'] / best['haversine_s']:.0f}x")
        print(f"  peak RSS, simulate     {max(r['rss_after_simulate_mb'] for r in runs):7.0f} MB "
              f"(imports + GeoNames table before it: {best['rss_before_mb']:.0f} MB)")
        print(f"  peak RSS, + stream     {max(r['rss_after_stream_mb'] for r in runs):7.0f} MB")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
