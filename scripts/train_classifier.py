"""Train the on-device earthquake / human-motion classifier and write its weights.

    python scripts/train_classifier.py [--output src/yujing/data/classifier.npz]
                                       [--window-post-s SECONDS]
    python scripts/train_classifier.py --early    # src/yujing/data/classifier_early.npz

Rebuilds ``src/yujing/data/classifier.npz`` from scratch, seeded, in a few minutes on two
cores. ``--window-post-s`` (default: ``yujing.device.features.WINDOW_POST_S``, the length
the device agent waits for) sets how many seconds after the onset the classifier sees.
Every window is cut and simulated ``CUT_POST_S`` long whatever that length is, and the
features keep only its first part, so different lengths are trained and measured on the
same windows, splits and streams. The shipped file must be trained with the default:
``EarthquakeClassifier.load`` refuses a packaged model whose window differs.

``--early`` trains the agent's early-decision model instead: the same data and network
over ``EARLY_WINDOW_POST_S`` after the onset, with a stricter threshold rule
(``EARLY_TARGET_FPR`` out of fold in each activity family *and* in the pick-up windows),
since whatever it passes is sent in addition to what the full model passes. It also
reports the share of earthquake windows it passes by the peak acceleration the phone has
seen by then, the numbers the scenario simulator's early sends are drawn from.

Needs the training extras (scikit-learn, seglearn, sktime) and the OpenEEW recordings in
../shared/data/openeew (or ``$YUJING_OPENEEW_DIR``). Nothing is downloaded.

Data (see docs/classifier.md for what each holds and its licence):

* earthquakes: OpenEEW recordings of 11 Mexican quakes. Each device's stream is run
  through the on-device picker (:class:`yujing.picker.Picker`); a trigger within
  ``P_TOLERANCE_S`` of the iasp91 P time is a P window, a later one up to S + 90 s a
  later-phase window. Plus simulated P (and early S) windows over a wide range of
  amplitudes, frequencies, rise times, noise levels, sample rates and orientations;
* human motion: seglearn's watch data set (10 subjects, shoulder exercises, 50 Hz, g with
  gravity), sktime's BasicMotions (walking, running, standing, badminton; 10 Hz), and
  simulated drops, bumps/jostling, walking/running/carrying, handling and vehicle rides;
* background noise: the picker's own triggers on the OpenEEW streams well before the P
  wave (false triggers of fixed sensors) are non-earthquake windows; quiet windows from
  before the P wave are the recorded noise under a share of the simulated quakes (they are
  not triggers, so the classifier never sees such windows alone; the held-out report
  still shows how it would call them).

Held-out split, never by window: the OpenEEW events in ``HELDOUT_EVENTS``, the watch
subjects in ``HELDOUT_WATCH_SUBJECTS``, BasicMotions' TEST split, and simulations from a
separate random stream. The probability threshold is chosen on out-of-fold predictions of
the training split (folds by event / subject / clip / simulation batch) and only then
applied to the held-out split.

The functions ``heldout_windows`` and ``human_streams`` are also used by
``tests/test_classifier.py`` to check the shipped weights on the held-out split.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
from scipy import signal

from yujing.device.classifier import EarthquakeClassifier
from yujing.device.features import (
    EARLY_WINDOW_POST_S,
    FEATURE_NAMES,
    UNITS_TO_GAL,
    WINDOW_POST_S,
    peak_after_onset_gal,
    window_features,
    window_samples,
)
from yujing.geo import distance_km
from yujing.ingest import IngestedPacket
from yujing.picker import Picker
from yujing.rejects import Rejects
from yujing.sources import openeew
from yujing.traveltime import default_table

SEED = 20160212  # MyShake's Science Advances paper appeared on 12 Feb 2016
#: seconds after the onset cut from every recording and simulated: the longest classifier
#: window (--window-post-s) that can be evaluated. The features crop each window to the
#: classifier's own length, so the data do not change with it.
CUT_POST_S = 2.0
HELDOUT_EVENTS = ("2017_12_15", "2018_9_25", "2020_6_23", "2020_7_2")
HELDOUT_WATCH_SUBJECTS = (9, 10)
#: a trigger this close to the iasp91 P time (s) is a P trigger
P_TOLERANCE_S = 4.0
#: a trigger after that, up to S + this (s), is a later-phase (S, coda) trigger
LATE_PHASE_S = 90.0
#: triggers more than this before P (s) are false triggers of the fixed sensor
NOISE_BEFORE_P_S = 10.0
#: onset offsets (s) of the training copies of each real earthquake trigger window
TRAIN_OFFSETS_S = (-0.3, -0.15, 0.0, 0.15, 0.3)
#: spacing of the activity windows cut from the human-motion recordings (s)
ACTIVITY_STEP_S = 1.0
#: rate of the continuous human-motion streams run through the picker (a phone's rate)
PHONE_RATE_HZ = 50.0
#: false-positive rate aimed at when the threshold is chosen (out-of-fold, training split)
TARGET_FPR = 0.01
#: the early model's target (out of fold, per activity family and on pick-ups): a quarter
#: of TARGET_FPR, since its passes add to the full model's
EARLY_TARGET_FPR = 0.0025
#: the early model's probabilities of human motion reach 0.9999 more often than the full
#: model's; its threshold may go this close to 1 to meet EARLY_TARGET_FPR
EARLY_THRESHOLD_CAP = 1.0 - 1e-7
#: bins (gal) of the peak acceleration by EARLY_WINDOW_POST_S after the onset in which the
#: early model's pass rate on earthquake windows is reported (for the simulator)
EARLY_PEAK_BINS_GAL = (0.0, 5.0, 15.0, 50.0, 150.0, float("inf"))
G_GAL = 980.665
HIDDEN = (32, 16)
#: share of simulated quakes laid on recorded OpenEEW noise instead of simulated noise
REAL_NOISE_P = 0.3
#: relative weight of the real (OpenEEW) earthquake windows within their families
REAL_QUAKE_WEIGHT = 2.0

#: pick-ups: copies of each human-motion recording started from rest (pickup_windows)
PICKUP_VARIANTS = 4
PICKUP_REST_S = 20.0  # longer than the picker's warm-up (15 s)
PICKUP_TURN_DEG = 20.0  # the rest attitude differs from the motion's first by up to this
PICKUP_KEEP_S = 4.0  # triggers up to this long after the fade starts are pick-up windows

N_SIM_QUAKE = 4000
N_SIM_HUMAN = 4000
N_SIM_TEST = 1000
HUMAN_KINDS = ("drop", "bump", "walk", "run", "handling", "vehicle")


@dataclass
class Window:
    acc: np.ndarray  # (n, 3)
    sr: float
    units: str
    label: int  # 1 earthquake, 0 not
    source: str  # e.g. "openeew-P", "watch", "sim-drop"
    group: str  # split/fold unit: event, subject, clip, simulation batch
    offset_s: float = 0.0  # shift of a real trigger window's onset from the picker's (training copies)


# --------------------------------------------------------------------------- the picker


def picker_onsets(x_gal: np.ndarray, sr: float, end_times=None, packet_n: int | None = None):
    """Onset times of the picker's triggers (first messages only) on one continuous stream.

    ``x_gal``: (n, 3) in gal (gravity may be in it: the trigger channel is high-passed).
    Without ``end_times`` the stream is cut into packets of ``packet_n`` samples (default:
    one second) on a clock starting at 0; with them, ``x_gal`` is a list of packets and
    ``end_times`` the time of each packet's last sample.
    """
    pk = Picker()
    out = []
    if end_times is None:
        n = packet_n or max(1, int(round(sr)))
        pieces = [(x_gal[i : i + n], (i + len(x_gal[i : i + n]) - 1) / sr) for i in range(0, len(x_gal), n)]
    else:
        pieces = list(zip(x_gal, end_times))
    for k, (chunk, end) in enumerate(pieces):
        pkt = IngestedPacket(
            slot=0,
            device_id="d",
            end_time_s=float(end),
            arrival_time_s=float(end),
            sample_rate_hz=sr,
            samples_gal=np.ascontiguousarray(chunk, dtype=np.float64),
            reset=(k == 0),
            gap_s=0.0,
        )
        for tr in pk.process([pkt], float(end), {}):
            if tr.update == 0:
                out.append(tr.onset_time_s)
    return out


def cut(x: np.ndarray, idx: int, sr: float):
    """The classifier window around sample ``idx``, or None if the stream is too short."""
    pre, post = window_samples(sr, CUT_POST_S)
    if idx - pre < 0 or idx + post > len(x):
        return None
    return x[idx - pre : idx + post]


# --------------------------------------------------------------------------- OpenEEW


@dataclass
class DeviceStream:
    event: str
    device: str
    t: np.ndarray  # sample times, UNIX s (device clock, corrected when far off)
    x: np.ndarray  # (n, 3) gal
    sr: float
    p_time: float
    s_time: float
    onsets: list


def openeew_streams(data_dir: Path, events=None) -> list[DeviceStream]:
    """Every device stream of the chosen events, with iasp91 P/S times and picker onsets.

    Sample times come from each packet's ``device_t`` (the real rate of these sensors is
    a little below the nominal 31.25 Hz, so counting samples drifts by seconds). A device
    whose clock is far off (median cloud_t - device_t outside [-1, 2] s) is put on the
    arrival clock instead.
    """
    data_dir = Path(data_dir)
    devices = openeew.load_devices(data_dir / "devices.json")
    with open(data_dir / "catalog.csv", newline="") as fh:
        catalog = {r["event"]: r for r in csv.DictReader(fh)}
    tt = default_table()
    out = []
    for ev in sorted(catalog if events is None else events):
        row = catalog[ev]
        origin = datetime.fromisoformat(row["origin_time"].replace("Z", "+00:00")).timestamp()
        depth = float(row["depth_km"] or 20.0)
        per: dict[str, list] = {}
        for p in openeew.iter_packets(data_dir / "events" / ev, devices, Rejects()):
            per.setdefault(p.device_id, []).append(p)
        for dev, ps in sorted(per.items()):
            ps.sort(key=lambda p: p.device_time_s)
            sr = ps[0].sample_rate_hz
            if any(p.sample_rate_hz != sr for p in ps):
                continue
            off = float(np.median([p.arrival_time_s - p.device_time_s for p in ps]))
            corr = off if not -1.0 <= off <= 2.0 else 0.0
            chunks = [np.column_stack([p.x_gal, p.y_gal, p.z_gal]) for p in ps]
            ends = [p.device_time_s + corr for p in ps]
            x = np.concatenate(chunks)
            t = np.concatenate([e - (len(c) - 1 - np.arange(len(c))) / sr for c, e in zip(chunks, ends)])
            d = devices[dev]
            dist = float(distance_km(float(row["latitude"]), float(row["longitude"]), d.latitude, d.longitude))
            tp = origin + float(tt.p_time_s(dist, depth))
            ts = origin + float(tt.s_time_s(dist, depth))
            onsets = picker_onsets(chunks, sr, end_times=ends)
            out.append(DeviceStream(ev, dev, t, x, sr, tp, ts, onsets))
    return out


def openeew_windows(streams: list[DeviceStream], offsets_s=(0.0,), quiet_step_s: float = 20.0):
    """Windows from OpenEEW streams: P and later-phase triggers (earthquake), false
    triggers before P and quiet windows every ``quiet_step_s`` before P (not earthquake)."""
    out = []
    for st in streams:
        pre_s = window_samples(st.sr, CUT_POST_S)[0] / st.sr
        group = f"event:{st.event}"
        p_done = False
        for onset in st.onsets:
            rel = onset - st.p_time
            if abs(rel) <= P_TOLERANCE_S and not p_done:
                kind, label = "openeew-P", 1
                p_done = True
            elif P_TOLERANCE_S < rel <= st.s_time - st.p_time + LATE_PHASE_S:
                kind, label = "openeew-late", 1
            elif rel < -NOISE_BEFORE_P_S:
                kind, label = "openeew-noise-trigger", 0
            else:
                continue
            for off in offsets_s:
                idx = int(np.searchsorted(st.t, onset + off))
                w = cut(st.x, idx, st.sr)
                if w is not None:
                    out.append(Window(w, st.sr, "gal", label, kind, group, off))
        # quiet windows: from 30 s after the start to NOISE_BEFORE_P_S before P
        t0 = st.t[0] + 30.0
        while t0 < st.p_time - NOISE_BEFORE_P_S - 2.0:
            idx = int(np.searchsorted(st.t, t0))
            w = cut(st.x, idx, st.sr)
            # a gap inside the window would make it something else
            if w is not None and st.t[idx + len(w) - 1 - window_samples(st.sr, CUT_POST_S)[0]] - st.t[idx] < 2.5 + pre_s:
                out.append(Window(w, st.sr, "gal", 0, "openeew-quiet", group))
            t0 += quiet_step_s
    return out


# --------------------------------------------------------------------------- human motion


def watch_recordings():
    """seglearn's watch data: [(subject, index, acc in m/s^2 with gravity (n, 3), 50 Hz)]."""
    from seglearn.datasets import load_watch

    d = load_watch()
    out = []
    for i, (x, subj) in enumerate(zip(d["X"], d["subject"])):
        acc = np.asarray(x, dtype=np.float64)[:, :3] * G_GAL / 100.0  # g -> m/s^2
        out.append((int(subj), i, acc, 50.0))
    return out


