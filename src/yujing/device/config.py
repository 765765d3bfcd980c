"""The device agent's set-up and its counters: the records every stage reads.

Units: degrees, seconds, Hz, gal (cm/s^2), m/s for Vs30.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..settings import PickerSettings
from .features import AGENT_BLOCK_S, UNITS_TO_GAL


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

