"""Scoring a replay against a catalogue (yujing.score).

The data-limited bound (when the P wave reached the third device that recorded a quake) is
checked against ObsPy TauP directly, with distances from ObsPy's own geodesy, so neither
the shipped travel-time table nor yujing.geo is trusted here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from obspy.geodetics import locations2degrees
from obspy.taup import TauPyModel

from yujing.geo import KM_PER_DEG
from yujing.records import Device, EventUpdate
from yujing.score import (
    DEFAULT_DEPTH_KM,
    MATCH_DISTANCE_KM,
    MATCH_TIME_S,
    CatalogEvent,
    false_events,
    load_catalog,
    p_at_nth_device,
    score_folder,
)
from yujing.sources.openeew import load_devices

TOL_S = 0.1


@pytest.fixture(scope="module")
def taup() -> TauPyModel:
    return TauPyModel("iasp91")


def taup_p_at_nth_device(model: TauPyModel, event: CatalogEvent, devices: list[Device], n: int = 3) -> float:
    """Data-limited bound computed with iasp91 directly: UNIX time at which the first P
    arrival reaches the n-th device (in P-arrival order) of those that recorded the quake.
    The depth is the catalogue's, or DEFAULT_DEPTH_KM when it gives none (SSN does not)."""
    depth = event.depth_km if event.depth_km is not None else DEFAULT_DEPTH_KM
    times = []
    for d in devices:
        deg = locations2degrees(event.latitude, event.longitude, d.latitude, d.longitude)
        arrivals = model.get_travel_times(source_depth_in_km=depth, distance_in_degree=deg, phase_list=["ttp", "Pg"])
        assert arrivals, (d.device_id, deg)
        times.append(min(a.time for a in arrivals))
    return event.origin_time_s + sorted(times)[n - 1]


def recorded_devices(data, event_key: str) -> list[Device]:
    """Devices with a folder in the event's recording (as the CLI scores them)."""
    devices = load_devices(data / "devices.json")
    folders = [p.name for p in (data / "events" / event_key).iterdir() if p.is_dir()]
    unknown = [f for f in folders if f not in devices]
    assert not unknown, f"device folders not in devices.json: {unknown}"
    return [devices[f] for f in sorted(folders)]


# ----------------------------------------------------------------------- catalogue


def test_load_catalog_event_table(openeew_dir):
    cat = load_catalog(openeew_dir / "catalog.csv")
    folders = sorted(p.name for p in (openeew_dir / "events").iterdir() if p.is_dir())
    assert sorted(c.key for c in cat) == folders
    by_key = {c.key: c for c in cat}
    c = by_key["2018_2_16"]
    assert c.depth_km == 22.0 and c.magnitude == 7.2
    assert (c.latitude, c.longitude) == (16.218, -98.013)
    assert c.origin_time_s == 1518824379.0  # 2018-02-16T23:39:39Z
    assert by_key["2020_1_11"].depth_km is None  # SSN gives no depth: empty field


def test_load_catalog_full_network_catalogue(openeew_dir):
    full = load_catalog(openeew_dir / "ssn_catalog.csv")
    assert len(full) > 1000
    assert all(c.key for c in full)  # keyed by catalog_id
    assert all(c.depth_km is None for c in full)  # the file has no depth column
    # every event folder's quake is in the full catalogue (same origin time and place)
    for c in load_catalog(openeew_dir / "catalog.csv"):
        same = [f for f in full if abs(f.origin_time_s - c.origin_time_s) < 1.0]
        assert any(abs(f.latitude - c.latitude) < 0.01 and abs(f.longitude - c.longitude) < 0.01 for f in same), c.key


# ------------------------------------------------------------------ data-limited bound


@pytest.mark.parametrize("event_key", ["2018_2_16", "2020_1_11"])  # with and without a catalogue depth
@pytest.mark.parametrize("n", [1, 3, 5])
def test_p_at_nth_device_matches_taup(openeew_dir, taup, event_key, n):
    event = {c.key: c for c in load_catalog(openeew_dir / "catalog.csv")}[event_key]
    devices = recorded_devices(openeew_dir, event_key)
    assert len(devices) >= 5
    got = p_at_nth_device(event, devices, n)
    want = taup_p_at_nth_device(taup, event, devices, n)
    assert abs(got - want) < TOL_S, f"{event_key}, device {n}: yujing {got - event.origin_time_s:.3f} s after origin, TauP {want - event.origin_time_s:.3f} s"
    assert got > event.origin_time_s


def test_p_at_nth_device_ordering_and_too_few_devices(openeew_dir):
    event = {c.key: c for c in load_catalog(openeew_dir / "catalog.csv")}["2020_1_11"]
    devices = recorded_devices(openeew_dir, "2020_1_11")
    times = [p_at_nth_device(event, devices, n) for n in range(1, len(devices) + 1)]
    assert times == sorted(times)
    # does not depend on the order the devices are given in
    assert p_at_nth_device(event, devices[::-1], 3) == times[2]
    assert math.isnan(p_at_nth_device(event, devices[:2], 3))


