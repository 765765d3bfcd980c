"""Stage 5 of the device agent: what the device shows for an alert, worked out locally.

Intensity, tier and countdown come from the event parameters and the device's own position
(:func:`yujing.alerting.device_warning`); the position never leaves the device, so the
server never learns who was warned. Units: MMI, seconds, km.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..alerting import device_warning
from ..records import Alert
from ..rejects import Rejects
from ..wire import decode_alert


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



class LocalWarnings:
    """The newest warning per alert id for a device at ``latitude``/``longitude``
    (degrees) on ground of ``vs30_m_s`` (m/s)."""

    def __init__(self, latitude: float, longitude: float, vs30_m_s: float, rejects: Rejects):
        self.latitude = latitude
        self.longitude = longitude
        self.vs30_m_s = vs30_m_s
        self.rejects = rejects
        self.by_alert: dict[str, LocalWarning] = {}

    def on_alert(self, alert: Alert | bytes, now_s: float) -> LocalWarning | None:
        """What to show for an alert (an :class:`~yujing.records.Alert` or its msgpack from
        :func:`yujing.wire.encode_alert`) at device time ``now_s`` (UNIX s). A message that
        cannot be decoded is counted (``bad_alert``) and gives None; a version older than
        one already seen gives the newer warning again (alerts can overtake each other)."""
        if isinstance(alert, (bytes, bytearray, memoryview)):
            try:
                alert = decode_alert(bytes(alert))
            except ValueError as exc:
                self.rejects.add("bad_alert", "on_alert", str(exc))
                return None
        seen = self.by_alert.get(alert.alert_id)
        if seen is not None and seen.version > alert.version:
            return seen
        w = device_warning(alert, self.latitude, self.longitude, now_s, vs30_m_s=self.vs30_m_s)
        out = LocalWarning(
            alert_id=alert.alert_id,
            version=alert.version,
            msg_type=alert.msg_type,
            mmi=w.mmi,
            tier=w.tier,
            countdown_s=w.seconds_to_s_wave,
            distance_km=w.distance_km,
        )
        self.by_alert[alert.alert_id] = out
        return out
