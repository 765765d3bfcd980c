"""Typed records passed between the stages of the engine.

Every record is a msgspec Struct: the same classes are the wire format (JSON for people and
the API, msgpack for devices). Units are in the field names: times are UNIX seconds (UTC)
unless a name says otherwise, accelerations in gal (cm/s^2), velocities in cm/s,
displacements in cm, distances and depths in km.

``SCHEMA_VERSION`` is bumped whenever a field changes meaning or disappears; adding an
optional field with a default does not bump it.
"""

from __future__ import annotations

import msgspec

SCHEMA_VERSION = 1

#: Highest sample rate a packet may declare, Hz. Sensors run at 25-200 Hz; a value above
#: 1 kHz is a corrupt field, not a sensor.
MAX_SAMPLE_RATE_HZ = 1000.0


class Device(msgspec.Struct, frozen=True):
    """A sensor whose position the operator knows (fixed sensors: buildings, schools)."""

    device_id: str
    latitude: float
    longitude: float


class Packet(msgspec.Struct, frozen=True):
    """About one second of three-axis acceleration from one device.

    ``device_time_s`` is the sensor's own clock at the *last* sample of the packet (it may
    be wrong: sensor clocks drift and jump); ``arrival_time_s`` is when the server received
    the packet. Nothing may act on a packet before its arrival time. ``x_gal`` is the
    vertical axis in the OpenEEW convention; ``y_gal`` and ``z_gal`` are horizontal.
    """

    device_id: str
    device_time_s: float
    arrival_time_s: float
    sample_rate_hz: float
    x_gal: list[float]
    y_gal: list[float]
    z_gal: list[float]


class Trigger(msgspec.Struct, frozen=True):
    """A P-wave-like onset seen at one device, with the amplitudes measured so far.

    A device sends one trigger at onset and amplitude updates (same ``onset_time_s``,
    growing ``window_s``) while the shaking goes on. Phones that run the picker themselves
    send these instead of raw packets.

    ``onset_time_s``: refined onset on the (clock-corrected) sensor time line.
    ``issued_at_s``: engine clock when the trigger or update became known.
    ``window_s``: seconds of data after the onset behind the amplitudes.
    ``pga_gal``: peak acceleration of any axis since onset.
    ``pgv_cm_s``: peak ground velocity of any axis since onset (high-passed).
    ``pd_cm``: peak vertical displacement from the onset to ``pd_max_window_s`` after it
    (the picker does not know where S is; the stages that do can read the growing value).
    ``tau_c_s``: Kanamori's period parameter over the first 3 s of P (0 until known).
    ``snr``: STA/LTA ratio at the trigger.
    ``wa_horizontal_nm``: geometric mean of the peak Wood-Anderson amplitudes of the two
    horizontal components since onset (unit gain, nm: the IASPEI local-magnitude reading);
    ``wa_vertical_nm``: the same on the vertical.
    ``noise_pd_cm`` / ``noise_pga_gal`` / ``noise_wa_nm``: the same (peak values) amplitudes in the 5 s before the onset,
    so that later stages can tell signal from the device's own noise.
    ``late_onset``: the energy had already risen while the device's stream was warming up
    (it could not trigger), and never fell back to the noise before this onset: the onset
    is a later part of the arrival (S, coda), not its first motion. The first arrival came
    at or before it, and the amplitudes are those of a later phase.
    """

    device_id: str
    latitude: float
    longitude: float
    onset_time_s: float
    issued_at_s: float
    window_s: float
    pga_gal: float
    pgv_cm_s: float
    pd_cm: float
    tau_c_s: float = 0.0
    snr: float = 0.0
    update: int = 0
    noise_pd_cm: float = 0.0
    noise_pga_gal: float = 0.0
    wa_horizontal_nm: float = 0.0
    wa_vertical_nm: float = 0.0
    noise_wa_nm: float = 0.0
    late_onset: bool = False


class EventUpdate(msgspec.Struct, frozen=True):
    """One announcement of an earthquake: the first (version 1) or a revision.

    ``issued_at_s`` is the engine clock when the update was made: the closing time of the
    engine step that made it, or the arrival of the first trigger that completed the event. ``magnitude_sigma`` is one standard deviation in magnitude units;
    ``horizontal_error_km`` the 1-sigma radius of the epicentre. ``retracted`` marks an
    event the engine no longer believes in (its devices turned out to be noise).
    """

    event_id: str
    version: int
    issued_at_s: float
    origin_time_s: float
    latitude: float
    longitude: float
    depth_km: float
    magnitude: float
    magnitude_sigma: float
    n_devices: int
    horizontal_error_km: float = 0.0
    retracted: bool = False
    device_ids: tuple[str, ...] = ()


class AlertTier(msgspec.Struct, frozen=True):
    """One tier of an alert: where the forecast intensity reaches ``min_mmi``.

    ``cells`` is the area as a compact set of H3 cells (``h3.compact_cells`` of the cells
    at the alert's ``h3_resolution``: parents stand for all their children), so that a
    large area stays a short list. ``name`` is ``"be_aware"`` or ``"take_action"``.
    """

    name: str
    min_mmi: float
    cells: tuple[str, ...]


class Alert(msgspec.Struct, frozen=True):
    """An alert message for an event, sent to the areas of its tiers.

    ``alert_id`` is stable across the event's updates; ``version`` counts the messages of
    this alert (1 = first). ``msg_type`` is ``"alert"`` (first), ``"update"`` or
    ``"cancel"`` (the event was retracted; tiers empty). The event parameters let every
    device compute its own intensity and countdown from its own position, which never
    leaves the device. ``gmpe`` names the ground-motion model behind the forecast.
    """

    alert_id: str
    event_id: str
    version: int
    msg_type: str
    issued_at_s: float
    origin_time_s: float
    latitude: float
    longitude: float
    depth_km: float
    magnitude: float
    magnitude_sigma: float
    tiers: tuple[AlertTier, ...]
    h3_resolution: int
    gmpe: str
    event_version: int = 0
    schema_version: int = SCHEMA_VERSION
