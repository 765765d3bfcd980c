"""Streaming P-wave picker for every device at once.

The picker receives the packets of one engine step, stacks the rows that share a sample
rate and packet length, and steps all of them together: high-pass filters, the
characteristic function, a recursive STA/LTA (Allen 1978; the form of ObsPy's
``recursive_sta_lta``) and the trigger test are each one vectorised call over
(devices x samples). Only the few devices that triggered get per-device work: the onset is
refined with an AIC picker (Maeda 1985) on the trigger channel, and amplitude *tracks*
measure PGA, PGV, Pd and tau_c as the shaking grows, emitting a :class:`Trigger` update per
packet for ``track_s`` seconds.

A stream's start is where pickers go wrong on quiet sensors, so two rules hold there:

* **Unbiased averages from the first sample.** A recursive average started at zero
  under-reads its mean by the factor ``1 - (1 - c)^m`` after ``m`` samples: 15 s into a
  30 s LTA that is 0.39, so plain noise stands at an STA/LTA of ~2.5 and a little
  coloured noise passes the trigger ratio -- on every stream that started at the same
  time (an engine restart, a network coming online), which the associator then takes
  for a quake. :func:`warmup_gain` divides both averages by their weight sum (the mean
  of what has been seen, weighted as the recursion weighs it), so the ratio means the
  same thing at 15 s as at 15 min; ``warmup_s`` still keeps a device from triggering
  before its LTA has seen enough noise.
* **The onset stays with the energy.** AIC (Maeda 1985) takes the best variance split of
  a window, wherever it lies; on a quiet 24-bit sensor a slow swell of noise seconds
  before the P can win. The search window therefore starts one STA window before the
  last sample whose STA/LTA stood at the noise (at most ``rearm_ratio``, the level at
  which the picker counts a device as quiet again): earlier than that the short-term
  energy had not risen above the noise the LTA measured, whatever the sensor's noise.

The plain twins (``*_reference``) compute the same quantities with explicit Python loops;
tests check the fast kernel against them and against ObsPy.

Units: accelerations in gal (cm/s^2), velocities cm/s, displacements cm, times UNIX s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import msgspec
import numpy as np
from scipy import signal

from .records import Trigger
from .settings import PickerSettings

TAU_C_WINDOW_S = 3.0  # Kanamori (2005) / Wu & Kanamori (2005): tau_c from the first 3 s of P


# --------------------------------------------------------------------------- kernels


def recursive_sta_lta(cf: np.ndarray, sta0: np.ndarray, lta0: np.ndarray, nsta: float, nlta: float):
    """Recursive STA/LTA over rows of ``cf`` (devices x samples), continuing from state.

    ``sta[i] = cs*cf[i] + (1-cs)*sta[i-1]`` with ``cs = 1/nsta`` (and likewise the LTA),
    exactly ObsPy's ``recursive_sta_lta`` when ``cf`` is the squared trace.
    Returns (ratio, sta_last, lta_last).
    """
    cs = 1.0 / nsta
    cl = 1.0 / nlta
    sta, _ = signal.lfilter([cs], [1.0, -(1.0 - cs)], cf, axis=1, zi=((1.0 - cs) * sta0)[:, None])
    lta, _ = signal.lfilter([cl], [1.0, -(1.0 - cl)], cf, axis=1, zi=((1.0 - cl) * lta0)[:, None])
    ratio = sta / np.maximum(lta, 1e-30)
    return ratio, sta[:, -1].copy(), lta[:, -1].copy()


def warmup_gain(m: np.ndarray, nsta: float, nlta: float) -> np.ndarray:
    """Factor that turns the STA/LTA of recursions started at zero into the ratio of their
    weighted means, after ``m`` samples (``m`` >= 1) of a stream.

    After ``m`` samples a recursive average with coefficient ``c`` holds weights summing
    to ``w(m) = 1 - (1 - c)^m``; dividing by it gives the weighted mean. The ratio of the
    two means is ``(sta / ws) / (lta / wl) = ratio * wl / ws``. Tends to 1 as ``m`` grows
    (within 1e-9 after 21 LTA windows).
    """
    m = np.asarray(m, dtype=np.float64)
    ws = -np.expm1(m * math.log1p(-1.0 / nsta))
    wl = -np.expm1(m * math.log1p(-1.0 / nlta))
    return wl / ws


def recursive_sta_lta_reference(cf, sta0: float, lta0: float, nsta: float, nlta: float):
    """Plain-loop twin of :func:`recursive_sta_lta` for one device (a 1-D ``cf``)."""
    cs = 1.0 / nsta
    cl = 1.0 / nlta
    sta, lta = sta0, lta0
    ratio = []
    for v in cf:
        sta = cs * v + (1.0 - cs) * sta
        lta = cl * v + (1.0 - cl) * lta
        ratio.append(sta / max(lta, 1e-30))
    return np.array(ratio), sta, lta


def unbiased_sta_lta_reference(cf, nsta: float, nlta: float):
    """Plain-loop twin of a stream's STA/LTA from its first sample with the warm-up
    correction (:func:`warmup_gain`): each average divided by its running weight sum."""
    cs = 1.0 / nsta
    cl = 1.0 / nlta
    sta = lta = ws = wl = 0.0
    ratio = []
    for v in cf:
        sta = cs * v + (1.0 - cs) * sta
        lta = cl * v + (1.0 - cl) * lta
        ws = cs + (1.0 - cs) * ws
        wl = cl + (1.0 - cl) * wl
        ratio.append((sta / ws) / max(lta / wl, 1e-30))
    return np.array(ratio)


def lfilter_reference(b, a, x, zi=None):
    """Plain direct-form-II-transposed IIR filter, the twin of ``scipy.signal.lfilter``."""
    b = np.asarray(b, dtype=float) / a[0]
    a = np.asarray(a, dtype=float) / a[0]
    order = len(a) - 1
    z = np.zeros(order) if zi is None else np.array(zi, dtype=float)
    out = []
    for v in x:
        y = b[0] * v + z[0]
        for i in range(order - 1):
            z[i] = b[i + 1] * v - a[i + 1] * y + z[i + 1]
        z[order - 1] = b[order] * v - a[order] * y
        out.append(y)
    return np.array(out), z


def onset_search_start(ratio: np.ndarray, nsta: int, noise_ratio: float) -> int:
    """Index in ``ratio`` (the STA/LTA over a look-back window ending at the trigger) where
    the onset search may begin: ``nsta`` samples (one STA window, its memory) before the
    last sample whose ratio was at most ``noise_ratio`` -- the level below which the
    picker counts a device as back in its noise (``rearm_ratio``). Energy that had not
    risen above the noise the LTA measured cannot hold the onset; reading the level off
    the ratio makes the bound the same on a 0.01 gal and a 1 gal sensor. 0 when the ratio
    stayed above that level over the whole window."""
    quiet = np.flatnonzero(ratio <= noise_ratio)
    if not len(quiet):
        return 0
    return max(0, int(quiet[-1]) - nsta)


def aic_onset(x: np.ndarray) -> int:
    """Index of the onset in ``x`` by the AIC picker (Maeda 1985): the split that best
    separates a low-variance head from a high-variance tail."""
    n = len(x)
    if n < 8:
        return n - 1
    x = np.asarray(x, dtype=np.float64)
    c1 = np.cumsum(x)
    c2 = np.cumsum(x * x)
    k = np.arange(1, n - 1)
    head_var = c2[k - 1] / k - (c1[k - 1] / k) ** 2
    tail_n = n - k
    tail_var = (c2[-1] - c2[k - 1]) / tail_n - ((c1[-1] - c1[k - 1]) / tail_n) ** 2
    eps = 1e-20
    aic = k * np.log(np.maximum(head_var, eps)) + (tail_n - 1) * np.log(np.maximum(tail_var, eps))
    # the edges of AIC are unstable (one or two samples); keep a few samples of margin
    lo, hi = 3, len(aic) - 2
    if hi <= lo:
        return n - 1
    return int(k[lo + np.argmin(aic[lo:hi])])


@dataclass(frozen=True)
class FilterBank:
    """Filters for one sample rate, as (b, a) transfer functions.

    All are of order 2-3, where the direct form is accurate in float64; scipy's
    ``lfilter`` over (devices x samples) costs a fifth of ``sosfilt`` per call, and the
    picker makes five such calls per engine step.
    """

    pick: tuple  # high-pass for the trigger channel
    acc: tuple  # high-pass on acceleration (gal)
    vel: tuple  # integrate + high-pass: acceleration (gal) -> velocity (cm/s)
    disp: tuple  # integrate + high-pass: velocity (cm/s) -> displacement (cm)
    wa: tuple  # acceleration (gal) -> Wood-Anderson displacement (cm, unit gain)

    @classmethod
    def design(cls, sample_rate_hz: float, s: PickerSettings) -> "FilterBank":
        nyq = sample_rate_hz / 2.0
        pick = signal.butter(2, min(s.pick_highpass_hz / nyq, 0.9), "highpass")
        hp = signal.butter(2, s.amplitude_highpass_hz / nyq, "highpass")
        dt = 1.0 / sample_rate_hz
        # trapezoid-rule integrator followed by the high-pass
        integ_hp = (np.convolve([dt / 2.0, dt / 2.0], hp[0]), np.convolve([1.0, -1.0], hp[1]))
        # Wood-Anderson seismometer (T0 = 0.8 s, damping 0.7; IASPEI 2013 standard) driven
        # by ground acceleration: x'' + 2 h w0 x' + w0^2 x = -a, bilinear transform.
        w0 = 2.0 * math.pi / 0.8
        wa = signal.bilinear([1.0], [1.0, 2.0 * 0.7 * w0, w0 * w0], fs=sample_rate_hz)
        return cls(pick=pick, acc=hp, vel=integ_hp, disp=integ_hp, wa=wa)


# --------------------------------------------------------------------------- tracks


@dataclass
class Track:
    """Amplitudes of one trigger, measured from the onset on."""

    slot: int
    device_id: str
    latitude: float
    longitude: float
    onset_count: int  # absolute sample index of the onset in the device's stream
    onset_time_s: float
    sample_rate_hz: float
    snr: float
    noise_pd_cm: float
    noise_pga_gal: float
    noise_wa_cm: float
    late_onset: bool = False
    pga_gal: float = 0.0
    pgv_cm_s: float = 0.0
    pd_cm: float = 0.0
    wa_x_cm: float = 0.0
    wa_y_cm: float = 0.0
    wa_z_cm: float = 0.0
    u2: float = 0.0  # integral of u^2 over the tau_c window (cm^2 s)
    v2: float = 0.0  # integral of v^2 over the tau_c window (cm^2/s^2 s)
    updates: int = 0
    measured_to: int = 0  # absolute sample index up to which amplitudes are folded in

    def tau_c_s(self) -> float:
        if self.v2 <= 0.0 or self.u2 <= 0.0:
            return 0.0
        return 2.0 * math.pi * math.sqrt(self.u2 / self.v2)


# --------------------------------------------------------------------------- picker


@dataclass
class _Buffers:
    capacity: int
    length: int
    t: np.ndarray = field(init=False)
    zf: np.ndarray = field(init=False)  # trigger channel, vertical
    acc_abs: np.ndarray = field(init=False)  # max over axes of |acc|
    vel_abs: np.ndarray = field(init=False)  # max over axes of |vel|
    disp_z: np.ndarray = field(init=False)
    vel_z: np.ndarray = field(init=False)
    # |Wood-Anderson| per axis: ML is read on each horizontal component separately
    wa_x: np.ndarray = field(init=False)  # vertical
    wa_y: np.ndarray = field(init=False)
    wa_z: np.ndarray = field(init=False)
    ratio: np.ndarray = field(init=False)  # STA/LTA (warm-up corrected), the warm-up included

    NAMES = ("zf", "acc_abs", "vel_abs", "disp_z", "vel_z", "wa_x", "wa_y", "wa_z", "ratio")

    def __post_init__(self):
        self.t = np.zeros((self.capacity, self.length))
        for name in self.NAMES:
            setattr(self, name, np.zeros((self.capacity, self.length), dtype=np.float32))

    def grow(self, capacity: int):
        for name in ("t",) + self.NAMES:
            old = getattr(self, name)
            new = np.zeros((capacity, self.length), dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)
        self.capacity = capacity


class Picker:
    """STA/LTA trigger and amplitude tracker for any number of devices.

    Feed it with :meth:`process`, a list of ingested packets of one engine step; it returns
    the new triggers and amplitude updates (:class:`~yujing.records.Trigger`).
    ``record_ratio=True`` keeps every device's STA/LTA trace (tests only: unbounded memory).
    """

    def __init__(self, settings: PickerSettings | None = None, record_ratio: bool = False):
        self.s = settings or PickerSettings()
        self._banks: dict[float, FilterBank] = {}
        self._cap = 0
        self._buf = _Buffers(0, self.s.buffer_samples)
        self._alloc(64)
        self.tracks: list[Track] = []
        self.record_ratio = record_ratio
        self.ratio_log: dict[int, list[np.ndarray]] = {}

    # state --------------------------------------------------------------------------
    def _alloc(self, cap: int):
        def grow(a, shape, fill=0.0, dtype=np.float64):
            new = np.full(shape, fill, dtype=dtype)
            if a is not None:
                new[: a.shape[0]] = a
            return new

        self.sta = grow(getattr(self, "sta", None), (cap,))
        self.lta = grow(getattr(self, "lta", None), (cap,))
        self.count = grow(getattr(self, "count", None), (cap,), 0, np.int64)
        self.since_reset = grow(getattr(self, "since_reset", None), (cap,), 0, np.int64)
        self.armed = grow(getattr(self, "armed", None), (cap,), True, bool)
        self.sr = grow(getattr(self, "sr", None), (cap,), 0.0)
        # filter states: (slot, axis, filter order)
        self.zi_pick = grow(getattr(self, "zi_pick", None), (cap, 3, 2))
        self.zi_acc = grow(getattr(self, "zi_acc", None), (cap, 3, 2))
        self.zi_vel = grow(getattr(self, "zi_vel", None), (cap, 3, 3))
        self.zi_disp = grow(getattr(self, "zi_disp", None), (cap, 3, 3))
        self.zi_wa = grow(getattr(self, "zi_wa", None), (cap, 3, 2))
        self._buf.grow(cap)
        self._cap = cap

    def bank(self, sample_rate_hz: float) -> FilterBank:
        b = self._banks.get(sample_rate_hz)
        if b is None:
            b = self._banks[sample_rate_hz] = FilterBank.design(sample_rate_hz, self.s)
        return b

    # main step ----------------------------------------------------------------------
    def process(self, packets, now_s: float, devices) -> list[Trigger]:
        """Step all ``packets`` (ingested, one engine step) and return triggers/updates.

        ``devices`` maps device_id -> Device (for positions); ``now_s`` is the engine clock.
        """
        if not packets:
            return []
        need = max(p.slot for p in packets) + 1
        if need > self._cap:
            self._alloc(max(need, 2 * self._cap))
        # Rounds keep each device's samples in time order: the k-th packet of every device
        # goes in round k (a backlog burst brings several packets of one device in one
        # step). Packets longer than a quarter of the ring are cut into pieces first, so
        # that the onset look-back always finds the samples it needs.
        rounds: list[list] = []
        seen: dict[int, int] = {}
        for p in packets:
            for piece in self._pieces(p):
                k = seen.get(piece.slot, 0)
                seen[piece.slot] = k + 1
                if k == len(rounds):
                    rounds.append([])
                rounds[k].append(piece)
        out: list[Trigger] = []
        for rnd in rounds:
            groups: dict[tuple[float, int], list] = {}
            for p in rnd:
                groups.setdefault((p.sample_rate_hz, p.samples_gal.shape[0]), []).append(p)
            for (sr, n), rows in groups.items():
                out.extend(self._step_group(rows, sr, n, now_s, devices))
        out.extend(self._update_tracks(set(seen), now_s))
        return out

    def _pieces(self, p):
        limit = self._buf.length // 4
        n = p.samples_gal.shape[0]
        if n <= limit:
            return (p,)
        dt = 1.0 / p.sample_rate_hz
        out = []
        for start in range(0, n, limit):
            stop = min(start + limit, n)
            out.append(
                msgspec.structs.replace(
                    p,
                    samples_gal=p.samples_gal[start:stop],
                    end_time_s=p.end_time_s - (n - stop) * dt,
                    reset=p.reset and start == 0,
                )
            )
        return out

    def _step_group(self, rows, sr: float, n: int, now_s: float, devices) -> list[Trigger]:
        s = self.s
        bank = self.bank(sr)
        slots = np.fromiter((p.slot for p in rows), dtype=np.int64, count=len(rows))
        K = len(rows)
        X = np.stack([p.samples_gal for p in rows])  # (K, n, 3)
        reset = np.fromiter((p.reset for p in rows), dtype=bool, count=K)
        restart = reset | (self.sr[slots] != sr)
        if restart.any():
            self._reset(slots[restart], X[restart, 0, :], bank)
            self.sr[slots] = sr
        Xr = X.transpose(0, 2, 1).reshape(K * 3, n)  # rows: k0x k0y k0z k1x ...

        def run(ba, x, zi_store):
            order = zi_store.shape[2]
            y, zf = signal.lfilter(ba[0], ba[1], x, axis=1, zi=zi_store[slots].reshape(K * 3, order))
            zi_store[slots] = zf.reshape(K, 3, order)
            return y

        yp = run(bank.pick, Xr, self.zi_pick).reshape(K, 3, n)
        acc = run(bank.acc, Xr, self.zi_acc)
        vel = run(bank.vel, acc, self.zi_vel)
        disp = run(bank.disp, vel, self.zi_disp)
        wa = run(bank.wa, acc, self.zi_wa).reshape(K, 3, n)
        acc = acc.reshape(K, 3, n)
        vel = vel.reshape(K, 3, n)
        disp = disp.reshape(K, 3, n)

        cf = np.einsum("kan,kan->kn", yp, yp)
        nsta, nlta = s.sta_s * sr, s.lta_s * sr
        ratio, self.sta[slots], self.lta[slots] = recursive_sta_lta(cf, self.sta[slots], self.lta[slots], nsta, nlta)
        since = self.since_reset[slots][:, None] + np.arange(n)[None, :]
        # averages started at zero under-read their means until the LTA has seen many of
        # its windows; correct the young streams only (the gain is 1 within 1e-9 after 21)
        young = self.since_reset[slots] < 21.0 * nlta
        if young.any():
            ratio[young] *= warmup_gain(since[young] + 1, nsta, nlta)
        # the onset search reads the ratio as measured, the warm-up included (an arrival
        # inside the warm-up still has an onset); only the trigger test waits for it
        measured = ratio.copy()
        ratio[since < s.warmup_s * sr] = 0.0
        if self.record_ratio:
            for k, slot in enumerate(slots):
                self.ratio_log.setdefault(int(slot), []).append(ratio[k].copy())

        # sample times: the packet's last sample sits at end_time_s
        end_t = np.fromiter((p.end_time_s for p in rows), dtype=np.float64, count=K)
        t = end_t[:, None] - (n - 1 - np.arange(n))[None, :] / sr

        # ring buffers
        B = self._buf.length
        cnt0 = self.count[slots]
        idx = (cnt0[:, None] + np.arange(n)[None, :]) % B
        sl = slots[:, None]
        self._buf.t[sl, idx] = t
        self._buf.zf[sl, idx] = yp[:, 0, :]
        self._buf.acc_abs[sl, idx] = np.abs(acc).max(axis=1)
        self._buf.vel_abs[sl, idx] = np.abs(vel).max(axis=1)
        self._buf.disp_z[sl, idx] = disp[:, 0, :]
        self._buf.vel_z[sl, idx] = vel[:, 0, :]
        awa = np.abs(wa)
        self._buf.wa_x[sl, idx] = awa[:, 0, :]
        self._buf.wa_y[sl, idx] = awa[:, 1, :]
        self._buf.wa_z[sl, idx] = awa[:, 2, :]
        self._buf.ratio[sl, idx] = measured
        self.count[slots] = cnt0 + n
        self.since_reset[slots] += n

        # triggers: first sample above threshold of an armed device
        above = ratio > s.trigger_ratio
        armed = self.armed[slots]
        fire = armed & above.any(axis=1)
        first = np.argmax(above, axis=1)
        # re-arm: an unarmed device whose ratio fell below rearm_ratio
        below = ratio < s.rearm_ratio
        rearm = (~armed) & below.any(axis=1)
        self.armed[slots[rearm]] = True
        out = []
        for k in np.flatnonzero(fire):
            slot = int(slots[k])
            self.armed[slot] = False
            # a trigger followed by a quiet spell inside the same packet re-arms at once
            if below[k, first[k]:].any():
                self.armed[slot] = True
            trig = self._new_track(rows[k], slot, int(cnt0[k] + first[k]), float(ratio[k, first[k]]), devices)
            if trig is not None:
                out.append(trig)
        return out

    def _reset(self, slots, x0, bank: FilterBank):
        """Start a device's stream afresh: the filters begin in the steady state of the
        first sample so that a DC offset does not ring through them."""
        if len(slots) == 0:
            return
        self.sta[slots] = 0.0
        self.lta[slots] = 0.0
        self.since_reset[slots] = 0
        self.armed[slots] = True
        zp = signal.lfilter_zi(*bank.pick)
        za = signal.lfilter_zi(*bank.acc)
        self.zi_pick[slots] = zp[None, None, :] * x0[:, :, None]
        self.zi_acc[slots] = za[None, None, :] * x0[:, :, None]
        self.zi_vel[slots] = 0.0
        self.zi_disp[slots] = 0.0
        self.zi_wa[slots] = 0.0
        gone = {int(s) for s in slots}
        self.tracks = [tr for tr in self.tracks if tr.slot not in gone]

    def _window(self, arr: np.ndarray, slot: int, start: int, stop: int) -> np.ndarray:
        """Values of ring buffer ``arr`` for absolute sample indices [start, stop)."""
        B = self._buf.length
        start = max(start, stop - B, int(self.count[slot]) - B)
        if stop <= start:
            return arr[slot, :0]
        idx = np.arange(start, stop) % B
        return arr[slot, idx]

    def _new_track(self, pkt, slot: int, trig_count: int, snr: float, devices) -> Trigger | None:
        s = self.s
        sr = pkt.sample_rate_hz
        look = int(s.onset_lookback_s * sr)
        start = trig_count - look
        zf = self._window(self._buf.zf, slot, start, trig_count + 1)
        ratio = self._window(self._buf.ratio, slot, start, trig_count + 1)
        # An arrival that came while the stream warmed up (a stream that starts, or a device
        # that comes online, with the quake already under way) fires the trigger as soon as
        # the warm-up ends; if the ratio never stood at the noise over the look-back, the
        # rise of the energy is older than the window and whatever onset AIC finds in it is
        # a later phase (Napa's NP.1759 and NP.1765: S, 2.3-3.1 s after their P, read as P).
        stream_start = int(self.count[slot]) - int(self.since_reset[slot])
        late_onset = bool(
            start < stream_start + int(s.warmup_s * sr)
            and not np.any(ratio <= s.rearm_ratio)
        )
        # the onset cannot precede the rise of the short-term energy above the noise
        zf = zf[onset_search_start(ratio, int(round(s.sta_s * sr)), s.rearm_ratio):]
        onset = trig_count - (len(zf) - 1) + aic_onset(zf) if len(zf) > 8 else trig_count
        onset = min(onset, trig_count)
        pre = self._window(self._buf.disp_z, slot, onset - int(5 * sr), onset)
        pre_a = self._window(self._buf.acc_abs, slot, onset - int(5 * sr), onset)
        pre_wy = self._window(self._buf.wa_y, slot, onset - int(5 * sr), onset)
        pre_wz = self._window(self._buf.wa_z, slot, onset - int(5 * sr), onset)
        dev = devices.get(pkt.device_id)
        tr = Track(
            slot=slot,
            device_id=pkt.device_id,
            latitude=dev.latitude if dev else float("nan"),
            longitude=dev.longitude if dev else float("nan"),
            onset_count=onset,
            onset_time_s=float(self._window(self._buf.t, slot, onset, onset + 1)[0]),
            sample_rate_hz=sr,
            snr=snr,
            noise_pd_cm=float(np.abs(pre).max()) if len(pre) else 0.0,
            noise_pga_gal=float(pre_a.max()) if len(pre_a) else 0.0,
            noise_wa_cm=math.sqrt(float(pre_wy.max()) * float(pre_wz.max())) if len(pre_wy) else 0.0,
            late_onset=late_onset,
        )
        self._measure(tr, onset)
        tr.measured_to = int(self.count[slot])
        active = [x for x in self.tracks if x.slot == slot]
        if len(active) >= s.max_tracks_per_device:
            self.tracks.remove(active[0])
        self.tracks.append(tr)
        return self._emit(tr, pkt.arrival_time_s)

    def _measure(self, tr: Track, start: int):
        """Fold samples [start, now) of the track's device into its running amplitudes."""
        slot = tr.slot
        stop = int(self.count[slot])
        if stop <= start:
            return
        sr = tr.sample_rate_hz
        b = self._buf
        tr.pga_gal = max(tr.pga_gal, float(self._window(b.acc_abs, slot, start, stop).max(initial=0.0)))
        tr.pgv_cm_s = max(tr.pgv_cm_s, float(self._window(b.vel_abs, slot, start, stop).max(initial=0.0)))
        tr.wa_x_cm = max(tr.wa_x_cm, float(self._window(b.wa_x, slot, start, stop).max(initial=0.0)))
        tr.wa_y_cm = max(tr.wa_y_cm, float(self._window(b.wa_y, slot, start, stop).max(initial=0.0)))
        tr.wa_z_cm = max(tr.wa_z_cm, float(self._window(b.wa_z, slot, start, stop).max(initial=0.0)))
        pd_stop = min(stop, tr.onset_count + int(self.s.pd_max_window_s * sr))
        if pd_stop > start:
            tr.pd_cm = max(tr.pd_cm, float(np.abs(self._window(b.disp_z, slot, start, pd_stop)).max(initial=0.0)))
        tc_stop = min(stop, tr.onset_count + int(TAU_C_WINDOW_S * sr))
        if tc_stop > start:
            u = self._window(b.disp_z, slot, start, tc_stop).astype(np.float64)
            v = self._window(b.vel_z, slot, start, tc_stop).astype(np.float64)
            tr.u2 += float(u @ u) / sr
            tr.v2 += float(v @ v) / sr

    def _emit(self, tr: Track, now_s: float) -> Trigger:
        window = (int(self.count[tr.slot]) - tr.onset_count) / tr.sample_rate_hz
        trig = Trigger(
            device_id=tr.device_id,
            latitude=tr.latitude,
            longitude=tr.longitude,
            onset_time_s=tr.onset_time_s,
            issued_at_s=now_s,
            window_s=window,
            pga_gal=tr.pga_gal,
            pgv_cm_s=tr.pgv_cm_s,
            pd_cm=tr.pd_cm,
            tau_c_s=tr.tau_c_s() if window >= TAU_C_WINDOW_S else 0.0,
            snr=tr.snr,
            update=tr.updates,
            noise_pd_cm=tr.noise_pd_cm,
            noise_pga_gal=tr.noise_pga_gal,
            # the IASPEI ML averages the log amplitudes of the two horizontals
            wa_horizontal_nm=math.sqrt(tr.wa_y_cm * tr.wa_z_cm) * 1e7,
            wa_vertical_nm=tr.wa_x_cm * 1e7,
            noise_wa_nm=tr.noise_wa_cm * 1e7,
            late_onset=tr.late_onset,
        )
        tr.updates += 1
        return trig

    def _update_tracks(self, slots_stepped: set[int], now_s: float) -> list[Trigger]:
        out = []
        keep = []
        for tr in self.tracks:
            stop = int(self.count[tr.slot])
            if tr.slot in slots_stepped and stop > tr.measured_to:
                self._measure(tr, tr.measured_to)
                tr.measured_to = stop
                out.append(self._emit(tr, now_s))
            age = (int(self.count[tr.slot]) - tr.onset_count) / tr.sample_rate_hz
            if age <= self.s.track_s:
                keep.append(tr)
        self.tracks = keep
        return out
