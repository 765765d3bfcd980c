"""Time and peak memory of ``yujing demo`` (simulate -> engine -> alert policy).

Each run is a fresh Python process (its peak RSS is its own) running
:func:`yujing.demo.run` for one scenario and phone count, and reports the demo's own split
(``simulate``, ``engine``, ``alerts``, ``total``), the span of simulated time it covers, and
peak RSS (MB = 10^6 bytes).

Same-run reference, in the same process after the demo: iterating the simulated network's
message stream once more (every trigger and update built as a record, heartbeats as
batches), i.e. the cost of merely materialising the engine's input. ``engine / stream``
is the ratio to compare across machines; ``simulated s / total`` says how much faster
than real time the whole demo runs.

    python bench/bench_demo.py                                  # Luding, 100,000 phones
    python bench/bench_demo.py --scenario luxian2021 --phones 100000 --repeats 3
    python bench/bench_demo.py --json demo.json

Nothing here fails because a number is slow; it exits non-zero only if a run fails.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
from yujing import demo
key, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
res = demo.run(key, n, seed=seed)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
k = 0
for m in res.net.messages():
    k += 1
t_stream = time.perf_counter() - t
s = res.summary()
print(json.dumps({
    "timings": res.timings, "stream_s": t_stream, "span_s": res.net.end_s - res.net.start_s,
    "peak_rss_mb": rss * 1024 / 1e6, "first_alert_s": s["first_alert_s"],
    "final_magnitude": s["final_magnitude"], "trigger_messages": s["engine"]["trigger_messages"],
}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scenario", default="luding2022")
    ap.add_argument("--phones", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--json", help="write the results as JSON")
    a = ap.parse_args(argv)
    rows = []
    for _ in range(a.repeats):
        p = subprocess.run([sys.executable, "-c", CHILD, a.scenario, str(a.phones), str(a.seed)], capture_output=True, text=True)
        if p.returncode != 0:
            print(p.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
    best = min(rows, key=lambda r: r["timings"]["total"])
    t = best["timings"]
    print(f"yujing demo, {a.scenario}, {a.phones:,} phones, seed {a.seed}, best of {a.repeats} ({platform.processor() or platform.machine()})")
    print(f"  simulate {t['simulate']:.1f} s, engine {t['engine']:.1f} s, alerts {t['alerts']:.1f} s, total {t['total']:.1f} s; peak RSS {best['peak_rss_mb']:.0f} MB")
    print(f"  reference: the message stream alone {best['stream_s']:.1f} s ({best['trigger_messages']:,} trigger messages + heartbeat batches)")
    print(f"  engine / stream = {t['engine'] / best['stream_s']:.1f}x; {best['span_s']:.0f} s simulated in {t['total']:.1f} s = {best['span_s'] / t['total']:.1f}x real time")
    print(f"  first alert {best['first_alert_s']} s after origin, final M{best['final_magnitude']}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"scenario": a.scenario, "phones": a.phones, "runs": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
