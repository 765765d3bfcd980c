"""The device protocol: topics, codec, refusals with reasons, clock correction."""

from __future__ import annotations

import math

import h3
import msgspec
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from yujing import protocol
from yujing.protocol import ProtocolError

CELL7 = h3.latlng_to_cell(29.59, 102.08, 7)  # Luding


def _trig(**kw):
    base = dict(device="a1b2c3", cell=CELL7, sent_s=1000.0, onset_s=998.4, window_s=1.5, pga_gal=12.0, pgv_cm_s=0.4, pd_cm=0.02)
    base.update(kw)
    return protocol.TriggerMsg(**base)


def test_every_kind_round_trips_on_its_topic():
    msgs = {
        "trig": _trig(snr=7.5, update=2, seq=9),
        "pkt": protocol.PacketMsg(device="s1", cell=CELL7, device_time_s=5.0, sample_rate_hz=31.25, x_gal=[0.1, 0.2], y_gal=[0.0, 0.1], z_gal=[0.3, 0.0]),
        "hb": protocol.HeartbeatMsg(device="a1", cell=CELL7, sent_s=5.0, ready=False),
        "hello": protocol.HelloMsg(device="a1", cell=CELL7, sent_s=5.0, kind="sensor", sample_rate_hz=100.0, raw_consent=True),
        "consent": protocol.ConsentMsg(device="a1", cell=CELL7, sent_s=5.0, raw_consent=False),
    }
    for kind, m in msgs.items():
        topic = protocol.topic_for(kind, m.cell)
        assert topic == f"yj/v1/{kind}/{h3.cell_to_parent(CELL7, 5)}"
        assert protocol.decode(topic, protocol.encode(m)) == m
        # NATS spells the same topic with dots
        assert protocol.decode(topic.replace("/", "."), protocol.encode(m)) == m


@pytest.mark.parametrize(
    "topic, payload, reason",
    [
        ("yj/v1/trig", None, "bad_topic"),
        ("other/v1/trig/x", None, "bad_topic"),
        ("yj/v2/trig/x", None, "bad_version"),
        ("yj/v1/bogus/x", None, "bad_topic"),
        (None, b"\xc1\xff garbage", "corrupt_msgpack"),
        (None, msgspec.msgpack.encode({"device": "a", "cell": CELL7}), "bad_field"),  # fields missing
        (None, msgspec.msgpack.encode({**msgspec.structs.asdict(_trig()), "pga_gal": "big"}), "bad_field"),
        (None, protocol.encode(_trig(cell=h3.latlng_to_cell(29.59, 102.08, 8))), "cell_too_fine"),
        (None, protocol.encode(_trig(cell="not-a-cell")), "bad_cell"),
        (None, protocol.encode(_trig(pga_gal=math.nan)), "non_finite"),
        (None, protocol.encode(_trig(pga_gal=-1.0)), "bad_field"),
        (None, protocol.encode(_trig(device="")), "bad_field"),
        (None, protocol.encode(_trig(v=2)), "bad_version"),
    ],
)
def test_bad_messages_are_refused_with_a_reason(topic, payload, reason):
    topic = topic or protocol.topic_for("trig", CELL7)
    with pytest.raises(ProtocolError) as e:
        protocol.decode(topic, payload or protocol.encode(_trig()))
    assert e.value.reason == reason
    assert str(e.value)  # says what was wrong


def test_a_message_on_another_cells_topic_is_refused():
    other = h3.latlng_to_cell(30.66, 104.06, 7)  # Chengdu
    with pytest.raises(ProtocolError) as e:
        protocol.decode(protocol.topic_for("trig", other), protocol.encode(_trig()))
    assert e.value.reason == "cell_mismatch"


def test_coarser_cells_are_accepted():
    c5 = h3.cell_to_parent(CELL7, 5)
    m = _trig(cell=c5)
    assert protocol.decode(protocol.topic_for("trig", c5), protocol.encode(m)).cell == c5


def test_trigger_position_is_the_cell_centre_and_clocks_are_corrected():
    lat, lon = h3.cell_to_latlng(CELL7)
    t = protocol.to_trigger(_trig(), arrival_s=1000.3)  # 0.3 s latency: trusted clock
    assert (t.latitude, t.longitude) == (lat, lon)
    assert t.onset_time_s == 998.4 and t.issued_at_s == 1000.3
    # a phone clock 120 s behind: its onset moves onto the server's time line
    t = protocol.to_trigger(_trig(sent_s=880.0, onset_s=878.4), arrival_s=1000.3)
    assert t.onset_time_s == pytest.approx(998.7)
    # never after its own arrival
    t = protocol.to_trigger(_trig(sent_s=1000.0, onset_s=1003.0), arrival_s=1000.2)
    assert t.onset_time_s == 1000.2