def test_p_at_nth_device_uses_catalogue_depth(taup):
    """A deeper source: later P at the epicentre (the hypocentral distance grows)."""
    dev = [Device("a", 16.5, -98.5), Device("b", 16.6, -98.5), Device("c", 16.7, -98.5)]
    shallow = CatalogEvent("x", 0.0, 16.5, -98.5, 10.0, 5.0)
    deep = CatalogEvent("x", 0.0, 16.5, -98.5, 80.0, 5.0)
    assert p_at_nth_device(deep, dev, 1) > p_at_nth_device(shallow, dev, 1) + 5.0
    for ev in (shallow, deep):
        assert abs(p_at_nth_device(ev, dev, 3) - taup_p_at_nth_device(taup, ev, dev, 3)) < TOL_S


# ----------------------------------------------------------------- hand-made updates

OT = 1_600_000_000.0
TRUTH = CatalogEvent("2099_1_1", OT, 16.5, -98.5, 20.0, 5.0)
# devices at 30, 50, 70, 90 km north of the epicentre
RECORDED = [Device(f"d{i}", 16.5 + km / KM_PER_DEG, -98.5) for i, km in enumerate([30.0, 50.0, 70.0, 90.0])]


def north(km: float) -> float:
    return 16.5 + km / KM_PER_DEG


def upd(eid, version, issued, ot=OT, lat=16.5, lon=-98.5, mag=5.0, retracted=False, n=3) -> EventUpdate:
    return EventUpdate(
        event_id=eid,
        version=version,
        issued_at_s=issued,
        origin_time_s=ot,
        latitude=lat,
        longitude=lon,
        depth_km=20.0,
        magnitude=mag,
        magnitude_sigma=0.3,
        n_devices=n,
        retracted=retracted,
    )


def good_event(eid="good", t0=OT + 12.0):
    """Three versions: 20 km off and M4.6, then 10 km and M4.9, then 2 km and M5.1."""
    return [
        upd(eid, 1, t0, ot=OT + 0.8, lat=north(20.0), mag=4.6),
        upd(eid, 2, t0 + 2.0, ot=OT + 0.4, lat=north(10.0), mag=4.9, n=5),
        upd(eid, 3, t0 + 6.0, ot=OT + 0.1, lat=north(2.0), mag=5.1, n=8),
    ]


def off_in_time(eid="late40"):
    return [upd(eid, 1, OT + 5.0, ot=OT + 40.0)]


def far_away(eid="far400"):
    return [upd(eid, 1, OT + 4.0, lat=north(400.0))]


def test_score_folder_matching_event():
    s = score_folder(TRUTH.key, good_event(), TRUTH, RECORDED)
    assert s.detected and s.event_id == "good" and s.key == TRUTH.key
    assert s.n_versions == 3
    assert s.first_delay_origin_s == pytest.approx(12.0)
    p3 = p_at_nth_device(TRUTH, RECORDED, 3)
    assert p3 - OT == pytest.approx(float(np.hypot(70.0, 20.0)) / 6.2, abs=2.0)  # sanity: ~12 s
    assert s.first_delay_p3_s == pytest.approx(OT + 12.0 - p3)
    assert s.first_location_error_km == pytest.approx(20.0, abs=0.01)
    assert s.final_location_error_km == pytest.approx(2.0, abs=0.01)
    assert s.first_magnitude_error == pytest.approx(-0.4)
    assert s.final_magnitude_error == pytest.approx(0.1)
    assert s.final_magnitude == pytest.approx(5.1)


@pytest.mark.parametrize("updates", [off_in_time(), far_away(), off_in_time() + far_away(), []], ids=["40s", "400km", "both", "none"])
def test_score_folder_non_matching_events_are_a_miss(updates):
    s = score_folder(TRUTH.key, updates, TRUTH, RECORDED)
    assert not s.detected
    assert s.event_id == ""
    assert math.isnan(s.first_delay_p3_s) and math.isnan(s.final_location_error_km)
    assert s.magnitude == TRUTH.magnitude


def test_score_folder_picks_the_matching_event_among_others():
    """The 40 s and 400 km events come first (issued earlier) but do not match."""
    ups = sorted(off_in_time() + far_away() + good_event(), key=lambda u: u.issued_at_s)
    s = score_folder(TRUTH.key, ups, TRUTH, RECORDED)
    assert s.detected and s.event_id == "good" and s.n_versions == 3
    assert s.first_delay_origin_s == pytest.approx(12.0)


