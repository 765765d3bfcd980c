"""Issue 11's device-agent target on the MEMS sensor class: the OpenEEW recordings.

    python scripts/measure_agent_openeew.py [OPENEEW_DIR] [--json OUT.json]

Runs ``yujing device replay`` (through :func:`yujing.cli.main`, what a user runs) on every
record of every event folder whose device lies within ``AGENT_RANGE_KM`` of the
catalogue epicentre, and asks whether one of the triggers the agent would send has its
onset within ``NEAR_P_S`` of the predicted P (iasp91, :mod:`yujing.traveltime`). SSN gives
no depth for 9 of the 11 quakes; those are taken at ``DEFAULT_DEPTH_KM`` (the P time at
5-100 km moves by at most ~2 s between 5 and 50 km depth, inside the 13 s window). A
record whose data begin after ``P - WARMUP`` (the picker's warm-up) cannot have a trigger
near P and is reported apart, as in the strong-motion set. Detection never reads the
catalogue; only this scoring does.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from datetime import datetime
from pathlib import Path

_here = Path(__file__).resolve().parent
sys.path.insert(0, str(_here))
from measure_devset_sm import AGENT_RANGE_KM, NEAR_P_S, agent_triggers  # noqa: E402

DEFAULT_DEPTH_KM = 20.0


def _t(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def first_sample_s(folder: Path) -> float:
    """Time of a record's first sample (the earliest packet's ``device_t`` less its span)."""
    first = math.inf
    for f in sorted(folder.glob("*.jsonl")):
        with open(f) as fh:
            for line in fh:
                if line.strip():
                    p = json.loads(line)
                    first = min(first, p["device_t"] - (len(p["x"]) - 1) / p["sr"])
                    break
    return first


def measure(data: Path) -> list[dict]:
    from yujing.geo import distance_km
    from yujing.settings import Settings
    from yujing.traveltime import default_table

    warmup = Settings().picker.warmup_s
    devices = {d["device_id"]: d for d in json.loads((data / "devices.json").read_text())}
    with open(data / "catalog.csv", newline="") as fh:
        catalog = list(csv.DictReader(fh))
    tab = default_table()
    rows = []
    for c in catalog:
        ot, lat, lon = _t(c["origin_time"]), float(c["latitude"]), float(c["longitude"])
        depth = float(c["depth_km"]) if c["depth_km"] else DEFAULT_DEPTH_KM
        for folder in sorted((data / "events" / c["event"]).iterdir()):
            dev = devices.get(folder.name)
            if dev is None:
                continue
            epi = float(distance_km(lat, lon, dev["latitude"], dev["longitude"]))
            if epi > AGENT_RANGE_KM:
                continue
            p = ot + float(tab.p_time_s(epi, depth))
            sent = sorted(r["onset_time_s"] - p for r in agent_triggers(folder))
            rows.append({
                "event": c["event"], "magnitude": float(c["magnitude"]), "device": folder.name,
                "epicentral_km": round(epi, 1), "before_p_s": round(p - first_sample_s(folder), 1),
                "sent_minus_p_s": [round(x, 2) for x in sent],
                "near_p": any(NEAR_P_S[0] <= x <= NEAR_P_S[1] for x in sent),
            })
    for r in rows:
        r["judged"] = r["before_p_s"] >= warmup
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    from yujing.sources.openeew import default_data_dir

    ap.add_argument("data", nargs="?", default=str(default_data_dir()),
                    help="the OpenEEW folder (default: ../shared/data/openeew, or $YUJING_OPENEEW_DIR)")
    ap.add_argument("--json", help="write the per-record rows here")
    a = ap.parse_args(argv)
    rows = measure(Path(a.data))
    print("| event | M | device | km | record before P | agent: sent onsets - P | near P |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        near = "yes" if r["near_p"] else ("no" if r["judged"] else "no (starts inside the warm-up)")
        sent = ", ".join(f"{x:+.1f}" for x in r["sent_minus_p_s"][:4]) + (" ..." if len(r["sent_minus_p_s"]) > 4 else "")
        print(f"| {r['event']} | {r['magnitude']} | {r['device']} | {r['epicentral_km']} | {r['before_p_s']} s | {sent or '-'} | {near} |")
    judged = [r for r in rows if r["judged"]]
    n_near = sum(r["near_p"] for r in judged)
    print(f"\nagent trigger within [P{NEAR_P_S[0]:+.0f} s, P{NEAR_P_S[1]:+.0f} s] on {n_near} of {len(judged)} records "
          f"within {AGENT_RANGE_KM:.0f} km that start at least the warm-up before P "
          f"({100 * n_near / max(len(judged), 1):.0f} %); {sum(r['near_p'] for r in rows)} of {len(rows)} counting all")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
