"""Alert policy and the device-side view."""

from __future__ import annotations

import h3
import msgspec
import numpy as np
import pytest

from yujing.alerting import AlertPolicy, AlertSettings, area_tier, device_warning, warning_times
from yujing.geo import distance_km
from yujing.records import EventUpdate
from yujing.shaking import forecast_site

T0 = 1_600_000_000.0
LAT, LON = 16.5, -98.5


def upd(version: int, magnitude: float, t: float = 0.0, retracted: bool = False, lat: float = LAT, depth: float = 20.0):
    return EventUpdate(
        event_id="yjTEST",
        version=version,
        issued_at_s=T0 + 10.0 + t,
        origin_time_s=T0,
        latitude=lat,
        longitude=LON,
        depth_km=depth,
        magnitude=magnitude,
        magnitude_sigma=0.2,
        n_devices=5,
        retracted=retracted,
    )


def cells_of(alert, name):
    for t in alert.tiers:
        if t.name == name:
            return set(h3.uncompact_cells(list(t.cells), alert.h3_resolution))
    return set()


def test_no_alert_below_m45():
    pol = AlertPolicy()
    assert pol.on_update(upd(1, 4.3)) == []
    assert pol.on_update(upd(2, 4.4, 1.0)) == []


def test_first_alert_has_both_tiers_in_the_right_places():
    pol = AlertPolicy(model="bssa14")
    [a] = pol.on_update(upd(1, 6.0))
    assert a.msg_type == "alert" and a.version == 1 and a.alert_id == "yjTEST-alert"
    act, aware = cells_of(a, "take_action"), cells_of(a, "be_aware")
    assert act and aware and not (act & aware)
    for cells, lo, hi in ((act, 5.0, 11.0), (aware, 3.0, 5.0)):
        for c in list(cells)[:: max(1, len(cells) // 40)]:
            la, lo_ = h3.cell_to_latlng(c)
            mmi = forecast_site(LAT, LON, 20.0, 6.0, la, lo_, 760.0, "bssa14").mmi
            assert lo - 1e-6 <= mmi < hi + 1e-6
    # the compact set is much shorter than the cells it stands for
    assert sum(len(t.cells) for t in a.tiers) < 0.5 * (len(act) + len(aware))


def test_updates_only_when_magnitude_moves_or_area_grows():
    pol = AlertPolicy(model="bssa14")
    [a1] = pol.on_update(upd(1, 5.5))
    # a smaller magnitude and a move of 0.1 units: the area cannot grow, nothing to say
    assert pol.on_update(upd(2, 5.4, 1.0)) == []
    # +0.3: an update, with the same id and the next version
    [a2] = pol.on_update(upd(3, 5.8, 2.0))
    assert a2.msg_type == "update" and a2.version == 2 and a2.alert_id == a1.alert_id
    assert cells_of(a1, "be_aware") | cells_of(a1, "take_action") < cells_of(a2, "be_aware") | cells_of(a2, "take_action")
    # the same parameters again: nothing new to say
    assert pol.on_update(upd(4, 5.8, 3.0)) == []
    # +0.1 that pushes the area out by a ring of cells: an update, although M moved little
    [a3] = pol.on_update(upd(5, 5.9, 4.0))
    assert a3.version == 3 and len(cells_of(a3, "be_aware")) > len(cells_of(a2, "be_aware"))


def test_area_never_shrinks_when_magnitude_drops():
    pol = AlertPolicy(model="bssa14")
    [a1] = pol.on_update(upd(1, 6.5))
    [a2] = pol.on_update(upd(2, 6.0, 1.0))  # moved by 0.5: an update
    assert cells_of(a1, "take_action") <= cells_of(a2, "take_action")
    assert cells_of(a1, "be_aware") - cells_of(a2, "take_action") <= cells_of(a2, "be_aware")


def test_retraction_cancels_once_and_silences_the_event():
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 5.5))
    [c] = pol.on_update(upd(2, 5.5, 1.0, retracted=True))
    assert c.msg_type == "cancel" and c.tiers == () and c.version == 2
    assert pol.on_update(upd(3, 5.5, 2.0, retracted=True)) == []
    assert pol.on_update(upd(4, 6.5, 3.0)) == []
    # a retracted event that never alerted sends nothing
    other = AlertPolicy()
    assert other.on_update(msgspec.structs.replace(upd(1, 5.5), event_id="b", retracted=True)) == []


def test_one_alert_id_per_event_whatever_happens():
    pol = AlertPolicy(model="bssa14")
    msgs = []
    for k, m in enumerate([5.0, 5.4, 5.9, 6.3, 6.0, 6.8]):
        msgs += pol.on_update(upd(k + 1, m, float(k)))
    assert {a.alert_id for a in msgs} == {"yjTEST-alert"}
    assert [a.version for a in msgs] == list(range(1, len(msgs) + 1))
    assert [a.msg_type for a in msgs][0] == "alert" and all(a.msg_type == "update" for a in msgs[1:])


def test_device_warning_near_and_far():
    pol = AlertPolicy(model="bssa14")
    [a] = pol.on_update(upd(1, 6.5))
    near = device_warning(a, LAT + 0.05, LON, now_s=T0 + 10.0)
    assert near.tier == "take_action" and near.mmi >= 5.0
    far = device_warning(a, LAT + 6.0, LON, now_s=T0 + 10.0)
    assert far.tier == "" and far.mmi < 3.0
    # countdown: S arrival at ~100 km is ~28 s after origin, the alert came 10 s after it
    mid = device_warning(a, LAT + 0.9, LON, now_s=T0 + 10.0)
    epi = float(distance_km(LAT, LON, LAT + 0.9, LON))
    assert epi == pytest.approx(mid.distance_km)
    assert 10.0 < mid.seconds_to_s_wave < 25.0


