"""False triggers of the whole on-device chain (picker + classifier) per day of human motion.

    python scripts/chain_false_rate.py [--hours 24] [--sim-hours 6] [--jobs N] [--json OUT.json]

Issue 4 asks for <= 1 false trigger per phone per day-equivalent of continuous human
motion. The real human-motion recordings in the training data last only about 1.5 h, so this
script also builds long phone streams from them by augmentation. It runs the shipped
:class:`yujing.device.agent.DeviceAgent` (default ``AgentConfig``, shipped classifier and
threshold, nothing tuned) over every stream and counts picker triggers and the triggers
the classifier passes (the messages a phone would send: false triggers).

Three kinds of streams, reported separately:

* ``real``: the recordings as they are, unaugmented. One stream per watch subject (its
  recordings joined in order) and one per BasicMotions split, 50 Hz, regular time stamps:
  :func:`human_streams` of ``scripts/train_classifier.py``, the streams of its own chain
  check, here through the full agent. BasicMotions holds no gravity (the agent then reads
  x as vertical).
* ``augmented``: simulated phones, each carrying a random sequence of the real recordings
  of one pool for ``--phone-hours``. Pool ``heldout`` = watch subjects 9, 10 and
  BasicMotions TEST (never seen in training); pool ``training`` = watch subjects 1-8 and
  BasicMotions TRAIN (the classifier was trained on windows of these recordings, so its
  rate there is optimistic). Each segment (one recording, drawn with replacement) gets:
  a random 3-D rotation (phone attitude), gravity (BasicMotions has none; the watch data
  carry theirs, rotated with them), the motion about the recording's mean scaled by a
  lognormal factor (sigma ``AMP_SIGMA``), a time stretch of +-``STRETCH``, resampling to
  the phone's rate (50, 100 or 200 Hz). Between segments, with probability ``STILL_P``, the
  phone lies still for 2-30 s at a new attitude (sensor noise). Joins are 1 s cross-fades
  (:func:`concatenate`), i.e. the phone is picked up or turned. Time stamps carry the
  phone's clock error (+-0.5 %), Gaussian jitter (10 % of the interval) and 0.2 % lost
  samples. Values are quantised to the phone's LSB.
* ``simulated``: :func:`sim_phone_stream` of the training script (the "simulated busy
  phone": rests of ~1 min, each followed by a drop, bump, walk, run, handling or vehicle
  event), at the phones' rates with the same time-stamp jitter, own random stream.

Augmented segments are not independent recordings: 24 h of them recombine about 1.5 h
of motion by at most 14 people (10 watch subjects, 4 BasicMotions students). They test
the chain against orientation, amplitude, tempo, rate and time-stamp changes and against
the joins, not against kinds of motion missing from the data. Motion hours exclude the
still gaps. Everything is seeded; the counts do not depend on ``--jobs``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy import signal

from yujing.device.agent import AgentConfig, DeviceAgent, TriggerMessage

SCRIPT = Path(__file__).resolve().parent / "train_classifier.py"
_spec = importlib.util.spec_from_file_location("yujing_train_classifier", SCRIPT)
tc = sys.modules.get("yujing_train_classifier")
if tc is None:
    tc = importlib.util.module_from_spec(_spec)
    sys.modules["yujing_train_classifier"] = tc
    _spec.loader.exec_module(tc)

SEED = 20260411
G_MS2 = tc.G_GAL / 100.0
PHONE_RATES_HZ = (50.0, 100.0, 200.0)
AMP_SIGMA = 0.2  # lognormal sigma of the motion's amplitude
STRETCH = 0.10  # time stretch, +-
STILL_P = 0.5  # chance of a still spell between two segments
STILL_S = (2.0, 30.0)  # its length, uniform
STILL_NOISE_MS2 = 0.01  # phone sensor noise at rest (1 gal)
CLOCK_ERR = 0.005  # phone clock rate error, +-
JITTER = 0.1  # time-stamp jitter, sd as a fraction of the sample interval
DROP_P = 0.002  # lost samples
LSB_MS2 = (0.0006, 0.01)  # accelerometer LSB, log-uniform
T0 = 1.75e9  # UNIX s of the first phone's first sample
FEED_S = 10.0  # seconds of samples per feed() call
PICKUPS = ("turn", "level")  # see phone_stream


# --------------------------------------------------------------------------- recordings


def recording_pools():
    """{"heldout": [...], "training": [...]}: (name, acc m/s^2 (n, 3), rate, has gravity)."""
    held, train = [], []
    for subj, i, acc, sr in tc.watch_recordings():
        rec = (f"watch-s{subj}-r{i}", acc, sr, True)
        (held if subj in tc.HELDOUT_WATCH_SUBJECTS else train).append(rec)
    for split, pool in (("test", held), ("train", train)):
        for i, lab, acc, sr in tc.basic_motions(split):
            pool.append((f"bm-{split}-{i}-{lab}", acc, sr, False))
    return {"heldout": held, "training": train}


def real_streams():
    """The unaugmented streams: [(pool, name, acc m/s^2, rate)]."""
    subjects = sorted({s for s, *_ in tc.watch_recordings()})
    out = []
    for name, acc, sr in tc.human_streams(subjects, "train") + tc.human_streams(None, "test"):
        held = name == "basicmotions-test" or any(name == f"watch-subject-{s}" for s in tc.HELDOUT_WATCH_SUBJECTS)
        out.append(("heldout" if held else "training", name, acc, sr))
    return out


# --------------------------------------------------------------------------- augmentation


def augment_segment(rng, acc, sr_in, has_gravity, sr_out):
    """One recording as a phone at ``sr_out`` would record it: stretched, rescaled,
    rotated, with gravity. Returns (acc m/s^2 (n, 3), duration s)."""
    mean = acc.mean(axis=0)
    dyn = (acc - mean) * math.exp(rng.normal(0.0, AMP_SIGMA))
    stretch = rng.uniform(1.0 - STRETCH, 1.0 + STRETCH)
    # played at sr_in / stretch, resampled to sr_out: the ratio sr_out * stretch / sr_in
    ratio = Fraction(sr_out * stretch / sr_in).limit_denominator(64)
    dyn = signal.resample_poly(dyn, ratio.numerator, ratio.denominator, axis=0)
    if not has_gravity:
        mean = mean + np.array([0.0, 0.0, G_MS2])  # worn upright; the rotation turns it
    out = (dyn + mean) @ tc._random_rotation(rng).T
    return out, len(out) / sr_out


def still_spell(rng, sr, seconds, gravity=None):
    """The phone lying still for ``seconds``: gravity (m/s^2, a random attitude if None)
    and sensor noise."""
    g = tc._random_rotation(rng) @ np.array([0.0, 0.0, G_MS2]) if gravity is None else gravity
    n = max(2, int(round(seconds * sr)))
    return g + rng.normal(0.0, STILL_NOISE_MS2, size=(n, 3))


def phone_stream(rng, pool, hours, sr, pickup="turn"):
    """A phone carrying random segments of ``pool`` for ``hours`` of motion.

    ``pickup``: how a still spell meets the next segment. ``"turn"``: the phone rests at
    a random attitude and the 1 s cross-fade turns it to the segment's (a pick-up turns a
    phone, by 90 degrees on average here). ``"level"``: the phone rests at the attitude
    the segment starts in (gravity along the mean of its first second), so nothing turns
    at the join and only the motion's own turning is left: the hard case for the agent's
    tilt gate. Returns (acc m/s^2 (n, 3), motion seconds, still seconds,
    [(start s, segment name)])."""
    if pickup not in PICKUPS:
        raise ValueError(f"pickup must be one of {PICKUPS}, not {pickup!r}")
    pieces, spans, motion_s, still_s, at = [], [], 0.0, 0.0, 0.0
    fade = 1.0
    while motion_s < hours * 3600.0:
        rest = 0.0
        if pieces and rng.random() < STILL_P:
            rest = rng.uniform(*STILL_S)
            if pickup == "turn":
                pieces.append(still_spell(rng, sr, rest))
        name, acc, sr_in, grav = pool[int(rng.integers(len(pool)))]
        seg, dur = augment_segment(rng, acc, sr_in, grav, sr)
        if rest and pickup == "level":
            g = seg[: max(1, int(sr))].mean(axis=0)
            pieces.append(still_spell(rng, sr, rest, g / max(np.linalg.norm(g), 1e-9) * G_MS2))
        if rest:
            still_s += rest
            at += rest - fade
        pieces.append(seg)
        spans.append((max(0.0, at), name))
        motion_s += dur
        at += dur - fade
    return tc.concatenate(pieces, sr, fade), motion_s, still_s, spans


def phone_times(rng, n, sr, t0):
    """Time stamps of ``n`` samples from a phone: clock error, jitter, lost samples.
    Returns (times, indices of the samples kept)."""
    dt = (1.0 + rng.uniform(-CLOCK_ERR, CLOCK_ERR)) / sr
    t = t0 + np.arange(n) * dt + np.clip(rng.normal(0.0, JITTER, n), -0.45, 0.45) * dt
    keep = np.flatnonzero(rng.random(n) >= DROP_P)
    return t[keep], keep


def quantise(rng, acc):
    lsb = math.exp(rng.uniform(math.log(LSB_MS2[0]), math.log(LSB_MS2[1])))
    return np.round(acc / lsb) * lsb


# --------------------------------------------------------------------------- the chain


def run_agent(t, acc, feed_s=FEED_S):
    """The shipped agent over one stream. Returns (picker triggers, passed, onsets of the
    passed triggers, CPU s, agent stats, the agent's decisions on the passed ones)."""
    agent = DeviceAgent(AgentConfig(latitude=30.66, longitude=104.07, secret=b"chain-false-rate", keep_decisions=True))
    onsets = []
    cpu = time.process_time()
    i0 = 0
    while i0 < len(t):
        i1 = int(np.searchsorted(t, t[i0] + feed_s))
        agent.feed(t[i0:i1], acc[i0:i1, 0], acc[i0:i1, 1], acc[i0:i1, 2])
        onsets += [m.trigger.onset_time_s for m in agent.drain() if isinstance(m, TriggerMessage) and m.trigger.update == 0]
        i0 = i1
    agent.flush()
    onsets += [m.trigger.onset_time_s for m in agent.drain() if isinstance(m, TriggerMessage) and m.trigger.update == 0]
    cpu = time.process_time() - cpu
    st = agent.stats
    return st.triggers, st.sent, onsets, cpu, st, [d for d in agent.decisions if d.sent]


def _segment_at(spans, t_rel):
    """(name of the segment playing at ``t_rel`` s, seconds since it started)."""
    name, since = "", math.nan
    for start, nm in spans:
        if start > t_rel:
            break
        name, since = nm, t_rel - start
    return name, since


def _passed_at(spans, t_rel, d=None):
    name, since = _segment_at(spans, t_rel)
    out = {"t_s": round(t_rel, 2), "segment": name, "s_after_segment_start": None if math.isnan(since) else round(since, 2)}
    if d is not None:  # what the agent judged: the deciding window, its model's probability, the turn
        out.update(window_s=d.window_s, probability=round(d.probability, 5), tilt_deg=round(d.tilt_deg, 2),
                   pga_gal=round(d.trigger.pga_gal, 1), peak_gal=round(d.peak_gal, 1))
    return out


def job(spec):
    """One stream, built and run in a worker. ``spec``: dict (see :func:`plan`)."""
    kind, pool_name, idx = spec["kind"], spec["pool"], spec["index"]
    t0 = T0 + idx * 86400.0
    spans = []
    if kind == "real":
        name, acc, sr = spec["name"], spec["acc"], spec["rate"]
        t = t0 + np.arange(len(acc)) / sr
        motion_s, still_s = len(acc) / sr, 0.0
    else:
        rng = np.random.default_rng([spec["seed"], {"augmented": 1, "simulated": 2}[kind], {"heldout": 1, "training": 2, "": 3}[pool_name], idx])
        sr = PHONE_RATES_HZ[int(rng.integers(len(PHONE_RATES_HZ)))]
        if kind == "augmented":
            acc, motion_s, still_s, spans = phone_stream(rng, POOLS[pool_name], spec["hours"], sr, spec["pickup"])
        else:
            acc = tc.sim_phone_stream(rng, spec["hours"], sr)
            motion_s, still_s = len(acc) / sr, 0.0
        acc = quantise(rng, acc)
        t, keep = phone_times(rng, len(acc), sr, t0)
        acc = acc[keep]
        name = f"{kind}-{pool_name or 'sim'}-{idx}"
    triggers, passed, onsets, cpu, st, sent = run_agent(t, acc)
    by_onset = {d.onset_time_s: d for d in sent}
    return {
        "kind": kind,
        "pool": pool_name,
        "name": name,
        "rate_hz": sr,
        "agent_rate_hz": st.rate_hz,
        "orientation": st.orientation,
        "motion_hours": motion_s / 3600.0,
        "still_hours": still_s / 3600.0,
        "stream_hours": (t[-1] - t[0]) / 3600.0,
        "picker_triggers": int(triggers),
        "passed": int(passed),
        "passed_early": int(st.sent_early),
        "incomplete": int(st.rejected_incomplete),
        "rejected_moving": int(st.rejected_moving),
        "rejected_turned": int(st.rejected_turned),
        "rejected_strong": int(st.rejected_strong),
        "passed_at": [_passed_at(spans, o - t0, by_onset.get(o)) for o in onsets],
        "cpu_s": cpu,
    }


POOLS: dict = {}


def _init_pools(pools):
    POOLS.clear()
    POOLS.update(pools)


def plan(seed, hours, phone_hours, sim_hours, real, pickup="turn"):
    """The streams to run: real ones, augmented phones of each pool, simulated phones."""
    specs = []
    for i, (pool, name, acc, sr) in enumerate(real):
        specs.append({"kind": "real", "pool": pool, "index": i, "name": name, "acc": acc, "rate": sr})
    for pool in ("heldout", "training"):
        n = max(1, math.ceil(hours / phone_hours)) if hours > 0 else 0
        specs += [{"kind": "augmented", "pool": pool, "index": i, "hours": hours / n, "seed": seed, "pickup": pickup} for i in range(n)]
    n = max(1, math.ceil(sim_hours / phone_hours)) if sim_hours > 0 else 0
    specs += [{"kind": "simulated", "pool": "", "index": i, "hours": sim_hours / n, "seed": seed} for i in range(n)]
    return specs


def summarise(rows):
    """Totals of stream rows: hours, triggers, passes, rates per 24 h of motion with the
    one-sided 95 % Poisson upper bound."""
    hours = sum(r["motion_hours"] for r in rows)
    trig = sum(r["picker_triggers"] for r in rows)
    moving = sum(r["rejected_moving"] for r in rows)
    turned = sum(r["rejected_turned"] for r in rows)
    strong = sum(r.get("rejected_strong", 0) for r in rows)
    passed = sum(r["passed"] for r in rows)
    early = sum(r.get("passed_early", 0) for r in rows)
    cpu = sum(r["cpu_s"] for r in rows)
    per_day = 24.0 / hours if hours > 0 else math.nan
    return {
        "streams": len(rows),
        "motion_hours": hours,
        "still_hours": sum(r["still_hours"] for r in rows),
        "picker_triggers": trig,
        "rejected_moving": moving,
        "rejected_turned": turned,
        "rejected_strong": strong,
        "passed": passed,
        "passed_early": early,
        "triggers_per_day": trig * per_day,
        "passed_per_day": passed * per_day,
        "passed_per_day_upper95": tc.poisson_upper_95(passed) * per_day,
        "pass_fraction_upper95": tc.poisson_upper_95(passed) / trig if trig else math.nan,
        "cpu_s": cpu,
        "hours_per_cpu_s": (sum(r["stream_hours"] for r in rows) / cpu) if cpu > 0 else math.nan,
    }


GROUPS = (
    ("real, held out (watch 9, 10; BasicMotions TEST)", "real", "heldout"),
    ("real, training subjects (watch 1-8; BM TRAIN)", "real", "training"),
    ("real, all (unaugmented)", "real", None),
    ("augmented, held-out pool", "augmented", "heldout"),
    ("augmented, training pool", "augmented", "training"),
    ("augmented, both pools", "augmented", None),
    ("simulated busy phone", "simulated", None),
)


def measure(seed=SEED, hours=24.0, phone_hours=2.0, sim_hours=6.0, jobs=1, with_real=True, pools=None, pickup="turn"):
    pools = pools if pools is not None else recording_pools()
    real = real_streams() if with_real else []
    specs = plan(seed, hours, phone_hours, sim_hours, real, pickup)
    wall = time.time()
    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=_init_pools, initargs=(pools,)) as ex:
            rows = list(ex.map(job, specs))
    else:
        _init_pools(pools)
        rows = [job(s) for s in specs]
    groups = {}
    for label, kind, pool in GROUPS:
        sel = [r for r in rows if r["kind"] == kind and (pool is None or r["pool"] == pool)]
        if sel:
            groups[label] = summarise(sel)
    return {
        "seed": seed,
        "augmented_hours_per_pool": hours,
        "phone_hours": phone_hours,
        "simulated_hours": sim_hours,
        "augmentation": {
            "rotation": "uniform random 3-D per segment",
            "amplitude_lognormal_sigma": AMP_SIGMA,
            "time_stretch": STRETCH,
            "phone_rates_hz": list(PHONE_RATES_HZ),
            "still_p": STILL_P,
            "still_s": list(STILL_S),
            "pickup": pickup,
            "clock_error": CLOCK_ERR,
            "jitter_fraction": JITTER,
            "lost_samples": DROP_P,
            "lsb_ms2": list(LSB_MS2),
        },
        "groups": groups,
        "streams": rows,
        "wall_s": time.time() - wall,
    }


