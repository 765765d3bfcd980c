"""False events under a million devices' background: what the 1M load runs announce.

The load generator's own messages (:func:`yujing.load.prepare`, ``_Messages``: the
devices' heartbeats and background false triggers, and the quake or the burst) go through
:func:`yujing.service.drive`: the live service's code path on message time, in one
process, no broker. Each case prints every event the engine announced, and which of them
were false (farther than 100 km from the quake's epicentre, or formed before its origin),
with the alerts they caused. Three cases, each on a fresh service:

- **cold**: the run meets a server that has heard from nobody (``yujing load --no-connect``);
- **connected**: every device's connect heartbeat over the 15 s before the run (what
  ``yujing load`` sends first by default);
- **burst**: connected, and the 50,000-trigger burst instead of the quake's own triggers.

    python bench/bench_false_events.py                  # 1,000,000 devices, 40 s each
    python bench/bench_false_events.py --devices 200000 --cases cold

Before 6d148a0 the cold case announced and alerted 9 false events of M7.5-8.2 in 40 s
(measured on the same messages by this script's first, scratch form).
Prints the figures; exits non-zero only on an error. Several minutes on a million devices.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import numpy as np

from yujing import load, protocol, scenarios
from yujing.geo import distance_km
from yujing.service import ManualClock, Service, ServiceConfig, drive

T0 = 1_800_000_000.0  # the run's start, s (any time: the messages are made for it)


def run_case(case: str, devices: int, duration_s: float, quake_at_s: float, seed: int) -> dict:
    o = load.LoadOptions(devices=devices, duration_s=duration_s, quake="luding2022", quake_at_s=quake_at_s,
                         burst=50_000 if case == "burst" else 0, seed=seed, connect=case != "cold")
    plan = load.prepare(o)
    msgs = load._Messages(o, plan, T0)

    def stream():
        if o.connect:
            # every device's connect heartbeat, spread over the 15 s before the run
            rng = np.random.default_rng(seed)
            for t, (ph, topic, _) in zip(np.sort(rng.uniform(-15.0, 0.0, devices)).tolist(), msgs.connect_beats()):
                dev, cell, tcell = msgs._dev(ph)
                m = protocol.HeartbeatMsg(device=dev, cell=cell, sent_s=T0 + t, every_s=o.heartbeat_s)
                yield T0 + t, topic, msgs.signer.payload(topic, m)
        for t, _key, topic, payload, _kind in msgs:
            yield T0 + t, topic, payload

    async def go():
        clock = ManualClock(T0 - 20.0)
        svc = Service(config=ServiceConfig(allow_unsigned=True), clock=clock)
        got: list = []
        svc.bus.subscribe("yj.event.>", lambda subj, obj: got.append(obj), critical=True)
        alerts: list = []
        svc.bus.subscribe("yj.alert.>", lambda subj, obj: alerts.append(obj), critical=True)
        t = time.perf_counter()
        n = drive(svc, clock, stream())
        wall = time.perf_counter() - t
        await svc.stop()
        return got, alerts, n, wall

    updates, alerts, n, wall = asyncio.run(go())
    sc = scenarios.get("luding2022")
    origin = T0 + quake_at_s
    events: dict[str, list] = {}
    for u in updates:
        if hasattr(u, "n_devices"):
            events.setdefault(u.event_id, []).append(u)
    rows = []
    for eid, us in events.items():
        first, last = us[0], us[-1]
        off_km = float(distance_km(sc.latitude, sc.longitude, first.latitude, first.longitude))
        false = off_km > 100.0 or first.issued_at_s < origin
        rows.append({"event": eid, "false": false, "first_s": first.issued_at_s - T0, "first_m": first.magnitude,
                     "first_n": first.n_devices, "off_km": off_km, "last_m": last.magnitude, "last_n": last.n_devices,
                     "retracted": last.retracted, "alerts": len({a.alert_id for a in alerts if a.event_id == eid})})
    return {"case": case, "messages": n, "wall_s": wall, "events": rows,
            "false_events": sum(r["false"] for r in rows),
            "false_alerts": sum(r["alerts"] for r in rows if r["false"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--duration-s", type=float, default=40.0)
    ap.add_argument("--quake-at-s", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cases", nargs="+", default=["cold", "connected", "burst"], choices=["cold", "connected", "burst"])
    a = ap.parse_args()
    for case in a.cases:
        r = run_case(case, a.devices, a.duration_s, a.quake_at_s, a.seed)
        print(f"{case}: {r['messages']:,} messages in {r['wall_s']:.1f} s; events {len(r['events'])}, "
              f"false events {r['false_events']}, alerts they caused {r['false_alerts']}", flush=True)
        for e in r["events"]:
            print(f"  {'FALSE ' if e['false'] else 'quake '}{e['event']}: first at +{e['first_s']:.1f} s M{e['first_m']:.2f} "
                  f"n={e['first_n']} ({e['off_km']:.0f} km off); last M{e['last_m']:.2f} n={e['last_n']}"
                  f"{', retracted' if e['retracted'] else ''}; alerts {e['alerts']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
