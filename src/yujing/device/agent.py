"""The device agent: the reference client that runs on a phone or a sensor gateway.

It turns a raw accelerometer stream into the few messages a device sends, and an alert
into what the device shows:

```
 t, x, y, z (any rate, any orientation,   ──► units → gal ──► uniform rate ──► gravity out,
 m/s^2 with gravity) or OpenEEW packets                                          vertical first
                                                                                       │
  outbox ◄── TriggerMessage (pseudonym, H3 res-7 cell, amplitudes) ◄── classifier ◄── picker
         ◄── PacketMessage (only if the owner opted in)                                  │
  alert ──► on_alert ──► own MMI, tier and countdown from its own position (never sent)
```

* **Units and rate.** Samples are converted to gal (cm/s^2). Irregular timestamps are
  put on a uniform grid by linear interpolation at the stream's median rate snapped to a
  usual sensor rate (:data:`STANDARD_RATES_HZ`, within 10 %); streams faster than
  ``max_rate_hz`` (100 Hz) are interpolated at their own rate, low-passed at 0.4 x
  ``max_rate_hz`` and interpolated again at ``max_rate_hz``: nothing the picker or the
  classifier reads lies above 10 Hz. OpenEEW packets are regular already and are taken at
  their own rate.
* **Gravity and the vertical.** A running mean (exponential, ``gravity_tau_s``) of each
  axis estimates gravity and is subtracted. When that mean is about 1 g the device measures
  gravity, and the vertical is the projection on the running gravity direction: the
  samples are rotated into (vertical, horizontal 1, horizontal 2), the order of
  :class:`~yujing.records.Packet` (``x`` vertical). The horizontal pair is carried along
  as the device turns (the smallest rotation that keeps it perpendicular to gravity), so
  it does not jump between blocks. A stream without gravity (OpenEEW sensors remove it)
  has no direction to project on; its ``x`` axis is taken as vertical, the OpenEEW
  convention.
* **Trigger.** The engine's own picker (:class:`yujing.picker.Picker`: STA/LTA, AIC
  onset, PGA/PGV/Pd/tau_c/Wood-Anderson tracks) steps the rotated stream in blocks of
  ``packet_s`` (0.25 s; longer blocks cost less CPU on a gateway and delay amplitude
  updates). While a trigger waits for its classifier window, the block that holds the
  window's last sample ends at that sample, so the decision waits for no block (samples
  fed through :meth:`DeviceAgent.feed`; OpenEEW packets are taken whole).
* **Early decision.** When the data reach ``EARLY_WINDOW_POST_S`` (1 s) after the onset
  (and not yet the full window), on a device of at least ``EARLY_MIN_RATE_HZ`` (25 Hz), a
  second model trained on that shorter window (:meth:`EarthquakeClassifier.load_early`, a
  stricter threshold) is asked first; if it is sure, the gates below pass and the peak so
  far is at most half of ``peak_max_gal``, the trigger is sent then, 0.5 s earlier.
  Otherwise it waits for the full window below: the early stage never rejects a trigger
  the full window could send. The reverse can happen: the full window sees 0.5 s more,
  and a hand that moves gently for a second and then hard would be sent early where the
  full window would drop it (the chain measurement counts such sends: none in 288 h,
  docs/classifier.md). ``early_decision=False`` turns the stage off.
* **Classifier.** When the data reach ``WINDOW_POST_S`` (1.5 s) after a trigger's onset,
  the raw window (gal, gravity and orientation as recorded, the form the classifier was
  trained on) from ``WINDOW_PRE_S`` (2 s) before to ``WINDOW_POST_S`` after the onset goes to
  :class:`~yujing.device.classifier.EarthquakeClassifier`. A trigger it passes is sent at
  once (update 0, the amplitudes of the data so far), then every amplitude update of the
  picker's track (one per block, for the picker's ``track_s``); a rejected one is dropped
  with all its updates.
* **Stillness gate.** As in MyShake (Kong et al. 2016), a phone detects only while it lies
  still: a trigger is considered only if the device was still during the
  ``still_before_s`` (10 s) ending ``still_guard_s`` (0.5 s) before its onset, i.e. the
  RMS of the acceleration about its own mean over that stretch (gravity and any fixed
  tilt removed, the three axes combined) is at most ``still_max_gal``. A trigger of a
  phone that was carried or handled is dropped (reason ``"moving"``) whatever the
  classifier says. :attr:`DeviceAgent.is_still` is the same test on the newest
  ``still_before_s``: the ``ready`` flag of a heartbeat.
* **Tilt gate.** A phone lying still that starts to move is either feeling a P wave or
  being picked up, and a pick-up turns it: gravity moves in the device's axes. The mean
  acceleration over the last ``TILT_AFTER_S`` (1 s) of the classifier window is compared
  with the mean over the still stretch; their difference, as the tilt that would move a
  1 g vector that far, above ``tilt_max_deg`` (10 degrees) drops the trigger (reason
  ``"turned"``). Shaking averages out of a 1 s mean: the 57 OpenEEW P triggers show at
  most 0.04 degrees, 3,000 simulated P onsets up to 300 gal at most 5.7 (docs/device.md).
* **Strength gate.** A trigger whose data since the onset peak above ``peak_max_gal``
  (500 gal, the three axes' vector about the mean of the 2 s before the onset) is
  dropped (reason ``"too_strong"``): no earthquake window the classifier learnt from
  peaks above ~500 gal, so its verdict there would be extrapolation, while a hand or wrist
  moving a phone often does. (A loose phone could record up to ~1 g before it slides or
  lifts; the limit is the training data's, docs/device.md, step 7c.)
* **What is sent** (:class:`TriggerMessage`): the :class:`~yujing.records.Trigger` with
  ``device_id`` = today's pseudonym and ``latitude``/``longitude`` = the centre of the
  device's H3 resolution-7 cell, the cell itself and the classifier's probability. The
  pseudonym is :func:`yujing.sources.simulator.daily_pseudonym`: keyed BLAKE2b of the UTC
  date with the device's secret, so pseudonyms of two days cannot be linked without the
  secret, which never leaves the device. Raw packets (:class:`PacketMessage`) only when
  ``share_raw`` is set by the owner. The precise position is never in any message.

All times are UNIX seconds on the device's clock (assumed NTP-synchronised); the agent
never reads the wall clock: "now" is the time of the newest sample processed, so a replay
is deterministic. I/O stays outside: messages wait in :attr:`DeviceAgent.outbox` for
whatever transport drains it.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import secrets
import sys
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import h3
import msgspec
import numpy as np
from scipy import signal

from ..alerting import device_warning
from ..ingest import TRUSTED_OFFSET_S, IngestedPacket
from ..picker import Picker
from ..records import Alert, Device, Packet, Trigger
from ..rejects import Rejects
from ..settings import PickerSettings
from ..sources.simulator import daily_pseudonym
from ..wire import decode_alert
from .classifier import EarthquakeClassifier
from .features import (
    AGENT_BLOCK_S,
    EARLY_MIN_RATE_HZ,
    EARLY_WINDOW_POST_S,
    UNITS_TO_GAL,
    WINDOW_POST_S,
    WINDOW_PRE_S,
    peak_after_onset_gal,
    window_samples,
)

__all__ = [
    "AgentConfig",
    "DeviceAgent",
    "TriggerMessage",
    "PacketMessage",
    "Decision",
    "LocalWarning",
    "AgentStats",
    "CELL_RESOLUTION",
    "STANDARD_RATES_HZ",
    "snap_rate_hz",
    "read_openeew_device",
    "device_replay",
]

#: H3 resolution of the cell a device reports (~5 km^2): coarse enough that it does not
#: locate a home, fine enough to place a trigger for the locator.
CELL_RESOLUTION = 7
#: Sample rates of phones and MEMS sensors; a measured median rate within 10 % of one of
#: these is taken to be it (timestamps jitter, a nominal 50 Hz comes out as 49.6 Hz).
STANDARD_RATES_HZ = (10.0, 12.5, 20.0, 25.0, 31.25, 40.0, 50.0, 62.5, 100.0, 125.0, 200.0, 250.0, 400.0, 500.0, 1000.0)
#: Input needed before the rate of a stream is decided: this much time and at least
#: RATE_PROBE_SAMPLES samples.
RATE_PROBE_S = 2.0
RATE_PROBE_SAMPLES = 16
#: Running-mean magnitude (in g) that says "this stream contains gravity".
GRAVITY_BAND_G = (0.5, 1.5)
G_GAL = UNITS_TO_GAL["g"]
#: The stretch (s) ending with the classifier window whose mean the tilt gate compares
#: with the still stretch before the onset: long enough to average shaking above ~1 Hz
#: out, late enough that a pick-up has turned the device.
TILT_AFTER_S = 1.0
#: An early send needs its peak since the onset at most this share of ``peak_max_gal``.
EARLY_PEAK_SHARE = 0.5


def snap_rate_hz(rate_hz: float) -> float:
    """The standard rate within 10 % of ``rate_hz``, else ``rate_hz`` rounded to 0.01 Hz."""
    best = min(STANDARD_RATES_HZ, key=lambda r: abs(math.log(r / rate_hz)))
    return best if abs(best / rate_hz - 1.0) <= 0.10 else round(rate_hz, 2)


def utc_day(t_s: float) -> str:
    """The UTC date of UNIX time ``t_s`` as ``YYYY-MM-DD`` (the pseudonym's period)."""
    return datetime.fromtimestamp(t_s, tz=timezone.utc).strftime("%Y-%m-%d")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """How a device is set up. Its position and secret stay on the device.

    ``latitude``/``longitude``: the device's own position, degrees; used for its cell and
    its local warnings only. ``secret``: the device's key for pseudonyms (made once, at
    random, by :meth:`DeviceAgent.new_secret`). ``units`` of :meth:`DeviceAgent.feed`:
    ``"m/s2"`` (phones), ``"g"`` or ``"gal"``. ``vertical``: ``"auto"`` (the gravity
    direction if the stream holds gravity, else the ``x`` axis), ``"gravity"``, or an axis
    ``"x"``/``"y"``/``"z"``. ``sample_rate_hz``: the grid rate for :meth:`feed`; None =
    decided from the first ``RATE_PROBE_S`` of data. ``share_raw``: the owner agreed to
    upload raw packets (default off).

    Stillness gate (MyShake's rule: only a phone lying still detects): ``still_before_s``
    (s) is the stretch judged, ending ``still_guard_s`` (s) before a trigger's onset (an
    emergent P may start that much before the picked onset); ``still_max_gal`` (gal,
    cm/s^2) is the largest RMS of the acceleration about its mean over that stretch (the
    three axes combined) that still counts as lying still. ``still_max_gal=inf`` turns
    the gate off. Tilt gate: ``tilt_max_deg`` (degrees) is the largest turn of the
    device between that still stretch and the end of the classifier window that can
    still be an earthquake (``inf`` turns it off). The defaults are chosen from data in
    ``docs/device.md``. ``peak_max_gal`` (gal): the strongest peak since the onset (up to
    the decision), as the three axes' vector about the mean of the ``WINDOW_PRE_S`` before
    the onset, that can still be a phone lying loose on the ground's motion (``inf`` turns
    the strength gate off). ``early_decision``: ask the early model at
    ``EARLY_WINDOW_POST_S`` (s) after the onset and send at once a trigger it is sure of.
    """

    latitude: float
    longitude: float
    secret: bytes
    units: str = "m/s2"
    vertical: str = "auto"
    sample_rate_hz: float | None = None
    max_rate_hz: float = 100.0
    packet_s: float = AGENT_BLOCK_S
    max_gap_s: float = 5.0  # as the engine's ingest: longer gaps restart the filters
    gravity_tau_s: float = 5.0
    share_raw: bool = False
    raw_packet_s: float = 1.0
    vs30_m_s: float = 760.0
    picker: PickerSettings = field(default_factory=PickerSettings)
    keep_decisions: bool = False
    still_before_s: float = 10.0
    still_guard_s: float = 0.5
    still_max_gal: float = 5.0
    tilt_max_deg: float = 10.0
    peak_max_gal: float = 500.0
    early_decision: bool = True

    def __post_init__(self):
        if not (math.isfinite(self.latitude) and -90.0 <= self.latitude <= 90.0):
            raise ValueError(f"latitude {self.latitude} is outside [-90, 90] degrees")
        if not (math.isfinite(self.longitude) and -180.0 <= self.longitude <= 180.0):
            raise ValueError(f"longitude {self.longitude} is outside [-180, 180] degrees")
        if len(self.secret) < 16:
            raise ValueError("the device secret must be at least 16 bytes")
        if self.units not in UNITS_TO_GAL:
            raise ValueError(f"units must be one of {sorted(UNITS_TO_GAL)}, not {self.units!r}")
        if self.vertical not in ("auto", "gravity", "x", "y", "z"):
            raise ValueError(f"vertical must be auto, gravity, x, y or z, not {self.vertical!r}")
        if self.sample_rate_hz is not None and not self.sample_rate_hz > 0:
            raise ValueError("sample_rate_hz must be positive")
        if not (math.isfinite(self.still_before_s) and self.still_before_s > 0):
            raise ValueError("still_before_s must be a positive number of seconds")
        if not (math.isfinite(self.still_guard_s) and self.still_guard_s >= 0):
            raise ValueError("still_guard_s must be zero or more seconds")
        if not self.still_max_gal > 0:
            raise ValueError("still_max_gal must be positive (gal; inf turns the gate off)")
        if not self.tilt_max_deg > 0:
            raise ValueError("tilt_max_deg must be positive (degrees; inf turns the tilt gate off)")
        if not self.peak_max_gal > 0:
            raise ValueError("peak_max_gal must be positive (gal; inf turns the strength gate off)")


class TriggerMessage(msgspec.Struct, frozen=True, tag="trigger", tag_field="kind"):
    """A trigger or amplitude update as the device sends it.

    ``trigger.device_id`` is the pseudonym of the UTC day it was sent, ``trigger.latitude``
    and ``trigger.longitude`` the centre of ``cell`` (H3, resolution 7), never the device's
    position. ``classifier_probability``: the classifier's earthquake probability for the
    trigger's window (the same on every update).
    """

    cell: str
    classifier_probability: float
    trigger: Trigger


class PacketMessage(msgspec.Struct, frozen=True, tag="packet", tag_field="kind"):
    """One block of processed samples, sent only when the owner opted in (``share_raw``):
    gal, gravity removed, ``x`` vertical, on the device's uniform grid; ``device_id`` is
    the pseudonym and ``arrival_time_s`` the send time (the server sets its own)."""

    cell: str
    packet: Packet


@dataclass(frozen=True)
class Decision:
    """What the agent made of one picker trigger. ``reason``: ``""`` (sent),
    ``"moving"`` (the device was not still before the onset, see
    :attr:`AgentConfig.still_max_gal`), ``"turned"`` (it turned by more than
    :attr:`AgentConfig.tilt_max_deg` after the onset), ``"too_strong"`` (the data since the onset peaked
    above :attr:`AgentConfig.peak_max_gal`), ``"classifier"`` (probability below the
    threshold) or ``"incomplete_window"`` (the stream ended or broke before
    ``WINDOW_POST_S`` after the onset). ``trigger``: the picker's message at decision
    time, with pseudonym and cell centre. ``still_rms_gal``: the RMS (gal) the stillness
    gate judged; ``tilt_deg``: the turn (degrees) the tilt gate judged (NaN if not
    judged, inf if a stretch was missing); ``window_s``: seconds after the onset the
    deciding window reached (``EARLY_WINDOW_POST_S`` for an early send, else
    ``WINDOW_POST_S``; NaN for an incomplete window). ``probability`` is that window's
    model's. ``peak_gal``: the peak since the onset the strength gate judged (gal)."""

    onset_time_s: float
    probability: float
    sent: bool
    reason: str
    trigger: Trigger
    still_rms_gal: float = math.nan
    tilt_deg: float = math.nan
    window_s: float = math.nan
    peak_gal: float = math.nan


@dataclass(frozen=True)
class LocalWarning:
    """What the device shows for an alert: its own forecast MMI, tier (``take_action``,
    ``be_aware`` or ``""``), seconds until the S wave reaches it (negative once passed,
    NaN for a cancel) and its epicentral distance, km. Computed on the device only."""

    alert_id: str
    version: int
    msg_type: str
    mmi: float
    tier: str
    countdown_s: float
    distance_km: float


@dataclass
class AgentStats:
    """Counts for a summary. Rates in Hz, times UNIX s."""

    samples_in: int = 0
    samples_processed: int = 0
    first_time_s: float = math.nan
    last_time_s: float = math.nan
    input_rate_hz: float = math.nan  # median of the first RATE_PROBE_S of feed()
    rate_hz: float = math.nan  # rate the picker runs at
    streams: int = 0  # stream starts: 1 + restarts after gaps
    orientation: str = ""
    triggers: int = 0
    sent: int = 0
    sent_early: int = 0  # of sent: at EARLY_WINDOW_POST_S, by the early model
    rejected_moving: int = 0  # the device was not still before the onset
    rejected_turned: int = 0  # the device turned between rest and the window's end
    rejected_strong: int = 0  # the data since the onset peaked above peak_max_gal
    rejected_classifier: int = 0
    rejected_incomplete: int = 0
    trigger_messages: int = 0
    packet_messages: int = 0


# --------------------------------------------------------------------------- resampling


class _LinearGrid:
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


class _Resampler:
    """Irregular samples onto a uniform grid at ``rate_out``; a faster input is first put
    on its own rate's grid and low-passed (order-4 Butterworth at 0.4 ``rate_out``, causal,
    started in the steady state of the first sample) so that the second interpolation does
    not alias."""

    def __init__(self, rate_in: float, rate_out: float):
        self.rate = rate_out
        self.first = _LinearGrid(rate_in if rate_in > rate_out else rate_out)
        self.second = None
        if rate_in > rate_out:
            self.sos = signal.butter(4, 0.8 * rate_out / rate_in, "lowpass", output="sos")
            self.zi: np.ndarray | None = None
            self.second = _LinearGrid(rate_out)

    def push(self, t: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        tg, xg = self.first.push(t, x)
        if self.second is None or not len(tg):
            return tg, xg
        if self.zi is None:
            self.zi = signal.sosfilt_zi(self.sos)[:, :, None] * xg[0][None, None, :]
        xf, self.zi = signal.sosfilt(self.sos, xg, axis=0, zi=self.zi)
        return self.second.push(tg, xf)


# --------------------------------------------------------------------------- the agent


@dataclass
class _Track:
    latest: Trigger  # newest picker message of the trigger
    probability: float = math.nan
    sent: int = 0  # messages sent so far (0: undecided or rejected)
    rejected: bool = False
    early_done: bool = False  # the early model has been asked (or is off)


class DeviceAgent:
    """The on-device pipeline: :meth:`feed` (or :meth:`feed_packet`) samples, read the
    messages to send from :attr:`outbox`; :meth:`on_alert` for incoming alerts.

    ``classifier``: defaults to the shipped :meth:`EarthquakeClassifier.load`;
    ``early_classifier`` (used when ``config.early_decision``) to
    :meth:`EarthquakeClassifier.load_early`.
    """

    def __init__(
        self,
        config: AgentConfig,
        classifier: EarthquakeClassifier | None = None,
        early_classifier: EarthquakeClassifier | None = None,
    ):
        self.config = config
        self.classifier = classifier or EarthquakeClassifier.load()
        self.early_classifier = (early_classifier or EarthquakeClassifier.load_early()) if config.early_decision else None
        self.cell = h3.latlng_to_cell(config.latitude, config.longitude, CELL_RESOLUTION)
        self.cell_latitude, self.cell_longitude = h3.cell_to_latlng(self.cell)
        self.picker = Picker(config.picker)
        self.outbox: deque = deque()
        self.rejects = Rejects()
        self.stats = AgentStats()
        self.decisions: list[Decision] = []
        self.warnings: dict[str, LocalWarning] = {}
        self._tracks: dict[float, _Track] = {}  # by onset time: the picker's track key
        self._block_s = 0.0  # length of the newest block processed (s)
        # feed(): rate probe, resampler, samples waiting for a full block
        self._probe: list[tuple[np.ndarray, np.ndarray]] = []
        self._resampler: _Resampler | None = None
        self._last_in_t = -math.inf
        self._block_t: list[np.ndarray] = []
        self._block_x: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []  # processed samples waiting for a raw packet
        self._raw_end = math.nan
        # the stream as the picker sees it
        self._rate = math.nan
        self._last_end = -math.inf
        self._reset_next = True
        self._gravity: np.ndarray | None = None
        self._mode = ""
        self._horizontal: np.ndarray | None = None
        self._buf_t = np.zeros(0)
        self._buf_x = np.zeros((0, 3))

    @staticmethod
    def new_secret() -> bytes:
        """A fresh device secret (16 random bytes), made once and kept on the device."""
        return secrets.token_bytes(16)

    def pseudonym(self, t_s: float) -> str:
        """The device's pseudonym on the UTC day of ``t_s`` (UNIX s)."""
        return daily_pseudonym(self.config.secret, utc_day(t_s))

    def drain(self) -> list:
        """Take every waiting message out of the outbox (for a transport to send)."""
        out = list(self.outbox)
        self.outbox.clear()
        return out

    # input: irregular samples ---------------------------------------------------------
    def feed(self, t_s, x, y, z) -> list:
        """Take samples: times ``t_s`` (UNIX s, increasing) and acceleration along the
        device's axes in ``config.units``. Returns the messages this call put in the
        outbox. Non-finite samples and times not after the previous one are dropped and
        counted in :attr:`rejects`."""
        t = np.asarray(t_s, dtype=np.float64)
        acc = np.column_stack([np.asarray(a, dtype=np.float64) for a in (x, y, z)])
        if acc.shape[0] != len(t):
            raise ValueError(f"t_s has {len(t)} samples but x, y, z have {acc.shape[0]}")
        good = np.isfinite(t) & np.isfinite(acc).all(axis=1)
        for i in np.flatnonzero(~good):
            self.rejects.add("non_finite", f"feed t={t[i]}", "NaN or infinity in the sample")
        t, acc = t[good], acc[good]
        # keep only strictly increasing times: a running maximum marks what went back
        prev = np.maximum.accumulate(np.concatenate([[self._last_in_t], t]))[:-1]
        for i in np.flatnonzero(~(t > prev)):
            self.rejects.add("non_monotonic_time", f"feed t={t[i]:.6f}", f"not after the previous sample ({prev[i]:.6f})")
        t, acc = t[t > prev], acc[t > prev]
        if not len(t):
            return []
        self._last_in_t = float(t[-1])
        self.stats.samples_in += len(t)
        acc = acc * UNITS_TO_GAL[self.config.units]
        before = len(self.outbox)
        if self._resampler is None and self._probe_rate(t, acc):
            t, acc = self._take_probe()
        if self._resampler is not None:
            self._push(t, acc)
        return list(self.outbox)[before:]

    def _probe_rate(self, t, acc) -> bool:
        """Collect samples until the rate can be decided; True once it is."""
        self._probe.append((t, acc))
        tt = np.concatenate([p[0] for p in self._probe])
        if self.config.sample_rate_hz is None and (len(tt) < RATE_PROBE_SAMPLES or tt[-1] - tt[0] < RATE_PROBE_S):
            return False
        self._start_grid(tt)
        return True

    def _start_grid(self, tt: np.ndarray) -> None:
        steps = np.diff(tt)
        # gaps are no sample interval: leave them out of the median
        steps = steps[steps <= self.config.max_gap_s]
        measured = 1.0 / float(np.median(steps)) if len(steps) else math.nan
        self.stats.input_rate_hz = measured
        rate_in = self.config.sample_rate_hz or snap_rate_hz(measured)
        rate = min(rate_in, self.config.max_rate_hz)
        self._resampler = _Resampler(rate_in, rate)

    def _take_probe(self):
        t = np.concatenate([p[0] for p in self._probe])
        acc = np.concatenate([p[1] for p in self._probe])
        self._probe = []
        return t, acc

    def _push(self, t: np.ndarray, acc: np.ndarray) -> None:
        """Resample, cutting the stream at gaps longer than ``max_gap_s``."""
        prev = self._resampler.first.last_t
        before = np.concatenate([prev if prev is not None else t[:1], t])
        # a gap precedes t[i] when before[i] -> before[i + 1] = t[i] is too long
        bounds = [0, *np.flatnonzero(np.diff(before) > self.config.max_gap_s).tolist(), len(t)]
        for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if k > 0:
                gap = float(t[a] - before[a])
                self.rejects.note("gap", "feed", f"{gap:.2f} s without samples before {t[a]:.3f}: the stream restarts")
                self._close_stream()
                self._resampler = _Resampler(*self._rates())
            if b > a:
                self._collect(*self._resampler.push(t[a:b], acc[a:b]))

    def _rates(self) -> tuple[float, float]:
        r = self._resampler
        return (r.first.rate if r.second is not None else r.rate), r.rate

    def _collect(self, tg: np.ndarray, xg: np.ndarray) -> None:
        """Gather grid samples into blocks of ``packet_s`` for the picker."""
        if not len(tg):
            return
        self._block_t.append(tg)
        self._block_x.append(xg)
        rate = self._resampler.rate
        n_block = max(1, int(round(self.config.packet_s * rate)))
        t = np.concatenate(self._block_t)
        x = np.concatenate(self._block_x)
        i = 0
        while True:
            n = n_block
            due = self._window_due(rate)
            if due is not None:
                # a trigger waits for its classifier window: end this block at the
                # window's last sample, so the decision does not wait for the block
                n = max(1, min(n, int(np.searchsorted(t[i:], due - 0.5 / rate)) + 1))
            if len(t) - i < n:
                break
            self._process(float(t[i + n - 1]), x[i : i + n], rate)
            i += n
        self._block_t, self._block_x = [t[i:]], [x[i:]]

    def _window_due(self, rate: float) -> float | None:
        """Time (device s) of the last sample of the earliest classifier window still
        awaited, or None when no trigger waits."""
        post = window_samples(rate)[1]
        post_early = window_samples(rate, EARLY_WINDOW_POST_S)[1]
        due = [
            onset + ((post if tr.early_done else post_early) - 1) / rate
            for onset, tr in self._tracks.items()
            if not tr.sent and not tr.rejected
        ]
        return min(due) if due else None

    # input: packets -------------------------------------------------------------------
    def feed_packet(self, packet: Packet) -> list:
        """Take one OpenEEW-style packet (gal, regular at ``sample_rate_hz``, the last
        sample at ``device_time_s``), in device-time order. Returns the messages this call
        put in the outbox. A packet not after the previous one is dropped and counted."""
        n = len(packet.x_gal)
        sr = packet.sample_rate_hz
        end = packet.device_time_s
        if end <= self._last_end:
            self.rejects.add("out_of_order", packet.device_id, f"packet ending {end:.3f} is not after {self._last_end:.3f}")
            return []
        start = end - (n - 1) / sr
        if sr != self._rate:
            self._close_stream()
        elif start - self._last_end > self.config.max_gap_s:
            self.rejects.note("gap", packet.device_id, f"{start - self._last_end:.2f} s without samples before {start:.3f}: the stream restarts")
            self._close_stream()
        self.stats.samples_in += n
        before = len(self.outbox)
        self._process(end, np.column_stack([packet.x_gal, packet.y_gal, packet.z_gal]).astype(np.float64), sr)
        return list(self.outbox)[before:]

    def flush(self) -> list:
        """End of the stream: process what waits for a full block, rate probe included,
        and drop triggers whose window can no longer be completed. Returns the messages
        this call put in the outbox."""
        before = len(self.outbox)
        if self._resampler is None and self._probe:
            t, acc = self._take_probe()
            if len(t) >= 2:
                self._start_grid(t)
                self._push(t, acc)
        self._close_stream()
        return list(self.outbox)[before:]

    def _close_stream(self) -> None:
        """A stream ends (gap, rate change, end of data): last partial block, then
        triggers still waiting for their window are dropped; the next data restart."""
        if self._block_t:
            t = np.concatenate(self._block_t)
            if len(t):
                self._process(float(t[-1]), np.concatenate(self._block_x), self._resampler.rate)
            self._block_t, self._block_x = [], []
        if self._raw:
            self._send_raw(self._resampler.rate)
        for onset, tr in list(self._tracks.items()):
            if not tr.sent and not tr.rejected:
                self._decide(onset, tr, math.nan, "incomplete_window")
        self._tracks.clear()
        self._reset_next = True

    # one block ------------------------------------------------------------------------
    def _process(self, end_s: float, acc_gal: np.ndarray, rate: float) -> None:
        """Run one block (n, 3) of gal samples, the last at ``end_s``, through gravity
        removal, rotation, picker and classifier."""
        n = len(acc_gal)
        self._block_s = n / rate
        reset = self._reset_next
        if reset:
            self._start_stream(acc_gal, rate)
        a = math.exp(-1.0 / (rate * self.config.gravity_tau_s))
        g, zf = signal.lfilter([1.0 - a], [1.0, -a], acc_gal, axis=0, zi=a * self._gravity[None, :])
        self._gravity = zf[0] / a
        moving = acc_gal - g
        rotated = moving @ self._rotation().T
        t = end_s - (n - 1 - np.arange(n)) / rate
        self._remember(t, acc_gal, rate)
        self._last_end = end_s
        st = self.stats
        st.samples_processed += n
        st.last_time_s = end_s
        if math.isnan(st.first_time_s):
            st.first_time_s = float(t[0])
        pkt = IngestedPacket(
            slot=0,
            device_id="self",
            end_time_s=end_s,
            arrival_time_s=end_s,
            sample_rate_hz=rate,
            samples_gal=rotated,
            reset=reset,
            gap_s=0.0,
        )
        for trig in self.picker.process([pkt], end_s, {}):
            self._on_picker(trig)
        self._classify_ready(end_s, rate)
        if self.config.share_raw:
            # raw packets keep the OpenEEW size (raw_packet_s) whatever the picker's block
            self._raw.append(rotated)
            self._raw_end = end_s
            n = max(1, int(round(self.config.raw_packet_s * rate)))
            if sum(len(r) for r in self._raw) >= n:
                buf = np.concatenate(self._raw)
                k = len(buf) // n * n
                for i in range(0, k, n):
                    self._send_packet(end_s - (len(buf) - i - n) / rate, rate, buf[i : i + n])
                self._raw = [buf[k:]] if k < len(buf) else []

    def _send_raw(self, rate: float) -> None:
        """The last, shorter raw packet of a stream."""
        if self._raw:
            buf = np.concatenate(self._raw)
            if len(buf):
                self._send_packet(self._raw_end, rate, buf)
            self._raw = []

    def _start_stream(self, acc_gal: np.ndarray, rate: float) -> None:
        self._reset_next = False
        self._rate = rate
        self._gravity = acc_gal.mean(axis=0)
        self._buf_t = np.zeros(0)
        self._buf_x = np.zeros((0, 3))
        self.stats.streams += 1
        self.stats.rate_hz = rate
        mode = self.config.vertical
        if mode == "auto":
            lo, hi = GRAVITY_BAND_G
            mode = "gravity" if lo * G_GAL < np.linalg.norm(self._gravity) < hi * G_GAL else "x"
        self._mode = mode
        self.stats.orientation = mode
        self._horizontal = None

    def _rotation(self) -> np.ndarray:
        """Rows: unit vectors of (vertical, horizontal 1, horizontal 2) in device axes."""
        if self._mode != "gravity":
            first = "xyz".index(self._mode)
            order = [first] + [i for i in range(3) if i != first]
            return np.eye(3)[order]
        g = self._gravity / max(np.linalg.norm(self._gravity), 1e-9)
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

    def _remember(self, t: np.ndarray, acc_gal: np.ndarray, rate: float) -> None:
        """Keep the raw samples the classifier and the stillness gate may still need:
        their windows around an onset found up to ``onset_lookback_s`` before the newest
        block."""
        s, c = self.config.picker, self.config
        before = max(WINDOW_PRE_S, c.still_before_s + c.still_guard_s)
        keep = int(math.ceil((s.onset_lookback_s + before + WINDOW_POST_S + 2 * c.packet_s + 1.0) * rate))
        self._buf_t = np.concatenate([self._buf_t, t])[-keep:]
        self._buf_x = np.concatenate([self._buf_x, acc_gal])[-keep:]

    # triggers -------------------------------------------------------------------------
    def _on_picker(self, trig: Trigger) -> None:
        key = trig.onset_time_s
        tr = self._tracks.get(key)
        if trig.update == 0:
            self.stats.triggers += 1
            early_off = self.early_classifier is None or not self._rate >= EARLY_MIN_RATE_HZ
            self._tracks[key] = _Track(latest=trig, early_done=early_off)
            return
        if tr is None:
            # an update of a track already forgotten: the picker's last updates can come up
            # to a packet after ours ends (1 s OpenEEW packets); not a new trigger
            return
        tr.latest = trig
        if tr.sent:
            self._send(tr)

    def _classify_ready(self, now_s: float, rate: float) -> None:
        pre, post = window_samples(rate)
        post_early = window_samples(rate, EARLY_WINDOW_POST_S)[1]
        c = self.config
        for onset, tr in list(self._tracks.items()):
            if not tr.sent and not tr.rejected:
                i = int(np.searchsorted(self._buf_t, onset - 0.5 / rate))
                have = len(self._buf_t) - i
                if not tr.early_done:
                    if have < post_early:
                        continue  # wait for EARLY_WINDOW_POST_S after the onset
                    tr.early_done = True
                    # only while it can still be early: with the full window in hand (a
                    # trigger declared late, a long packet) the full model alone decides
                    if have < post and i >= pre and self._judge(onset, tr, i, pre, post_early, EARLY_WINDOW_POST_S, self.early_classifier, rate, early=True):
                        continue
                if have < post:
                    continue  # wait for WINDOW_POST_S after the onset
                if i < pre:
                    self._decide(onset, tr, math.nan, "incomplete_window")
                    continue
                self._judge(onset, tr, i, pre, post, WINDOW_POST_S, self.classifier, rate, early=False)
            # tracks live as long as the picker's; forget them after that (two blocks
            # later: OpenEEW packets are 1 s blocks, longer than packet_s)
            if now_s - onset > self.config.picker.track_s + 2 * max(self.config.packet_s, self._block_s):
                del self._tracks[onset]

    def _judge(self, onset, tr, i, pre, post, post_s, model, rate, early: bool) -> bool:
        """Gates and classifier on the window ``post_s`` after ``onset`` (its first
        post-onset sample at buffer index ``i``). The early stage decides only a send;
        anything else waits for the full window, which also reports every rejection. True
        when decided."""
        c = self.config
        end = onset - c.still_guard_s
        rms = self._motion_rms(end - c.still_before_s, end)
        tilt = self._tilt_deg(end - c.still_before_s, end, onset + post_s - TILT_AFTER_S, onset + post_s)
        win = self._buf_x[i - pre : i + post]
        # everything recorded since the onset, not only the window: the picker may declare
        # a trigger seconds after its onset, and a hand's motion keeps growing
        peak = peak_after_onset_gal(self._buf_x[i - pre :], pre)
        # the early stage sees less, so a window already past half the strength limit waits:
        # by the full window it may be past the limit
        if early and not (rms <= c.still_max_gal and tilt <= c.tilt_max_deg and peak <= EARLY_PEAK_SHARE * c.peak_max_gal):
            return False
        p = model.probability(win, rate, "gal")
        if early:
            if p < model.threshold:
                return False
            self.stats.sent_early += 1
            self._decide(onset, tr, p, "", rms, tilt, post_s, peak)
            return True
        if not rms <= c.still_max_gal:
            reason = "moving"
        elif not tilt <= c.tilt_max_deg:
            reason = "turned"
        elif not peak <= c.peak_max_gal:
            reason = "too_strong"
        else:
            reason = "" if p >= model.threshold else "classifier"
        self._decide(onset, tr, p, reason, rms, tilt, post_s, peak)
        return True

    def _segment(self, start_s: float, end_s: float, min_s: float) -> np.ndarray | None:
        """The raw samples (gal) between ``start_s`` and ``end_s`` (device s), or None if
        they span less than ``min_s`` seconds (the stream started or broke inside)."""
        a, b = np.searchsorted(self._buf_t, [start_s, end_s], side="right")
        if b - a < 2 or self._buf_t[b - 1] - self._buf_t[a] < min_s:
            return None
        return self._buf_x[a:b]

    def _motion_rms(self, start_s: float, end_s: float) -> float:
        """RMS (gal) of the acceleration about its own mean between ``start_s`` and
        ``end_s`` (device s), the three axes combined: sqrt of the sum of the axes'
        variances. The mean removes gravity and a fixed tilt; what is left is motion and
        sensor noise. A stretch cut short by the stream's start is judged on what there
        is; with less than 1 s of it the device does not count as still (inf)."""
        seg = self._segment(start_s, end_s, 1.0)
        if seg is None:
            return math.inf
        return float(math.sqrt(np.var(seg, axis=0).sum()))

    def _tilt_deg(self, still_a: float, still_b: float, after_a: float, after_b: float) -> float:
        """How far (degrees) the device turned between the still stretch before an onset
        (``still_a``..``still_b``) and the end of the classifier window
        (``after_a``..``after_b``): the change of the mean acceleration vector, as the
        tilt that moves a 1 g vector that far (2 asin(|dm| / 2 g)). The mean over a second
        averages shaking out; what is left is a turn of gravity in the device's axes, or
        a lasting push. A stream without gravity shows only the push. The still stretch is
        judged on what there is, as the stillness gate does; inf if less than 1 s of it, or
        less than half of the later stretch, was recorded."""
        still = self._segment(still_a, still_b, min(1.0, still_b - still_a))
        after = self._segment(after_a, after_b, 0.5 * (after_b - after_a))
        if still is None or after is None:
            return math.inf
        shift = float(np.linalg.norm(after.mean(axis=0) - still.mean(axis=0)))
        return math.degrees(2.0 * math.asin(min(1.0, shift / (2.0 * G_GAL))))

    @property
    def still_rms_gal(self) -> float:
        """The stillness RMS (gal) of the newest ``still_before_s`` of processed data
        (inf before there is 1 s of it)."""
        if not len(self._buf_t):
            return math.inf
        end = float(self._buf_t[-1])
        return self._motion_rms(end - self.config.still_before_s, end + 1.0)

    @property
    def is_still(self) -> bool:
        """True when the device lay still during the newest ``still_before_s``
        (:attr:`still_rms_gal` at most ``still_max_gal``): it could detect an
        earthquake now. This is the ``ready`` flag of a heartbeat."""
        return self.still_rms_gal <= self.config.still_max_gal

    def _decide(
        self,
        onset: float,
        tr: _Track,
        p: float,
        reason: str,
        rms: float = math.nan,
        tilt: float = math.nan,
        window_s: float = math.nan,
        peak: float = math.nan,
    ) -> None:
        tr.probability = p
        st = self.stats
        if reason:
            tr.rejected = True
            if reason == "classifier":
                st.rejected_classifier += 1
            elif reason == "moving":
                st.rejected_moving += 1
            elif reason == "turned":
                st.rejected_turned += 1
            elif reason == "too_strong":
                st.rejected_strong += 1
            else:
                st.rejected_incomplete += 1
        else:
            st.sent += 1
        if self.config.keep_decisions:
            self.decisions.append(Decision(onset, p, not reason, reason, self._as_sent(tr.latest, 0), rms, tilt, window_s, peak))
        if not reason:
            self._send(tr)

    def _as_sent(self, trig: Trigger, update: int) -> Trigger:
        now = trig.issued_at_s
        return msgspec.structs.replace(
            trig,
            device_id=self.pseudonym(now),
            latitude=self.cell_latitude,
            longitude=self.cell_longitude,
            update=update,
        )

    def _send(self, tr: _Track) -> None:
        self.outbox.append(TriggerMessage(self.cell, tr.probability, self._as_sent(tr.latest, tr.sent)))
        tr.sent += 1
        self.stats.trigger_messages += 1

    def _send_packet(self, end_s: float, rate: float, rotated: np.ndarray) -> None:
        pkt = Packet(
            device_id=self.pseudonym(end_s),
            device_time_s=end_s,
            arrival_time_s=end_s,
            sample_rate_hz=rate,
            x_gal=rotated[:, 0].tolist(),
            y_gal=rotated[:, 1].tolist(),
            z_gal=rotated[:, 2].tolist(),
        )
        self.outbox.append(PacketMessage(self.cell, pkt))
        self.stats.packet_messages += 1

    # alerts ---------------------------------------------------------------------------
    def on_alert(self, alert: Alert | bytes, now_s: float) -> LocalWarning | None:
        """What to show for an alert (an :class:`~yujing.records.Alert` or its msgpack
        from :func:`yujing.wire.encode_alert`) at device time ``now_s`` (UNIX s).

        Intensity, tier and countdown come from the event parameters and the device's own
        position (:func:`yujing.alerting.device_warning`), which is never sent. A message
        that cannot be decoded is counted (``bad_alert``) and gives None; a version older
        than one already seen gives the newer warning again.
        """
        if isinstance(alert, (bytes, bytearray, memoryview)):
            try:
                alert = decode_alert(bytes(alert))
            except ValueError as exc:
                self.rejects.add("bad_alert", "on_alert", str(exc))
                return None
        seen = self.warnings.get(alert.alert_id)
        if seen is not None and seen.version > alert.version:
            return seen
        w = device_warning(alert, self.config.latitude, self.config.longitude, now_s, vs30_m_s=self.config.vs30_m_s)
        out = LocalWarning(
            alert_id=alert.alert_id,
            version=alert.version,
            msg_type=alert.msg_type,
            mmi=w.mmi,
            tier=w.tier,
            countdown_s=w.seconds_to_s_wave,
            distance_km=w.distance_km,
        )
        self.warnings[alert.alert_id] = out
        return out


# --------------------------------------------------------------------------- replay


def read_openeew_device(folder: Path, devices: dict[str, Device], rejects: Rejects) -> tuple[list[Packet], float]:
    """The packets of one OpenEEW device folder (``<device_id>/*.jsonl``) in device-time
    order, and the clock correction applied (s).

    Repeated device times are dropped (``duplicate``). The agent assumes an NTP clock; a
    recorded clock far off it (median ``cloud_t - device_t`` outside the engine's trusted
    band, :data:`yujing.ingest.TRUSTED_OFFSET_S`) is put on the arrival clock by that
    median, as the classifier's training did.
    """
    from ..sources import openeew

    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files in {folder}")
    streams = [openeew._file_stream(f, i, folder.name, devices, rejects) for i, f in enumerate(files)]
    packets = sorted((item[3] for item in heapq.merge(*streams)), key=lambda p: p.device_time_s)
    out: list[Packet] = []
    for p in packets:
        if out and p.device_time_s == out[-1].device_time_s:
            rejects.add("duplicate", folder.name, f"device_t {p.device_time_s:.3f} repeated")
            continue
        out.append(p)
    if not out:
        return out, 0.0
    offset = float(np.median([p.arrival_time_s - p.device_time_s for p in out]))
    lo, hi = TRUSTED_OFFSET_S
    if lo <= offset <= hi:
        return out, 0.0
    rejects.note("clock_corrected", folder.name, f"device clock {offset:+.1f} s off the arrival clock; corrected")
    return [msgspec.structs.replace(p, device_time_s=p.device_time_s + offset) for p in out], offset


def _replay_secret(name: str) -> bytes:
    """A replay's stand-in for a device secret, fixed by the input's name so that a replay
    is repeatable. A real device makes a random one (:meth:`DeviceAgent.new_secret`)."""
    return hashlib.sha256(b"yujing-replay-secret:" + name.encode()).digest()[:16]


def device_replay(args) -> int:
    """``yujing device replay``: run the agent on one device's recording, write a JSON line
    per trigger it would send (``--all``: every trigger, with the reason for the ones it
    would not), print a summary on stderr. Exit 0, or 2 for unusable input."""
    import json

    from ..replay import iso
    from ..sources.accel_csv import CsvInfo, iter_accel_csv

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    src = Path(args.input)
    if (args.lat is None) != (args.lon is None):
        return fail("give both --lat and --lon, or neither")
    rejects = Rejects()
    try:
        secret = bytes.fromhex(args.secret) if args.secret else _replay_secret(src.resolve().name)
    except ValueError:
        return fail("--secret must be hexadecimal (32 hex digits or more)")
    lines: list[str] = []
    if src.is_dir():
        if args.lat is None:
            table = src.resolve().parents[2] / "devices.json" if len(src.resolve().parents) > 2 else None
            if table is None or not table.is_file():
                return fail(f"no devices.json at {table} (the OpenEEW layout DATA/events/<event>/<device>/); pass --lat and --lon")
            from ..sources.openeew import load_devices

            try:
                devices = load_devices(table)
            except (OSError, ValueError) as exc:
                return fail(str(exc))
            if src.resolve().name not in devices:
                return fail(f"device {src.resolve().name!r} is not in {table}; pass --lat and --lon")
            dev = devices[src.resolve().name]
            lat, lon = dev.latitude, dev.longitude
        else:
            lat, lon = args.lat, args.lon
        devices = {src.resolve().name: Device(src.resolve().name, lat, lon)}
        try:
            packets, correction = read_openeew_device(src, devices, rejects)
            agent = _make_agent(args, lat, lon, secret, units="gal")
        except (FileNotFoundError, ValueError) as exc:
            return fail(str(exc))
        for p in packets:
            agent.feed_packet(p)
        agent.flush()
        lines.append(f"input: OpenEEW device folder {src} ({len(packets):,} packets"
                     + (f", clock corrected by {correction:+.1f} s)" if correction else ")"))
    elif src.is_file():
        if args.lat is None:
            return fail("a CSV recording needs the device's position: pass --lat and --lon (degrees)")
        info = CsvInfo(str(src))
        try:
            agent = _make_agent(args, args.lat, args.lon, secret, units=args.units)
            start = None
            for chunk in iter_accel_csv(src, rejects, info):
                if start is None:
                    start = _clock_start(info, args.start_time)
                x = chunk.xyz
                agent.feed(chunk.t_s + start, x[:, 0], x[:, 1], x[:, 2])
            agent.flush()
        except (FileNotFoundError, ValueError) as exc:
            return fail(str(exc))
        clock = "UNIX time" if info.absolute else f"relative clock, t=0 at {iso(start)}"
        lines.append(f"input: CSV {src} ({info.samples:,} good lines, t in {info.time_unit}, {clock})")
    else:
        return fail(f"{src} does not exist (give an OpenEEW device folder or a t,x,y,z CSV file)")

    keep = [d for d in agent.decisions if d.sent or args.all]
    last: dict[float, TriggerMessage] = {}
    count: dict[float, int] = {}
    rows: list[dict] = []
    for m in agent.outbox:
        if isinstance(m, TriggerMessage):
            last[m.trigger.onset_time_s] = m
            count[m.trigger.onset_time_s] = count.get(m.trigger.onset_time_s, 0) + 1
            if args.updates:
                rows.append(_trigger_json(m.trigger, m.cell, m.classifier_probability, True, "", 1))
    if not args.updates:
        for d in keep:
            m = last.get(d.onset_time_s)
            trig = m.trigger if d.sent and m is not None else d.trigger
            rows.append(_trigger_json(trig, agent.cell, d.probability, d.sent, d.reason, count.get(d.onset_time_s, 0), d.window_s))
    elif args.all:
        rows += [_trigger_json(d.trigger, agent.cell, d.probability, False, d.reason, 0) for d in keep if not d.sent]
        rows.sort(key=lambda r: (r["onset_time_s"], r["issued_at_s"]))
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            for r in rows:
                fh.write(json.dumps(r) + "\n")
    _print_summary(agent, rejects, lines, args, len(rows))
    return 0


def _make_agent(args, lat: float, lon: float, secret: bytes, units: str) -> DeviceAgent:
    cfg = AgentConfig(
        latitude=lat,
        longitude=lon,
        secret=secret,
        units=units,
        vertical=args.vertical,
        sample_rate_hz=args.rate,
        share_raw=False,
        keep_decisions=True,
    )
    return DeviceAgent(cfg)


def _clock_start(info, start_time: str | None) -> float:
    """Seconds to add to a CSV's ``t``: 0 for UNIX time, else the ``--start-time``."""
    if info.absolute:
        if start_time:
            raise ValueError(f"{info.path}: t is already UNIX time; --start-time is for relative clocks")
        return 0.0
    if not start_time:
        print(
            f"warning: {info.path}: t is a relative clock; onset times count from 1970-01-01 "
            "(give --start-time, the UTC time of t=0)",
            file=sys.stderr,
        )
        return 0.0
    try:
        t0 = datetime.fromisoformat(start_time.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"--start-time {start_time!r} is not an ISO 8601 time") from None
    if t0.tzinfo is None:
        t0 = t0.replace(tzinfo=timezone.utc)
    return t0.timestamp()


def _trigger_json(trig: Trigger, cell: str, p: float, sent: bool, reason: str, messages: int, window_s: float = math.nan) -> dict:
    from ..replay import iso

    d = {"onset_time": iso(trig.onset_time_s), "issued_at": iso(trig.issued_at_s)}
    d.update(msgspec.structs.asdict(trig))
    d.update(
        cell=cell,
        classifier_probability=None if math.isnan(p) else round(p, 4),
        sent=sent,
        messages=messages,
    )
    if not math.isnan(window_s):
        d["decision_window_s"] = window_s  # seconds after the onset the deciding window reached
    if not sent:
        d["reason"] = reason
    return d


def _print_summary(agent: DeviceAgent, rejects: Rejects, lines: list[str], args, n_rows: int) -> None:
    st = agent.stats
    err = sys.stderr
    for line in lines:
        print(line, file=err)
    span = st.last_time_s - st.first_time_s if st.samples_processed else 0.0
    measured = f"median input rate {st.input_rate_hz:.2f} Hz, " if math.isfinite(st.input_rate_hz) else ""
    orient = {"gravity": "vertical = running gravity direction", "x": "x axis vertical (no gravity in the data)"}.get(
        st.orientation, f"{st.orientation} axis vertical"
    )
    print(
        f"samples: {st.samples_in:,} in {span:.1f} s; {measured}processed at {st.rate_hz:g} Hz; "
        f"{orient}; {st.streams} stream start(s)",
        file=err,
    )
    if st.samples_processed and span < agent.config.picker.warmup_s + WINDOW_POST_S:
        print(f"warning: {span:.1f} s of data is too short for a trigger (warm-up {agent.config.picker.warmup_s:g} s)", file=err)
    if math.isfinite(st.rate_hz) and st.rate_hz < 20.0:
        print("warning: below 20 Hz the classifier works outside the rates it was trained for", file=err)
    if math.isfinite(st.first_time_s):
        print(f"cell {agent.cell} (H3 res {CELL_RESOLUTION}); pseudonym {agent.pseudonym(st.first_time_s)} on {utc_day(st.first_time_s)}", file=err)
    print(
        f"triggers: {st.triggers} found, {st.sent} sent ({st.sent_early} early, at {EARLY_WINDOW_POST_S:g} s), "
        f"{st.rejected_moving} dropped as moving, "
        f"{st.rejected_turned} as turned, {st.rejected_strong} as too strong, "
        f"{st.rejected_classifier} rejected by the classifier "
        f"(threshold {agent.classifier.threshold:.3f}"
        + (f"; early model {agent.early_classifier.threshold:.6f}" if agent.early_classifier is not None else "")
        + f"), {st.rejected_incomplete} incomplete; "
        f"{st.trigger_messages} messages with updates",
        file=err,
    )
    for src in (rejects, agent.rejects):
        if src.total or src.notes:
            for line in src.summary_lines():
                print(line, file=err)
    if not (rejects.total or agent.rejects.total):
        print("skipped input: none", file=err)
    if args.output:
        print(f"wrote {n_rows} line(s) to {args.output}", file=err)
