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
