"""scripts/chain_false_rate.py: its augmentation is seeded and its counting adds up.

The measurement itself (hours of data) is run by hand; see docs/classifier.md. These
checks use a tiny synthetic pool, so they need neither the PyPI data sets nor much time.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from conftest import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "chain_false_rate.py"


@pytest.fixture(scope="module")
def cfr():
    return load_script(SCRIPT, "yujing_chain_false_rate")


def _pool():
    rng = np.random.default_rng(0)
    t = np.arange(500) / 50.0
    wrist = np.column_stack([np.sin(2 * np.pi * 1.3 * t), np.cos(2 * np.pi * 0.7 * t), 9.8 + 0.3 * np.sin(t)])
    clip = rng.normal(0.0, 1.0, (100, 3))  # 10 s at 10 Hz, no gravity
    return [("wrist", wrist, 50.0, True), ("clip", clip, 10.0, False)]


def test_phone_stream_is_seeded(cfr):
    a = cfr.phone_stream(np.random.default_rng([1, 2]), _pool(), 0.02, 100.0)
    b = cfr.phone_stream(np.random.default_rng([1, 2]), _pool(), 0.02, 100.0)
    c = cfr.phone_stream(np.random.default_rng([1, 3]), _pool(), 0.02, 100.0)
    assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]
    assert not (len(a[0]) == len(c[0]) and np.array_equal(a[0], c[0]))


def test_phone_stream_holds_what_it_reports(cfr):
    acc, motion_s, still_s, spans = cfr.phone_stream(np.random.default_rng(7), _pool(), 0.05, 200.0)
    assert motion_s >= 0.05 * 3600
    # pieces overlap by the 1 s cross-fade at every join; at most one still spell per segment
    assert len(acc) / 200.0 <= motion_s + still_s + 1e-6
    assert len(acc) / 200.0 >= motion_s + still_s - 2.0 * len(spans) - 0.1
    # the phone measures gravity at every attitude: |mean| about 1 g over the still spells and segments
    g = np.linalg.norm(acc, axis=1)
    assert 8.0 < np.median(g) < 11.5
    starts = [s for s, _ in spans]
    assert starts == sorted(starts) and starts[0] == 0.0


def _attitudes_at_joins(acc, spans, sr):
    """(gravity direction over the 2 s before each join, over the 0.3 s after its 1 s
    cross-fade): unit vectors, for the segments that follow a still spell."""
    out = []
    for start, _ in spans[1:]:
        i = int(round(start * sr))
        before, after = acc[i - int(2 * sr) : i], acc[i + int(sr) : i + int(1.3 * sr)]
        if len(before) and np.std(before, axis=0).sum() < 0.05:  # a still spell ends here
            u, v = before.mean(axis=0), after.mean(axis=0)
            out.append((u / np.linalg.norm(u), v / np.linalg.norm(v)))
    return out


def test_level_pickups_rest_in_the_next_segments_attitude(cfr):
    """``pickup="level"``: the phone rests in the attitude its next motion starts in, so
    gravity does not turn across the join; ``"turn"`` (random attitudes) turns it by
    90 degrees on average."""
    sr = 100.0
    angles = {}
    for mode in ("level", "turn"):
        acc, _, _, spans = cfr.phone_stream(np.random.default_rng(11), _pool(), 0.1, sr, pickup=mode)
        pairs = _attitudes_at_joins(acc, spans, sr)
        assert len(pairs) >= 5
        angles[mode] = [math.degrees(math.acos(np.clip(u @ v, -1, 1))) for u, v in pairs]
    assert np.median(angles["level"]) < 10.0
    assert np.median(angles["turn"]) > 30.0
    with pytest.raises(ValueError, match="pickup"):
        cfr.phone_stream(np.random.default_rng(1), _pool(), 0.01, sr, pickup="sideways")


def test_augment_segment_rate_stretch_and_amplitude(cfr):
    name, wrist, sr, grav = _pool()[0]
    durations = []
    for seed in range(40):
        seg, dur = cfr.augment_segment(np.random.default_rng(seed), wrist, sr, grav, 200.0)
        durations.append(dur)
        assert abs(np.linalg.norm(seg.mean(axis=0)) - np.linalg.norm(wrist.mean(axis=0))) < 0.5
    d0 = len(wrist) / sr
    assert min(durations) >= d0 * (1 - cfr.STRETCH) - 0.05 and max(durations) <= d0 * (1 + cfr.STRETCH) + 0.05
    assert max(durations) - min(durations) > 0.1 * d0  # the stretch is really applied


def test_phone_times_increase_and_drop_few(cfr):
    t, keep = cfr.phone_times(np.random.default_rng(3), 20000, 100.0, 1.7e9)
    assert np.all(np.diff(t) > 0)
    assert 0.99 < len(keep) / 20000 < 1.0
    assert abs(np.median(np.diff(t)) - 0.01) < 0.01 * cfr.CLOCK_ERR + 1e-4


def test_summarise_counts_and_bounds(cfr):
    rows = [
        {"motion_hours": 6.0, "still_hours": 1.0, "stream_hours": 7.0, "picker_triggers": 30, "passed": 0, "cpu_s": 10.0,
         "rejected_moving": 20, "rejected_turned": 3},
        {"motion_hours": 2.0, "still_hours": 0.0, "stream_hours": 2.0, "picker_triggers": 10, "passed": 0, "cpu_s": 8.0,
         "rejected_moving": 9, "rejected_turned": 0},
    ]
    s = cfr.summarise(rows)
    assert s["motion_hours"] == 8.0 and s["picker_triggers"] == 40 and s["passed"] == 0
    assert s["rejected_moving"] == 29 and s["rejected_turned"] == 3
    assert s["triggers_per_day"] == pytest.approx(120.0)
    assert s["passed_per_day"] == 0.0
    assert s["passed_per_day_upper95"] == pytest.approx(-math.log(0.05) * 3.0)  # 2.996 events in 8 h
    assert s["hours_per_cpu_s"] == pytest.approx(0.5)
    rows[1]["passed"] = 2
    s = cfr.summarise(rows)
    assert s["passed_per_day"] == pytest.approx(6.0)
    assert s["passed_per_day_upper95"] == pytest.approx(6.296 * 3.0, rel=1e-3)


def test_agent_counts_a_quiet_phone_as_nothing(cfr):
    """Two minutes of a phone lying still: the chain sees no trigger and sends nothing."""
    rng = np.random.default_rng(5)
    acc = cfr.still_spell(rng, 100.0, 120.0)
    t, keep = cfr.phone_times(rng, len(acc), 100.0, 1.7e9)
    triggers, passed, onsets, cpu, stats, sent = cfr.run_agent(t, acc[keep])
    assert (triggers, passed, onsets, sent) == (0, 0, [], [])
    assert stats.rate_hz == 100.0 and stats.samples_in == len(t)