def test_device_never_shows_less_than_its_area():
    """The server's cells are coarse: a device at the edge of a take-action cell whose own
    forecast says MMI 4.9 still shows take-action."""
    pol = AlertPolicy(model="bssa14")
    [a] = pol.on_update(upd(1, 6.5))
    act = cells_of(a, "take_action")
    rng = np.random.default_rng(0)
    checked = 0
    for c in rng.choice(sorted(act), size=min(200, len(act)), replace=False):
        boundary = h3.cell_to_boundary(c)
        la, lo = boundary[0]
        la, lo = 0.9 * la + 0.1 * h3.cell_to_latlng(c)[0], 0.9 * lo + 0.1 * h3.cell_to_latlng(c)[1]
        if h3.latlng_to_cell(la, lo, a.h3_resolution) != c:
            continue
        checked += 1
        assert area_tier(a, la, lo) == 1
        assert device_warning(a, la, lo, T0 + 10.0).tier == "take_action"
    assert checked > 50


def test_cancel_shows_nothing():
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 6.0))
    [c] = pol.on_update(upd(2, 6.0, 1.0, retracted=True))
    w = device_warning(c, LAT, LON, T0 + 12.0)
    assert w.tier == "" and np.isnan(w.seconds_to_s_wave)


def test_warning_times_count_late_cells():
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 6.5))
    final = upd(2, 6.5, 1.0)
    tw = {t.tier: t for t in warning_times(pol, final)}
    assert set(tw) == {"be_aware", "take_action"}
    # alerted 10 s after origin: cells within ~35 km of the epicentre (S at 3.5 km/s)
    # are late, the outer be-aware ring gets tens of seconds
    assert tw["take_action"].n_late > 0
    assert tw["be_aware"].n_late == 0
    assert tw["be_aware"].median_s > tw["take_action"].median_s
    assert tw["take_action"].min_s < 0 < tw["be_aware"].min_s


def test_settings_resolution_changes_the_cells():
    coarse = AlertPolicy(AlertSettings(h3_resolution=5), model="bssa14").on_update(upd(1, 6.0))[0]
    fine = AlertPolicy(AlertSettings(h3_resolution=7), model="bssa14").on_update(upd(1, 6.0))[0]
    assert coarse.h3_resolution == 5 and fine.h3_resolution == 7
    assert len(cells_of(fine, "take_action")) > 20 * len(cells_of(coarse, "take_action"))


def test_soft_ground_from_a_vs30_grid_raises_the_tier(tmp_path):
    """A lake-bed city (Vs30 150 m/s) 110 km from an M6.5 takes action where rock would
    only be aware."""
    from yujing.sitegrid import Vs30Grid

    city = (LAT + 1.0, LON)
    path = tmp_path / "vs30.csv"
    rows = ["latitude,longitude,vs30_m_s"]
    for dlat in np.linspace(-0.1, 0.1, 9):
        for dlon in np.linspace(-0.1, 0.1, 9):
            rows.append(f"{city[0] + dlat},{city[1] + dlon},150")
    path.write_text("\n".join(rows) + "\n")
    grid = Vs30Grid.from_csv(path, max_distance_km=5.0)
    rock = AlertPolicy(model="bssa14").on_update(upd(1, 6.5))[0]
    soft = AlertPolicy(model="bssa14", vs30_grid=grid).on_update(upd(1, 6.5))[0]
    here = h3.latlng_to_cell(*city, rock.h3_resolution)
    assert here not in cells_of(rock, "take_action")
    assert here in cells_of(soft, "take_action")
    # far from the grid, nothing changes
    assert cells_of(rock, "take_action") <= cells_of(soft, "take_action")
    assert grid.vs30_at([0.0], [0.0])[0] == 760.0


def test_a_bad_vs30_grid_says_where(tmp_path):
    from yujing.sitegrid import Vs30Grid

    p = tmp_path / "bad.csv"
    p.write_text("latitude,longitude,vs30_m_s\n16,-98,300\n16.1,-98,abc\n")
    with pytest.raises(ValueError, match="bad.csv:3"):
        Vs30Grid.from_csv(p)
    p.write_text("lat,lon,vs30\n16,-98,300\n")
    with pytest.raises(ValueError, match="header must name"):
        Vs30Grid.from_csv(p)


def test_cell_centre_cache_is_right_across_resets_and_threads():
    import threading

    from h3.api import numpy_int as h3n

    from yujing.alerting import CellCentres, _disk_cells

    cache = CellCentres(max_cells=300)  # small: every few disks start the cache afresh
    disks = [_disk_cells(la, lo, 35, 6) for la, lo in [(29.6, 102.1), (30.6, 104.0), (29.8, 102.3), (25.0, 100.0)]]
    errors = []

    def work(d):
        for _ in range(3):
            lat, lon = cache.get(d)
            ref = np.array([h3n.cell_to_latlng(x) for x in d.tolist()])
            if not (np.allclose(lat, ref[:, 0]) and np.allclose(lon, ref[:, 1])):
                errors.append(len(d))

    threads = [threading.Thread(target=work, args=(d,)) for d in disks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