def test_score_folder_judges_an_event_by_its_final_location():
    """An event first placed 400 km away and later moved onto the quake is a detection;
    its first-update error says how far off it started."""
    ups = [upd("moved", 1, OT + 9.0, lat=north(400.0)), upd("moved", 2, OT + 11.0, lat=north(5.0))]
    s = score_folder(TRUTH.key, ups, TRUTH, RECORDED)
    assert s.detected and s.n_versions == 2
    assert s.first_location_error_km == pytest.approx(400.0, abs=0.1)
    assert s.final_location_error_km == pytest.approx(5.0, abs=0.01)


def test_score_folder_earliest_matching_event_wins():
    ups = good_event("later", t0=OT + 20.0) + good_event("earlier", t0=OT + 14.0)
    s = score_folder(TRUTH.key, ups, TRUTH, RECORDED)
    assert s.event_id == "earlier" and s.first_delay_origin_s == pytest.approx(14.0)


def test_score_folder_ignores_the_retraction_update_itself():
    """A later, retracted duplicate does not change the score; the retraction update of a
    withdrawn event is not counted as a version or as its final location."""
    dup = [upd("dup", 1, OT + 30.0, lat=north(150.0)), upd("dup", 2, OT + 32.0, lat=north(150.0), retracted=True)]
    s = score_folder(TRUTH.key, good_event() + dup, TRUTH, RECORDED)
    assert s.event_id == "good" and s.n_versions == 3
    # a retracted event that never matched is a miss, not a detection
    s2 = score_folder(TRUTH.key, far_away("gone") + [upd("gone", 2, OT + 8.0, lat=north(400.0), retracted=True)], TRUTH, RECORDED)
    assert not s2.detected


def test_matching_window_boundaries():
    inside = [upd("in", 1, OT + 10.0, ot=OT + MATCH_TIME_S - 1.0, lat=north(MATCH_DISTANCE_KM - 10.0))]
    assert score_folder(TRUTH.key, inside, TRUTH, RECORDED).detected
    late = [upd("t", 1, OT + 10.0, ot=OT + MATCH_TIME_S + 1.0)]
    early = [upd("t", 1, OT + 10.0, ot=OT - MATCH_TIME_S - 1.0)]
    far = [upd("d", 1, OT + 10.0, lat=north(MATCH_DISTANCE_KM + 10.0))]
    for ups in (late, early, far):
        assert not score_folder(TRUTH.key, ups, TRUTH, RECORDED).detected


# --------------------------------------------------------------------- false events

OTHER = CatalogEvent("9999", OT + 600.0, 18.0, -101.0, None, 3.8)  # a smaller quake elsewhere


def test_false_events():
    catalog = [TRUTH, OTHER]
    retracted = [upd("retracted", 1, OT + 200.0, ot=OT + 190.0, lat=17.5), upd("retracted", 2, OT + 204.0, ot=OT + 190.0, lat=17.5, retracted=True)]
    other_quake = [upd("other", 1, OT + 615.0, ot=OT + 603.0, lat=18.1, lon=-101.1)]
    moved = [upd("moved", 1, OT + 9.0, lat=north(400.0)), upd("moved", 2, OT + 11.0, lat=north(5.0))]
    ups = good_event() + off_in_time() + far_away() + retracted + other_quake + moved
    out = false_events(ups, catalog)
    assert sorted(u.event_id for u in out) == ["far400", "late40"]
    # the final update of each false event is returned
    assert all(u.version == 1 for u in out)
    # against an empty catalogue, every event not retracted is false
    assert sorted(u.event_id for u in false_events(ups, [])) == ["far400", "good", "late40", "moved", "other"]


def test_false_events_uses_the_final_update():
    """An event that drifted away from the quake in its last version is false; one that
    started off and ended on it is not."""
    drifted = [upd("drift", 1, OT + 10.0), upd("drift", 2, OT + 14.0, lat=north(500.0))]
    out = false_events(drifted, [TRUTH])
    assert [(u.event_id, u.version) for u in out] == [("drift", 2)]


def test_false_events_against_the_real_catalogue(openeew_dir):
    """Each event-folder quake, announced exactly, is not false against the full SSN
    catalogue; the same announcement moved 400 km north (inland, where the catalogue has
    no quake within 30 s) is."""
    full = load_catalog(openeew_dir / "ssn_catalog.csv")
    for c in load_catalog(openeew_dir / "catalog.csv"):
        exact = upd("e", 1, c.origin_time_s + 15.0, ot=c.origin_time_s, lat=c.latitude, lon=c.longitude)
        assert false_events([exact], full) == [], c.key
        far = upd("f", 1, c.origin_time_s + 15.0, ot=c.origin_time_s, lat=c.latitude + 400.0 / KM_PER_DEG, lon=c.longitude)
        assert false_events([far], full) == [far], c.key
