"""Event updates as a QuakeML 1.2 (Basic Event Description) document.

``events_to_quakeml(updates)`` writes one ``<event>`` per ``event_id``. Every update of the
event becomes an ``<origin>`` and a ``<magnitude>`` (``all_versions=False``: only the
final one); the final update (highest version) is the preferred origin and magnitude.

* publicIDs: ``smi:yujing/event/<event_id>``, ``smi:yujing/origin/<event_id>/<version>``,
  ``smi:yujing/magnitude/<event_id>/<version>`` (characters QuakeML's resource identifier
  does not allow become ``_``).
* origin: time (UTC, microseconds), latitude/longitude in degrees with the 1-sigma
  ``horizontal_error_km`` as their uncertainty in degrees and as
  ``originUncertainty/horizontalUncertainty`` in metres, depth in **metres**;
  ``quality/usedStationCount`` = devices used; evaluation mode ``automatic``, status
  ``preliminary`` (``rejected`` for a retraction).
* magnitude: value with ``magnitude_sigma`` as uncertainty; type ``M`` (unspecified) with
  a comment, because ``EventUpdate`` does not say which scale its magnitude is on (the
  network magnitude of ``magnitude.py`` is ML handing over to a PGV-based Mw above ~6).
  If a later ``EventUpdate`` grows a ``magnitude_type`` field, that is used instead.
* creationInfo: agency ``yujing``, ``creationTime`` = ``issued_at_s`` of the update,
  ``version`` = update version; the event's own creationInfo is that of the final update.
* an event whose final update is a retraction has type ``not existing``; others
  ``earthquake``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from xml.etree import ElementTree as ET

from ..records import EventUpdate

QUAKEML_NS = "http://quakeml.org/xmlns/quakeml/1.2"
BED_NS = "http://quakeml.org/xmlns/bed/1.2"
AGENCY = "yujing"
_KM_PER_DEG = 111.19492664455873
_MAG_COMMENT = (
    "yujing early-warning network magnitude from device amplitudes: local magnitude (IASPEI) "
    "handing over to a PGV-based moment magnitude above ~6; scale not recorded per update."
)


def quakeml_time(t_s: float) -> str:
    """UNIX seconds as a QuakeML (xs:dateTime) UTC time with microseconds."""
    d = datetime.fromtimestamp(t_s, timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def group_updates(updates: Iterable[EventUpdate]) -> dict[str, list[EventUpdate]]:
    """Updates per event id, each list sorted by version (a repeated version: last wins)."""
    by: dict[str, dict[int, EventUpdate]] = {}
    for u in updates:
        by.setdefault(u.event_id, {})[u.version] = u
    return {eid: [vs[v] for v in sorted(vs)] for eid, vs in by.items()}


def events_to_quakeml(
    updates: Iterable[EventUpdate],
    *,
    all_versions: bool = True,
    prefix: str = "smi:yujing",
) -> bytes:
    """QuakeML 1.2 ``eventParameters`` for the events of these updates (UTF-8 bytes)."""
    groups = group_updates(updates)
    root = ET.Element("q:quakeml", {"xmlns:q": QUAKEML_NS, "xmlns": BED_NS})
    ep = ET.SubElement(root, "eventParameters", {"publicID": f"{prefix}/eventParameters"})
    _creation(ep, max((g[-1].issued_at_s for g in groups.values()), default=0.0), None)
    for eid in sorted(groups, key=lambda e: (groups[e][0].origin_time_s, e)):
        versions = groups[eid]
        final = versions[-1]
        shown = versions if all_versions else [final]
        ev = ET.SubElement(ep, "event", {"publicID": f"{prefix}/event/{_rid(eid)}"})
        for u in shown:
            _magnitude(ev, u, prefix)
        for u in shown:
            _origin(ev, u, prefix)
        _text(ev, "preferredOriginID", _origin_id(final, prefix))
        _text(ev, "preferredMagnitudeID", _magnitude_id(final, prefix))
        _text(ev, "type", "not existing" if final.retracted else "earthquake")
        _creation(ev, final.issued_at_s, final.version)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ------------------------------------------------------------------------------ helpers


def _rid(s: str) -> str:
    return re.sub(r"[^\w\-.*()~']", "_", s) or "_"


def _origin_id(u: EventUpdate, prefix: str) -> str:
    return f"{prefix}/origin/{_rid(u.event_id)}/{u.version}"


def _magnitude_id(u: EventUpdate, prefix: str) -> str:
    return f"{prefix}/magnitude/{_rid(u.event_id)}/{u.version}"


def _text(parent: ET.Element, tag: str, text: str) -> ET.Element:
    e = ET.SubElement(parent, tag)
    e.text = text
    return e


def _num(x: float) -> str:
    return repr(float(x))


def _quantity(parent: ET.Element, tag: str, value: str, uncertainty: float | None = None) -> None:
    q = ET.SubElement(parent, tag)
    _text(q, "value", value)
    if uncertainty is not None and uncertainty > 0:
        _text(q, "uncertainty", _num(uncertainty))


def _creation(parent: ET.Element, t_s: float, version: int | None) -> None:
    ci = ET.SubElement(parent, "creationInfo")
    _text(ci, "agencyID", AGENCY)
    _text(ci, "creationTime", quakeml_time(t_s))
    if version is not None:
        _text(ci, "version", str(version))


def _origin(ev: ET.Element, u: EventUpdate, prefix: str) -> None:
    o = ET.SubElement(ev, "origin", {"publicID": _origin_id(u, prefix)})
    _quantity(o, "time", quakeml_time(u.origin_time_s))
    err = u.horizontal_error_km
    lat_unc = err / _KM_PER_DEG if err > 0 else None
    coslat = max(math.cos(math.radians(u.latitude)), 1e-6)
    lon_unc = err / (_KM_PER_DEG * coslat) if err > 0 else None
    _quantity(o, "latitude", _num(u.latitude), lat_unc)
    _quantity(o, "longitude", _num(u.longitude), lon_unc)
    _quantity(o, "depth", _num(u.depth_km * 1000.0))
    q = ET.SubElement(o, "quality")
    _text(q, "usedStationCount", str(int(u.n_devices)))
    if err > 0:
        ou = ET.SubElement(o, "originUncertainty")
        _text(ou, "horizontalUncertainty", _num(err * 1000.0))
        _text(ou, "preferredDescription", "horizontal uncertainty")
    _text(o, "evaluationMode", "automatic")
    _text(o, "evaluationStatus", "rejected" if u.retracted else "preliminary")
    _creation(o, u.issued_at_s, u.version)


def _magnitude(ev: ET.Element, u: EventUpdate, prefix: str) -> None:
    m = ET.SubElement(ev, "magnitude", {"publicID": _magnitude_id(u, prefix)})
    _quantity(m, "mag", _num(u.magnitude), u.magnitude_sigma)
    mtype = getattr(u, "magnitude_type", "") or "M"
    _text(m, "type", mtype)
    _text(m, "originID", _origin_id(u, prefix))
    _text(m, "stationCount", str(int(u.n_devices)))
    _text(m, "evaluationMode", "automatic")
    _text(m, "evaluationStatus", "rejected" if u.retracted else "preliminary")
    if mtype == "M":
        c = ET.SubElement(m, "comment")
        _text(c, "text", _MAG_COMMENT)
    _creation(m, u.issued_at_s, u.version)
