"""CAP 1.2, QuakeML 1.2 and GeoJSON writers (``yujing.formats``).

CAP documents are validated against the OASIS CAP 1.2 schema (tests/data/CAP-v1.2.xsd),
QuakeML documents against the QuakeML 1.2 schema that ObsPy ships and read back with ObsPy.
"""

from __future__ import annotations

import json
import math
from io import BytesIO
from pathlib import Path

import h3
import numpy as np
import pytest
from lxml import etree

from yujing.formats import (
    alert_to_cap,
    cap_filename,
    cap_identifier,
    events_to_geojson,
    events_to_quakeml,
    mmi_color,
    mmi_to_geojson,
)
from yujing.formats.cap import cap_time, cells_to_cap_polygons, parse_cap_polygon
from yujing.records import Alert, AlertTier, EventUpdate

DATA = Path(__file__).parent / "data"
NS = {"cap": "urn:oasis:names:tc:emergency:cap:1.2"}
LAT0, LON0, RES = 16.5, -98.5, 6
T0 = 1_700_000_000.0
KM_PER_DEG = 6371.0088 * math.pi / 180.0


@pytest.fixture(scope="module")
def cap_schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(DATA / "CAP-v1.2.xsd")))


def _disk(k: int) -> set[str]:
    return set(h3.grid_disk(h3.latlng_to_cell(LAT0, LON0, RES), k))


def _tiers(k_action: int, k_aware: int) -> tuple[AlertTier, ...]:
    """Tiers as alerting makes them: take_action a disk, be_aware the annulus around it."""
    action = _disk(k_action)
    aware = _disk(k_aware) - action
    return (
        AlertTier("be_aware", 3.0, tuple(sorted(h3.compact_cells(list(aware))))),
        AlertTier("take_action", 5.0, tuple(sorted(h3.compact_cells(list(action))))),
    )


def _alert(version: int, msg_type: str, tiers=(), magnitude: float = 6.1) -> Alert:
    return Alert(
        alert_id="yj000007-alert",
        event_id="yj000007",
        version=version,
        msg_type=msg_type,
        issued_at_s=T0 + 4.6 + 2.0 * version,
        origin_time_s=T0 + 0.25,
        latitude=LAT0,
        longitude=LON0,
        depth_km=22.0,
        magnitude=magnitude,
        magnitude_sigma=0.3,
        tiers=tuple(tiers),
        h3_resolution=RES,
        gmpe="bssa14",
        event_version=version + 1,
    )


@pytest.fixture(scope="module")
def messages() -> list[Alert]:
    return [
        _alert(1, "alert", _tiers(2, 6)),
        _alert(2, "update", _tiers(4, 9), magnitude=6.5),
        _alert(3, "cancel"),
    ]


def _doc(xml: bytes) -> etree._Element:
    return etree.fromstring(xml)


def _text(doc, path: str) -> str:
    return doc.findtext(path, namespaces=NS)


def _xy(lat, lon):
    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    return (lon - LON0) * KM_PER_DEG * math.cos(math.radians(LAT0)), (lat - LAT0) * KM_PER_DEG


def _inside(lat: float, lon: float, ring: list[tuple[float, float]]) -> bool:
    ys = [p[0] for p in ring]
    xs = [p[1] for p in ring]
    inside = False
    for i in range(len(ring) - 1):
        if (ys[i] > lat) != (ys[i + 1] > lat):
            x = xs[i] + (lat - ys[i]) * (xs[i + 1] - xs[i]) / (ys[i + 1] - ys[i])
            if x > lon:
                inside = not inside
    return inside


def _dist_to_ring_km(lat: float, lon: float, ring: list[tuple[float, float]]) -> float:
    px, py = _xy(lat, lon)
    x, y = _xy([p[0] for p in ring], [p[1] for p in ring])
    ax, ay, bx, by = x[:-1], y[:-1], x[1:], y[1:]
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-12), 0, 1)
    return float(np.min(np.hypot(px - (ax + t * dx), py - (ay + t * dy))))