def test_alert_cells_cover_every_tier_cell():
    disk = h3.grid_disk(h3.latlng_to_cell(29.59, 102.08, 6), 30)
    compact = h3.compact_cells(disk)
    res3 = set(protocol.alert_cells(compact, 6))
    for c in disk:
        assert h3.cell_to_parent(c, 3) in res3
    # a compacted cell coarser than res 3 stands for all its res-3 children
    r2 = h3.latlng_to_cell(29.59, 102.08, 2)
    assert set(protocol.alert_cells([r2], 6)) == set(h3.cell_to_children(r2, 3))
    assert protocol.alert_topic_for_position(29.59, 102.08) == f"yj/v1/alert/{h3.latlng_to_cell(29.59, 102.08, 3)}"


@settings(max_examples=300, deadline=None, derandomize=True)
@given(kind=st.sampled_from(protocol.KINDS), payload=st.binary(max_size=300))
def test_fuzzed_payloads_raise_only_protocol_errors(kind, payload):
    try:
        protocol.decode(protocol.topic_for(kind, CELL7), payload)
    except ProtocolError as exc:
        assert exc.reason


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.dictionaries(st.sampled_from(list(_trig().__struct_fields__) + ["x"]),
                       st.one_of(st.floats(allow_nan=True), st.integers(-(2**63), 2**63 - 1), st.text(max_size=20), st.booleans(), st.none()),
                       max_size=12))
def test_fuzzed_maps_raise_only_protocol_errors(d):
    try:
        protocol.decode(protocol.topic_for("trig", CELL7), msgspec.msgpack.encode(d))
    except ProtocolError as exc:
        assert exc.reason


def test_checks_hold_on_a_known_topic_and_cell():
    """decode remembers what is the same per topic and per cell: the checks that depend
    on the message still run on the second, third... message there, for every kind."""
    topic = protocol.topic_for("trig", CELL7)
    assert protocol.decode(topic, protocol.encode(_trig())) == _trig()  # topic and cell now known
    for bad, reason in [
        (_trig(pga_gal=math.inf), "non_finite"),
        (_trig(sent_s=1e308, onset_s=1e308), None),  # a finite sum that overflows: finite values pass
        (_trig(update=-1), "bad_field"),
        (_trig(device="x" * 65), "bad_field"),
        (_trig(v=3), "bad_version"),
    ]:
        if reason is None:
            assert protocol.decode(topic, protocol.encode(bad)) == bad
            continue
        with pytest.raises(ProtocolError) as e:
            protocol.decode(topic, protocol.encode(bad))
        assert e.value.reason == reason
    for kind, msg in [
        ("hb", protocol.HeartbeatMsg(device="a1", cell=CELL7, sent_s=math.nan)),
        ("consent", protocol.ConsentMsg(device="a1", cell=CELL7, sent_s=math.inf, raw_consent=True)),
        ("hello", protocol.HelloMsg(device="a1", cell=CELL7, sent_s=math.nan)),
    ]:
        t = protocol.topic_for(kind, CELL7)
        with pytest.raises(ProtocolError) as e:
            protocol.decode(t, protocol.encode(msg))
        assert e.value.reason == "non_finite" and kind in str(e.value)
    t = protocol.topic_for("hello", CELL7)
    with pytest.raises(ProtocolError) as e:
        protocol.decode(t, protocol.encode(protocol.HelloMsg(device="a1", cell=CELL7, sent_s=1.0, kind="toaster")))
    assert e.value.reason == "bad_field"
    # a refused topic is not remembered (an attacker's topics cannot fill the memo)
    with pytest.raises(ProtocolError):
        protocol.decode("yj/v1/bogus/abc", b"")
    assert "yj/v1/bogus/abc" not in protocol._ROUTES


