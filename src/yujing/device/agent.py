"""The device agent: the reference client that runs on a phone or a sensor gateway.

It turns a raw accelerometer stream into the few messages a device sends, and an alert
into what the device shows. One module per stage; :class:`DeviceAgent` wires them:

```
 t, x, y, z (any rate, any orientation,   ──► stream: units → gal, uniform rate, gravity
 m/s^2 with gravity) or OpenEEW packets        out, vertical first          (stream.py)
                                                                                  │
                                              picker: STA/LTA, AIC onset,         ▼
                                              amplitude tracks           (yujing.picker)
                                                                                  │
  outbox ◄── TriggerMessage (pseudonym, H3 res-7 cell, amplitudes) ◄── decision: gates,
  (messages.py)  ◄── PacketMessage (only if the owner opted in)        classifier (decision.py)
  alert ──► on_alert ──► own MMI, tier and countdown from its own position (warning.py)
           (newest version per alert id; what the phone shows: take action / be aware /
            all clear here / cancelled, against what it showed before)
  yujing device replay: files in, JSON lines out (replay.py); set-up and counters (config.py)
```

* **Trigger.** The engine's own picker (:class:`yujing.picker.Picker`) steps the rotated
  stream in blocks of ``packet_s`` (0.25 s; longer blocks cost less CPU on a gateway and
  delay amplitude updates). While a trigger waits for its classifier window, the block
  that holds the window's last sample ends at that sample, so the decision waits for no
  block (samples fed through :meth:`DeviceAgent.feed`; OpenEEW packets are taken whole).
  A stream that starts (or restarts after a gap) warms the picker up first: no trigger
  before its LTA knows the noise (``PickerSettings.warmup_s``).
* **Decision** (:mod:`yujing.device.decision`): early model at 1 s, classifier at 1.5 s
  after the onset, stillness, tilt and strength gates.
* **What is sent** (:mod:`yujing.device.messages`): pseudonym of the day, cell centre,
  never the precise position; raw packets only when ``share_raw`` is set by the owner.

All times are UNIX seconds on the device's clock (assumed NTP-synchronised); the agent
never reads the wall clock: "now" is the time of the newest sample processed, so a replay
is deterministic. I/O stays outside: messages wait in :attr:`DeviceAgent.outbox` for
whatever transport drains it.

* **Transport** (the app's, not this module's). Over MQTT: one
  :class:`yujing.bus.mqtt.MqttClient` made with ``outbox=N`` (a few hundred messages: a
  phone's quake is ~35) and ``remake_on_resend=True``, each message published at QoS 1
  with, as payload, a function that signs it when it is really sent
  (``client.publish_nowait(*signer.sender(m, now_s), qos=1)``,
  :meth:`yujing.device.signing.DeviceSigner.sender`): numbered and signed at its first
  sending, signed again with the same ``seq`` if it is sent again after a reconnect (no
  PUBACK came: the server died before journaling it). Then a server that is away (``yujing
  serve`` killed and restarted mid-quake) costs no trigger: the client holds them,
  reconnects with backoff and sends them in order, and each says when it was sent, so the
  server does not take the wait for a clock error, nor a copy for a new message
  (docs/protocol.md, "Connection"; measured in docs/reliability.md). This agent's own outbox is a different thing: messages
  made and not yet handed to any transport.
"""

from __future__ import annotations

import math
import secrets

import numpy as np

from ..ingest import IngestedPacket
from ..picker import Picker
from ..records import Alert, Packet
from ..rejects import Rejects
from .classifier import EarthquakeClassifier
from .config import AgentConfig, AgentStats
from .decision import EARLY_PEAK_SHARE, TILT_AFTER_S, Decider, Decision
from .features import UNITS_TO_GAL
from .messages import CELL_RESOLUTION, Outbox, PacketMessage, TriggerMessage, utc_day
from .replay import device_replay, read_openeew_device
from .stream import (
    GRAVITY_BAND_G,
    RATE_PROBE_S,
    RATE_PROBE_SAMPLES,
    STANDARD_RATES_HZ,
    Orientation,
    Resampler,
    snap_rate_hz,
)
from .warning import LocalWarning, LocalWarnings