def _tier_cells(tier: AlertTier) -> list[str]:
    return list(h3.uncompact_cells(list(tier.cells), RES))


def _check_polygons(info, tier: AlertTier, slack_km: float) -> list[list[tuple[float, float]]]:
    """Closed rings of >= 4 points; every cell centre of the tier inside one or within slack."""
    rings = [parse_cap_polygon(p.text) for p in info.findall("cap:area/cap:polygon", NS)]
    assert rings
    for ring in rings:
        assert len(ring) >= 4
        assert ring[0] == ring[-1]
        assert len(set(ring)) == len(ring) - 1
    for c in _tier_cells(tier):
        lat, lon = h3.cell_to_latlng(c)
        if not any(_inside(lat, lon, r) for r in rings):
            assert min(_dist_to_ring_km(lat, lon, r) for r in rings) <= slack_km, c
    # and the outline stays near the cells: every vertex is close to a cell of the tier
    centres = np.array([h3.cell_to_latlng(c) for c in _tier_cells(tier)])
    cx, cy = _xy(centres[:, 0], centres[:, 1])
    edge = h3.average_hexagon_edge_length(RES, unit="km")
    for ring in rings:
        vx, vy = _xy([p[0] for p in ring], [p[1] for p in ring])
        d = np.hypot(vx[:, None] - cx[None, :], vy[:, None] - cy[None, :]).min(axis=1)
        assert d.max() <= 1.2 * edge + slack_km
    return rings


# ----------------------------------------------------------------------------- CAP


def test_cap_messages_validate_against_the_oasis_schema(cap_schema, messages):
    docs = []
    for i, a in enumerate(messages):
        xml = alert_to_cap(a, sender="yujing@example.org", previous=messages[:i])
        assert xml.startswith(b"<?xml")
        doc = _doc(xml)
        assert cap_schema.validate(doc), cap_schema.error_log
        docs.append(doc)
    assert [_text(d, "cap:msgType") for d in docs] == ["Alert", "Update", "Cancel"]
    idents = [_text(d, "cap:identifier") for d in docs]
    assert len(set(idents)) == 3
    assert idents == [cap_identifier(a) for a in messages]
    for d in docs:
        assert _text(d, "cap:status") == "Actual"
        assert _text(d, "cap:scope") == "Public"
        assert _text(d, "cap:incidents") == "yj000007"
        assert _text(d, "cap:sender") == "yujing@example.org"
    assert _text(docs[0], "cap:sent") == cap_time(messages[0].issued_at_s) == "2023-11-14T22:13:26-00:00"
    # references: "sender,identifier,sent" of every earlier message, exactly as they were sent
    assert docs[0].find("cap:references", NS) is None
    expected = [f"yujing@example.org,{_text(d, 'cap:identifier')},{_text(d, 'cap:sent')}" for d in docs[:2]]
    assert _text(docs[1], "cap:references").split() == expected[:1]
    assert _text(docs[2], "cap:references").split() == expected


