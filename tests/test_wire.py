"""The compact alert wire format for devices."""

from __future__ import annotations

import h3
import pytest

from yujing.alerting import AlertPolicy
from yujing.records import EventUpdate
from yujing.wire import MAX_BYTES, decode_alert, encode_alert, pack_cells, unpack_cells


def test_cells_round_trip():
    cells = sorted(h3.grid_disk(h3.latlng_to_cell(16.5, -98.5, 6), 30))
    assert unpack_cells(pack_cells(cells)) == tuple(cells)
    compact = sorted(h3.compact_cells(cells))
    assert unpack_cells(pack_cells(compact)) == tuple(compact)


def test_alert_round_trip_and_size_for_a_great_quake():
    u = EventUpdate("yjBIG", 3, 1.6e9 + 20, 1.6e9, 15.8, -96.1, 20.0, 7.8, 0.2, 12)
    [a] = AlertPolicy().on_update(u)
    n_cells = sum(len(h3.uncompact_cells(list(t.cells), a.h3_resolution)) for t in a.tiers)
    assert n_cells > 20000
    data = encode_alert(a)
    assert len(data) <= MAX_BYTES, len(data)
    back = decode_alert(data)
    assert back.alert_id == a.alert_id and back.magnitude == a.magnitude
    assert [sorted(t.cells) for t in back.tiers] == [sorted(t.cells) for t in a.tiers]


def test_garbage_and_unknown_versions_are_refused_clearly():
    with pytest.raises(ValueError, match="not a yujing alert"):
        decode_alert(b"\x93\x01\x02")
    u = EventUpdate("yjX", 1, 1.6e9 + 20, 1.6e9, 15.8, -96.1, 20.0, 6.0, 0.2, 5)
    [a] = AlertPolicy().on_update(u)
    import msgspec

    newer = encode_alert(msgspec.structs.replace(a, schema_version=99))
    with pytest.raises(ValueError, match="schema version 99"):
        decode_alert(newer)


# ------------------------------------------------------- updates that lower or clear areas

#: an update as protocol v1 encodes it (pinned: a lowering update needs no new field, so
#: devices in the field decode it unchanged)
V1_UPDATE_HEX = (
    "dc001001a9796a472d616c657274a3796a4703a6757064617465cb41d7d78405800000cb41d7d78400000000"
    "cb4030800000000000cbc058a00000000000cb4034000000000000cb401a666666666666cb3fc999999999999a"
    "9193a862655f6177617265cb4008000000000000c41678dafbfffffffe1d6f976de268686870000046dd088206"
    "a662737361313407"
)


def _shrinking_messages():
    """M6.6, M7.4, M6.6 held past the hold: alert, grow, same areas, lowered."""
    pol = AlertPolicy(model="bssa14")
    out = []
    for v, (m, t) in enumerate([(6.6, 0.0), (7.4, 1.0), (6.6, 2.0), (6.6, 12.0)], start=1):
        out += pol.on_update(EventUpdate("yjS", v, 1.6e9 + 10.0 + t, 1.6e9, 16.5, -98.5, 20.0, m, 0.2, 5 + v))
    return out


def test_the_v1_format_is_unchanged():
    from yujing.records import Alert, AlertTier

    a = Alert(alert_id="yjG-alert", event_id="yjG", version=3, msg_type="update", issued_at_s=1.6e9 + 22.0,
              origin_time_s=1.6e9, latitude=16.5, longitude=-98.5, depth_km=20.0, magnitude=6.6, magnitude_sigma=0.2,
              tiers=(AlertTier("be_aware", 3.0, ("8649b6b87ffffff", "8649b6b8fffffff")),), h3_resolution=6,
              gmpe="bssa14", event_version=7)
    assert encode_alert(a).hex() == V1_UPDATE_HEX
    assert decode_alert(bytes.fromhex(V1_UPDATE_HEX)) == a


