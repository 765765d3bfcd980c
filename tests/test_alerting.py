"""Alert policy and the device-side view."""

from __future__ import annotations

import h3
import msgspec
import numpy as np
import pytest

from yujing.alerting import TIERS, AlertPolicy, AlertSettings, area_tier, device_warning, magnitude_margin, warning_times
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


def expected_cells(magnitude: float, lat: float = LAT, name: str | None = None) -> set[str]:
    """Cells (of one tier, or of both) the forecast at this magnitude gives."""
    tm = AlertPolicy(model="bssa14").tier_map(upd(1, magnitude, lat=lat))
    keep = [i for i, t in enumerate(tm.tier.tolist()) if name is None or TIERS[t] == name]
    return {h3.int_to_str(int(tm.cells_int[i])) for i in keep}


def all_cells(alert) -> set[str]:
    return cells_of(alert, "be_aware") | cells_of(alert, "take_action")


def test_margin_is_the_sigma_within_bounds():
    assert magnitude_margin(0.2) == pytest.approx(0.2)
    assert magnitude_margin(0.01) == pytest.approx(0.1)
    assert magnitude_margin(0.5) == pytest.approx(0.3)
    assert magnitude_margin(float("nan")) == pytest.approx(0.3)


def test_a_falling_estimate_shrinks_the_areas_after_the_hold():
    """M6.6, then M7.4 (an upgrade, at once), then M6.6 again: the M7.4 areas stay until
    the lower estimate has stood for the hold (10 s), then shrink, in one update, to the
    areas of M6.6 plus the margin (sigma 0.2): tiers lowered, cells dropped."""
    pol = AlertPolicy(model="bssa14")
    [a1] = pol.on_update(upd(1, 6.6, 0.0))
    [a2] = pol.on_update(upd(2, 7.4, 1.0))
    assert all_cells(a1) < all_cells(a2)
    # the estimate falls: the message says M6.6 (devices size their own shaking by it) but
    # the areas hold
    [a3] = pol.on_update(upd(3, 6.6, 2.0))
    assert a3.msg_type == "update" and a3.magnitude == 6.6
    assert cells_of(a3, "take_action") == cells_of(a2, "take_action") and cells_of(a3, "be_aware") == cells_of(a2, "be_aware")
    for k, t in enumerate((4.0, 7.0, 11.9)):
        assert pol.on_update(upd(4 + k, 6.6, t)) == []
    # 10 s after the M7.4 was replaced by the lower estimate: lowered
    [a4] = pol.on_update(upd(7, 6.6, 12.0))
    assert a4.msg_type == "update" and a4.version == a3.version + 1 and a4.alert_id == a1.alert_id
    for name in TIERS:
        assert cells_of(a4, name) == expected_cells(6.8, name=name)
    assert all_cells(a1) <= all_cells(a4) < all_cells(a2)
    lowered = cells_of(a2, "take_action") & cells_of(a4, "be_aware")
    dropped = all_cells(a2) - all_cells(a4)
    assert lowered and len(dropped) > 0.3 * len(all_cells(a2))
    # settled: nothing more to say
    assert pol.on_update(upd(8, 6.6, 30.0)) == [] and pol.tick(T0 + 10.0 + 60.0) == []


def test_a_downgrade_comes_due_on_a_tick_without_a_new_estimate():
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 6.6, 0.0))
    pol.on_update(upd(2, 7.4, 1.0))
    [a3] = pol.on_update(upd(3, 6.6, 2.0))
    assert pol.tick(T0 + 10.0 + 11.9) == []
    [a4] = pol.tick(T0 + 10.0 + 12.0)
    assert a4.msg_type == "update" and a4.version == a3.version + 1
    assert a4.issued_at_s == T0 + 22.0 and a4.magnitude == 6.6 and a4.event_version == 3
    assert all_cells(a4) == expected_cells(6.8)
    # the newest estimate stands until a newer one comes: time alone lowers nothing further
    assert pol.tick(T0 + 10.0 + 300.0) == []
    # a policy with nothing held above its estimate has nothing due
    other = AlertPolicy(model="bssa14")
    other.on_update(upd(1, 6.6, 0.0))
    assert other.tick(T0 + 1000.0) == []