def test_cap_alert_infos_and_polygons(cap_schema, messages):
    a = messages[0]
    doc = _doc(alert_to_cap(a))
    infos = doc.findall("cap:info", NS)
    assert len(infos) == 2
    action, aware = infos  # most severe first
    for info in infos:
        assert _text(info, "cap:category") == "Geo"
        assert _text(info, "cap:event") == "Earthquake"
        assert _text(info, "cap:urgency") == "Immediate"
        assert _text(info, "cap:certainty") == "Likely"
        assert "6.1 +/- 0.3" in _text(info, "cap:description")
        assert "depth 22 km" in _text(info, "cap:description")
        params = {p.findtext("cap:valueName", namespaces=NS): p.findtext("cap:value", namespaces=NS)
                  for p in info.findall("cap:parameter", NS)}
        assert float(params["magnitude"]) == pytest.approx(6.1)
        assert float(params["magnitudeSigma"]) == pytest.approx(0.3)
        assert float(params["latitude"]) == pytest.approx(LAT0)
        assert float(params["longitude"]) == pytest.approx(LON0)
        assert float(params["depthKm"]) == pytest.approx(22.0)
        assert params["originTime"] == "2023-11-14T22:13:20.250-00:00"
        assert params["eventId"] == "yj000007"
    assert _text(action, "cap:severity") == "Severe"
    assert _text(aware, "cap:severity") == "Moderate"
    assert _text(action, "cap:responseType") == "Shelter"
    tiers = {t.name: t for t in a.tiers}
    # a small alert keeps the exact H3 outlines: every vertex is a vertex of the cells
    assert "outline within" not in _text(action, "cap:area/cap:areaDesc")
    ring = _check_polygons(action, tiers["take_action"], slack_km=0.0)[0]
    vertices = {(round(la, 4), round(lo, 4)) for c in _tier_cells(tiers["take_action"]) for la, lo in h3.cell_to_boundary(c)}
    assert set(ring) <= vertices
    # be_aware is an annulus: CAP has no holes, so its polygon covers the take_action area too
    rings = _check_polygons(aware, tiers["be_aware"], slack_km=0.0)
    assert len(rings) == 1
    assert _inside(LAT0, LON0, rings[0])


def test_cap_update_and_cancel(cap_schema, messages):
    upd = _doc(alert_to_cap(messages[1], previous=messages[:1]))
    assert [_text(i, "cap:certainty") for i in upd.findall("cap:info", NS)] == ["Observed", "Observed"]
    assert "6.5" in _text(upd, "cap:info/cap:headline")
    cancel = _doc(alert_to_cap(messages[2], previous=messages[:2]))
    infos = cancel.findall("cap:info", NS)
    assert len(infos) == 1
    assert infos[0].find("cap:area", NS) is None
    assert _text(infos[0], "cap:responseType") == "AllClear"
    assert _text(infos[0], "cap:urgency") == "Past"
    # an update or cancel must say what it updates
    with pytest.raises(ValueError, match="previous"):
        alert_to_cap(messages[1])
    with pytest.raises(ValueError):
        alert_to_cap(messages[0], previous=messages[1:2])


def test_cap_options_and_names(cap_schema, messages):
    doc = _doc(alert_to_cap(messages[0], status="Exercise", utc_offset_min=-360))
    assert cap_schema.validate(doc), cap_schema.error_log
    assert _text(doc, "cap:status") == "Exercise"
    assert _text(doc, "cap:sent") == "2023-11-14T16:13:26-06:00"
    assert cap_time(0.0) == "1970-01-01T00:00:00-00:00"
    assert cap_time(59.9, 330) == "1970-01-01T05:30:59+05:30"
    with pytest.raises(ValueError):
        alert_to_cap(messages[0], sender="two words")
    with pytest.raises(ValueError):
        alert_to_cap(messages[0], status="Real")
    assert cap_filename(messages[1]) == "yj000007-alert.v2.cap.xml"
    odd = _alert(1, "alert", _tiers(1, 2))
    odd = Alert(**{**{f: getattr(odd, f) for f in odd.__struct_fields__}, "alert_id": "a b,c<&"})
    assert cap_identifier(odd) == "a_b_c_.v1"
    assert cap_schema.validate(_doc(alert_to_cap(odd)))
    # deterministic
    assert alert_to_cap(messages[0]) == alert_to_cap(messages[0])