def test_updates_that_lower_and_clear_round_trip():
    msgs = _shrinking_messages()
    assert [a.msg_type for a in msgs] == ["alert", "update", "update", "update"]
    for a in msgs:
        assert decode_alert(encode_alert(a)) == a
    # an update that warns nowhere any more (the estimate fell below every tier)
    import msgspec

    empty = msgspec.structs.replace(msgs[-1], version=msgs[-1].version + 1, tiers=())
    assert decode_alert(encode_alert(empty)) == empty


def test_the_link_tells_the_areas_an_update_drops():
    """Published per resolution-3 area: the update that lowers the areas also goes, retained,
    to the areas it no longer reaches (a phone there, even one connecting later, is no
    longer warned), but does not replace a newer alert retained in such an area; a cancel
    reaches every area the alert ever reached."""
    import asyncio
    import time

    import msgspec

    from yujing import protocol
    from yujing.alerting import device_warning
    from conftest import embedded_link
    from yujing.bus.mqtt import MqttClient

    msgs = _shrinking_messages()
    a_high, a_low = msgs[1], msgs[3]

    def topics(a):
        return {protocol.alert_topic(c) for t in a.tiers for c in protocol.alert_cells(t.cells, a.h3_resolution)}

    dropped = sorted(topics(a_high) - topics(a_low))
    assert dropped and topics(a_low)
    other_area = dropped[0]  # where another, newer, quake is being warned
    from yujing.records import AlertTier

    b_cell = h3.cell_to_center_child(other_area.rsplit("/", 1)[1], 6)
    b = msgspec.structs.replace(a_high, alert_id="yjB-alert", event_id="yjB", version=1, msg_type="alert",
                                tiers=(AlertTier("be_aware", 3.0, (b_cell,)),))
    assert len(dropped) >= 2
    quiet = dropped[-1]

    async def retained(port, topic):
        got = []
        c = MqttClient("127.0.0.1", port, f"late-{topic[-6:]}", on_message=lambda t, p, r: got.append(decode_alert(p)))
        await c.connect()
        await c.subscribe([(topic, 1)])
        t0 = time.monotonic()
        while not got and time.monotonic() - t0 < 5.0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        await c.disconnect()
        return got

    async def go():
        async with embedded_link() as (broker, svc, link):
            for a in msgs[:3]:
                svc.bus.publish(f"yj.alert.{a.event_id}", a)
            svc.bus.publish("yj.alert.yjB", b)
            await asyncio.sleep(0.2)
            assert [x.version for x in await retained(broker.port, quiet)] == [3]
            svc.bus.publish(f"yj.alert.{a_low.event_id}", a_low)
            await asyncio.sleep(0.2)
            [got] = await retained(broker.port, quiet)
            assert got == a_low
            lat, lon = h3.cell_to_latlng(quiet.rsplit("/", 1)[1])
            assert device_warning(got, lat, lon, a_low.issued_at_s).tier == ""
            assert [x.alert_id for x in await retained(broker.port, other_area)] == ["yjB-alert"]
            assert link.counts["alert_area_dropped"] == len(dropped)
            n = link.counts["alert_publish"]
            cancel = msgspec.structs.replace(a_low, version=a_low.version + 1, msg_type="cancel", tiers=())
            svc.bus.publish(f"yj.alert.{cancel.event_id}", cancel)
            await asyncio.sleep(0.2)
            assert link.counts["alert_publish"] - n == len(topics(a_high))
            assert [x.msg_type for x in await retained(broker.port, quiet)] == ["cancel"]

    asyncio.run(go())


def test_a_truncated_cell_list_is_refused_not_shortened():
    """A corrupted alert must not decode to fewer areas than it names."""
    import h3 as _h3

    from yujing.wire import pack_cells, unpack_cells

    cells = sorted(_h3.grid_disk(_h3.latlng_to_cell(29.6, 102.1, 6), 8))
    blob = pack_cells(cells)
    assert sorted(unpack_cells(blob)) == cells
    for cut in (1, len(blob) // 2, len(blob) - 10):
        with pytest.raises(ValueError):
            unpack_cells(blob[:-cut])