def test_a_swing_within_the_hold_does_not_flap():
    """Issue 11's demo: M6.6 read as M7.4 and back, again and again, for 20 s. Upgrades go
    out at once, no area falls while the swing lasts; once the estimate stays at M6.6
    (jittering by a few hundredths) the areas fall once, 10 s after the last M7.4, and
    never rise or fall again."""
    pol = AlertPolicy(model="bssa14")
    rng = np.random.default_rng(1)
    msgs, v, t = [], 0, 0.0
    swing = [6.6, 7.4, 7.4, 6.6, 6.6, 6.6, 7.4, 6.6]  # every 0.5 s, repeated (period 4 s)
    while t < 20.0:
        v += 1
        msgs += pol.on_update(upd(v, swing[v % len(swing)], t))
        if swing[v % len(swing)] == 7.4:
            replaced = t + 0.5  # when the next, lower, estimate replaces it
        t += 0.5
    while t < 90.0:
        v += 1
        msgs += pol.on_update(upd(v, 6.6 + float(rng.uniform(-0.04, 0.04)), t))
        t += 0.5
    sizes = [len(all_cells(a)) for a in msgs]
    falls = [i for i in range(1, len(msgs)) if sizes[i] < sizes[i - 1]]
    rises = [i for i in range(1, len(msgs)) if sizes[i] > sizes[i - 1]]
    assert len(falls) == 1
    fell = msgs[falls[0]]
    assert fell.issued_at_s - T0 - 10.0 == pytest.approx(replaced + 10.0)
    assert all(msgs[i].issued_at_s < fell.issued_at_s for i in rises)  # the M7.4 upgrade only
    assert all(a.issued_at_s <= fell.issued_at_s for a in msgs)  # the jitter says nothing new
    # lowered to what the highest estimate of the hold (M6.6 + jitter <= 0.04) supports
    # with the margin (sigma 0.2)
    assert expected_cells(6.76) <= all_cells(fell) <= expected_cells(6.84)


def test_a_fall_within_the_margin_keeps_the_areas():
    pol = AlertPolicy(model="bssa14")
    [a1] = pol.on_update(upd(1, 6.6, 0.0))
    msgs = []
    for k in range(60):  # M6.45 +/- 0.2 for a minute: not a fall beyond the uncertainty
        msgs += pol.on_update(upd(2 + k, 6.45, 1.0 + k))
    msgs += pol.tick(T0 + 10.0 + 120.0)
    assert msgs == []
    # a fall of 0.4 that holds: the areas of M6.4 (6.2 + 0.2)
    for k in range(12):
        msgs += pol.on_update(upd(100 + k, 6.2, 70.0 + k))
    assert len(msgs) == 2  # the magnitude moved 0.4 (update, same areas), then the fall
    assert all_cells(msgs[0]) == all_cells(a1)
    assert all_cells(msgs[1]) == expected_cells(6.4)


def test_areas_follow_an_epicentre_that_moves():
    """The second estimate puts the quake 55 km further north: the cells to the north are
    warned at once, those it no longer reaches in the south are dropped after the hold."""
    pol = AlertPolicy(model="bssa14")
    [a1] = pol.on_update(upd(1, 6.0, 0.0))
    [a2] = pol.on_update(upd(2, 6.0, 1.0, lat=LAT + 0.5))
    assert all_cells(a2) == all_cells(a1) | expected_cells(6.0, lat=LAT + 0.5)
    assert pol.on_update(upd(3, 6.0, 10.9, lat=LAT + 0.5)) == []
    [a3] = pol.on_update(upd(4, 6.0, 11.0, lat=LAT + 0.5))
    # what the new epicentre warns, and of the cells warned before, those it still
    # supports with the margin (M6.2)
    near = expected_cells(6.0, lat=LAT + 0.5)
    assert all_cells(a3) == near | (all_cells(a1) & expected_cells(6.2, lat=LAT + 0.5))
    assert all_cells(a3) < all_cells(a2) and all_cells(a1) - all_cells(a3)


def test_an_estimate_that_falls_below_every_tier_clears_every_area():
    """Not retracted, but too small to reach MMI 3 anywhere once it has held: an update
    without tiers (the event stands; no area is warned)."""
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 5.0, 0.0))
    [a2] = pol.on_update(upd(2, 3.0, 1.0))
    assert all_cells(a2)  # held
    [a3] = pol.on_update(upd(3, 3.0, 11.0))
    assert a3.msg_type == "update" and a3.tiers == ()
    assert pol.first_alert_times("yjTEST") == {}


