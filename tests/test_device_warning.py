"""What a phone shows when an alert is lowered, dropped or cancelled (device/warning.py).

The server lowers tiers and drops areas when the magnitude estimate falls (alerting.py's
hysteresis); the device recomputes from the newest message alone and tells a downgrade from
a message that never concerned it by what it showed before. Every message goes through the
real wire encoding (encode_alert / decode_alert), as a phone receives it over MQTT."""

from __future__ import annotations

import math

import msgspec
import pytest

from yujing.alerting import AlertPolicy, device_warning
from yujing.device.warning import ALL_CLEAR, BE_AWARE, CANCELLED, NOTHING, TAKE_ACTION, LocalWarnings
from yujing.records import Alert, EventUpdate
from yujing.rejects import Rejects
from yujing.wire import decode_alert, encode_alert

T0 = 1_700_000_000.0
UPD = EventUpdate(
    event_id="yjD", version=1, issued_at_s=T0 + 8.0, origin_time_s=T0, latitude=16.4, longitude=-99.0,
    depth_km=20.0, magnitude=7.0, magnitude_sigma=0.1, n_devices=6,
)  # fmt: skip
PHONE = (16.9, -99.1)  # ~57 km: take action at M7.0, be aware at M6.0, no tier at M4.6
FAR = (19.0, -99.1)  # ~290 km: in no tier at any of these magnitudes
NEAR = (16.45, -99.0)  # ~6 km: its own forecast reaches MMI 4 even at M4.4


def wire(alert: Alert) -> bytes:
    """The bytes a phone receives (and a check that they decode to the same message)."""
    data = encode_alert(alert)
    assert decode_alert(data).version == alert.version
    return data


def areas_at(magnitude: float, version: int) -> Alert:
    """The alert message for the event at ``magnitude`` with the areas of that magnitude
    (a fresh policy: what the server sends once a lower estimate has held), as ``version``."""
    [a] = AlertPolicy(model="bssa14").on_update(msgspec.structs.replace(UPD, magnitude=magnitude))
    return msgspec.structs.replace(a, version=version, msg_type="alert" if version == 1 else "update")


def phone(pos=PHONE) -> LocalWarnings:
    return LocalWarnings(pos[0], pos[1], 760.0, Rejects())


def test_take_action_then_be_aware_then_dropped_then_late_message():
    v1, v2, v3 = areas_at(7.0, 1), areas_at(6.0, 2), areas_at(4.6, 3)
    assert v3.tiers, "v3 still warns an area near the epicentre: only this phone's area dropped"
    ph = phone()

    w1 = ph.on_alert(wire(v1), T0 + 9.0)
    assert (w1.tier, w1.screen, w1.alarm, w1.change) == (TAKE_ACTION, TAKE_ACTION, True, "new")
    assert w1.show_countdown and w1.countdown_s > 0 and "take action" in w1.notice

    # take_action -> be_aware: recomputed from v2 alone, the alarm and countdown stop
    w2 = ph.on_alert(wire(v2), T0 + 10.0)
    ref = device_warning(v2, *PHONE, T0 + 10.0)
    assert (w2.tier, w2.mmi) == (ref.tier, ref.mmi) == (BE_AWARE, ref.mmi) and w2.mmi < 5 < w1.mmi
    assert (w2.screen, w2.alarm, w2.change, w2.version) == (BE_AWARE, False, "downgrade", 2)
    assert not w2.show_countdown and w2.magnitude == 6.0 and "M6.0" in w2.notice and "be aware" in w2.notice

    # -> no tier for this phone: all clear here, with the new magnitude; no countdown
    # although the S-wave time is still a number
    w3 = ph.on_alert(wire(v3), T0 + 11.0)
    assert (w3.tier, w3.screen, w3.alarm, w3.change) == ("", ALL_CLEAR, False, "downgrade")
    assert math.isfinite(w3.countdown_s) and w3.countdown_s > 0 and not w3.show_countdown
    assert w3.notice == "All clear here: the earthquake is now estimated at M4.6, no strong shaking expected here."

    # v2 again, late (out-of-order delivery): ignored, the phone stays all clear, no alarm
    late = ph.on_alert(wire(v2), T0 + 12.0)
    assert (late.version, late.screen, late.tier, late.alarm, late.change) == (3, ALL_CLEAR, "", False, "stale")
    assert ph.by_alert[v1.alert_id] == w3
    assert ph.rejects.notes == {"stale_alert": 1} and ph.rejects.total == 0

    # v3 re-delivered (QoS 1): the same screen, no alarm
    again = ph.on_alert(wire(v3), T0 + 13.0)
    assert (again.screen, again.alarm, again.change) == (ALL_CLEAR, False, "same")

    # a phone that was never warned gets v3 (sent, retained, to the areas v2 reached and
    # v3 does not): nothing to show
    far = phone(FAR)
    w = far.on_alert(wire(v3), T0 + 11.0)
    assert (w.tier, w.screen, w.alarm, w.change, w.notice, w.show_countdown) == ("", NOTHING, False, "", "", False)


