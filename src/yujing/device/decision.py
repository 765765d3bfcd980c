"""Stage 3 of the device agent: is a picker trigger an earthquake? Gates, then classifier.

Each trigger of the picker waits for its window and is then judged; what passes goes to
the :class:`~yujing.device.messages.Outbox`, with every later amplitude update of its track.

* **Early decision.** When the data reach ``EARLY_WINDOW_POST_S`` (1 s) after the onset
  (and not yet the full window), on a device of at least ``EARLY_MIN_RATE_HZ`` (25 Hz), a
  second model trained on that shorter window (:meth:`EarthquakeClassifier.load_early`, a
  stricter threshold) is asked first; if it is sure, the gates below pass and the peak so
  far is at most :data:`EARLY_PEAK_SHARE` of ``peak_max_gal``, the trigger is sent then,
  0.5 s earlier. Otherwise it waits for the full window: the early stage never rejects a
  trigger the full window could send. The reverse can happen: the full window sees 0.5 s
  more, and a hand that moves gently for a second and then hard would be sent early where
  the full window would drop it (the chain measurement counts such sends: none in 288 h,
  docs/classifier.md).
* **Classifier.** At ``WINDOW_POST_S`` (1.5 s) after the onset the raw window (gal, gravity
  and orientation as recorded, the form the classifier was trained on) from
  ``WINDOW_PRE_S`` (2 s) before to ``WINDOW_POST_S`` after the onset goes to
  :class:`~yujing.device.classifier.EarthquakeClassifier`.
* **Stillness gate** (MyShake, Kong et al. 2016: a phone detects only while it lies
  still): the RMS about its own mean of the acceleration over ``still_before_s`` ending
  ``still_guard_s`` before the onset, three axes combined, at most ``still_max_gal``;
  else ``"moving"``.
* **Tilt gate.** A phone lying still that starts to move is either feeling a P wave or
  being picked up, and a pick-up turns it: the mean acceleration over the last
  :data:`TILT_AFTER_S` of the window against the mean over the still stretch, as the tilt
  of a 1 g vector, above ``tilt_max_deg`` drops the trigger (``"turned"``). Shaking
  averages out of a 1 s mean: the 57 OpenEEW P triggers show at most 0.04 degrees, 3,000
  simulated P onsets up to 300 gal at most 5.7 (docs/device.md).
* **Strength gate.** A peak since the onset above ``peak_max_gal`` (the three axes' vector
  about the mean of the ``WINDOW_PRE_S`` before the onset) drops it (``"too_strong"``):
  no earthquake window the classifier learnt from peaks above ~500 gal, while a hand or
  wrist moving a phone often does.

Units: times UNIX s (device clock), accelerations gal, angles degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..records import Trigger
from .classifier import EarthquakeClassifier
from .config import AgentConfig, AgentStats
from .features import EARLY_MIN_RATE_HZ, EARLY_WINDOW_POST_S, WINDOW_POST_S, WINDOW_PRE_S, peak_after_onset_gal, window_samples
from .messages import Outbox
from .stream import G_GAL

#: The stretch (s) ending with the classifier window whose mean the tilt gate compares
#: with the still stretch before the onset: long enough to average shaking above ~1 Hz
#: out, late enough that a pick-up has turned the device.
TILT_AFTER_S = 1.0
#: An early send needs its peak since the onset at most this share of ``peak_max_gal``.
EARLY_PEAK_SHARE = 0.5


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


@dataclass
class _Track:
    """One picker trigger on its way through the decision."""

    latest: Trigger  # newest picker message of the trigger
    probability: float = math.nan
    sent: int = 0  # messages sent so far (0: undecided or rejected)
    rejected: bool = False
    early_done: bool = False  # the early model has been asked (or is off)


class Decider:
    """The decision stage of one device: triggers of the picker in (:meth:`on_picker`),
    sent triggers out to ``outbox``; keeps the raw samples its windows need
    (:meth:`remember`). ``stats`` is the agent's, counted here for the decisions."""

    def __init__(
        self,
        config: AgentConfig,
        classifier: EarthquakeClassifier,
        early_classifier: EarthquakeClassifier | None,
        outbox: Outbox,
        stats: AgentStats,
    ):
        self.config = config
        self.classifier = classifier
        self.early_classifier = early_classifier
        self.outbox = outbox
        self.stats = stats
        self.decisions: list[Decision] = []
        self._tracks: dict[float, _Track] = {}  # by onset time: the picker's track key
        self._buf_t = np.zeros(0)  # raw samples (device axes, gal) and their times
        self._buf_x = np.zeros((0, 3))

    def end_stream(self) -> None:
        """A stream ends (gap, rate change, end of data): triggers still waiting for their
        window are dropped (``"incomplete_window"``), every track forgotten."""
        for onset, tr in list(self._tracks.items()):
            if not tr.sent and not tr.rejected:
                self._decide(onset, tr, math.nan, "incomplete_window")
        self._tracks.clear()

    def start_stream(self) -> None:
        """A stream starts: the raw samples of the one before are no window of it."""
        self._buf_t = np.zeros(0)
        self._buf_x = np.zeros((0, 3))

    def window_due(self, rate: float) -> float | None:
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

    def remember(self, t: np.ndarray, acc_gal: np.ndarray, rate: float) -> None:
        """Keep the raw samples the classifier and the stillness gate may still need:
        their windows around an onset found up to ``onset_lookback_s`` before the newest
        block."""
        s, c = self.config.picker, self.config
        before = max(WINDOW_PRE_S, c.still_before_s + c.still_guard_s)
        keep = int(math.ceil((s.onset_lookback_s + before + WINDOW_POST_S + 2 * c.packet_s + 1.0) * rate))
        self._buf_t = np.concatenate([self._buf_t, t])[-keep:]
        self._buf_x = np.concatenate([self._buf_x, acc_gal])[-keep:]

    # triggers -------------------------------------------------------------------------
    def on_picker(self, trig: Trigger, rate: float) -> None:
        """Take a message of the picker (a new trigger or an amplitude update) of a stream at ``rate`` Hz."""
        key = trig.onset_time_s
        tr = self._tracks.get(key)
        if trig.update == 0:
            self.stats.triggers += 1
            early_off = self.early_classifier is None or not rate >= EARLY_MIN_RATE_HZ
            self._tracks[key] = _Track(latest=trig, early_done=early_off)
            return
        if tr is None:
            # an update of a track already forgotten: the picker's last updates can come up
            # to a packet after ours ends (1 s OpenEEW packets); not a new trigger
            return
        tr.latest = trig
        if tr.sent:
            self._send(tr)

    def classify_ready(self, now_s: float, rate: float, block_s: float) -> None:
        """Judge every trigger whose window the data now reach (``now_s``: the newest
        sample, device s); forget tracks the picker no longer updates (``block_s``: the
        newest block's length, s)."""
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
            if now_s - onset > self.config.picker.track_s + 2 * max(self.config.packet_s, block_s):
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

    def still_rms_gal(self) -> float:
        """The stillness RMS (gal) of the newest ``still_before_s`` of processed data
        (inf before there is 1 s of it)."""
        if not len(self._buf_t):
            return math.inf
        end = float(self._buf_t[-1])
        return self._motion_rms(end - self.config.still_before_s, end + 1.0)

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
            self.decisions.append(Decision(onset, p, not reason, reason, self.outbox.as_sent(tr.latest, 0), rms, tilt, window_s, peak))
        if not reason:
            self._send(tr)

    def _send(self, tr: _Track) -> None:
        self.outbox.trigger(tr.latest, tr.sent, tr.probability)
        tr.sent += 1
        self.stats.trigger_messages += 1