def test_retraction_after_a_downgrade_cancels_every_area():
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 6.6, 0.0))
    pol.on_update(upd(2, 7.4, 1.0))
    pol.on_update(upd(3, 6.6, 2.0))
    [down] = pol.on_update(upd(4, 6.6, 12.0))
    [c] = pol.on_update(upd(5, 6.6, 13.0, retracted=True))
    assert c.msg_type == "cancel" and c.tiers == () and c.version == down.version + 1
    assert pol.tick(T0 + 1000.0) == [] and pol.on_update(upd(6, 7.4, 14.0)) == []
    assert pol.first_alert_times("yjTEST") == {}


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


def test_an_update_without_tiers_warns_no_device():
    """When the estimate falls below min_magnitude the update carries no tiers: a phone
    near the epicentre, whose own forecast would still say be_aware, shows nothing."""
    pol = AlertPolicy(model="bssa14")
    [a] = pol.on_update(upd(1, 6.5))
    bare = msgspec.structs.replace(a, version=2, msg_type="update", magnitude=4.4, tiers=())
    assert device_warning(msgspec.structs.replace(bare, tiers=a.tiers), LAT + 0.05, LON, T0 + 10.0).tier != ""
    assert device_warning(bare, LAT + 0.05, LON, T0 + 10.0).tier == ""


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


def test_device_shows_at_least_its_area_in_each_message():
    """The server's cells are coarse: a device at the edge of a take-action cell whose own
    forecast says MMI 4.9 still shows take-action (in that message: a later message that
    lowers the area lowers the device too, see the next test)."""
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


def test_device_follows_a_downgrade():
    """A phone warned to take action by the M7.4 estimate shows be-aware once its area is
    lowered; one whose area is dropped shows nothing (its countdown stops)."""
    pol = AlertPolicy(model="bssa14")
    pol.on_update(upd(1, 6.6, 0.0))
    [high] = pol.on_update(upd(2, 7.4, 1.0))
    pol.on_update(upd(3, 6.6, 2.0))
    [low] = pol.on_update(upd(4, 6.6, 12.0))
    lowered = sorted(cells_of(high, "take_action") & cells_of(low, "be_aware"))
    dropped = sorted(all_cells(high) - all_cells(low))
    for cells, tier in ((lowered, "be_aware"), (dropped, "")):
        assert cells
        for c in cells[:: max(1, len(cells) // 25)]:
            la, lo = h3.cell_to_latlng(c)
            assert device_warning(high, la, lo, T0 + 12.0).tier in ("take_action", "be_aware")
            w = device_warning(low, la, lo, T0 + 22.0)
            assert w.tier == tier, (c, w)


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


@pytest.mark.parametrize("model", ["bssa14", "bchydro_interface", "bchydro_intraslab"])
def test_the_tier_map_is_the_same_as_over_the_whole_reach(model, tmp_path, monkeypatch):
    """tier_map evaluates only the disk within which a site can forecast be_aware (a
    radial profile at the softest site): the same cells, tiers and MMI as evaluating every
    cell out to reach_km, for magnitudes from the alert floor to M9, shallow and deep,
    and with a Vs30 grid of soft spots far out."""
    import yujing.alerting as al
    from yujing.sitegrid import Vs30Grid

    rng = np.random.default_rng(3)
    pts = rng.uniform([-6, -6], [6, 6], (400, 2)) + [LAT, LON]
    path = tmp_path / "vs30.csv"
    path.write_text("latitude,longitude,vs30_m_s\n" + "".join(f"{a},{b},{v}\n" for (a, b), v in zip(pts, rng.uniform(120, 900, 400))))
    grid = Vs30Grid.from_csv(path, max_distance_km=30.0)
    for vs in (None, grid):
        p = AlertPolicy(model=model, vs30_grid=vs)
        for m in (4.6, 5.5, 6.5, 7.3, 7.9, 8.6, 9.0):
            for depth in (8.0, 60.0):
                u = upd(1, m, depth=depth)
                got = p.tier_map(u)
                with monkeypatch.context() as mp:
                    mp.setattr(al.AlertPolicy, "_aware_radius_km", lambda self, u, model: al.reach_km(u.magnitude))
                    want = p.tier_map(u)
                assert np.array_equal(got.cells_int, want.cells_int), (model, vs is not None, m, depth)
                assert np.array_equal(got.tier, want.tier) and np.array_equal(got.mmi, want.mmi)
                assert len(got.cells_int) > 0 or m < 5.0  # (an M4.6 under BC Hydro alerts no cell)
