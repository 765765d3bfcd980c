"""Run `yujing demo` on every scenario and summarise each event the engine announced: how
its magnitude and epicentre moved over its updates, not only where they ended.

    python scripts/demo_scenarios.py                      # all scenarios, seed 0, 100,000 phones
    python scripts/demo_scenarios.py lushan2013 --seed 3

One row per event (a scenario with more than one event has split a quake or found a false
one): true M; announced M first / highest / final; the median and largest epicentre error
over the updates (km, against the scenario's epicentre); how many updates moved M by
``STEP`` or more. What docs/demo.md's scenario table is made from.
"""

from __future__ import annotations

import argparse
import statistics

from yujing import demo, scenarios
from yujing.geo import distance_km

STEP = 0.3  # magnitude units: a step an alert area visibly follows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", nargs="*", help=f"scenario keys (default: all of {', '.join(scenarios.names())})")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phones", type=int, default=100_000)
    a = ap.parse_args(argv)
    print("| scenario | event | updates | first update after origin | true M | M first / max / final "
          "| epicentre error median / max / final | M steps >= 0.3 |")
    print("|---|---|---|---|---|---|---|---|")
    for key in a.scenario or scenarios.names():
        sc = scenarios.get(key)
        result = demo.run(key, a.phones, seed=a.seed)
        events: dict[str, list] = {}
        for u in result.updates:
            events.setdefault(u.event_id, []).append(u)
        if not events:
            print(f"| {key} | - | 0 | - | {sc.magnitude} | - | - | - |")
        for eid, ups in events.items():
            err = [float(distance_km(u.latitude, u.longitude, sc.latitude, sc.longitude)) for u in ups]
            ms = [u.magnitude for u in ups]
            steps = sum(1 for x, y in zip(ms, ms[1:]) if abs(y - x) >= STEP)
            print(
                f"| {key} | {eid} | {len(ups)} | {ups[0].issued_at_s - sc.origin_time_s:+.1f} s | {sc.magnitude} "
                f"| {ms[0]:.2f} / {max(ms):.2f} / {ms[-1]:.2f} "
                f"| {statistics.median(err):.0f} / {max(err):.0f} / {err[-1]:.0f} km | {steps} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
