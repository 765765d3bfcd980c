"""Trigger throughput of the service's engine on one core: decode + associate.

The issue's target: >= 200,000 triggers/s on one core in-process (decode + associate).
A quake's triggers are what must be absorbed fast (thousands of phones within seconds),
so the input is a simulated quake's trigger messages as wire bytes (every onset and
amplitude update of ``--phones`` phones, false triggers included; no heartbeats, which
are not triggers), fed through :func:`yujing.service.drive`: the live service's code path
(protocol decode, clock correction, registry, engine, timer) on message time. The alert
policy is switched off for this figure (it runs per event update, not per trigger) and
timed separately.

Same-run references, on the same messages: ``msgspec`` decoding alone (the least any
implementation has to do with the bytes) and :func:`yujing.protocol.decode` (decode plus
the protocol's checks). Ratios to the msgspec reference are what compare across machines.

    python bench/bench_engine.py                      # Luding, 100,000 phones, 3 repeats
    python bench/bench_engine.py --phones 1000000 --repeats 1

Prints PASS/MISS against the target; exits non-zero only if something fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import msgspec

TARGET_PER_S = 200_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="luding2022")
    ap.add_argument("--phones", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", metavar="PATH")
    args = ap.parse_args()

    from yujing import protocol, scenarios
    from yujing.service import ManualClock, Service, drive
    from yujing.sources.simulator import simulate
    from yujing.sources.wire_feed import scenario_wire

    net = simulate(scenarios.get(args.scenario), args.phones, seed=args.seed)
    msgs = list(scenario_wire(net, heartbeats=False))
    n = len(msgs)
    raw = msgspec.msgpack.Decoder()
    rows = []
    for rep in range(args.repeats):
        t = time.perf_counter()
        for _, _, p in msgs:
            raw.decode(p)
        t_raw = time.perf_counter() - t
        t = time.perf_counter()
        for _, topic, p in msgs:
            protocol.decode(topic, p)
        t_dec = time.perf_counter() - t

        clock = ManualClock()

        async def run():
            svc = Service(clock=clock)
            svc.policy.on_update = lambda u: []  # per update, not per trigger: timed below
            await svc.start()
            t0 = time.perf_counter()
            drive(svc, clock, msgs)
            dt = time.perf_counter() - t0
            await svc.stop()
            return svc, dt

        svc, t_svc = asyncio.run(run())
        assert svc.rejects.total == 0, svc.rejects.by_reason()
        # the alert policy over the same run's updates, for scale
        from yujing.alerting import AlertPolicy

        ups = []
        clock2 = ManualClock()

        async def run_updates():
            s2 = Service(clock=clock2)
            s2.bus.subscribe("yj.event.>", lambda s, u: ups.append(u), critical=True)
            await s2.start()
            drive(s2, clock2, msgs)
            await s2.stop()

        asyncio.run(run_updates())
        pol = AlertPolicy()
        t = time.perf_counter()
        n_alerts = sum(len(pol.on_update(u)) for u in ups)
        t_pol = time.perf_counter() - t
        row = {
            "repeat": rep + 1,
            "messages": n,
            "msgspec_per_s": n / t_raw,
            "protocol_decode_per_s": n / t_dec,
            "decode_associate_per_s": n / t_svc,
            "ratio_to_msgspec": t_svc / t_raw,
            "updates": len(ups),
            "alerts": n_alerts,
            "policy_ms_per_update": 1000 * t_pol / max(1, len(ups)),
        }
        rows.append(row)
        print(
            f"repeat {rep + 1}: {n:,} trigger messages; msgspec {row['msgspec_per_s']:,.0f}/s, "
            f"protocol.decode {row['protocol_decode_per_s']:,.0f}/s, decode+associate {row['decode_associate_per_s']:,.0f}/s "
            f"({row['ratio_to_msgspec']:.0f}x msgspec); policy {row['policy_ms_per_update']:.1f} ms/update over {len(ups)} updates"
        )
    best = max(r["decode_associate_per_s"] for r in rows)
    verdict = "PASS" if best >= TARGET_PER_S else "MISS"
    print(f"{verdict}: best decode+associate {best:,.0f} triggers/s (target >= {TARGET_PER_S:,})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"scenario": args.scenario, "phones": args.phones, "rows": rows, "best_per_s": best}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