def test_cap_separate_areas_and_holes(cap_schema):
    c = h3.latlng_to_cell(LAT0, LON0, RES)
    far = h3.latlng_to_cell(LAT0 + 1.0, LON0 + 1.0, RES)
    island = set(h3.grid_disk(c, 1))
    aware = (set(h3.grid_disk(c, 6)) - set(h3.grid_disk(c, 3))) | island | set(h3.grid_disk(far, 2))
    tier = AlertTier("be_aware", 3.0, tuple(sorted(h3.compact_cells(list(aware)))))
    polys = cells_to_cap_polygons(tier.cells, RES)
    # the ring around the hole, the far blob; the island inside the hole says nothing more
    assert len(polys) == 2
    doc = _doc(alert_to_cap(_alert(1, "alert", [tier])))
    assert cap_schema.validate(doc), cap_schema.error_log
    _check_polygons(doc.find("cap:info", NS), tier, slack_km=0.0)


def _round_tiers(r_action_km: float, r_aware_km: float) -> tuple[AlertTier, ...]:
    """Round tiers (cells whose centre is within a distance), as a radial forecast makes them."""
    disk = sorted(_disk(int(r_aware_km / (1.5 * h3.average_hexagon_edge_length(RES, unit="km"))) + 2))
    ll = np.array([h3.cell_to_latlng(c) for c in disk])
    x, y = _xy(ll[:, 0], ll[:, 1])
    r = np.hypot(x, y)
    action = [c for c, d in zip(disk, r) if d < r_action_km]
    aware = [c for c, d in zip(disk, r) if r_action_km <= d < r_aware_km]
    return (
        AlertTier("be_aware", 3.0, tuple(sorted(h3.compact_cells(aware)))),
        AlertTier("take_action", 5.0, tuple(sorted(h3.compact_cells(action)))),
    )


@pytest.mark.parametrize("shape", ["hexagon", "round"])
def test_cap_m74_alert_fits_in_8_kb(cap_schema, shape):
    # ~20,000 res-6 cells (radius ~480 km) of be_aware around ~2,000 of take_action
    tiers = _tiers(25, 81) if shape == "hexagon" else _round_tiers(150.0, 480.0)
    n_aware, n_action = (len(_tier_cells(t)) for t in tiers)
    assert 16_000 < n_aware < 20_000 and 1_700 < n_action < 2_100
    a = _alert(1, "alert", tiers, magnitude=7.4)
    xml = alert_to_cap(a)
    assert len(xml) <= 8000, len(xml)
    doc = _doc(xml)
    assert cap_schema.validate(doc), cap_schema.error_log
    exact = alert_to_cap(a, max_bytes=None)
    assert len(exact) > 20_000  # the exact outlines would not fit
    tiers_by = {t.name: t for t in tiers}
    for info in doc.findall("cap:info", NS):
        desc = _text(info, "cap:area/cap:areaDesc")
        assert "outline within ~" in desc
        err_km = float(desc.split("~")[1].split()[0])
        assert err_km <= 2 * h3.average_hexagon_edge_length(RES, unit="km") + 1
        name = [p.findtext("cap:value", namespaces=NS) for p in info.findall("cap:parameter", NS)
                if p.findtext("cap:valueName", namespaces=NS) == "tier"][0]
        rings = _check_polygons(info, tiers_by[name], slack_km=err_km + 0.05)
        assert sum(len(r) for r in rings) > 6  # simplified, not collapsed


def _info_by_tier(doc) -> dict:
    out = {}
    for info in doc.findall("cap:info", NS):
        name = [q.findtext("cap:value", namespaces=NS) for q in info.findall("cap:parameter", NS)
                if q.findtext("cap:valueName", namespaces=NS) == "tier"][0]
        out[name] = info
    return out