def test_same_tier_does_not_ring_again_and_an_upgrade_does():
    ph = phone()
    assert ph.on_alert(wire(areas_at(7.0, 1)), T0 + 9.0).alarm
    w = ph.on_alert(wire(areas_at(7.1, 2)), T0 + 9.5)
    assert (w.screen, w.alarm, w.change) == (TAKE_ACTION, False, "same") and w.show_countdown
    assert ph.on_alert(wire(areas_at(4.6, 3)), T0 + 10.0).screen == ALL_CLEAR
    up = ph.on_alert(wire(areas_at(7.0, 4)), T0 + 11.0)  # the estimate rose again
    assert (up.screen, up.alarm, up.change) == (TAKE_ACTION, True, "upgrade") and up.show_countdown


def test_retained_update_without_tiers():
    v1 = areas_at(7.0, 1)
    empty = msgspec.structs.replace(v1, version=7, msg_type="update", magnitude=4.4, tiers=())
    # a phone near the epicentre that connects late and gets only the retained update: its
    # own forecast at M4.4 reaches be-aware intensity, but an update without tiers warns
    # nobody ("no alert below M4.5"), so there is nothing to show: alerting.device_warning
    # says so itself, for every client
    assert device_warning(empty, *NEAR, T0 + 60.0).tier == ""
    assert device_warning(msgspec.structs.replace(empty, tiers=v1.tiers), *NEAR, T0 + 60.0).tier != ""
    near = phone(NEAR)
    w = near.on_alert(wire(empty), T0 + 60.0)
    assert (w.tier, w.screen, w.alarm, w.change, w.show_countdown) == ("", NOTHING, False, "", False)
    assert w.mmi >= 3  # its own intensity is still reported
    # a phone that was warned (take action) gets the same update: all clear, no countdown
    ph = phone()
    assert ph.on_alert(wire(v1), T0 + 9.0).screen == TAKE_ACTION
    w = ph.on_alert(wire(empty), T0 + 10.0)
    assert (w.tier, w.screen, w.alarm, w.change) == ("", ALL_CLEAR, False, "downgrade")
    assert not w.show_countdown and "now estimated at M4.4" in w.notice


def test_cancel_after_a_warning_and_for_a_phone_never_warned():
    policy = AlertPolicy(model="bssa14")
    [v1] = policy.on_update(UPD)
    [cancel] = policy.on_update(msgspec.structs.replace(UPD, version=2, issued_at_s=T0 + 12.0, retracted=True))
    assert cancel.msg_type == "cancel" and cancel.version == 2
    ph = phone()
    assert ph.on_alert(wire(v1), T0 + 9.0).alarm
    c = ph.on_alert(wire(cancel), T0 + 12.0)
    assert (c.tier, c.screen, c.alarm, c.change, c.show_countdown) == ("", CANCELLED, False, "cancel", False)
    assert math.isnan(c.countdown_s) and "not confirmed" in c.notice
    # the first alert arriving late does not undo the cancel, nor ring again
    late = ph.on_alert(wire(v1), T0 + 13.0)
    assert (late.version, late.screen, late.alarm, late.change) == (2, CANCELLED, False, "stale")
    # a cancel reaching a phone that never showed the alert: nothing to show
    w = phone(FAR).on_alert(wire(cancel), T0 + 12.0)
    assert (w.screen, w.change, w.notice) == (NOTHING, "", "")


def test_the_servers_own_downgrades_end_in_all_clear_with_one_alarm():
    """The real policy with its hysteresis and ticks (the estimate falls M7.0 -> 6.0 ->
    5.2 -> 4.0): the phone rings once, follows every message and ends all clear."""
    policy = AlertPolicy(model="bssa14")
    msgs = list(policy.on_update(UPD))
    for t, m in ((9, 6.0), (21, 5.2), (46, 4.0)):
        msgs += policy.on_update(msgspec.structs.replace(UPD, version=int(t), issued_at_s=T0 + t, magnitude=m))
        msgs += policy.tick(T0 + t + 11.0) + policy.tick(T0 + t + 22.0)
    assert [m.version for m in msgs] == list(range(1, len(msgs) + 1)) and not msgs[-1].tiers
    ph = phone()
    shown = [ph.on_alert(wire(m), m.issued_at_s + 0.1) for m in msgs]
    assert shown[0].screen == TAKE_ACTION and shown[-1].screen == ALL_CLEAR
    assert sum(w.alarm for w in shown) == 1 and shown[0].alarm
    for m, w in zip(msgs, shown):  # each from its message alone, never the higher of two
        assert w.tier == (device_warning(m, *PHONE, m.issued_at_s + 0.1).tier if m.tiers else "")
        assert w.show_countdown == (w.tier == TAKE_ACTION)
    assert BE_AWARE in [w.screen for w in shown]
    assert [w.change for w in shown if w.change not in ("same",)] == ["new", "downgrade", "downgrade"]


@pytest.mark.parametrize("bad", [b"", b"\x93garbage"])
def test_undecodable_alert_is_counted(bad):
    ph = phone()
    assert ph.on_alert(bad, T0) is None and ph.rejects.by_reason() == {"bad_alert": 1}