def _report(res):
    print(f"pick-ups: {res['augmentation']['pickup']}")
    print(f"{'streams':48s} {'motion h':>8s} {'triggers':>8s} {'moving':>6s} {'turned':>6s} {'strong':>6s} {'passed':>6s} {'early':>5s} {'trig/day':>8s} "
          f"{'pass/day':>8s} {'95% ub/day':>10s} {'h/CPU s':>8s}")
    for label, g in res["groups"].items():
        print(f"{label:48s} {g['motion_hours']:8.2f} {g['picker_triggers']:8d} {g['rejected_moving']:6d} "
              f"{g['rejected_turned']:6d} {g['rejected_strong']:6d} {g['passed']:6d} {g['passed_early']:5d} "
              f"{g['triggers_per_day']:8.0f} {g['passed_per_day']:8.2f} {g['passed_per_day_upper95']:10.2f} "
              f"{g['hours_per_cpu_s']:8.3f}")
    passes = [(r["name"], p) for r in res["streams"] for p in r["passed_at"]]
    if passes:
        print("\npassed triggers (false triggers sent):")
        for name, p in passes:
            since = "" if p["s_after_segment_start"] is None else f", {p['s_after_segment_start']:.2f} s after it starts"
            judged = ""
            if "window_s" in p:
                judged = f"; {p['window_s']:g} s window, p {p['probability']:.4f}, turned {p['tilt_deg']:.1f} deg, peak {p['peak_gal']:.0f} gal"
            print(f"  {name:28s} t = {p['t_s']:9.2f} s  segment {p['segment'] or '-'}{since}{judged}")
    print(f"\nper 24 h of motion; upper bound: one-sided 95 % Poisson. Wall time {res['wall_s']:.0f} s.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--hours", type=float, default=24.0, help="augmented motion hours per pool (held-out, training)")
    ap.add_argument("--phone-hours", type=float, default=2.0, help="motion hours per simulated phone")
    ap.add_argument("--sim-hours", type=float, default=6.0, help="hours of the simulated busy phone")
    ap.add_argument("--pickup", choices=PICKUPS, default="turn",
                    help="turn: a pick-up after a rest turns the phone (random attitudes); level: the phone "
                         "rests in the attitude its next motion starts in (the tilt gate's hard case)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    res = measure(args.seed, args.hours, args.phone_hours, args.sim_hours, args.jobs, pickup=args.pickup)
    _report(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