@pytest.mark.parametrize("max_bytes", [None, 8000])
def test_cap_update_that_lowers_and_clears_areas(cap_schema, max_bytes):
    """The estimate fell: take_action shrinks from a disk of 4 rings to 2 (the cells between
    are now be_aware), be_aware from 9 rings to 6. The Update lists the new areas and adds
    an AllClear info over the cells no longer warned (the ring between 6 and 9), cut into
    pieces without holes, so that no outline covers an area still warned."""
    first = _alert(1, "alert", _tiers(4, 9), magnitude=6.9)
    down = _alert(2, "update", _tiers(2, 6), magnitude=6.3)
    doc = _doc(alert_to_cap(down, previous=[first], max_bytes=max_bytes))
    assert cap_schema.validate(doc), cap_schema.error_log
    assert _text(doc, "cap:msgType") == "Update"
    assert "all clear" in _text(doc, "cap:note")
    infos = _info_by_tier(doc)
    assert list(infos) == ["take_action", "be_aware", "all_clear"]
    clear = infos["all_clear"]
    assert [_text(clear, f"cap:{k}") for k in ("responseType", "urgency", "severity", "certainty")] == [
        "AllClear", "Past", "Minor", "Unlikely"]
    desc = _text(clear, "cap:area/cap:areaDesc")
    err_km = float(desc.split("~")[1].split()[0]) if "~" in desc else 0.0
    cleared = AlertTier("all_clear", 0.0, tuple(sorted(_disk(9) - _disk(6))))
    rings = _check_polygons(clear, cleared, slack_km=err_km + 0.05)
    assert len(rings) >= 3  # a ring cut into pieces
    # no warned cell lies inside an all-clear outline, beyond the outline's error
    for c in sorted(_disk(6))[::3]:
        lat, lon = h3.cell_to_latlng(c)
        for r in rings:
            assert not _inside(lat, lon, r) or _dist_to_ring_km(lat, lon, r) <= err_km + 0.05, c
    # an update that only grows the areas has nothing to clear
    grow = _doc(alert_to_cap(_alert(2, "update", _tiers(5, 10)), previous=[first]))
    assert list(_info_by_tier(grow)) == ["take_action", "be_aware"] and grow.find("cap:note", NS) is None


def test_cap_update_that_warns_nowhere_and_a_cancel_after_it(cap_schema):
    first = _alert(1, "alert", _tiers(2, 6))
    none = _alert(2, "update", (), magnitude=4.0)
    doc = _doc(alert_to_cap(none, previous=[first]))
    assert cap_schema.validate(doc), cap_schema.error_log
    assert list(_info_by_tier(doc)) == ["all_clear"]
    _check_polygons(_info_by_tier(doc)["all_clear"], AlertTier("x", 0.0, tuple(sorted(_disk(6)))), slack_km=0.0)
    cancel = _doc(alert_to_cap(_alert(3, "cancel"), previous=[first, none]))
    assert cap_schema.validate(cancel), cap_schema.error_log
    assert _text(cancel, "cap:msgType") == "Cancel" and len(cancel.findall("cap:info", NS)) == 1


def test_cap_m74_shrinking_to_m66_fits_in_8_kb(cap_schema):
    """The demo's case: an M7.4 area (~20,000 cells) lowered to an M6.6 one. The warning
    outlines stay within ~1.5 cell edges, the AllClear ring within ~4, in 8 kB."""
    big = _alert(1, "alert", _round_tiers(150.0, 480.0), magnitude=7.4)
    small = _alert(2, "update", _round_tiers(60.0, 300.0), magnitude=6.6)
    xml = alert_to_cap(small, previous=[big])
    assert len(xml) <= 8000, len(xml)
    doc = _doc(xml)
    assert cap_schema.validate(doc), cap_schema.error_log
    infos = _info_by_tier(doc)
    assert list(infos) == ["take_action", "be_aware", "all_clear"]
    edge = h3.average_hexagon_edge_length(RES, unit="km")
    for name, info in infos.items():
        err_km = float(_text(info, "cap:area/cap:areaDesc").split("~")[1].split()[0])
        assert err_km <= (4.0 if name == "all_clear" else 1.5) * edge + 0.1, (name, err_km)


# ----------------------------------------------------------------------------- QuakeML