__all__ = [
    "AgentConfig",
    "DeviceAgent",
    "TriggerMessage",
    "PacketMessage",
    "Decision",
    "LocalWarning",
    "AgentStats",
    "CELL_RESOLUTION",
    "EARLY_PEAK_SHARE",
    "GRAVITY_BAND_G",
    "STANDARD_RATES_HZ",
    "TILT_AFTER_S",
    "snap_rate_hz",
    "utc_day",
    "read_openeew_device",
    "device_replay",
]


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
        classifier = classifier or EarthquakeClassifier.load()
        early = (early_classifier or EarthquakeClassifier.load_early()) if config.early_decision else None
        self.rejects = Rejects()
        self.stats = AgentStats()
        self.messages = Outbox(config.latitude, config.longitude, config.secret)
        self.outbox = self.messages.queue
        self.cell = self.messages.cell
        self.cell_latitude, self.cell_longitude = self.messages.cell_latitude, self.messages.cell_longitude
        self.picker = Picker(config.picker)
        self.decider = Decider(config, classifier, early, self.messages, self.stats)
        self.orientation = Orientation(config.vertical, config.gravity_tau_s)
        self.local = LocalWarnings(config.latitude, config.longitude, config.vs30_m_s, self.rejects)
        self._block_s = 0.0  # length of the newest block processed (s)
        # feed(): rate probe, resampler, samples waiting for a full block
        self._probe: list[tuple[np.ndarray, np.ndarray]] = []
        self._resampler: Resampler | None = None
        self._last_in_t = -math.inf
        self._block_t: list[np.ndarray] = []
        self._block_x: list[np.ndarray] = []
        self._raw: list[np.ndarray] = []  # processed samples waiting for a raw packet
        self._raw_end = math.nan
        # the stream as the picker sees it
        self._rate = math.nan
        self._last_end = -math.inf
        self._reset_next = True

    # the stages' state, under the names it always had
    @property
    def classifier(self) -> EarthquakeClassifier:
        return self.decider.classifier

    @property
    def early_classifier(self) -> EarthquakeClassifier | None:
        return self.decider.early_classifier

    @property
    def decisions(self) -> list[Decision]:
        """Every decision so far (kept when ``config.keep_decisions``)."""
        return self.decider.decisions

    @property
    def warnings(self) -> dict[str, LocalWarning]:
        """The newest local warning per alert id."""
        return self.local.by_alert

    @staticmethod
    def new_secret() -> bytes:
        """A fresh device secret (16 random bytes), made once and kept on the device."""
        return secrets.token_bytes(16)

    def pseudonym(self, t_s: float) -> str:
        """The device's pseudonym on the UTC day of ``t_s`` (UNIX s)."""
        return self.messages.pseudonym(t_s)

    def drain(self) -> list:
        """Take every waiting message out of the outbox (for a transport to send)."""
        return self.messages.drain()

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
        self._resampler = Resampler(rate_in, rate)

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
                self._resampler = Resampler(*self._rates())
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
            due = self.decider.window_due(rate)
            if due is not None:
                # a trigger waits for its classifier window: end this block at the
                # window's last sample, so the decision does not wait for the block
                n = max(1, min(n, int(np.searchsorted(t[i:], due - 0.5 / rate)) + 1))
            if len(t) - i < n:
                break
            self._process(float(t[i + n - 1]), x[i : i + n], rate)
            i += n
        self._block_t, self._block_x = [t[i:]], [x[i:]]

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
        self.decider.end_stream()
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
        rotated = self.orientation.rotate(acc_gal, rate)
        t = end_s - (n - 1 - np.arange(n)) / rate
        self.decider.remember(t, acc_gal, rate)
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
            self.decider.on_picker(trig, rate)
        self.decider.classify_ready(end_s, rate, self._block_s)
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
        self.decider.start_stream()
        self.stats.streams += 1
        self.stats.rate_hz = rate
        self.stats.orientation = self.orientation.start(acc_gal)

    def _send_packet(self, end_s: float, rate: float, rotated: np.ndarray) -> None:
        self.messages.packet(end_s, rate, rotated)
        self.stats.packet_messages += 1

    @property
    def still_rms_gal(self) -> float:
        """The stillness RMS (gal) of the newest ``still_before_s`` of processed data
        (inf before there is 1 s of it)."""
        return self.decider.still_rms_gal()

    @property
    def is_still(self) -> bool:
        """True when the device lay still during the newest ``still_before_s``
        (:attr:`still_rms_gal` at most ``still_max_gal``): it could detect an
        earthquake now. This is the ``ready`` flag of a heartbeat."""
        return self.still_rms_gal <= self.config.still_max_gal

    # alerts ---------------------------------------------------------------------------
    def on_alert(self, alert: Alert | bytes, now_s: float) -> LocalWarning | None:
        """What to show for an alert (an :class:`~yujing.records.Alert` or its msgpack
        from :func:`yujing.wire.encode_alert`) at device time ``now_s`` (UNIX s).

        Intensity, tier and countdown come from the event parameters and the device's own
        position (:func:`yujing.alerting.device_warning`), which is never sent, recomputed
        from the newest message alone (a lower tier is a downgrade, never kept at the old
        one). ``screen``, ``alarm`` and ``change`` say what to show against the warning
        shown before (:class:`~yujing.device.warning.LocalWarning`). A message that cannot
        be decoded is counted (``bad_alert``) and gives None; a version older than the one
        shown is ignored: the shown warning comes back unchanged (``change`` ``stale``, no
        alarm).
        """
        return self.local.on_alert(alert, now_s)