def test_to_trigger_carries_every_field_of_the_message():
    """to_trigger builds the record positionally (it runs per trigger message): each
    amplitude lands in the field of its own name, for a known cell and an unknown one."""
    rng = np.random.default_rng(5)
    amps = ("window_s", "pga_gal", "pgv_cm_s", "pd_cm", "tau_c_s", "snr", "noise_pd_cm", "noise_pga_gal",
            "wa_horizontal_nm", "wa_vertical_nm", "noise_wa_nm")
    for k, cell in enumerate([CELL7, h3.latlng_to_cell(-33.4, -70.6, 6)]):
        vals = dict(zip(amps, rng.uniform(0.0, 100.0, len(amps)).tolist()))
        m = _trig(cell=cell, update=3 + k, late_onset=k == 0, **vals)
        t = protocol.to_trigger(m, arrival_s=1000.5, clock_offset_s=0.2)
        assert {a: getattr(t, a) for a in amps} == vals
        assert (t.device_id, t.update, t.onset_time_s, t.issued_at_s) == (m.device, m.update, m.onset_s, 1000.5)
        assert t.late_onset is (k == 0)
        assert (t.latitude, t.longitude) == h3.cell_to_latlng(cell) == protocol.cell_centre(cell)
        assert set(msgspec.structs.asdict(t)) == set(amps) | {"device_id", "latitude", "longitude", "onset_time_s", "issued_at_s",
                                                               "update", "late_onset"}
        # and back: what a device sends for the record, through the wire
        back = protocol.from_trigger(t, cell, sent_s=m.sent_s)
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(back), type=protocol.TriggerMsg).late_onset is (k == 0)


def test_decode_batch_matches_decode_and_a_bad_message_refuses_only_itself():
    """The batch decoder gives, per message, what decode() gives or the error it raises,
    in order: a corrupt, mis-routed or out-of-range message between good ones costs only
    itself."""
    good = protocol.topic_for("trig", CELL7)
    hb = protocol.HeartbeatMsg(device="a1", cell=CELL7, sent_s=5.0, ready=False)
    items = [
        (good, protocol.encode(_trig(update=1))),
        (good, b"\xc1\xff garbage"),
        (protocol.topic_for("hb", CELL7), protocol.encode(hb)),
        ("yj/v1/bogus/x", protocol.encode(_trig())),
        (good, protocol.encode(_trig(pga_gal=math.nan))),
        (good, protocol.encode(_trig(pga_gal=-1.0))),
        (protocol.topic_for("hb", CELL7), protocol.encode(msgspec.structs.replace(hb, sent_s=math.inf))),
        (good, protocol.encode(_trig(cell=h3.latlng_to_cell(29.59, 102.08, 8)))),
        (good.replace("/", "."), protocol.encode(_trig(device="zz"))),
        ("", protocol.encode(_trig())),  # a bad topic between two messages on the same good one
        (good.replace("/", "."), protocol.encode(_trig(device="zy"))),
    ]
    got = protocol.decode_batch([t for t, _ in items], [p for _, p in items])
    assert len(got) == len(items)
    for (topic, payload), g in zip(items, got):
        try:
            want = protocol.decode(topic, payload)
        except ProtocolError as exc:
            assert isinstance(g, ProtocolError) and g.reason == exc.reason and str(g)
        else:
            assert g == want
    assert [type(g).__name__ for g in got].count("ProtocolError") == 7


def test_a_heartbeat_declares_its_period_within_bounds():
    """``every_s`` is the phone's heartbeat period: omitted on the wire at its default (an
    older phone's heartbeat reads as a one-minute period), kept when given, and refused
    outside 10-3600 s with the reason and the value."""
    t = protocol.topic_for("hb", CELL7)
    old = msgspec.msgpack.encode({"device": "a1", "cell": CELL7, "sent_s": 5.0, "ready": True})  # no every_s
    assert protocol.decode(t, old).every_s == protocol.HEARTBEAT_EVERY_S == 60.0
    assert b"every_s" not in protocol.encode(protocol.HeartbeatMsg(device="a1", cell=CELL7, sent_s=5.0))
    assert protocol.decode(t, protocol.encode(protocol.HeartbeatMsg(device="a1", cell=CELL7, sent_s=5.0, every_s=600.0))).every_s == 600.0
    for bad in (5.0, 7200.0, math.nan, -60.0):
        with pytest.raises(ProtocolError) as e:
            protocol.decode(t, protocol.encode(protocol.HeartbeatMsg(device="a1", cell=CELL7, sent_s=5.0, every_s=bad)))
        assert e.value.reason == "bad_field" and "every_s" in str(e.value), bad