def _updates() -> list[EventUpdate]:
    ups = []
    for v, (m, err) in enumerate([(5.2, 12.0), (5.9, 6.5), (6.3, 4.0)], start=1):
        ups.append(
            EventUpdate(
                event_id="yj000001",
                version=v,
                issued_at_s=T0 + 3.0 + v,
                origin_time_s=T0 + 0.123456,
                latitude=LAT0 + 0.01 * v,
                longitude=LON0 - 0.02 * v,
                depth_km=20.0 + v,
                magnitude=m,
                magnitude_sigma=0.4 / v,
                n_devices=4 + 3 * v,
                horizontal_error_km=err,
            )
        )
    ups.append(
        EventUpdate(
            event_id="yj000002", version=1, issued_at_s=T0 + 100.5, origin_time_s=T0 + 95.0,
            latitude=17.2, longitude=-99.9, depth_km=8.0, magnitude=4.6, magnitude_sigma=0.5, n_devices=5,
        )
    )
    ups.append(
        EventUpdate(
            event_id="yj000002", version=2, issued_at_s=T0 + 102.5, origin_time_s=T0 + 95.0,
            latitude=17.2, longitude=-99.9, depth_km=8.0, magnitude=4.6, magnitude_sigma=0.5, n_devices=5,
            retracted=True,
        )
    )
    return ups


def test_quakeml_validates_and_reads_back_with_obspy():
    from obspy import UTCDateTime, read_events
    from obspy.io.quakeml.core import _validate

    ups = _updates()
    xml = events_to_quakeml(ups)
    assert _validate(BytesIO(xml))
    cat = read_events(BytesIO(xml), format="QUAKEML")
    assert len(cat) == 2
    ev = next(e for e in cat if str(e.resource_id) == "smi:yujing/event/yj000001")
    assert ev.event_type == "earthquake"
    assert len(ev.origins) == 3 and len(ev.magnitudes) == 3
    final = ups[2]
    o, m = ev.preferred_origin(), ev.preferred_magnitude()
    assert str(o.resource_id) == "smi:yujing/origin/yj000001/3"
    assert abs(o.time - UTCDateTime(final.origin_time_s)) < 1e-6
    assert o.latitude == pytest.approx(final.latitude)
    assert o.longitude == pytest.approx(final.longitude)
    assert o.depth == pytest.approx(final.depth_km * 1000.0)
    assert o.origin_uncertainty.horizontal_uncertainty == pytest.approx(4000.0)
    assert o.latitude_errors.uncertainty == pytest.approx(4.0 / 111.19492664455873)
    assert o.longitude_errors.uncertainty * math.cos(math.radians(final.latitude)) == pytest.approx(
        4.0 / 111.19492664455873
    )
    assert o.quality.used_station_count == final.n_devices
    assert o.evaluation_mode == "automatic"
    assert o.creation_info.agency_id == "yujing"
    assert o.creation_info.creation_time == UTCDateTime(final.issued_at_s)
    assert o.creation_info.version == "3"
    assert m.mag == pytest.approx(6.3)
    assert m.mag_errors.uncertainty == pytest.approx(0.4 / 3)
    assert m.magnitude_type == "M"
    assert m.comments and "magnitude" in m.comments[0].text
    assert str(m.origin_id) == str(o.resource_id)
    assert m.creation_info.agency_id == "yujing"
    # every version is kept as an origin with its own values
    first = next(x for x in ev.origins if str(x.resource_id).endswith("/1"))
    assert first.depth == pytest.approx(21_000.0)
    assert first.origin_uncertainty.horizontal_uncertainty == pytest.approx(12_000.0)
    # the retracted event
    ev2 = next(e for e in cat if str(e.resource_id) == "smi:yujing/event/yj000002")
    assert ev2.event_type == "not existing"
    assert ev2.preferred_origin().evaluation_status == "rejected"
    # only the final version
    cat1 = read_events(BytesIO(events_to_quakeml(ups, all_versions=False)), format="QUAKEML")
    assert sorted(len(e.origins) for e in cat1) == [1, 1]
    assert events_to_quakeml(list(reversed(ups))) == xml  # order of input does not matter
    assert len(read_events(BytesIO(events_to_quakeml([])), format="QUAKEML")) == 0


