"""Stage 1 of the device agent: the accelerometer stream as the picker wants it.

Samples of any rate and orientation (m/s^2, g or gal, gravity included or not) become a
uniform grid of gal with gravity removed, rotated to (vertical, horizontal 1, horizontal 2):

* :func:`snap_rate_hz` and :class:`Resampler`: irregular timestamps onto a uniform grid at
  the stream's median rate snapped to a usual sensor rate; a faster input is low-passed
  and put on ``max_rate_hz`` (nothing the picker or classifier reads lies above 10 Hz).
* :class:`Orientation`: a running mean (``gravity_tau_s``) estimates gravity, which is
  subtracted; when that mean is about 1 g the vertical is its direction, and the
  horizontal pair is carried along as the device turns (the smallest rotation that keeps
  it perpendicular to gravity), so it does not jump between blocks. Without gravity
  (OpenEEW sensors remove it) the ``x`` axis is vertical, the OpenEEW convention.

Units: times UNIX s, rates Hz, accelerations gal. No I/O.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import signal

from .features import UNITS_TO_GAL

#: Sample rates of phones and MEMS sensors; a measured median rate within 10 % of one of
#: these is taken to be it (timestamps jitter, a nominal 50 Hz comes out as 49.6 Hz).
STANDARD_RATES_HZ = (10.0, 12.5, 20.0, 25.0, 31.25, 40.0, 50.0, 62.5, 100.0, 125.0, 200.0, 250.0, 400.0, 500.0, 1000.0)
#: Input needed before the rate of a stream is decided: this much time (s) and at least
#: RATE_PROBE_SAMPLES samples.
RATE_PROBE_S = 2.0
RATE_PROBE_SAMPLES = 16
#: Running-mean magnitude (in g) that says "this stream contains gravity".
GRAVITY_BAND_G = (0.5, 1.5)
#: gal per g.
G_GAL = UNITS_TO_GAL["g"]


def snap_rate_hz(rate_hz: float) -> float:
    """The standard rate within 10 % of ``rate_hz``, else ``rate_hz`` rounded to 0.01 Hz."""
    best = min(STANDARD_RATES_HZ, key=lambda r: abs(math.log(r / rate_hz)))
    return best if abs(best / rate_hz - 1.0) <= 0.10 else round(rate_hz, 2)



class LinearGrid:
    """Streaming linear interpolation of increasing sample times onto ``t0 + k / rate``,
    ``t0`` being the first sample's time."""

    def __init__(self, rate_hz: float):
        self.rate = rate_hz
        self.t0 = math.nan
        self.k = 0  # next grid index
        self.last_t: np.ndarray | None = None
        self.last_x: np.ndarray | None = None

    def push(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.last_t is None:
            self.t0 = float(t[0])
        else:
            t = np.concatenate([self.last_t, t])
            x = np.concatenate([self.last_x, x])
        k_last = int(math.floor((t[-1] - self.t0) * self.rate + 1e-9))
        ks = np.arange(self.k, k_last + 1)
        tg = self.t0 + ks / self.rate
        xg = np.column_stack([np.interp(tg, t, x[:, a]) for a in range(x.shape[1])]) if len(ks) else x[:0]
        self.k = k_last + 1
        self.last_t, self.last_x = t[-1:], x[-1:]
        return tg, xg


class Resampler:
    """Irregular samples onto a uniform grid at ``rate_out``; a faster input is first put
    on its own rate's grid and low-passed (order-4 Butterworth at 0.4 ``rate_out``, causal,
    started in the steady state of the first sample) so that the second interpolation does
    not alias."""

    def __init__(self, rate_in: float, rate_out: float):
        self.rate = rate_out
        self.first = LinearGrid(rate_in if rate_in > rate_out else rate_out)
        self.second = None
        if rate_in > rate_out:
            self.sos = signal.butter(4, 0.8 * rate_out / rate_in, "lowpass", output="sos")
            self.zi: np.ndarray | None = None
            self.second = LinearGrid(rate_out)

    def push(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tg, xg = self.first.push(t, x)
        if self.second is None or not len(tg):
            return tg, xg
        if self.zi is None:
            self.zi = signal.sosfilt_zi(self.sos)[:, :, None] * xg[0][None, None, :]
        xf, self.zi = signal.sosfilt(self.sos, xg, axis=0, zi=self.zi)
        return self.second.push(tg, xf)



class Orientation:
    """Gravity removal and rotation of one stream: blocks of (n, 3) gal in device axes in,
    (n, 3) gal out as (vertical, horizontal 1, horizontal 2).

    ``vertical``: ``"auto"`` (the gravity direction if the stream holds gravity, else the
    ``x`` axis), ``"gravity"``, or an axis ``"x"``/``"y"``/``"z"``; ``gravity_tau_s``: time
    constant (s) of the running mean that estimates gravity.
    """

    def __init__(self, vertical: str, gravity_tau_s: float):
        self.vertical = vertical
        self.gravity_tau_s = gravity_tau_s
        self.gravity: np.ndarray | None = None  # running mean, gal, device axes
        self.mode = ""  # "gravity" or the axis taken as vertical
        self._horizontal: np.ndarray | None = None

    def start(self, acc_gal: np.ndarray) -> str:
        """A stream (re)starts with this block: gravity from its mean, the vertical chosen.
        Returns the mode (``"gravity"`` or the vertical axis)."""
        self.gravity = acc_gal.mean(axis=0)
        mode = self.vertical
        if mode == "auto":
            lo, hi = GRAVITY_BAND_G
            mode = "gravity" if lo * G_GAL < np.linalg.norm(self.gravity) < hi * G_GAL else "x"
        self.mode = mode
        self._horizontal = None
        return mode

    def rotate(self, acc_gal: np.ndarray, rate_hz: float) -> np.ndarray:
        """Remove the running gravity from a block and rotate it (vertical first)."""
        a = math.exp(-1.0 / (rate_hz * self.gravity_tau_s))
        g, zf = signal.lfilter([1.0 - a], [1.0, -a], acc_gal, axis=0, zi=a * self.gravity[None, :])
        self.gravity = zf[0] / a
        return (acc_gal - g) @ self._rotation().T

    def _rotation(self) -> np.ndarray:
        """Rows: unit vectors of (vertical, horizontal 1, horizontal 2) in device axes."""
        if self.mode != "gravity":
            first = "xyz".index(self.mode)
            order = [first] + [i for i in range(3) if i != first]
            return np.eye(3)[order]
        g = self.gravity / max(np.linalg.norm(self.gravity), 1e-9)
        h = self._horizontal
        if h is not None:
            h = h - (h @ g) * g
        if h is None or np.linalg.norm(h) < 0.1:
            # a device axis far from the vertical, made perpendicular to it
            h = np.eye(3)[int(np.argmin(np.abs(g)))]
            h = h - (h @ g) * g
        h = h / np.linalg.norm(h)
        self._horizontal = h
        return np.array([g, h, np.cross(g, h)])
