"""The picker's fast kernel against its plain twin and against ObsPy, on seeded data."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import signal

from yujing.ingest import IngestedPacket
from yujing.picker import (
    FilterBank,
    Picker,
    aic_onset,
    lfilter_reference,
    onset_search_start,
    recursive_sta_lta,
    recursive_sta_lta_reference,
    unbiased_sta_lta_reference,
    warmup_gain,
)
from yujing.records import Device
from yujing.settings import PickerSettings

SR = 31.25


def synthetic(seed: int, n_s: float = 120.0, onset_s: float = 70.0, amp_gal: float = 3.0, sr: float = SR):
    """Noise (0.05 gal rms) with a P-like burst (8 Hz wavelet, growing envelope) at onset."""
    rng = np.random.default_rng(seed)
    n = int(n_s * sr)
    x = rng.normal(0, 0.05, (n, 3)) + np.array([0.1, -0.2, 0.05])
    t = np.arange(n) / sr
    k = t >= onset_s
    env = np.where(k, (1 - np.exp(-(t - onset_s) / 0.5)) * np.exp(-(t - onset_s) / 15.0), 0.0)
    for axis, f in enumerate((8.0, 5.0, 6.0)):
        x[:, axis] += amp_gal * env * np.sin(2 * np.pi * f * (t - onset_s) + axis)
    return x


def packets_of(x: np.ndarray, slot: int, device_id: str, t0: float, sr: float = SR, n: int = 32):
    out = []
    for i in range(0, len(x) - n + 1, n):
        end = t0 + (i + n - 1) / sr
        out.append(
            IngestedPacket(
                slot=slot,
                device_id=device_id,
                end_time_s=end,
                arrival_time_s=end + 0.2,
                sample_rate_hz=sr,
                samples_gal=x[i : i + n],
                reset=(i == 0),
                gap_s=0.0,
            )
        )
    return out


def test_sta_lta_kernel_equals_reference_twin():
    rng = np.random.default_rng(1)
    cf = rng.gamma(1.0, 1.0, (5, 400))
    sta0 = rng.uniform(0, 1, 5)
    lta0 = rng.uniform(0.5, 1, 5)
    ratio, sta, lta = recursive_sta_lta(cf, sta0, lta0, 16.0, 625.0)
    for k in range(5):
        r_ref, s_ref, l_ref = recursive_sta_lta_reference(cf[k], sta0[k], lta0[k], 16.0, 625.0)
        np.testing.assert_allclose(ratio[k], r_ref, rtol=1e-10)
        assert sta[k] == pytest.approx(s_ref, rel=1e-10)
        assert lta[k] == pytest.approx(l_ref, rel=1e-10)


def test_filter_bank_equals_reference_cascade():
    bank = FilterBank.design(SR, PickerSettings())
    rng = np.random.default_rng(2)
    x = rng.normal(0, 1, 300)
    for b, a in (bank.pick, bank.acc, bank.vel, bank.disp, bank.wa):
        zi = rng.normal(0, 1, len(a) - 1)
        fast, zf = signal.lfilter(b, a, x, zi=zi)
        ref, zr = lfilter_reference(b, a, x, zi)
        np.testing.assert_allclose(fast, ref, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(zf, zr, rtol=1e-9, atol=1e-12)


def test_filter_bank_matches_its_design():
    """The integrating chain really integrates (1 Hz sine: velocity amplitude a/(2 pi f))
    and the Wood-Anderson filter has the static gain 1/w0^2 (cm per gal) of the standard."""
    bank = FilterBank.design(100.0, PickerSettings())
    t = np.arange(0, 60, 0.01)
    acc = np.sin(2 * np.pi * 1.0 * t)
    vel = signal.lfilter(*bank.vel, signal.lfilter(*bank.acc, acc))
    assert np.abs(vel[3000:]).max() == pytest.approx(1 / (2 * np.pi), rel=0.02)
    w, h = signal.freqz(*bank.wa, worN=[0.01], fs=100.0)
    assert abs(h[0]) == pytest.approx((0.8 / (2 * np.pi)) ** 2, rel=0.01)


def test_sta_lta_matches_obspy_recursive_sta_lta():
    from obspy.signal import trigger  # a test dependency: pip install -e '.[test]'

    x = synthetic(3)[:, 0]
    nsta, nlta = 16, 937
    # ObsPy's recursion starts at the second sample and zeroes the first nlta outputs
    ours, _, _ = recursive_sta_lta(x[None, 1:] ** 2, np.zeros(1), np.zeros(1), nsta, nlta)
    theirs = trigger.recursive_sta_lta(x, nsta, nlta)
    np.testing.assert_allclose(ours[0, nlta - 1 :], theirs[nlta:], rtol=1e-9)
    assert theirs[nlta:].max() > 4.0  # the comparison covers a trigger, not only noise


def test_streaming_picker_equals_whole_trace_reference():
    """Packets of 32 samples through the vectorised picker == one plain pass over the trace."""
    s = PickerSettings()
    x = synthetic(4)
    pk = Picker(s, record_ratio=True)
    devices = {"a": Device("a", 16.0, -98.0)}
    for p in packets_of(x, 0, "a", 1_000_000.0):
        pk.process([p], p.arrival_time_s, devices)
    fast = np.concatenate(pk.ratio_log[0])
    bank = FilterBank.design(SR, s)
    cf = np.zeros(len(fast))
    for axis in range(3):
        zi = signal.lfilter_zi(*bank.pick) * x[0, axis]
        y, _ = lfilter_reference(*bank.pick, x[: len(fast), axis], zi)
        cf += y * y
    ref = unbiased_sta_lta_reference(cf, s.sta_s * SR, s.lta_s * SR)
    ref[np.arange(len(ref)) < s.warmup_s * SR] = 0.0
    np.testing.assert_allclose(fast, ref, rtol=1e-8, atol=1e-10)


def test_many_devices_at_once_equal_one_at_a_time():
    s = PickerSettings()
    devices = {f"d{i}": Device(f"d{i}", 16.0 + i * 0.1, -98.0) for i in range(6)}
    traces = [synthetic(10 + i, onset_s=60.0 + 3 * i) for i in range(6)]
    together = Picker(s)
    alone = [Picker(s) for _ in range(6)]
    got_together, got_alone = [], []
    streams = [packets_of(tr, i, f"d{i}", 2_000_000.0) for i, tr in enumerate(traces)]
    for k in range(len(streams[0])):
        batch = [st[k] for st in streams]
        now = max(p.arrival_time_s for p in batch)
        got_together += together.process(batch, now, devices)
        for i, p in enumerate(batch):
            got_alone += alone[i].process([p], now, devices)
    key = lambda t: (t.device_id, t.update)  # noqa: E731
    a = sorted(got_together, key=key)
    b = sorted(got_alone, key=key)
    assert len(a) == len(b) > 6
    for ta, tb in zip(a, b):
        assert ta.device_id == tb.device_id
        assert ta.onset_time_s == pytest.approx(tb.onset_time_s, abs=1e-9)
        assert ta.pga_gal == pytest.approx(tb.pga_gal, rel=1e-6)
        assert ta.pd_cm == pytest.approx(tb.pd_cm, rel=1e-6)


def test_onset_refined_close_to_true_onset_and_amplitudes_grow():
    x = synthetic(5, onset_s=70.0, amp_gal=2.0)
    pk = Picker()
    devices = {"a": Device("a", 16.0, -98.0)}
    t0 = 1_500_000.0
    trig = []
    for p in packets_of(x, 0, "a", t0):
        trig += pk.process([p], p.arrival_time_s, devices)
    first = [t for t in trig if t.update == 0]
    assert len(first) == 1, [t.onset_time_s - t0 for t in first]
    assert first[0].onset_time_s - t0 == pytest.approx(70.0, abs=0.15)
    ups = [t for t in trig if t.onset_time_s == first[0].onset_time_s]
    windows = [u.window_s for u in ups]
    assert windows == sorted(windows) and windows[-1] >= 40.0
    pga = [u.pga_gal for u in ups]
    assert pga == sorted(pga)
    assert pga[-1] == pytest.approx(2.0 * 0.95, rel=0.2)  # envelope peak ~0.95 of amp_gal
    # issued no earlier than the packet that carried the trigger arrived
    assert first[0].issued_at_s >= first[0].onset_time_s


def test_noise_alone_does_not_trigger():
    rng = np.random.default_rng(6)
    x = rng.normal(0, 0.05, (int(600 * SR), 3))
    pk = Picker()
    devices = {"a": Device("a", 16.0, -98.0)}
    trig = []
    for p in packets_of(x, 0, "a", 0.0):
        trig += pk.process([p], p.arrival_time_s, devices)
    assert [t for t in trig if t.update == 0] == []


def test_aic_finds_variance_change():
    rng = np.random.default_rng(7)
    x = np.concatenate([rng.normal(0, 0.1, 200), rng.normal(0, 1.0, 50)])
    assert abs(aic_onset(x) - 200) <= 2


def test_other_sample_rates_and_packet_lengths():
    for sr, n in ((100.0, 100), (125.0, 50)):
        x = synthetic(8, sr=sr, onset_s=60.0)
        pk = Picker()
        devices = {"a": Device("a", 16.0, -98.0)}
        trig = []
        for p in packets_of(x, 0, "a", 0.0, sr=sr, n=n):
            trig += pk.process([p], p.arrival_time_s, devices)
        first = [t for t in trig if t.update == 0]
        assert len(first) == 1
        assert first[0].onset_time_s == pytest.approx(60.0, abs=0.15)


def test_several_packets_of_one_device_in_one_step_stay_in_time_order():
    """A backlog burst brings packets of different lengths of one device in one step: the
    samples must be filtered in time order, as if they had come one by one."""
    x = synthetic(11)
    devices = {"a": Device("a", 16.0, -98.0)}
    one_by_one = Picker(record_ratio=True)
    for p in packets_of(x, 0, "a", 0.0):
        one_by_one.process([p], p.arrival_time_s, devices)
    # same samples as packets of 32, 16, 32, 32, 16, 32, ... sent three at a time
    sizes = [32, 16, 32]
    burst = Picker(record_ratio=True)
    pk, i, k = [], 0, 0
    while i + sizes[k % 3] <= len(x):
        n = sizes[k % 3]
        end = (i + n - 1) / SR
        pk.append(IngestedPacket(0, "a", end, end + 0.2, SR, x[i : i + n], i == 0, 0.0))
        i += n
        k += 1
    for j in range(0, len(pk), 3):
        step = pk[j : j + 3]
        burst.process(step, step[-1].arrival_time_s, devices)
    a = np.concatenate(one_by_one.ratio_log[0])
    b = np.concatenate(burst.ratio_log[0])
    m = min(len(a), len(b))
    np.testing.assert_allclose(b[:m], a[:m], rtol=1e-9, atol=1e-12)


def test_long_packets_are_cut_and_still_picked():
    """A sensor that sends 30 s packets at 100 Hz (3000 samples, longer than the ring)."""
    x = synthetic(12, sr=100.0, onset_s=75.0)
    pk = Picker()
    devices = {"a": Device("a", 16.0, -98.0)}
    trig = []
    for p in packets_of(x, 0, "a", 0.0, sr=100.0, n=3000):
        trig += pk.process([p], p.arrival_time_s, devices)
    first = [t for t in trig if t.update == 0]
    assert len(first) == 1
    assert first[0].onset_time_s == pytest.approx(75.0, abs=0.15)


# ---------------------------------------------------------------- sensor classes, stream starts
#
# Two sensor classes (issue 11): a quiet 24-bit accelerometer of a seismic network (0.01 gal
# noise, counts of 2.4e-4 gal, 100 Hz) and a MEMS phone (1 gal noise, counts of 0.24 gal:
# 16 bits over +-8 g, 50 Hz). Ground noise is coloured (microseism tail, traffic): white
# noise band-passed to a few Hz, plus the sensor's own white noise, plus an offset.
QUIET = dict(sr=100.0, rms_gal=0.01, count_gal=2.4e-4)
MEMS = dict(sr=50.0, rms_gal=1.0, count_gal=0.24)


def ground_noise(rng, n: int, sr: float, rms_gal: float, count_gal: float, band_hz=(1.0, 6.0)) -> np.ndarray:
    """(n, 3) samples in gal: band-passed noise of ``rms_gal``, white sensor noise of 0.3 x
    that, a random offset, quantised to ``count_gal``."""
    sos = signal.butter(2, band_hz, "bandpass", fs=sr, output="sos")
    settle = int(20 * sr)
    w = signal.sosfilt(sos, rng.normal(0.0, 1.0, (n + settle, 3)), axis=0)[settle:]
    x = w / w.std() * rms_gal + rng.normal(0.0, 0.3 * rms_gal, (n, 3)) + rng.normal(0.0, 10 * rms_gal, 3)
    return np.round(x / count_gal) * count_gal


def p_arrival(n: int, sr: float, onset_s: float, amp_gal: float, rise_s: float) -> np.ndarray:
    """(n, 3) gal: a 6 Hz P whose envelope grows linearly from 0 at ``onset_s`` to
    ``amp_gal`` over ``rise_s`` (an emergent onset when ``rise_s`` is long)."""
    t = np.arange(n) / sr
    env = np.clip((t - onset_s) / rise_s, 0.0, 1.0) * amp_gal
    return env[:, None] * np.sin(2 * np.pi * 6.0 * t[:, None] + np.array([0.0, 1.0, 2.0]))


def run_together(streams: list[np.ndarray], sr: float, t0: float = 1_000_000.0) -> list:
    """All ``streams`` start at ``t0`` (an engine restart) and go through one picker in
    1 s packets, one engine step per second; the first message of every trigger."""
    pk = Picker()
    devices = {f"d{i}": Device(f"d{i}", 0.0, 0.0) for i in range(len(streams))}
    n = int(sr)
    out = []
    for k in range(len(streams[0]) // n):
        end = t0 + (k * n + n - 1) / sr
        batch = [IngestedPacket(i, f"d{i}", end, end + 0.2, sr, x[k * n : (k + 1) * n], k == 0, 0.0)
                 for i, x in enumerate(streams)]
        out += [t for t in pk.process(batch, end + 0.2, devices) if t.update == 0]
    return out


def test_warmup_gain_equals_the_running_weight_sums():
    """Fast path (the recursion from zero times :func:`warmup_gain`) == the plain loop
    that divides each average by its own running weight sum."""
    rng = np.random.default_rng(21)
    cf = rng.gamma(1.0, 1.0, (3, 5000))
    ratio, _, _ = recursive_sta_lta(cf, np.zeros(3), np.zeros(3), 50.0, 3000.0)
    fast = ratio * warmup_gain(np.arange(1, 5001)[None, :], 50.0, 3000.0)
    for k in range(3):
        np.testing.assert_allclose(fast[k], unbiased_sta_lta_reference(cf[k], 50.0, 3000.0), rtol=1e-9)
    # the correction matters at a warm-up's end (0.39 of the LTA's weight 15 s into 30 s)
    assert warmup_gain(np.array([1500]), 50.0, 3000.0)[0] == pytest.approx(1.0 - np.exp(-0.5), rel=1e-3)
    assert warmup_gain(np.array([21 * 3000]), 50.0, 3000.0)[0] == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("sensor", [QUIET, MEMS], ids=["quiet_24bit", "mems_phone"])
def test_streams_that_start_together_do_not_trigger_on_their_noise(sensor):
    """Forty devices whose streams start at the same instant (an engine restart, a network
    coming online), two minutes of stationary ground noise: not one trigger. With averages
    started at zero and not corrected, noise stood at an STA/LTA of ~2.5 when the warm-up
    ended and these streams gave 11 (quiet) and 13 (MEMS) triggers between 13 and 29 s."""
    rng = np.random.default_rng(31)
    n = int(120 * sensor["sr"])
    streams = [ground_noise(rng, n, sensor["sr"], sensor["rms_gal"], sensor["count_gal"], band_hz=(1.0, 3.0))
               for _ in range(40)]
    trig = run_together(streams, sensor["sr"])
    assert [round(t.onset_time_s - 1_000_000.0, 1) for t in trig] == []


@pytest.mark.parametrize("sensor", [QUIET, MEMS], ids=["quiet_24bit", "mems_phone"])
def test_streams_that_start_together_pick_their_p_and_nothing_else(sensor):
    """Twelve devices start together; a P reaches each at its own time 20-42 s later,
    impulsive or emergent (rise 0.2-3 s), 5 to 100 x the noise. Each device triggers once,
    and no onset lies more than 0.3 s before its P (issue 11: never a second early) or
    later than the emergent onset needs to stand out of the noise."""
    rng = np.random.default_rng(41)
    sr = sensor["sr"]
    n = int(80 * sr)
    cases = [(20.0 + 2.0 * i, rise, snr) for i, (rise, snr) in
             enumerate((r, a) for r in (0.2, 1.0, 3.0) for a in (5.0, 20.0, 100.0, 20.0))]
    streams = [ground_noise(rng, n, sr, sensor["rms_gal"], sensor["count_gal"])
               + p_arrival(n, sr, onset, snr * sensor["rms_gal"], rise) for onset, rise, snr in cases]
    trig = run_together(streams, sr)
    got = {t.device_id: [] for t in trig}
    for t in trig:
        got[t.device_id].append(round(t.onset_time_s - 1_000_000.0, 2))
    assert sorted(got) == sorted(f"d{i}" for i in range(len(cases))), got
    for i, (onset, rise, snr) in enumerate(cases):
        (pick,) = got[f"d{i}"]
        assert onset - 0.3 <= pick <= onset + 0.5 * rise + 1.0, (i, onset, rise, snr, pick)


def test_onset_search_starts_where_the_ratio_last_stood_at_the_noise():
    ratio = np.array([0.0] * 10 + [1.2, 1.4, 0.9, 1.3, 1.8, 2.5, 3.2, 4.1])
    assert onset_search_start(ratio, 3, 1.5) == 13 - 3
    assert onset_search_start(ratio, 20, 1.5) == 0
    assert onset_search_start(np.full(8, 2.0), 3, 1.5) == 0


@pytest.mark.parametrize("sensor", [QUIET, MEMS], ids=["quiet_24bit", "mems_phone"])
def test_an_arrival_during_the_warm_up_gives_a_trigger_marked_late(sensor):
    """Streams that start with the quake already coming (Napa's NP.1759 and NP.1765 begin
    10 s before their P): P reaches them inside the 15 s warm-up, when they may not trigger,
    and S follows. The trigger fires when the warm-up ends, and its onset (AIC in the last
    3 s) is the S, not the P: it is marked ``late_onset`` and the engine reads it as a bound
    and a later phase. A P after the warm-up on the same network is not marked."""
    rng = np.random.default_rng(51)
    sr = sensor["sr"]
    n = int(60 * sr)
    rms = sensor["rms_gal"]
    early = [(p, p + s_p) for p, s_p in ((9.0, 3.5), (10.0, 3.0), (11.0, 2.5))]
    streams = [ground_noise(rng, n, sr, rms, sensor["count_gal"]) + p_arrival(n, sr, p, 5 * rms, 0.5)
               + p_arrival(n, sr, s, 40 * rms, 0.5) for p, s in early]
    streams += [ground_noise(rng, n, sr, rms, sensor["count_gal"]) + p_arrival(n, sr, 30.0 + i, 20 * rms, 0.5)
                for i in range(3)]
    trig = run_together(streams, sr)
    first = {}
    for t in trig:
        first.setdefault(t.device_id, t)
    assert sorted(first) == [f"d{i}" for i in range(6)], [(t.device_id, t.onset_time_s - 1_000_000.0) for t in trig]
    for i in range(3):
        t = first[f"d{i}"]
        assert t.late_onset, (i, round(t.onset_time_s - 1_000_000.0, 2))
        assert t.onset_time_s - 1_000_000.0 > early[i][0] + 1.0  # the onset it found is not the P
    for i in range(3, 6):
        assert not first[f"d{i}"].late_onset
        assert abs(first[f"d{i}"].onset_time_s - 1_000_000.0 - (30.0 + i - 3)) < 0.5