def basic_motions(split: str):
    """sktime's BasicMotions: [(clip index, activity, acc (n, 3) as given (m/s^2), 10 Hz)]."""
    from sktime.datasets import load_basic_motions

    X, y = load_basic_motions(split=split, return_X_y=True, return_type="numpy3D")
    return [(i, str(lab), np.asarray(X[i, :3, :].T, dtype=np.float64), 10.0) for i, lab in enumerate(y)]


def activity_windows(acc, sr, units, source, group, step_s=ACTIVITY_STEP_S):
    """Windows anchored every ``step_s`` along one recording (a trigger could fall anywhere)."""
    pre, post = window_samples(sr, CUT_POST_S)
    step = max(1, int(round(step_s * sr)))
    return [
        Window(acc[i - pre : i + post], sr, units, 0, source, group)
        for i in range(pre, len(acc) - post + 1, step)
    ]


def concatenate(recordings, sr: float, fade_s: float = 1.0) -> np.ndarray:
    """Recordings (each (n, 3), same rate) joined into one stream, cross-faded over
    ``fade_s`` so that no join is a step the recordings do not hold."""
    nf = int(round(fade_s * sr))
    out = np.asarray(recordings[0], dtype=np.float64)
    ramp = np.linspace(0.0, 1.0, nf)[:, None]
    for r in recordings[1:]:
        r = np.asarray(r, dtype=np.float64)
        k = min(nf, len(out), len(r))
        mix = out[-k:] * (1 - ramp[:k]) + r[:k] * ramp[:k]
        out = np.concatenate([out[:-k], mix, r[k:]])
    return out