# ----------------------------------------------------------------------------- GeoJSON


def test_events_geojson_like_the_usgs_feed():
    ups = _updates()
    g = events_to_geojson(ups)
    json.dumps(g)
    assert g["type"] == "FeatureCollection"
    md = g["metadata"]
    assert set(md) >= {"generated", "title", "count", "api"}
    assert md["count"] == 2 and md["generated"] == int(round((T0 + 102.5) * 1000))
    f2, f1 = g["features"]  # newest first
    assert f1["id"] == "yjyj000001"
    p = f1["properties"]
    assert p["mag"] == 6.3 and p["place"] == "" and p["type"] == "earthquake"
    assert p["time"] == int(round((T0 + 0.123456) * 1000))
    assert p["updated"] == int(round((T0 + 6.0) * 1000))
    assert p["ids"] == ",yjyj000001," and p["net"] == "yj" and p["code"] == "yj000001"
    assert p["magType"] == "m" and p["nst"] == 13 and p["status"] == "automatic"
    assert p["magError"] == pytest.approx(0.133, abs=1e-3) and p["horizontalError"] == 4.0
    assert f1["geometry"] == {"type": "Point", "coordinates": [LON0 - 0.06, LAT0 + 0.03, 23.0]}
    assert f2["properties"]["status"] == "deleted"
    assert len(g["bbox"]) == 6
    assert events_to_geojson([])["metadata"]["count"] == 0


def test_mmi_geojson_cells_and_bands():
    assert mmi_color(1.0) == "#ffffff"
    assert mmi_color(5.0) == "#7aff93"
    assert mmi_color(6.0) == "#ffff00"
    assert mmi_color(9.0) == "#ff0000"
    assert mmi_color(12.0) == "#c80000"
    assert mmi_color(5.5) == "#bdff4a"  # halfway between V and VI
    c = h3.latlng_to_cell(LAT0, LON0, RES)
    cells = sorted(h3.grid_disk(c, 4))
    d = np.array([h3.grid_distance(c, x) for x in cells], dtype=float)
    mmi = 7.04 - 0.8 * d
    pga = 0.3 / (1 + d)
    pgv = 30.0 / (1 + d)
    g = mmi_to_geojson(cells, mmi, pga_g=pga, pgv_cm_s=pgv)
    json.dumps(g)
    assert g["type"] == "FeatureCollection" and len(g["features"]) == len(cells)
    f = g["features"][cells.index(c)]
    assert f["properties"] == {"cell": c, "mmi": 7.0, "color": mmi_color(7.0), "pga_g": 0.3, "pgv_cm_s": 30.0}
    ring = f["geometry"]["coordinates"][0]
    assert f["geometry"]["type"] == "Polygon" and ring[0] == ring[-1] and len(ring) == 7
    lon, lat = np.mean(ring[:-1], axis=0)
    assert (lat, lon) == pytest.approx(h3.cell_to_latlng(c), abs=0.01)
    bands = mmi_to_geojson(cells, mmi, pga_g=pga, bin_width=1.0)
    json.dumps(bands)
    props = [b["properties"] for b in bands["features"]]
    assert [p["mmi"] for p in props] == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert sum(p["cells"] for p in props) == len(cells)
    assert props[-1]["pga_g_max"] == 0.3
    ring_band = bands["features"][2]["geometry"]["coordinates"][0]
    assert len(ring_band) == 2  # an annulus: outer ring and one hole
    with pytest.raises(ValueError):
        mmi_to_geojson(cells, mmi[:-1])
