"""Orientation-, unit- and rate-free features of a 3-axis acceleration window around a trigger.

The device agent runs the picker (:mod:`yujing.picker`) on its accelerometer stream; for
each trigger it cuts the window ``[onset - WINDOW_PRE_S, onset + WINDOW_POST_S]`` and asks
the classifier (:mod:`yujing.device.classifier`) whether it looks like an earthquake or like
a person handling, carrying or dropping the device. This module turns such a window into a
short feature vector, in the spirit of MyShake (Kong et al. 2016, Science Advances 2,
e1501055: interquartile range of the vector sum, zero crossings, cumulative absolute
velocity) with a few more that separate the two classes well (spectral band shares and
dominant frequency, rectilinearity, the change of the mean vector that a rotating device
shows as gravity moves between its axes, growth and impulsiveness of the motion).

Invariances, by construction:

* **orientation**: only rotation-invariant quantities are used: the vector sum (norm) of
  the three axes, the power spectrum summed over axes, the eigenvalues of the 3x3
  covariance (principal axes) and zero crossings along the principal axes;
* **units**: the window is converted to gal (cm/s^2) first (``units`` = ``"gal"``,
  ``"m/s2"`` or ``"g"``);
* **gravity**: the mean of the pre-onset part is removed per axis, which removes gravity
  for a device that keeps its attitude (a phone giving m/s^2 with gravity and a sensor
  giving gal without it look alike); a device that *turns* shows gravity moving between
  its axes as a large shift of the mean after the onset, which is itself a feature;
* **sample rate**: the window is resampled with a polyphase FIR filter to 100 Hz (the
  rate ratio approximated by a fraction with denominator <= 64, exact for 10, 20, 25,
  31.25, 50, 100, 125, 200, 400 Hz), put on a grid anchored at the onset, low-passed at
  ``BAND_HIGH_HZ`` and decimated to ``COMMON_RATE_HZ``; a device slower than 2 x ``BAND_HIGH_HZ``
  simply has no energy in the top band. Irregularly sampled streams must be interpolated
  onto a regular clock first (the device agent's job).

The feature order is :data:`FEATURE_NAMES`; the classifier's weights are tied to it.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np

__all__ = [
    "COMMON_RATE_HZ",
    "WINDOW_PRE_S",
    "WINDOW_POST_S",
    "EARLY_WINDOW_POST_S",
    "EARLY_MIN_RATE_HZ",
    "AGENT_BLOCK_S",
    "AGENT_DECISION_LAG_S",
    "BAND_HIGH_HZ",
    "FEATURE_NAMES",
    "UNITS_TO_GAL",
    "window_features",
    "window_samples",
    "peak_after_onset_gal",
]

#: Rate the window is resampled to before any feature is computed (Hz). MyShake used 25 Hz.
COMMON_RATE_HZ = 25.0
#: Seconds of the window before the trigger's onset (the noise the onset rose out of).
WINDOW_PRE_S = 2.0
#: Seconds of the window after the onset: the device agent waits this long after a trigger's
#: onset before it classifies and sends, so every second here is a second of warning lost.
#: MyShake classified 2 s windows; 1.5 s still meets the held-out targets, 1 s loses the
#: weakest P onsets (docs/classifier.md compares 1, 1.5 and 2 s). The shipped weights
#: record the length they were trained on.
WINDOW_POST_S = 1.5
#: Seconds after the onset at which the agent asks a second, stricter model first: many P
#: onsets are already clear after 1 s, and sending them then gives everyone 0.5 s more
#: warning. What that model does not pass waits for the full WINDOW_POST_S window, so
#: nothing a 1 s window misses is lost (measured pass rates by amplitude: docs/classifier.md,
#: "Early decision"; weak-to-moderate onsets pass most often).
EARLY_WINDOW_POST_S = 1.0
#: Slowest device rate (Hz) that gets the early decision: over a 1 s window the features of
#: a 20 Hz device drift from a 100 Hz one's (interquartile range 0.054 log10 apart for the
#: test onset, against 0.026 from 25 Hz up); slower devices wait for the full window.
EARLY_MIN_RATE_HZ = 25.0
#: The device agent's processing block (s), the default of ``AgentConfig.packet_s``.
AGENT_BLOCK_S = 0.25
#: How long after its classifier window's last sample a trigger leaves the agent (s). The
#: agent ends a block at that sample, so what is left is the sensor handing the sample to
#: the app and the classifier's few milliseconds; 0.05 s is allowed for both (the
#: simulator times phone triggers by WINDOW_POST_S + this).
AGENT_DECISION_LAG_S = 0.05
#: Top of the band kept (Hz): anti-alias corner below the common rate's Nyquist (12.5 Hz).
BAND_HIGH_HZ = 10.0
#: Conversion to gal (cm/s^2) for the accepted units.
UNITS_TO_GAL = {"gal": 1.0, "m/s2": 100.0, "g": 980.665}
#: Band edges (Hz) of the spectral shares of the post-onset part.
SPECTRAL_BANDS_HZ = ((0.0, 1.0), (1.0, 2.5), (2.5, 5.0), (5.0, BAND_HIGH_HZ))
#: Rate of the intermediate resampling (Hz), a multiple of COMMON_RATE_HZ.
_FINE_RATE_HZ = 100.0


@functools.lru_cache(maxsize=1)
def _lowpass():
    """Band-limit (order 4 Butterworth, zero phase) applied at the intermediate rate.
    scipy.signal is imported here, not at module level: the scenario simulator imports
    this module for its constants only, and scipy.signal costs ~0.5 s and ~70 MB."""
    from scipy import signal

    return signal.butter(4, BAND_HIGH_HZ / (_FINE_RATE_HZ / 2.0), "lowpass", output="sos")


#: Floor added before logarithms of amplitudes (gal, or cm/s for CAV): far below any
#: sensor's noise, so it only guards log(0).
_EPS = 1e-3

FEATURE_NAMES = (
    "log_iqr_vs",  # log10 interquartile range of the vector sum after the onset (gal)
    "log_cav_vs",  # log10 cumulative absolute velocity of the vector sum after the onset (cm/s)
    "log_peak_vs",  # log10 peak of the vector sum after the onset (gal)
    "log_snr",  # log10 RMS after / RMS before the onset
    "mean_shift",  # |mean vector after onset| / RMS after onset (gravity moving = turning)
    "zc_principal_hz",  # zero crossings per second along the first principal axis after onset
    "zc_max_hz",  # largest zero-crossing rate over the three principal axes after onset
    "linearity",  # largest covariance eigenvalue / sum (1 = rectilinear motion)
    "planarity",  # smallest covariance eigenvalue / sum
    "band_0_1",  # share of post-onset power in 0-1 Hz
    "band_1_2p5",  # ... 1-2.5 Hz
    "band_2p5_5",  # ... 2.5-5 Hz
    "band_5_10",  # ... 5-10 Hz
    "log_dominant_hz",  # log10 frequency of the spectral peak after the onset
    "log_kurtosis_vs",  # log10 kurtosis of the vector sum after the onset (impulsiveness)
    "log_crest_vs",  # log10 peak / RMS of the vector sum after the onset
    "log_growth",  # log10 RMS in the 2nd half / RMS in the 1st half of the post-onset part
    "pre_zc_hz",  # zero-crossing rate of the first principal axis before the onset
    "log_peak_snr",  # log10 largest 0.5 s RMS after the onset / RMS before it
    "log_snr_hf",  # log10 amplitude ratio after / before the onset in 2.5-10 Hz
)


def window_samples(sample_rate_hz: float, post_s: float | None = None) -> tuple[int, int]:
    """(samples before the onset, samples after it) of a window at ``sample_rate_hz``.

    The window the agent cuts is ``acc[onset - pre : onset + post]``. ``post_s``: seconds
    after the onset, :data:`WINDOW_POST_S` unless given (the training script evaluates
    other lengths; the shipped classifier records the one it was trained with).
    """
    post_s = WINDOW_POST_S if post_s is None else float(post_s)
    pre = int(round(WINDOW_PRE_S * sample_rate_hz))
    post = int(round(post_s * sample_rate_hz))
    return pre, post


def peak_after_onset_gal(acc_gal: np.ndarray, n_pre: int) -> float:
    """Largest |acceleration - mean of the ``n_pre`` samples before the onset| (gal, the
    three axes' vector) over the samples after them: the strength the agent's gate and the
    training script's early-model table both read. ``acc_gal``: (n, 3) in gal, the onset at
    row ``n_pre``."""
    x = np.asarray(acc_gal, dtype=np.float64)
    d = x[n_pre:] - x[:n_pre].mean(axis=0)
    return float(np.sqrt((d**2).sum(axis=1)).max(initial=0.0))


def _resample(acc_gal: np.ndarray, sample_rate_hz: float, n_pre: int, post_s: float) -> np.ndarray:
    """Onto the COMMON_RATE_HZ grid anchored at the onset, band-limited to BAND_HIGH_HZ.

    Polyphase FIR resampling (rational ratio) to ``_FINE_RATE_HZ``, linear interpolation
    there onto a grid whose sample ``window_samples(COMMON_RATE_HZ)[0]`` is the onset
    (input sample ``n_pre``; fine enough that interpolating loses < 2 % at 10 Hz), a
    zero-phase low-pass at BAND_HIGH_HZ, and every ``_FINE_RATE_HZ / COMMON_RATE_HZ``-th
    sample. Every device rate thus ends in the same band and response.
    """
    from scipy import signal

    sr = float(sample_rate_hz)
    ratio = Fraction(_FINE_RATE_HZ / sr).limit_denominator(64)
    up, down = ratio.numerator, ratio.denominator
    y = acc_gal
    if up != down:
        y = signal.resample_poly(acc_gal, up, down, axis=0, padtype="line")
    rate = sr * up / down
    step = int(round(_FINE_RATE_HZ / COMMON_RATE_HZ))
    pre_c, post_c = window_samples(COMMON_RATE_HZ, post_s)
    t_out = n_pre * up / down + np.arange(-pre_c * step, post_c * step) * rate / _FINE_RATE_HZ
    idx = np.arange(len(y))
    y = np.column_stack([np.interp(t_out, idx, y[:, k]) for k in range(3)])
    y = signal.sosfiltfilt(_lowpass(), y, axis=0, padtype="odd", padlen=3 * step * 12)
    return y[::step]


def _zero_crossing_rate_hz(v: np.ndarray, rate_hz: float) -> float:
    v = v - v.mean()
    s = np.signbit(v)
    return float(np.count_nonzero(s[1:] != s[:-1])) * rate_hz / max(len(v) - 1, 1)


def window_features(acc, sample_rate_hz: float, units: str = "gal", post_s: float | None = None) -> np.ndarray:
    """Feature vector (float64, order :data:`FEATURE_NAMES`) of one trigger window.

    ``acc``: array (n, 3) of acceleration, any axis order and orientation, the onset at
    ``WINDOW_PRE_S`` seconds from the start (``window_samples(sample_rate_hz)[0]``), at
    least ``WINDOW_PRE_S + post_s`` s long; samples beyond that are ignored, so a longer
    window gives exactly the features of the shorter one cut from it. ``units``: ``"gal"``
    (cm/s^2, e.g. OpenEEW, gravity removed), ``"m/s2"`` (phones, gravity included) or
    ``"g"``. ``post_s``: seconds after the onset, :data:`WINDOW_POST_S` unless given.
    """
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"acc must have shape (n, 3), got {a.shape}")
    if units not in UNITS_TO_GAL:
        raise ValueError(f"units must be one of {sorted(UNITS_TO_GAL)}, got {units!r}")
    sr = float(sample_rate_hz)
    if not (math.isfinite(sr) and sr > 0):
        raise ValueError(f"sample_rate_hz must be positive, got {sample_rate_hz}")
    post_s = WINDOW_POST_S if post_s is None else float(post_s)
    if not 0.5 <= post_s <= 10.0:
        raise ValueError(f"post_s must lie in [0.5, 10] s, got {post_s}")
    n_pre, n_post = window_samples(sr, post_s)
    if len(a) < n_pre + n_post:
        raise ValueError(
            f"window too short: {len(a)} samples at {sr:g} Hz; need {WINDOW_PRE_S:g} s before "
            f"the onset and {post_s:g} s after it"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError("acc holds NaN or infinite values")
    a = a[: n_pre + n_post] * UNITS_TO_GAL[units]
    # gravity and sensor offset: the mean attitude before the onset
    a = a - a[:n_pre].mean(axis=0)
    y = _resample(a, sr, n_pre, post_s)
    fs = COMMON_RATE_HZ
    pre_c, _ = window_samples(fs)
    pre, post = y[:pre_c], y[pre_c:]

    vs = np.sqrt(np.einsum("ij,ij->i", post, post))
    q75, q25 = np.percentile(vs, [75.0, 25.0])
    rms_post = math.sqrt(float(np.mean(vs * vs)))
    pre_ac = pre - pre.mean(axis=0)
    rms_pre = math.sqrt(float(np.mean(np.einsum("ij,ij->i", pre_ac, pre_ac))))
    mean_post = post.mean(axis=0)

    post_ac = post - mean_post
    cov = post_ac.T @ post_ac / len(post_ac)
    evals, evecs = np.linalg.eigh(cov)  # ascending
    evals = np.clip(evals, 0.0, None)
    total = float(evals.sum()) + 1e-12
    proj = post_ac @ evecs  # columns: principal axes, smallest first
    zc = [_zero_crossing_rate_hz(proj[:, k], fs) for k in range(3)]
    pre_cov = pre_ac.T @ pre_ac
    _, pre_vecs = np.linalg.eigh(pre_cov)
    pre_zc = _zero_crossing_rate_hz(pre_ac @ pre_vecs[:, -1], fs)

    nfft = 128
    win = np.hanning(len(post_ac))[:, None]
    power = (np.abs(np.fft.rfft(post_ac * win, n=nfft, axis=0)) ** 2).sum(axis=1)
    win_pre = np.hanning(len(pre_ac))[:, None]
    power_pre = (np.abs(np.fft.rfft(pre_ac * win_pre, n=nfft, axis=0)) ** 2).sum(axis=1)
    freqs = np.fft.rfftfreq(nfft, 1.0 / fs)
    hf = (freqs > 2.5) & (freqs <= BAND_HIGH_HZ)
    snr_hf = math.sqrt((float(power[hf].sum()) + 1e-9) / (float(power_pre[hf].sum()) + 1e-9))
    nw = int(round(0.5 * fs))
    e2 = np.einsum("ij,ij->i", post, post)
    short = np.convolve(e2, np.ones(nw) / nw, mode="valid")
    peak_snr = math.sqrt(float(short.max())) if len(short) else rms_post
    ptot = float(power[(freqs > 0) & (freqs <= BAND_HIGH_HZ)].sum()) + 1e-12
    bands = [float(power[(freqs > lo) & (freqs <= hi)].sum()) / ptot for lo, hi in SPECTRAL_BANDS_HZ]
    k_dom = 1 + int(np.argmax(power[1:][freqs[1:] <= BAND_HIGH_HZ]))
    f_dom = float(freqs[k_dom])

    vs_c = vs - vs.mean()
    var = float(np.mean(vs_c**2))
    kurt = float(np.mean(vs_c**4)) / (var * var) if var > 1e-18 else 3.0
    half = len(post) // 2
    r1 = math.sqrt(float(np.mean(np.einsum("ij,ij->i", post_ac[:half], post_ac[:half]))))
    r2 = math.sqrt(float(np.mean(np.einsum("ij,ij->i", post_ac[half:], post_ac[half:]))))

    out = np.array(
        [
            math.log10(q75 - q25 + _EPS),
            math.log10(float(vs.sum()) / fs + _EPS),
            math.log10(float(vs.max()) + _EPS),
            math.log10((rms_post + _EPS) / (rms_pre + _EPS)),
            float(np.linalg.norm(mean_post)) / (rms_post + _EPS),
            zc[2],
            max(zc),
            float(evals[2]) / total,
            float(evals[0]) / total,
            *bands,
            math.log10(f_dom),
            math.log10(max(kurt, 1e-3)),
            math.log10((float(vs.max()) + _EPS) / (rms_post + _EPS)),
            math.log10((r2 + _EPS) / (r1 + _EPS)),
            pre_zc,
            math.log10((peak_snr + _EPS) / (rms_pre + _EPS)),
            math.log10(snr_hf),
        ],
        dtype=np.float64,
    )
    return out