def human_streams(watch_subjects=None, bm_split=None):
    """Continuous human-motion streams at PHONE_RATE_HZ in m/s^2: one per watch subject
    (its recordings joined in order) and one of BasicMotions' clips of ``bm_split``
    (upsampled from 10 Hz). Returns [(name, acc (n, 3) m/s^2, rate)]."""
    out = []
    if watch_subjects:
        recs = watch_recordings()
        for s in watch_subjects:
            mine = [acc for subj, _, acc, _ in recs if subj == s]
            out.append((f"watch-subject-{s}", concatenate(mine, PHONE_RATE_HZ), PHONE_RATE_HZ))
    if bm_split:
        clips = basic_motions(bm_split)
        up = int(PHONE_RATE_HZ // 10)
        acc = concatenate([signal.resample_poly(c, up, 1, axis=0) for _, _, c, _ in clips], PHONE_RATE_HZ)
        out.append((f"basicmotions-{bm_split}", acc, PHONE_RATE_HZ))
    return out


def stream_trigger_windows(name, acc_ms2, sr, group):
    """(windows at the picker's triggers on a continuous stream, number of triggers)."""
    onsets = picker_onsets(acc_ms2 * 100.0, sr)
    out = []
    for onset in onsets:
        w = cut(acc_ms2, int(round(onset * sr)), sr)
        if w is not None:
            out.append(Window(w, sr, "m/s2", 0, f"{name.split('-')[0]}-trigger", group))
    return out, len(onsets)


def _turn(v: np.ndarray, deg: float, rng) -> np.ndarray:
    """``v`` turned by ``deg`` degrees about a random axis perpendicular to it."""
    u = v / np.linalg.norm(v)
    a = np.cross(u, rng.normal(size=3))
    a /= np.linalg.norm(a)
    th = math.radians(deg)
    return np.linalg.norm(v) * (u * math.cos(th) + np.cross(a, u) * math.sin(th))


def pickup_windows(rng, recordings, variants: int = PICKUP_VARIANTS):
    """Windows at the picker's triggers where a phone that lay still starts to move: the
    moments the agent's stillness gate lets through, and the commonest false trigger left
    once it does (docs/classifier.md). ``recordings``: [(source, group, acc m/s^2 (n, 3),
    rate, holds gravity)], 10 or 50 Hz. Each copy: the recording's first 10 s, its motion
    about the mean scaled by a lognormal factor (sigma 0.2), gravity added if missing,
    turned to a random attitude; before it the phone lies still for PICKUP_REST_S (1 gal
    noise) at the attitude the motion starts in turned by 0-PICKUP_TURN_DEG degrees, and
    the motion fades in over 0.2-1.5 s. 50 Hz, values quantised to a phone's LSB. Windows
    at triggers from 0.5 s before the fade to PICKUP_KEEP_S after it; label 0."""
    out = []
    sr = PHONE_RATE_HZ
    for source, group, acc, sr_in, has_gravity in recordings:
        acc = np.asarray(acc, dtype=np.float64)
        if sr_in != sr:
            acc = signal.resample_poly(acc, int(sr // sr_in), 1, axis=0)
        acc = acc[: int(10 * sr)]
        for _ in range(variants):
            mean = acc.mean(axis=0)
            seg = (acc - mean) * math.exp(rng.normal(0.0, 0.2))
            if not has_gravity:
                mean = mean + np.array([0.0, 0.0, G_GAL / 100.0])
            seg = (seg + mean) @ _random_rotation(rng).T
            g0 = seg[: int(0.5 * sr)].mean(axis=0)
            g0 = g0 / np.linalg.norm(g0) * G_GAL / 100.0
            g_rest = _turn(g0, rng.uniform(0.0, PICKUP_TURN_DEG), rng)
            rest = g_rest + rng.normal(0.0, 0.01, size=(int(PICKUP_REST_S * sr), 3))
            fade = rng.uniform(0.2, 1.5)
            stream = concatenate([rest, seg], sr, fade)
            lsb = _loguniform(rng, 0.0006, 0.01)
            stream = np.round(stream / lsb) * lsb
            join = PICKUP_REST_S - fade
            for onset in picker_onsets(stream * 100.0, sr):
                if join - 0.5 <= onset <= join + PICKUP_KEEP_S:
                    w = cut(stream, int(round(onset * sr)), sr)
                    if w is not None:
                        out.append(Window(w, sr, "m/s2", 0, f"pickup-{source}", group))
    return out


def pickup_recordings(heldout: bool):
    """The recordings pick-ups are made of: the training split's (watch subjects 1-8,
    BasicMotions TRAIN) or the held-out one's (watch 9-10, BasicMotions TEST)."""
    recs = []
    for subj, i, acc, sr in watch_recordings():
        if (subj in HELDOUT_WATCH_SUBJECTS) == heldout:
            recs.append(("watch", f"watch:{subj}", acc, sr, True))
    split = "test" if heldout else "train"
    for i, lab, acc, sr in basic_motions(split):
        recs.append(("basicmotions", f"bm-{split}:{i}", acc, sr, False))
    return recs


# --------------------------------------------------------------------------- simulation


def _loguniform(rng, lo, hi):
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _random_rotation(rng) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _bandlimited(rng, n, sr, lo, hi, order=2):
    hi = min(hi, 0.45 * sr)
    lo = min(lo, 0.5 * hi)
    pad = int(2 * sr)
    w = rng.normal(size=n + 2 * pad)
    sos = signal.butter(order, [lo / (sr / 2), hi / (sr / 2)], "bandpass", output="sos")
    y = signal.sosfilt(sos, w)[pad : pad + n]
    return y / (np.std(y) + 1e-12)


def _sim_rate(rng):
    """A device rate. 20 Hz is the slowest the classifier is meant for: below it a P wave's
    main band (5-10 Hz on the OpenEEW sensors) is gone."""
    return float(rng.choice([20.0, 25.0, 31.25, 50.0, 100.0, 125.0]))


def _device_finish(rng, motion_gal, sr, gravity_p):
    """Add sensor noise, gravity at a random attitude, quantisation; pick units."""
    n = len(motion_gal)
    sigma = _loguniform(rng, 0.03, 3.0)
    x = motion_gal + rng.normal(0.0, sigma, size=(n, 3))
    if rng.random() < 0.3:  # slow wander (temperature, building sway)
        x += _bandlimited(rng, n, sr, 0.05, 0.5)[:, None] * rng.normal(0, sigma, 3)
    if rng.random() < gravity_p:
        g = _random_rotation(rng) @ np.array([0.0, 0.0, G_GAL])
        x = x + g
        step = _loguniform(rng, 0.05, 2.0)  # phone accelerometer LSB, gal
        x = np.round(x / step) * step
        return x / 100.0, "m/s2", sigma
    return x, "gal", sigma


def sim_quake(rng, noise_bank=None) -> Window:
    """A P onset (sometimes followed by S inside the window) on a device at a random rate,
    attitude and noise level. Amplitudes are at least 4x the noise (else no trigger).

    ``noise_bank``: quiet OpenEEW windows; a share ``REAL_NOISE_P`` of the simulations is
    laid on one of them (turned to a random attitude) instead of on simulated noise."""
    real_noise = bool(noise_bank) and rng.random() < REAL_NOISE_P
    bank = noise_bank[int(rng.integers(len(noise_bank)))] if real_noise else None
    sr = bank.sr if real_noise else _sim_rate(rng)
    pre, post = window_samples(sr, CUT_POST_S)
    n = pre + post
    jitter = rng.uniform(-0.4, 0.4)  # picker onset error
    t = (np.arange(n) - pre) / sr - jitter
    tp = np.clip(t, 0.0, None)
    fc_lo = _loguniform(rng, 0.3, 2.5)
    fc_hi = _loguniform(rng, max(2.0 * fc_lo, 2.0), 15.0)
    rise = _loguniform(rng, 0.03, 1.5)
    shape = rng.uniform(0.5, 2.0)
    env = np.where(t > 0, np.clip(tp / rise, 0.0, 1.0) ** shape, 0.0) * np.exp(-tp / _loguniform(rng, 1.0, 30.0))
    basis = _random_rotation(rng)
    trans = rng.uniform(0.05, 0.6)
    motion = (
        np.outer(_bandlimited(rng, n, sr, fc_lo, fc_hi) * env, basis[:, 0])
        + trans * np.outer(_bandlimited(rng, n, sr, fc_lo, fc_hi) * env, basis[:, 1])
        + trans * np.outer(_bandlimited(rng, n, sr, fc_lo, fc_hi) * env, basis[:, 2])
    )
    if rng.random() < 0.25:  # close to the source: S arrives inside the window
        ts = rng.uniform(0.3, 1.8)
        s_env = np.where(t > ts, np.clip((t - ts) / _loguniform(rng, 0.05, 0.5), 0.0, 1.0), 0.0)
        s_amp = rng.uniform(1.5, 5.0)
        s_lo = fc_lo / rng.uniform(1.0, 2.0)
        s_hi = max(fc_hi / rng.uniform(1.0, 2.0), 2.0 * s_lo)
        motion += s_amp * (
            np.outer(_bandlimited(rng, n, sr, s_lo, s_hi) * s_env, basis[:, 1])
            + 0.5 * np.outer(_bandlimited(rng, n, sr, s_lo, s_hi) * s_env, basis[:, 2])
        )
    peak = float(np.abs(motion[pre:]).max()) + 1e-12
    if real_noise:
        acc = (bank.acc - bank.acc.mean(axis=0)) @ _random_rotation(rng).T
        units, sigma = "gal", float(np.std(acc[:pre]))
    else:
        acc, units, sigma = _device_finish(rng, np.zeros_like(motion), sr, gravity_p=0.5)
    amp = min(sigma * _loguniform(rng, 4.0, 3000.0), 300.0)
    amp = max(amp, 4.0 * sigma)
    scale = amp / peak
    acc = acc + motion * scale / (100.0 if units == "m/s2" else 1.0)
    return Window(acc, sr, units, 1, "sim-quake", "")


def _rot_about(axis, angle):
    """Rotation matrices (k, 3, 3) about unit ``axis`` by angles ``angle`` (k,)."""
    ax = axis / np.linalg.norm(axis)
    K = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
    a = np.asarray(angle)[:, None, None]
    return np.eye(3)[None] + np.sin(a) * K[None] + (1 - np.cos(a)) * (K @ K)[None]


def sim_human(rng, kind: str, sr: float | None = None, phone: bool = False) -> Window:
    """A window around a trigger-worthy moment of a phone in human hands or a vehicle.

    Motion is built in the world frame (z up, gravity +G_GAL on z as an accelerometer
    reads it at rest), then seen by a device whose attitude may change over the window.
    ``sr``: the device's rate (random if None); ``phone``: always m/s^2 with gravity."""
    sr = float(rng.choice([25.0, 50.0, 100.0, 200.0])) if sr is None else float(sr)
    pre, post = window_samples(sr, CUT_POST_S)
    n = pre + post
    t = (np.arange(n) - pre) / sr - rng.uniform(-0.4, 0.4)
    a = np.zeros((n, 3))  # world-frame acceleration, gal
    tilt = np.zeros(n)  # attitude change, radians about a random horizontal axis
    tremor = _loguniform(rng, 0.2, 8.0) * (rng.random() < 0.6)  # hand tremor, gal
    free_fall = np.zeros(n, dtype=bool)
    if kind == "drop":
        tf = rng.uniform(0.1, 0.5)
        free_fall = (t >= 0) & (t < tf)
        for k in range(rng.integers(1, 4)):
            ti = tf + k * rng.uniform(0.08, 0.4)
            amp = _loguniform(rng, 300.0, 8000.0) / (k + 1) ** 1.5
            f = rng.uniform(10.0, 60.0)
            d = _random_rotation(rng)[:, 0]
            dt = np.clip(t - ti, 0, None)
            a += np.outer(np.where(t >= ti, amp * np.exp(-dt / rng.uniform(0.01, 0.08)) * np.cos(2 * np.pi * f * dt), 0), d)
        tilt = np.where(t > tf, rng.uniform(0.3, 3.0), 0.0)
    elif kind == "bump":
        for k in range(rng.integers(1, 5)):
            ti = 0.0 if k == 0 else rng.uniform(-1.5, 2.0)
            amp = _loguniform(rng, 3.0, 500.0)
            f = _loguniform(rng, 3.0, 40.0)
            d = _random_rotation(rng)[:, 0]
            dt = np.clip(t - ti, 0, None)
            a += np.outer(np.where(t >= ti, amp * np.exp(-dt / _loguniform(rng, 0.02, 0.6)) * np.sin(2 * np.pi * f * dt), 0), d)
        tilt = np.where(t > 0, rng.normal(0, 0.05), 0.0)
    elif kind in ("walk", "run"):
        f_step = rng.uniform(1.4, 2.3) if kind == "walk" else rng.uniform(2.4, 3.4)
        amp = _loguniform(rng, 30.0, 400.0) if kind == "walk" else _loguniform(rng, 200.0, 1500.0)
        started = rng.random() < 0.5  # already moving before the onset?
        on = np.ones(n) if started else np.clip(t / rng.uniform(0.2, 1.0), 0, 1) * (t > 0)
        ph = 2 * np.pi * f_step * t + rng.uniform(0, 2 * np.pi)
        vert = sum(rng.uniform(0.2, 1.0) / h * np.cos(h * ph + rng.uniform(0, 6.3)) for h in range(1, 5))
        fwd = sum(rng.uniform(0.1, 0.6) / h * np.cos(h * ph + rng.uniform(0, 6.3)) for h in range(1, 4))
        side = rng.uniform(0.1, 0.5) * np.cos(ph / 2 + rng.uniform(0, 6.3))
        a += amp * on[:, None] * np.column_stack([fwd, side, vert])
        # heel strikes: short impulses each step
        strikes = np.cos(ph) > 0.97
        a[:, 2] += amp * rng.uniform(0.2, 1.5) * strikes * on
        sway = rng.uniform(0.03, 0.5)
        tilt = sway * on * np.sin(ph / 2 + rng.uniform(0, 6.3))
        if started:
            a *= 1 + (t > 0)[:, None] * rng.uniform(0.0, 1.5)  # pace change at the onset
    elif kind == "handling":  # picking up, turning over, putting down
        dur = rng.uniform(0.3, 1.5)
        ang = rng.uniform(0.2, 3.0)
        s = np.clip(t / dur, 0, 1)
        tilt = ang * (3 * s**2 - 2 * s**3)
        move = _loguniform(rng, 10.0, 300.0)
        a += np.outer(move * np.sin(np.pi * s) * (t > 0), _random_rotation(rng)[:, 0])
        a += _loguniform(rng, 1.0, 30.0) * _bandlimited(rng, n, sr, 0.5, 6.0)[:, None] * (t > 0)[:, None]
    elif kind == "vehicle":
        road = _loguniform(rng, 1.0, 60.0)
        lo, hi = rng.uniform(0.5, 3.0), rng.uniform(5.0, 30.0)
        mod = 1.0 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.05, 0.5) * t + rng.uniform(0, 6.3))
        a += road * mod[:, None] * np.column_stack([_bandlimited(rng, n, sr, lo, hi) * w for w in rng.uniform(0.3, 1.0, 3)])
        if rng.random() < 0.6:  # a bump: suspension bounce plus a knock
            f = rng.uniform(0.8, 3.0)
            amp = road * _loguniform(rng, 2.0, 20.0)
            dt = np.clip(t, 0, None)
            a[:, 2] += np.where(t >= 0, amp * np.exp(-dt / rng.uniform(0.3, 1.5)) * np.sin(2 * np.pi * f * dt), 0)
            a += np.outer(np.where(t >= 0, amp * np.exp(-dt / 0.05) * np.sin(2 * np.pi * 15 * dt), 0), _random_rotation(rng)[:, 0])
        else:  # braking, accelerating or turning: a slow push sideways
            amp = _loguniform(rng, 20.0, 400.0)
            a[:, rng.integers(0, 2)] += amp * np.clip(t / rng.uniform(0.3, 1.5), 0, 1) * (t > 0)
        if rng.random() < 0.3:  # engine, aliased at low device rates
            fe = rng.uniform(15.0, 60.0)
            a += _loguniform(rng, 0.5, 20.0) * np.sin(2 * np.pi * fe * t + rng.uniform(0, 6.3))[:, None] * rng.normal(0, 1, 3)
    else:
        raise ValueError(kind)
    if tremor:
        a += tremor * _bandlimited(rng, n, sr, 6.0, 12.0)[:, None] * rng.normal(0, 1, 3)
    # what the device reads: specific force (gravity up), in its own rotating frame
    g = np.array([0.0, 0.0, G_GAL])
    f_world = a + np.where(free_fall[:, None], 0.0, g[None, :])
    R0 = _random_rotation(rng)
    axis = np.array([*rng.normal(size=2), 0.0]) + 1e-9
    Rt = _rot_about(axis, tilt)  # (n, 3, 3)
    f_dev = np.einsum("ij,njk,nk->ni", R0.T, Rt.transpose(0, 2, 1), f_world)
    if not phone and rng.random() < 0.2:  # an API that already removed gravity (slowly tracked)
        f_dev = f_dev - signal.sosfiltfilt(signal.butter(1, 0.3 / (sr / 2), output="sos"), f_dev, axis=0)
        acc, units, _ = _device_finish(rng, f_dev, sr, gravity_p=0.0)
    else:
        sigma = _loguniform(rng, 0.3, 3.0)
        x = f_dev + rng.normal(0.0, sigma, size=f_dev.shape)
        step = _loguniform(rng, 0.05, 2.0)
        acc, units = np.round(x / step) * step / 100.0, "m/s2"
    return Window(acc, sr, units, 0, f"sim-{kind}", "")


def sim_phone_stream(rng, hours: float, sr: float = PHONE_RATE_HZ, mean_rest_s: float = 60.0):
    """A continuous simulated phone stream (m/s^2 with gravity) for the chain test: the
    phone rests (sensor noise, gravity at its attitude) for exponentially distributed
    spells of mean ``mean_rest_s``, each followed by one simulated handling event (a window
    of :func:`sim_human` of a random kind), the attitudes joined by 1 s cross-fades.
    Far busier than a real phone's day (about one event a minute)."""
    n_total = int(hours * 3600 * sr)
    pieces, n = [], 0
    sigma = 1.0  # gal, a typical phone accelerometer's noise
    g = _random_rotation(rng) @ np.array([0.0, 0.0, G_GAL])
    while n < n_total:
        m = max(int(rng.exponential(mean_rest_s) * sr), int(2 * sr))
        rest = (g + rng.normal(0.0, sigma, size=(m, 3))) / 100.0
        ev = sim_human(rng, HUMAN_KINDS[int(rng.integers(len(HUMAN_KINDS)))], sr=sr, phone=True)
        pieces += [rest, ev.acc]
        n += m + len(ev.acc)
        g = ev.acc[-int(sr // 2) :].mean(axis=0) * 100.0
    return concatenate(pieces, sr)[:n_total]


def sim_windows(rng, n_quake, n_human, noise_bank=None, batch=200):
    out = []
    for i in range(n_quake):
        w = sim_quake(rng, noise_bank)
        w.group = f"simq:{i // batch}"
        out.append(w)
    for i in range(n_human):
        w = sim_human(rng, HUMAN_KINDS[i % len(HUMAN_KINDS)])
        w.group = f"simh:{i // batch}"
        out.append(w)
    return out


# --------------------------------------------------------------------------- assembling


def featurize(windows, post_s: float = WINDOW_POST_S) -> np.ndarray:
    """Feature rows of the windows, over ``post_s`` seconds after each onset."""
    return np.array([window_features(w.acc, w.sr, w.units, post_s) for w in windows])


def heldout_windows(data_dir: Path, with_sim: bool = True):
    """The held-out split: windows and continuous human-motion streams.

    Returns (windows, streams). Windows: the held-out events' P, later-phase and noise
    windows (onsets as the picker gives them), activity windows of the held-out watch
    subjects and of BasicMotions' TEST split, windows at the picker's triggers on their
    continuous streams, and (``with_sim``) simulations from the held-out random stream.
    """
    windows = openeew_windows(openeew_streams(data_dir, HELDOUT_EVENTS))
    for subj, i, acc, sr in watch_recordings():
        if subj in HELDOUT_WATCH_SUBJECTS:
            windows += activity_windows(acc, sr, "m/s2", "watch", f"watch:{subj}")
    for i, lab, acc, sr in basic_motions("test"):
        windows += activity_windows(acc, sr, "m/s2", f"basicmotions-{lab}", f"bm-test:{i}")
    streams = human_streams(HELDOUT_WATCH_SUBJECTS, "test")
    for name, acc, sr in streams:
        windows += stream_trigger_windows(name, acc, sr, f"stream:{name}")[0]
    if with_sim:
        quiet = [w for w in windows if w.source == "openeew-quiet"]
        windows += sim_windows(np.random.default_rng([SEED, 2]), N_SIM_TEST, N_SIM_TEST, quiet)
    return windows, streams


def training_windows(data_dir: Path, rng):
    events = [p.name for p in openeew.iter_event_dirs(data_dir) if p.name not in HELDOUT_EVENTS]
    windows = openeew_windows(openeew_streams(data_dir, events), offsets_s=TRAIN_OFFSETS_S, quiet_step_s=10.0)
    # quiet windows are no triggers: they serve as recorded noise under simulated quakes
    quiet = [w for w in windows if w.source == "openeew-quiet"]
    windows = [w for w in windows if w.source != "openeew-quiet"]
    train_subjects = sorted({s for s, *_ in watch_recordings()} - set(HELDOUT_WATCH_SUBJECTS))
    for subj, i, acc, sr in watch_recordings():
        if subj not in HELDOUT_WATCH_SUBJECTS:
            windows += activity_windows(acc, sr, "m/s2", "watch", f"watch:{subj}", step_s=0.5)
    for i, lab, acc, sr in basic_motions("train"):
        windows += activity_windows(acc, sr, "m/s2", f"basicmotions-{lab}", f"bm-train:{i}", step_s=0.25)
    for name, acc, sr in human_streams(train_subjects, "train"):
        group = f"watch:{name.rsplit('-', 1)[1]}" if name.startswith("watch") else "bm-train:stream"
        windows += stream_trigger_windows(name, acc, sr, group)[0]
    windows += sim_windows(rng, N_SIM_QUAKE, N_SIM_HUMAN, quiet)
    windows += pickup_windows(np.random.default_rng([SEED, 4]), pickup_recordings(heldout=False))
    return windows


# --------------------------------------------------------------------------- model


def sample_weights(windows) -> np.ndarray:
    """Each (class, kind of source) gets an equal share of its class's weight, so that
    thousands of activity windows do not drown 200 real P windows."""
    kinds = {}
    for w in windows:
        kinds.setdefault((w.label, _family(w.source)), []).append(w)
    weight = np.empty(len(windows))
    per_class = {c: len({k for k in kinds if k[0] == c}) for c in (0, 1)}
    index = {id(w): i for i, w in enumerate(windows)}
    for (label, fam), ws in kinds.items():
        for w in ws:
            weight[index[id(w)]] = 1.0 / (len(ws) * per_class[label])
    # real earthquake windows are few and precious next to thousands of simulated ones
    weight[[i for i, w in enumerate(windows) if w.label == 1 and w.source.startswith("openeew")]] *= REAL_QUAKE_WEIGHT
    return weight / weight.mean()


def _family(source: str) -> str:
    """The family a window's source belongs to, for weights and the threshold rule."""
    if source.startswith("sim-") and source != "sim-quake":
        return "sim-human"
    if source.startswith("pickup-"):
        return "pickup"
    if source.startswith("basicmotions"):
        return "basicmotions"
    if source.startswith("watch"):
        return "watch"
    if source in ("openeew-quiet", "openeew-noise-trigger"):
        return "openeew-noise"
    return source


#: families of non-earthquake windows that the threshold must keep below TARGET_FPR:
#: human motion, real and simulated (the activity windows of the issue's numbers)
ACTIVITY_FAMILIES = ("watch", "basicmotions", "sim-human")


def fit_mlp(X, y, w, seed, post_s: float = WINDOW_POST_S):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mean = X.mean(axis=0)
    scale = X.std(axis=0) + 1e-9
    clf = MLPClassifier(
        hidden_layer_sizes=HIDDEN,
        activation="relu",
        alpha=1e-3,
        max_iter=600,
        tol=1e-5,
        n_iter_no_change=30,
        random_state=seed,
    )
    with warnings.catch_warnings():
        # a fold model may stop at max_iter a hair above tol; its predictions are fine
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X - mean) / scale, y, sample_weight=w)
    return EarthquakeClassifier(mean, scale, clf.coefs_, [b for b in clf.intercepts_], threshold=0.5, window_post_s=post_s)


def choose_threshold(p_oof, windows, target_fpr: float = TARGET_FPR, families=None, cap: float = 0.9999) -> float:
    """Lowest threshold whose out-of-fold false-positive rate is at most ``target_fpr`` on
    each family of activity windows (real watch data, BasicMotions, simulated human motion,
    unless ``families`` says otherwise), but at most ``cap``."""
    t = 0.5
    for fam in families or ACTIVITY_FAMILIES:
        ps = np.array([p_oof[i] for i, w in enumerate(windows) if w.label == 0 and _family(w.source) == fam])
        if len(ps):
            q = float(np.quantile(ps, 1.0 - target_fpr, method="higher"))
            t = max(t, min(q + min(1e-6, 0.5 * (1.0 - q)), cap))
    return t


def window_peak_gal(w, post_s: float) -> float:
    """Largest |acceleration - mean of the 2 s before the onset| (gal, three axes
    combined) in the first ``post_s`` after the onset of window ``w``."""
    pre, post = window_samples(w.sr, post_s)
    return peak_after_onset_gal(np.asarray(w.acc, dtype=float)[: pre + post] * UNITS_TO_GAL[w.units], pre)


def pass_rate_by_peak(p, windows, threshold, post_s: float, sources) -> list[dict]:
    """Share of the earthquake windows of ``sources`` called earthquake, by
    EARLY_PEAK_BINS_GAL of the peak seen ``post_s`` after the onset."""
    idx = [i for i, w in enumerate(windows) if w.source in sources]
    peaks = np.array([window_peak_gal(windows[i], post_s) for i in idx])
    hit = np.asarray(p)[idx] >= threshold
    out = []
    for lo, hi in zip(EARLY_PEAK_BINS_GAL[:-1], EARLY_PEAK_BINS_GAL[1:]):
        m = (peaks >= lo) & (peaks < hi)
        out.append({"peak_gal_from": lo, "peak_gal_to": hi, "windows": int(m.sum()), "passed": int(hit[m].sum())})
    return out


# --------------------------------------------------------------------------- evaluation


def chain_false_triggers(model, streams):
    """Per stream: (name, hours, picker triggers, triggers the classifier passes)."""
    out = []
    for name, acc, sr in streams:
        ws, n_trig = stream_trigger_windows(name, acc, sr, "")
        passed = sum(model.is_earthquake(w.acc, w.sr, w.units) for w in ws)
        out.append((name, len(acc) / sr / 3600.0, n_trig, int(passed)))
    return out


def rates_by_source(p, windows, threshold):
    res = {}
    for src in sorted({w.source for w in windows}):
        idx = [i for i, w in enumerate(windows) if w.source == src]
        lab = windows[idx[0]].label
        hit = int(np.sum(p[idx] >= threshold))
        res[src] = {"label": lab, "windows": len(idx), "called_earthquake": hit, "rate": hit / len(idx)}
    return res


def poisson_upper_95(k: int) -> float:
    """One-sided 95 % upper bound of a Poisson mean after observing k events."""
    from scipy.stats import chi2

    return 0.5 * float(chi2.ppf(0.95, 2 * k + 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    root = Path(__file__).resolve().parents[1]
    ap.add_argument("--output", type=Path, default=root / "src/yujing/data/classifier.npz")
    ap.add_argument("--data", type=Path, default=openeew.default_data_dir())
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument(
        "--window-post-s",
        type=float,
        default=WINDOW_POST_S,
        help=f"seconds after the onset the classifier sees (default {WINDOW_POST_S:g}, the agent's; at most {CUT_POST_S:g})",
    )
    ap.add_argument(
        "--early",
        action="store_true",
        help=f"train the early-decision model ({EARLY_WINDOW_POST_S:g} s, threshold rule at {EARLY_TARGET_FPR:.2%} "
        "per activity family and on pick-ups; default output src/yujing/data/classifier_early.npz)",
    )
    args = ap.parse_args(argv)
    if args.early:
        if args.window_post_s != WINDOW_POST_S:
            ap.error("--early fixes the window at EARLY_WINDOW_POST_S; leave --window-post-s out")
        args.window_post_s = EARLY_WINDOW_POST_S
        if args.output == root / "src/yujing/data/classifier.npz":
            args.output = root / "src/yujing/data/classifier_early.npz"
    post_s = float(args.window_post_s)
    if not 0.5 <= post_s <= CUT_POST_S:
        ap.error(f"--window-post-s must lie in [0.5, {CUT_POST_S:g}]")
    if abs(post_s - WINDOW_POST_S) > 1e-9 and not args.early:
        print(f"note: window {post_s:g} s after the onset, but WINDOW_POST_S is {WINDOW_POST_S:g} s: "
              "the package will not load this file as its shipped model", flush=True)
    t_start = time.time()
    rng = np.random.default_rng(SEED)

    print("building training windows ...", flush=True)
    train = training_windows(args.data, rng)
    Xtr = featurize(train, post_s)
    ytr = np.array([w.label for w in train])
    wtr = sample_weights(train)
    print(f"  {len(train)} windows ({ytr.sum()} earthquake) in {time.time() - t_start:.0f} s")
    _print_counts(train)

    # out-of-fold probabilities on the training split: folds by group
    groups = sorted({w.group for w in train})
    grng = np.random.default_rng([SEED, 1])
    fold_of = {g: int(k) for g, k in zip(groups, grng.permutation(len(groups)) % args.folds)}
    folds = np.array([fold_of[w.group] for w in train])
    p_oof = np.zeros(len(train))
    fold_models = []
    for k in range(args.folds):
        m = fit_mlp(Xtr[folds != k], ytr[folds != k], wtr[folds != k], SEED + k, post_s)
        p_oof[folds == k] = m.probability_from_features(Xtr[folds == k])
        fold_models.append(m)
    if args.early:
        threshold = choose_threshold(p_oof, train, EARLY_TARGET_FPR, ACTIVITY_FAMILIES + ("pickup",), cap=EARLY_THRESHOLD_CAP)
    else:
        threshold = choose_threshold(p_oof, train)
    print(f"threshold from out-of-fold training predictions: {threshold:.4f}")
    oof = rates_by_source(p_oof, train, threshold)
    # the real P windows at the picker's own onset (the held-out split's kind), out of fold
    at_pick = [i for i, w in enumerate(train) if w.source == "openeew-P" and w.offset_s == 0.0]
    oof_p_at_pick = {"windows": len(at_pick), "called_earthquake": int(np.sum(p_oof[at_pick] >= threshold))}
    t_fit = time.time()
    model = fit_mlp(Xtr, ytr, wtr, SEED, post_s)
    model.threshold = threshold
    print(f"final fit in {time.time() - t_fit:.1f} s")

    print("building held-out windows ...", flush=True)
    held, streams = heldout_windows(args.data)
    Xte = featurize(held, post_s)
    p_te = model.probability_from_features(Xte)
    te = rates_by_source(p_te, held, threshold)
    chain = chain_false_triggers(model, streams)
    # pick-ups of the held-out recordings: not activity windows, reported on their own
    held_pickup = pickup_windows(np.random.default_rng([SEED, 5]), pickup_recordings(heldout=True))
    p_pick = model.probability_from_features(featurize(held_pickup, post_s)) if held_pickup else np.zeros(0)
    pickup_te = rates_by_source(p_pick, held_pickup, threshold)
    # the training subjects' streams, each through the fold model that never saw the subject
    chain_oof = []
    train_subjects = sorted({s for s, *_ in watch_recordings()} - set(HELDOUT_WATCH_SUBJECTS))
    for name, acc, sr in human_streams(train_subjects):
        fm = fold_models[fold_of[f"watch:{name.rsplit('-', 1)[1]}"]]
        fm.threshold = threshold
        chain_oof += chain_false_triggers(fm, [(name, acc, sr)])
    # a simulated, far busier than real, phone stream (own random stream)
    sim_hours = 2.0
    chain_sim = chain_false_triggers(model, [("simulated-phone", sim_phone_stream(np.random.default_rng([SEED, 3]), sim_hours), PHONE_RATE_HZ)])

    # the numbers
    real_q = [i for i, w in enumerate(held) if w.source == "openeew-P"]
    real_h = [i for i, w in enumerate(held) if w.label == 0 and not w.source.startswith(("sim-", "openeew"))]
    recall = float(np.mean(p_te[real_q] >= threshold))
    fpr = float(np.mean(p_te[real_h] >= threshold))
    hours = sum(c[1] for c in chain)
    passed = sum(c[3] for c in chain)
    per_day = passed / hours * 24.0
    per_day_u95 = poisson_upper_95(passed) / hours * 24.0
    all_real = chain + chain_oof
    hours_all = sum(c[1] for c in all_real)
    passed_all = sum(c[3] for c in all_real)

    summary = {
        "seed": SEED,
        "window_post_s": post_s,
        "features": list(FEATURE_NAMES),
        "hidden_layers": list(HIDDEN),
        "threshold": threshold,
        "stage": "early" if args.early else "full",
        "threshold_rule": (
            f"lowest with out-of-fold FPR <= {EARLY_TARGET_FPR} in each family {ACTIVITY_FAMILIES + ('pickup',)} of the training split"
            if args.early
            else f"lowest with out-of-fold FPR <= {TARGET_FPR} in each activity family {ACTIVITY_FAMILIES} of the training split"
        ),
        "heldout_pass_rate_by_peak": {
            "sim-quake": pass_rate_by_peak(p_te, held, threshold, post_s, ("sim-quake",)),
            "openeew-P": pass_rate_by_peak(p_te, held, threshold, post_s, ("openeew-P",)),
        },
        "heldout_events": list(HELDOUT_EVENTS),
        "heldout_watch_subjects": list(HELDOUT_WATCH_SUBJECTS),
        "heldout": {
            "earthquake_recall_openeew_P": recall,
            "earthquake_P_windows": len(real_q),
            "false_trigger_rate_per_activity_window": fpr,
            "activity_windows": len(real_h),
            "by_source": te,
        },
        "chain": {
            "streams": [dict(zip(("name", "hours", "picker_triggers", "passed"), c)) for c in chain],
            "hours": hours,
            "false_triggers_per_day": per_day,
            "false_triggers_per_day_upper95": per_day_u95,
            "training_subjects_out_of_fold": [dict(zip(("name", "hours", "picker_triggers", "passed"), c)) for c in chain_oof],
            "all_real_hours": hours_all,
            "all_real_passed": passed_all,
            "all_real_false_triggers_per_day": passed_all / hours_all * 24.0,
            "all_real_false_triggers_per_day_upper95": poisson_upper_95(passed_all) / hours_all * 24.0,
            "simulated": [dict(zip(("name", "hours", "picker_triggers", "passed"), c)) for c in chain_sim],
        },
        "heldout_pickups": pickup_te,
        "out_of_fold_training": oof,
        "out_of_fold_openeew_P_at_picker_onset": oof_p_at_pick,
        "training_windows": len(train),
        "training_seconds": round(time.time() - t_start, 1),
    }
    model.meta = json.dumps(summary, sort_keys=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    model.save(args.output)
    _report(summary, args.output)
    return 0


def _print_counts(windows):
    counts = {}
    for w in windows:
        counts[w.source] = counts.get(w.source, 0) + 1
    for k in sorted(counts):
        print(f"    {k:28s} {counts[k]:6d}")


def _report(s, path):
    h = s["heldout"]
    print(f"\nclassifier window: {s['window_post_s']:g} s after the onset")
    print("\nheld-out split (events %s; watch subjects %s; BasicMotions TEST; simulations, own seed)"
          % (", ".join(s["heldout_events"]), ", ".join(map(str, s["heldout_watch_subjects"]))))
    print(f"{'source':28s} {'label':>5s} {'windows':>8s} {'-> quake':>8s} {'rate':>7s}")
    for src, r in h["by_source"].items():
        print(f"{src:28s} {r['label']:5d} {r['windows']:8d} {r['called_earthquake']:8d} {100 * r['rate']:6.1f}%")
    o = s["out_of_fold_training"]
    print("\nout of fold on the training split (folds by event/subject/clip/batch), same threshold:")
    for src, r in s.get("heldout_pickups", {}).items():
        print(f"{src + ' (held out)':28s} {r['label']:5d} {r['windows']:8d} {r['called_earthquake']:8d} {100 * r['rate']:6.1f}%")
    for src in ("openeew-P", "openeew-late", "sim-quake", "watch", "basicmotions-standing", "pickup-watch",
                "pickup-basicmotions", "openeew-noise-trigger"):
        if src in o:
            print(f"  {src:26s} {o[src]['called_earthquake']:5d} of {o[src]['windows']:5d} called earthquake")
    a = s["out_of_fold_openeew_P_at_picker_onset"]
    print(f"  {'openeew-P, picker onset':26s} {a['called_earthquake']:5d} of {a['windows']:5d} called earthquake "
          "(the other copies are shifted by up to 0.3 s)")
    print(f"\nearthquake recall (OpenEEW P triggers, held-out events): {100 * h['earthquake_recall_openeew_P']:.1f} % "
          f"of {h['earthquake_P_windows']}  (need >= 95 %)")
    print(f"false triggers per activity window (real human motion): {100 * h['false_trigger_rate_per_activity_window']:.2f} % "
          f"of {h['activity_windows']}  (need <= 1 %)")
    c = s["chain"]
    print("\npicker + classifier on continuous held-out human-motion streams (50 Hz):")
    for st in c["streams"]:
        print(f"  {st['name']:26s} {st['hours'] * 60:6.1f} min  {st['picker_triggers']:4d} picker triggers  {st['passed']:3d} passed")
    print(f"  {c['hours'] * 60:.1f} min in all: {c['false_triggers_per_day']:.2f} false triggers per phone-day "
          f"(95 % upper bound {c['false_triggers_per_day_upper95']:.0f}; need <= 1)")
    print("training subjects' streams, each through the fold model that did not see the subject:")
    for st in c["training_subjects_out_of_fold"]:
        print(f"  {st['name']:26s} {st['hours'] * 60:6.1f} min  {st['picker_triggers']:4d} picker triggers  {st['passed']:3d} passed")
    print(f"  all real human motion, {c['all_real_hours'] * 60:.0f} min: {c['all_real_passed']} passed = "
          f"{c['all_real_false_triggers_per_day']:.2f} per phone-day (95 % upper bound {c['all_real_false_triggers_per_day_upper95']:.0f})")
    for st in c["simulated"]:
        print(f"  {st['name']:26s} {st['hours'] * 60:6.1f} min  {st['picker_triggers']:4d} picker triggers  {st['passed']:3d} passed "
              f"({st['passed'] / st['hours'] * 24:.1f} per day of such use)")
    print(f"\nheld-out earthquake windows passed, by the peak (gal) seen {s['window_post_s']:g} s after the onset:")
    for src, rows in s["heldout_pass_rate_by_peak"].items():
        cells = "  ".join(f"{r['peak_gal_from']:g}-{r['peak_gal_to']:g}: {r['passed']}/{r['windows']}" for r in rows)
        print(f"  {src:12s} {cells}")
    size = Path(path).stat().st_size
    print(f"\nwrote {path} ({size} bytes) after {s['training_seconds']:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
