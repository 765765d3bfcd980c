"""Stage 5 of the device agent: what the device shows for an alert, worked out locally.

Intensity, tier and countdown come from the event parameters and the device's own position
(:func:`yujing.alerting.device_warning`); the position never leaves the device, so the
server never learns who was warned. Units: MMI, seconds, km.

Every message of an alert states the whole current picture (the server has already applied
its hysteresis), so the device recomputes its warning from the newest message alone and
never keeps the higher of the old and the new tier. What the phone shows (``screen``)
also depends on what it showed before for the same alert: a message that puts the phone
in no tier is an "all clear here" after a warning, and nothing at all for a phone that was
never warned (a retained update after a reconnect, or one sent to an area that was
dropped). The wire format is unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..alerting import device_warning
from ..records import Alert
from ..rejects import Rejects
from ..wire import decode_alert

# what the phone shows (LocalWarning.screen)
TAKE_ACTION = "take_action"  # full-screen alarm and countdown to the S wave
BE_AWARE = "be_aware"  # a notice: light shaking possible; no alarm, no countdown
ALL_CLEAR = "all_clear"  # was warned, is in no tier now: "no strong shaking expected here"
CANCELLED = "cancelled"  # was warned, the event was retracted: "not confirmed"
NOTHING = ""  # nothing to show: this alert never concerned the phone
SCREENS = (TAKE_ACTION, BE_AWARE, ALL_CLEAR, CANCELLED, NOTHING)

_RANK = {"": 0, BE_AWARE: 1, TAKE_ACTION: 2}


@dataclass(frozen=True)
class LocalWarning:
    """What the device shows for an alert, computed on the device only.

    From the message alone: its own forecast ``mmi``, ``tier`` (``take_action``,
    ``be_aware`` or ``""``), seconds until the S wave reaches it (``countdown_s``: negative
    once passed, NaN for a cancel; a number even when nothing is counted down), its
    epicentral distance (km) and the message's ``magnitude``. A message without any tier
    (the estimate fell below every tier) gives ``tier`` ``""`` whatever the own forecast.

    Against the warning shown before for the same alert:

    * ``screen``: ``take_action`` (alarm and countdown), ``be_aware`` (notice, no alarm,
      no countdown), ``all_clear`` (in no tier after having been warned), ``cancelled``
      (the event was retracted after the phone was warned) or ``""`` (nothing to show);
    * ``alarm``: start the take-action alarm now (True only when the screen becomes
      ``take_action``: a first alert or an upgrade; a further take-action update keeps the
      alarm that is running). Leaving the ``take_action`` screen stops alarm and countdown;
    * ``change``: ``new`` (first screen of this alert), ``upgrade``, ``downgrade``,
      ``same``, ``cancel``, ``stale`` (an older version arriving after a newer one: the
      warning shown is returned unchanged, with ``alarm`` False) or ``""`` (nothing shown
      before or now).
    """

    alert_id: str
    version: int
    msg_type: str
    mmi: float
    tier: str
    countdown_s: float
    distance_km: float
    magnitude: float = math.nan
    screen: str = NOTHING
    alarm: bool = False
    change: str = ""

    @property
    def show_countdown(self) -> bool:
        """A countdown belongs to the take-action screen only: never for ``be_aware``, an
        all clear or a cancel, although ``countdown_s`` may still be a number."""
        return self.screen == TAKE_ACTION and math.isfinite(self.countdown_s)

    @property
    def notice(self) -> str:
        """The reference wording of the screen (English; an app words its own)."""
        m = f"M{self.magnitude:.1f}"
        if self.screen == TAKE_ACTION:
            when = f"in {self.countdown_s:.0f} s" if self.countdown_s > 0 else "now"
            return f"Earthquake {m}: take action, drop, cover and hold on. Strong shaking expected {when}."
        if self.screen == BE_AWARE:
            return f"Earthquake {m}: be aware, light shaking possible here."
        if self.screen == ALL_CLEAR:
            return f"All clear here: the earthquake is now estimated at {m}, no strong shaking expected here."
        if self.screen == CANCELLED:
            return "Earthquake alert cancelled: the earthquake was not confirmed."
        return ""


def _screen(msg_type: str, tier: str, prev: LocalWarning | None) -> tuple[str, bool, str]:
    """(screen, alarm, change) for a message of ``msg_type`` giving ``tier``, after the
    warning ``prev`` shown for the same alert (None: none yet)."""
    shown = prev is not None and prev.screen != NOTHING
    was = prev.screen if shown else NOTHING
    if msg_type == "cancel":
        return (CANCELLED, False, "cancel") if shown else (NOTHING, False, "")
    if tier:
        if not shown:
            change = "new"
        else:
            old, new = _RANK.get(prev.tier, 0), _RANK[tier]
            change = "upgrade" if new > old else "downgrade" if new < old else "same"
        return tier, tier == TAKE_ACTION and was != TAKE_ACTION, change
    if not shown:
        return NOTHING, False, ""  # never concerned this phone
    # warned before, in no tier now: its area was dropped, or no tier is left at all
    return ALL_CLEAR, False, "downgrade" if prev.tier else "same"


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
        :func:`yujing.wire.encode_alert`) at device time ``now_s`` (UNIX s).

        A message that cannot be decoded is counted (``bad_alert``) and gives None. A
        version older than the one shown is ignored (MQTT may deliver out of order; a
        retained message may come late): the warning shown comes back with ``change``
        ``stale`` and no alarm, and a note ``stale_alert`` is counted. The same version
        again (a QoS 1 re-delivery) is recomputed: a fresh countdown, no new alarm.
        """
        if isinstance(alert, (bytes, bytearray, memoryview)):
            try:
                alert = decode_alert(bytes(alert))
            except ValueError as exc:
                self.rejects.add("bad_alert", "on_alert", str(exc))
                return None
        prev = self.by_alert.get(alert.alert_id)
        if prev is not None and alert.version < prev.version:
            self.rejects.note("stale_alert", alert.alert_id, f"version {alert.version} after {prev.version}: ignored")
            return replace(prev, alarm=False, change="stale")
        w = device_warning(alert, self.latitude, self.longitude, now_s, vs30_m_s=self.vs30_m_s)
        # an update without tiers warns nobody (the server's "no alert below M4.5"), even
        # where the device's own forecast at the bare magnitude reaches MMI 3
        tier = w.tier if alert.tiers else ""
        screen, alarm, change = _screen(alert.msg_type, tier, prev)
        out = LocalWarning(
            alert_id=alert.alert_id,
            version=alert.version,
            msg_type=alert.msg_type,
            mmi=w.mmi,
            tier=tier,
            countdown_s=w.seconds_to_s_wave,
            distance_km=w.distance_km,
            magnitude=float(alert.magnitude),
            screen=screen,
            alarm=alarm,
            change=change,
        )
        self.by_alert[alert.alert_id] = out
        return out
