"""One table of the engine's constants, with units and where each value comes from.

The same table feeds the CLI (``yujing settings``), the docs (docs/settings.md is generated
from it) and the code. Values are physics or published practice, not fitted to single
events of the development set; docs/constants.md explains each choice.
"""

from __future__ import annotations

import msgspec


class PickerSettings(msgspec.Struct, frozen=True):
    #: high-pass corner of the trigger channel; removes microseism and building sway,
    #: keeps the 1.5-15 Hz band where local and regional P energy stands above MEMS noise.
    pick_highpass_hz: float = 1.5
    #: short- and long-term average windows of the recursive STA/LTA (Allen 1978; the
    #: usual EEW choice of a sub-second STA against tens of seconds of noise).
    sta_s: float = 0.5
    lta_s: float = 30.0
    #: STA/LTA ratio that declares a trigger; ratio below which a device re-arms.
    trigger_ratio: float = 4.0
    rearm_ratio: float = 1.5
    #: seconds after a (re)start before a device may trigger: the LTA must know the noise.
    warmup_s: float = 15.0
    #: onset refinement window before the trigger sample (AIC picker, Maeda 1985).
    onset_lookback_s: float = 3.0
    #: high-pass corner for PGV and Pd: 0.075 Hz as in Wu & Kanamori (2005) and Kuyuk &
    #: Allen (2013), whose Pd scalings the magnitude stage uses.
    amplitude_highpass_hz: float = 0.075
    #: how long a trigger keeps sending amplitude updates (covers S and surface waves of an
    #: M7+ at 400 km).
    track_s: float = 90.0
    #: longest P window for Pd (the published scalings use 3-4 s; growing up to 9 s follows
    #: Colombelli et al. 2012 so that large ruptures do not saturate it).
    pd_max_window_s: float = 9.0
    #: samples kept per device for onset refinement and amplitude look-back.
    buffer_samples: int = 1024
    #: concurrent amplitude tracks per device (a false trigger must not hide the real P).
    max_tracks_per_device: int = 3


class AssociateSettings(msgspec.Struct, frozen=True):
    #: triggered devices needed before an event is announced (ElarmS/EPIC use 3-4).
    min_devices: int = 3
    #: two triggers can belong to one event only if their onset difference is at most the
    #: P travel time between the two devices plus this slack (clock error, picking error).
    moveout_slack_s: float = 2.0
    #: longest interstation distance used to pair triggers in a new event.
    max_pair_distance_km: float = 300.0
    #: RMS P residual (s) a located candidate must reach to be announced.
    max_rms_s: float = 1.5
    #: candidate events are dropped when no trigger has joined them for this long (s).
    candidate_ttl_s: float = 60.0
    #: an announced event stops being updated this long after its origin (s).
    event_ttl_s: float = 240.0


class LocateSettings(msgspec.Struct, frozen=True):
    #: half-width of the epicentral search around the first triggers (km).
    search_radius_km: float = 400.0
    #: coarse and fine grid steps (km).
    coarse_step_km: float = 10.0
    fine_step_km: float = 2.0
    #: trial depths (km): crust, interface and intraslab depths of subduction zones.
    depths_km: tuple[float, ...] = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0, 80.0, 100.0)
    #: pick-time uncertainty used to weight residuals (s).
    pick_sigma_s: float = 0.5
    #: a streaming device closer to a trial epicentre than the farthest triggered one,
    #: that P should have reached more than this many seconds ago but that has not
    #: triggered, counts against the trial epicentre (ElarmS "not-yet-arrived" logic).
    silent_grace_s: float = 2.0
    #: scale (km) of the prior on the distance between the epicentre and the device that
    #: triggered first: cost (d / scale)^2. With three or four picks the misfit is flat
    #: along a curve (three equations, four unknowns) and this prior picks the part of the
    #: curve near the first device, as ElarmS' first-station (Voronoi) start does; with
    #: more picks the residuals outweigh it. 100 km is the order of the spacing of a sparse
    #: regional network, not a fit to these events.
    first_device_prior_km: float = 100.0


class MagnitudeSettings(msgspec.Struct, frozen=True):
    #: minimum signal (in units of the device's noise) for an amplitude to be used.
    min_snr: float = 3.0


class Settings(msgspec.Struct, frozen=True):
    picker: PickerSettings = PickerSettings()
    associate: AssociateSettings = AssociateSettings()
    locate: LocateSettings = LocateSettings()
    magnitude: MagnitudeSettings = MagnitudeSettings()
