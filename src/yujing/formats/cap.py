"""Alerts as OASIS Common Alerting Protocol 1.2 messages (``urn:oasis:names:tc:emergency:cap:1.2``).

``alert_to_cap(alert)`` writes one CAP ``<alert>`` per :class:`~yujing.records.Alert`
message:

* ``identifier`` is ``<alert_id>.v<version>`` (spaces, commas, ``<`` and ``&``, which CAP
  forbids, become ``_``): stable for a message and unique per message of the alert;
  ``incidents`` is the event id, which ties all messages of one earthquake together.
* ``sent`` is ``issued_at_s`` in the CAP form ``YYYY-MM-DDThh:mm:ss+hh:mm`` (whole seconds,
  no ``Z``; UTC is written ``-00:00`` as CAP 1.2 section 3.3.2 requires).
* ``msgType`` is ``Alert`` / ``Update`` / ``Cancel``; an Update or Cancel carries
  ``references`` (``sender,identifier,sent`` of each earlier message of the alert, which
  the caller passes as ``previous``: CAP needs their ``sent`` times).
* one ``<info>`` per tier, most severe first: category ``Geo``, event ``Earthquake``,
  urgency ``Immediate``; severity ``Severe`` for ``take_action`` (``Extreme`` for a tier
  from MMI 8, heavy damage) and ``Moderate`` for ``be_aware``: a ``be_aware`` area expects
  MMI 3-4, felt but harmless, yet the forecast has an uncertainty of about one intensity
  unit (magnitude sigma plus ground-motion scatter), so a threat to people or property is
  *possible* there -- CAP's definition of Moderate -- rather than "minimal" (Minor).
  Certainty is ``Likely`` for the first message (a first detection from a few devices can
  still be retracted) and ``Observed`` for updates; both qualify for the highest-priority
  public channels (e.g. WEA imminent-threat alerts need Immediate/Expected, Extreme/Severe,
  Observed/Likely). ``<parameter>``s carry the event (magnitude and sigma, origin time,
  latitude, longitude, depth) and the tier (name, MMI threshold) for machines.
* a Cancel has a single ``<info>`` without an area: responseType ``AllClear``, urgency
  ``Past``, severity ``Minor``, certainty ``Unlikely`` (the event was retracted).

Areas. A tier's compact H3 cells are expanded to the alert's ``h3_resolution``
(``h3.uncompact_cells``) and merged into outlines (``h3.cells_to_h3shape``); each outer
ring becomes a CAP ``<polygon>`` ("lat,lon" pairs separated by spaces, first == last).

* **Holes.** CAP polygons have no holes, so holes are dropped: a polygon stands for the
  area inside its outer ring. For the tiers made by ``alerting`` (``be_aware`` = MMI 3-4,
  an annulus around the ``take_action`` area) the ``be_aware`` polygon then covers the
  ``take_action`` area too, i.e. it is the area of MMI 3 *or more*; inside it the more
  severe ``take_action`` info applies as well. Dropping a hole only ever warns more
  people, never fewer. Outlines that then lie inside another outline are dropped.
* **Size.** A CAP message should stay small (cell broadcast and many gateways cap the
  size; the target here is ``max_bytes`` = 8000 bytes for an M7.4, whose ``be_aware``
  area is ~20,000 cells at resolution 6). The exact outline of such an area has over a
  thousand vertices (the staircase of hexagon edges, ~18 bytes each: ~29 kB for a round
  M7.4 area), so outlines are simplified only as far as needed to fit. The allowed
  outline error grows in steps (a quarter of the H3 edge length, x1.5 per step; the
  smallest step that fits is found by bisection); at each step the smaller document of
  (a) Douglas-Peucker at the alert's resolution with that tolerance and (b) the cells
  replaced by their parents at a coarser resolution (which merges small separate pieces
  of a speckled map) plus Douglas-Peucker with the rest of the error budget is kept.
  Douglas-Peucker keeps the outline within its tolerance of the exact one (both ways);
  coarser cells only enlarge the area, by about one edge length of that resolution. The
  ``areaDesc`` says how far the outline may be from the cells ("outline within ~N km").
  A simplified ring that would cross itself is simplified less. A round M7.4 area
  (20,000 + 2,000 cells) fits in ~5.7 kB with outlines within ~5 km (its exact outlines
  would take ~29 kB); hexagonal ``grid_disk`` areas of the same size in ~3.8 kB.
  Should even the coarsest outlines not fit, the smallest document is returned.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from xml.etree import ElementTree as ET

import h3
import numpy as np

from ..records import Alert, AlertTier

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
DEFAULT_SENDER = "yujing@localhost"
MAX_BYTES = 8000
#: the all-clear area's outline may be this many cell edges off when the budget is short
#: (~15 km at resolution 6); if it does not fit even so, it is left out
CLEAR_MAX_ERROR_EDGES = 4.0
#: ... and to make room for it the warning areas' outlines may grow coarser up to this many
#: cell edges (~5.5 km at resolution 6: an M7.4's warning areas alone need about that)
WARN_ERROR_EDGES_WITH_CLEAR = 1.5
_KM_PER_DEG = 6371.0088 * math.pi / 180.0
_FORBIDDEN = re.compile(r"[\s,<&]+")
_MSG_TYPES = {"alert": "Alert", "update": "Update", "cancel": "Cancel"}
_STATUSES = ("Actual", "Exercise", "System", "Test", "Draft")

_TIER_TEXT = {
    "take_action": (
        "take action",
        "Shelter",
        "Drop, cover and hold on. Strong shaking is expected within seconds.",
    ),
    "be_aware": (
        "be aware",
        "Monitor",
        "Light to moderate shaking is expected. Be aware; protect yourself if it shakes strongly.",
    ),
}


# ------------------------------------------------------------------------------ public


def cap_identifier(alert: Alert) -> str:
    """The CAP ``identifier`` of an alert message: ``<alert_id>.v<version>``."""
    return f"{_cap_token(alert.alert_id)}.v{alert.version}"


def cap_filename(alert: Alert) -> str:
    """A file name for the message: the identifier made safe for file systems + ``.cap.xml``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", cap_identifier(alert)) + ".cap.xml"


def cap_time(t_s: float, utc_offset_min: int = 0) -> str:
    """UNIX seconds as a CAP dateTime: ``YYYY-MM-DDThh:mm:ss+hh:mm`` (UTC as ``-00:00``)."""
    tz = timezone(timedelta(minutes=utc_offset_min))
    d = datetime.fromtimestamp(math.floor(t_s), tz)
    if utc_offset_min == 0:
        off = "-00:00"
    else:
        sign = "+" if utc_offset_min > 0 else "-"
        off = f"{sign}{abs(utc_offset_min) // 60:02d}:{abs(utc_offset_min) % 60:02d}"
    return d.strftime("%Y-%m-%dT%H:%M:%S") + off


def alert_to_cap(
    alert: Alert,
    *,
    sender: str = DEFAULT_SENDER,
    previous: Sequence[Alert] = (),
    status: str = "Actual",
    sender_name: str = "yujing earthquake early warning",
    language: str = "en-US",
    certainty: str | None = None,
    expires_after_s: float | None = 900.0,
    utc_offset_min: int = 0,
    web: str | None = None,
    max_bytes: int | None = MAX_BYTES,
) -> bytes:
    """The alert message as a CAP 1.2 XML document (UTF-8 bytes). See the module docstring.

    ``previous``: the earlier messages of this alert (same ``alert_id``, lower version),
    required for an update or a cancel, which must reference them. ``status``: ``Actual``,
    or ``Exercise`` / ``Test`` (``System``, ``Draft``) for drills. ``certainty`` overrides
    the Likely/Observed choice. ``utc_offset_min``: time zone of the ``sent``/``onset``/
    ``expires`` times (0: UTC). ``max_bytes``: size budget met by simplifying the area
    outlines (None: exact outlines, whatever the size); if even the coarsest outlines do
    not fit, the smallest document found is returned (check its length if that matters).
    """
    if _FORBIDDEN.search(sender) or not sender:
        raise ValueError(f"CAP sender must be non-empty without spaces, commas, '<' or '&': {sender!r}")
    if status not in _STATUSES:
        raise ValueError(f"CAP status must be one of {_STATUSES}: {status!r}")
    if alert.msg_type not in _MSG_TYPES:
        raise ValueError(f"unknown msg_type {alert.msg_type!r}")
    prev = sorted(previous, key=lambda a: a.version)
    for p in prev:
        if p.alert_id != alert.alert_id or p.version >= alert.version:
            raise ValueError(
                f"previous message {p.alert_id} v{p.version} is not an earlier message of {alert.alert_id} v{alert.version}"
            )
    if alert.msg_type != "alert" and not prev:
        raise ValueError(f"a CAP {_MSG_TYPES[alert.msg_type]} must reference the earlier message(s): pass previous=")
    references = " ".join(f"{sender},{cap_identifier(p)},{cap_time(p.issued_at_s, utc_offset_min)}" for p in prev)

    def build(polygons: dict[int, tuple[list[str], float]]) -> bytes:
        return _document(
            alert,
            sender=sender,
            references=references,
            status=status,
            sender_name=sender_name,
            language=language,
            certainty=certainty,
            expires_after_s=expires_after_s,
            utc_offset_min=utc_offset_min,
            web=web,
            polygons=polygons,
        )

    tiers = _ordered_tiers(alert)
    pieces = _cleared_pieces(alert, prev) if alert.msg_type == "update" else []
    if alert.msg_type == "cancel" or not (tiers or pieces):
        return build({})
    res0 = alert.h3_resolution
    areas = [(tuple(t.cells),) for t in tiers] + ([tuple(pieces)] if pieces else [])
    warn, clear = list(range(len(tiers))), len(tiers)
    outlines: dict[tuple[int, int], list[list[tuple[float, float]]]] = {}
    texts: dict[tuple[int, int], list[str]] = {}

    def rings(i: int, res: int, tol_km: float) -> list[str]:
        if (i, res) not in outlines:
            outlines[i, res] = [ring for part in areas[i] for ring in _outer_rings(part, res0, res)]
        return _rings_to_cap(outlines[i, res], res, tol_km)

    def at_level(i: int, k: int) -> tuple[list[str], float]:
        # the shortest outline of area i within levels[k] km of its cells: Douglas-Peucker
        # at the alert's resolution, or at a coarser one (which merges small separate
        # pieces) with the rest of the error budget as tolerance
        if k < 0:
            return rings(i, res0, 0.0), 0.0
        if (i, k) not in texts:
            err = levels[k]
            cands = [rings(i, res0, err)]
            for r in range(res0 - 1, -1, -1):
                edge = h3.average_hexagon_edge_length(r, unit="km")
                if edge >= err:
                    break
                cands.append(rings(i, r, err - edge))
            texts[i, k] = min(cands, key=lambda c: sum(map(len, c)))
        return texts[i, k], levels[k]

    def doc(k: int, j: int | None) -> bytes:
        polys = {i: at_level(i, k) for i in warn}
        if j is not None and pieces:
            polys[clear] = at_level(clear, j)
        return build(polys)

    def smallest(lo: int, hi: int, fits) -> int | None:
        # the size falls (nearly) monotonically with the error allowed: bisect for the
        # smallest level in (lo, hi] that fits
        if not fits(hi):
            return None
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid
        return hi

    levels = _error_levels(res0)
    exact = doc(-1, -1)
    if max_bytes is None or len(exact) <= max_bytes:
        return exact
    # the warning areas come first: as exact as the budget allows without the all-clear
    # area. That area is added (its outline within a few cell edges) if it fits beside
    # them while their outlines stay within ~1.5 cell edges (or their best, if coarser);
    # else it is left out
    n = len(levels)
    k0 = smallest(-2, n - 1, lambda k: len(doc(k, None)) <= max_bytes)
    if k0 is None:
        return doc(n - 1, None)
    if pieces:
        edge = h3.average_hexagon_edge_length(res0, unit="km")
        j_max = max((j for j in range(n) if levels[j] <= CLEAR_MAX_ERROR_EDGES * edge), default=-1)
        k_max = max([k0] + [k for k in range(n) if levels[k] <= WARN_ERROR_EDGES_WITH_CLEAR * edge])
        k = smallest(k0 - 1, k_max, lambda k: len(doc(k, j_max)) <= max_bytes)
        if k is not None:
            return doc(k, smallest(-2, j_max, lambda j: len(doc(k, j)) <= max_bytes))
    return doc(k0, None)


def cells_to_cap_polygons(
    cells: Sequence[str],
    resolution: int,
    *,
    outline_resolution: int | None = None,
    tolerance_km: float = 0.0,
) -> list[str]:
    """CAP ``<polygon>`` strings for an area given as (compact) H3 cells.

    The cells are expanded to ``resolution``; with ``outline_resolution`` < ``resolution``
    they are replaced by their parents at that resolution (the area can only grow). Each
    outer ring of the merged outline, holes dropped and rings inside other rings left out,
    is simplified by Douglas-Peucker with ``tolerance_km`` (0: exact) and written as
    ``"lat,lon lat,lon ..."`` with the first point repeated at the end.
    """
    res = resolution if outline_resolution is None else outline_resolution
    return _rings_to_cap(_outer_rings(tuple(cells), resolution, res), res, tolerance_km)


def _rings_to_cap(rings: list[list[tuple[float, float]]], res: int, tolerance_km: float) -> list[str]:
    decimals = 4 if res <= 10 else 6
    out = []
    for ring in rings:
        lat = np.array([p[0] for p in ring])
        lon = np.array([p[1] for p in ring])
        idx = _simplify_closed(lat, lon, tolerance_km)
        pts = []
        for i in idx:
            p = f"{lat[i]:.{decimals}f},{_wrap_lon(lon[i]):.{decimals}f}"
            if not pts or pts[-1] != p:
                pts.append(p)
        if len(pts) > 1 and pts[-1] == pts[0]:
            pts.pop()
        if len(set(pts)) < 3:
            continue
        pts.append(pts[0])
        out.append(" ".join(pts))
    return out


def parse_cap_polygon(text: str) -> list[tuple[float, float]]:
    """A CAP polygon string back to ``[(lat, lon), ...]`` (closing point included)."""
    return [(float(a), float(b)) for a, b in (p.split(",") for p in text.split())]


# ------------------------------------------------------------------------------ document


def _cap_token(s: str) -> str:
    return _FORBIDDEN.sub("_", s) or "_"


def _ordered_tiers(alert: Alert) -> list[AlertTier]:
    return sorted((t for t in alert.tiers if t.cells), key=lambda t: -t.min_mmi)


def _cells_of(alert: Alert) -> set[str]:
    out: set[str] = set()
    for t in alert.tiers:
        out |= _cells_at(tuple(t.cells), alert.h3_resolution, alert.h3_resolution)
    return out


#: sector counts tried when cutting the all-clear area into pieces without holes
_SECTORS = (4, 8, 16, 32)


def _cleared_pieces(alert: Alert, previous: Sequence[Alert]) -> list[tuple[str, ...]]:
    """The cells an earlier message of the alert warned and this one does not, cut into
    pieces whose outlines have no holes (CAP polygons have none, and an all-clear outline
    must not cover an area that is still warned). The cleared area is usually a ring
    around the one still warned: it is cut into sectors around the epicentre, 4, 8, 16 or
    32 of them until no piece encloses a hole; a piece that still does is left out (the
    Update itself still clears it: CAP's Update supersedes the earlier messages)."""
    if not previous or alert.h3_resolution is None:
        return []
    before: set[str] = set()
    for p in previous:
        if p.h3_resolution == alert.h3_resolution:
            before |= _cells_of(p)
    cleared = sorted(before - _cells_of(alert))
    if not cleared:
        return []
    ll = np.array([h3.cell_to_latlng(c) for c in cleared])
    dlon = np.radians((ll[:, 1] - alert.longitude + 180.0) % 360.0 - 180.0)
    bearing = np.arctan2(dlon * math.cos(math.radians(alert.latitude)), np.radians(ll[:, 0] - alert.latitude))
    frac = (bearing + math.pi) / (2.0 * math.pi)
    cells = np.array(cleared, dtype=object)
    for n in _SECTORS:
        sector = np.minimum((frac * n).astype(int), n - 1)
        pieces, holed = [], False
        for k in range(n):
            part = tuple(cells[sector == k].tolist())
            if not part:
                continue
            shape = h3.cells_to_h3shape(list(part))
            polys = [shape] if isinstance(shape, h3.LatLngPoly) else list(shape)
            if any(p.holes for p in polys):
                holed = True
                if n != _SECTORS[-1]:
                    break
                continue
            pieces.append(part)
        if not holed or n == _SECTORS[-1]:
            return pieces
    return []


def _severity(tier: AlertTier) -> str:
    if tier.min_mmi >= 8.0:
        return "Extreme"
    if tier.name == "take_action" or tier.min_mmi >= 5.0:
        return "Severe"
    return "Moderate"


def _fmt(x: float, nd: int) -> str:
    s = f"{x:.{nd}f}"
    return "0" if float(s) == 0 else s


def _km_up(km: float) -> str:
    """A distance rounded up: one decimal below 10 km, whole km above."""
    return f"{math.ceil(km * 10.0) / 10.0:.1f}" if km < 10.0 else str(math.ceil(km))


def _iso_ms(t_s: float) -> str:
    d = datetime.fromtimestamp(round(t_s, 3), timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}-00:00"


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    e = ET.SubElement(parent, tag)
    if text is not None:
        e.text = text
    return e


def _param(info: ET.Element, name: str, value: str) -> None:
    p = _sub(info, "parameter")
    _sub(p, "valueName", name)
    _sub(p, "value", value)


def _event_text(alert: Alert) -> str:
    lat = f"{abs(alert.latitude):.2f}{'N' if alert.latitude >= 0 else 'S'}"
    lon = f"{abs(alert.longitude):.2f}{'E' if alert.longitude >= 0 else 'W'}"
    t = datetime.fromtimestamp(math.floor(alert.origin_time_s), timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return (
        f"Earthquake of magnitude {alert.magnitude:.1f} +/- {alert.magnitude_sigma:.1f} at {lat} {lon}, "
        f"depth {alert.depth_km:.0f} km, origin time {t}."
    )


def _document(
    alert: Alert,
    *,
    sender: str,
    references: str,
    status: str,
    sender_name: str,
    language: str,
    certainty: str | None,
    expires_after_s: float | None,
    utc_offset_min: int,
    web: str | None,
    polygons: dict[int, tuple[list[str], float]],
) -> bytes:
    root = ET.Element("alert", {"xmlns": CAP_NS})
    _sub(root, "identifier", cap_identifier(alert))
    _sub(root, "sender", sender)
    _sub(root, "sent", cap_time(alert.issued_at_s, utc_offset_min))
    _sub(root, "status", status)
    _sub(root, "msgType", _MSG_TYPES[alert.msg_type])
    _sub(root, "scope", "Public")
    n_tiers = len(_ordered_tiers(alert))
    cleared = n_tiers in polygons
    if alert.msg_type == "cancel":
        _sub(root, "note", "Cancelled: the earthquake was not confirmed.")
    elif cleared:
        _sub(root, "note", "Warning areas reduced: the magnitude estimate fell or the epicentre moved. This update "
             "supersedes the earlier messages; areas they warned that it does not are all clear.")
    if references:
        _sub(root, "references", references)
    _sub(root, "incidents", _cap_token(alert.event_id))

    cert = certainty or ("Likely" if alert.version <= 1 and alert.msg_type == "alert" else "Observed")
    event_text = _event_text(alert)
    mag = f"M{alert.magnitude:.1f}"

    def common(info: ET.Element) -> None:
        _param(info, "eventId", alert.event_id)
        _param(info, "eventVersion", str(alert.event_version))
        _param(info, "magnitude", f"{alert.magnitude:.2f}")
        _param(info, "magnitudeSigma", f"{alert.magnitude_sigma:.2f}")
        _param(info, "originTime", _iso_ms(alert.origin_time_s))
        _param(info, "latitude", _fmt(alert.latitude, 4))
        _param(info, "longitude", _fmt(alert.longitude, 4))
        _param(info, "depthKm", _fmt(alert.depth_km, 1))

    def head(info: ET.Element, response: str, urgency: str, severity: str, cert_: str) -> None:
        _sub(info, "language", language)
        _sub(info, "category", "Geo")
        _sub(info, "event", "Earthquake")
        _sub(info, "responseType", response)
        _sub(info, "urgency", urgency)
        _sub(info, "severity", severity)
        _sub(info, "certainty", cert_)

    if alert.msg_type == "cancel":
        info = _sub(root, "info")
        head(info, "AllClear", "Past", "Minor", "Unlikely")
        _sub(info, "senderName", sender_name)
        _sub(info, "headline", f"Earthquake alert cancelled ({mag} not confirmed)")
        _sub(info, "description", f"Cancelled: {event_text} The event was not confirmed.")
        _sub(info, "instruction", "No action needed.")
        if web:
            _sub(info, "web", web)
        common(info)
    else:

        def texts(info: ET.Element, headline: str, description: str, instruction: str) -> None:
            if expires_after_s is not None:
                _sub(info, "expires", cap_time(alert.issued_at_s + expires_after_s, utc_offset_min))
            _sub(info, "senderName", sender_name)
            _sub(info, "headline", headline)
            _sub(info, "description", description)
            _sub(info, "instruction", instruction)
            if web:
                _sub(info, "web", web)

        def area(info: ET.Element, i: int, desc: str) -> None:
            rings, err_km = polygons.get(i, ([], 0.0))
            a = _sub(info, "area")
            _sub(a, "areaDesc", desc + (f"; outline within ~{_km_up(err_km)} km" if err_km > 0 else ""))
            for r in rings:
                _sub(a, "polygon", r)

        for i, tier in enumerate(_ordered_tiers(alert)):
            label, response, instruction = _TIER_TEXT.get(
                tier.name, (tier.name.replace("_", " "), "Monitor", "Be aware of shaking.")
            )
            info = _sub(root, "info")
            head(info, response, "Immediate", _severity(tier), cert)
            _sub(info, "onset", cap_time(alert.origin_time_s, utc_offset_min))
            texts(info, f"Earthquake {mag}: {label}",
                  f"{event_text} Forecast shaking of intensity MMI {tier.min_mmi:g} or more in this area.", instruction)
            common(info)
            _param(info, "tier", tier.name)
            _param(info, "mmiThreshold", f"{tier.min_mmi:g}")
            area(info, i, f"Forecast intensity MMI {tier.min_mmi:g} or more")
        if cleared:
            info = _sub(root, "info")
            head(info, "AllClear", "Past", "Minor", "Unlikely")
            texts(info, f"Earthquake {mag}: all clear here",
                  f"{event_text} The shaking an earlier message warned of is no longer expected here.",
                  "No action needed. The earlier warning for this area is withdrawn.")
            _param(info, "eventId", alert.event_id)  # the event's figures are in the infos above
            _param(info, "tier", "all_clear")
            area(info, n_tiers, "No longer warned (an earlier message of this alert warned it)")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


# ------------------------------------------------------------------------------ geometry


def _error_levels(res: int) -> list[float]:
    """Allowed outline errors (km) to try: a quarter of the H3 edge length, x1.5 per step."""
    e = h3.average_hexagon_edge_length(res, unit="km") / 4.0
    out = []
    while e < 5000.0:
        out.append(e)
        e *= 1.5
    return out


def _cells_at(cells: tuple[str, ...], res: int, out_res: int) -> set[str]:
    coarse = [c for c in cells if h3.get_resolution(c) <= out_res]
    fine = [c for c in cells if h3.get_resolution(c) > out_res]
    # cells finer than the alert's resolution (not expected) are taken to their parent there
    out = set(h3.uncompact_cells(coarse, out_res)) if coarse else set()
    out.update(h3.cell_to_parent(c, out_res) for c in fine)
    return out


def _outer_rings(cells: tuple[str, ...], res: int, out_res: int) -> list[list[tuple[float, float]]]:
    cs = _cells_at(cells, res, out_res)
    if not cs:
        return []
    shape = h3.cells_to_h3shape(list(cs))
    polys = [shape] if isinstance(shape, h3.LatLngPoly) else list(shape)
    # holes are dropped (CAP has none); a ring that sat in a hole now lies inside the
    # outline around that hole and says nothing more: leave it out. Rings of an H3 outline
    # never cross, so one vertex decides.
    holes = [list(h) for p in polys for h in p.holes]
    if not holes:
        return [list(p.outer) for p in polys]
    lon0 = np.array([h[0][1] for h in holes])
    box = np.array(
        [
            (min(la for la, _ in h), max(la for la, _ in h),
             min(_dlon(lo, h[0][1]) for _, lo in h), max(_dlon(lo, h[0][1]) for _, lo in h))
            for h in holes
        ]
    )
    kept = []
    for p in polys:
        lat, lon = p.outer[0]
        d = (lon - lon0 + 180.0) % 360.0 - 180.0
        near = np.flatnonzero((box[:, 0] <= lat) & (lat <= box[:, 1]) & (box[:, 2] <= d) & (d <= box[:, 3]))
        if not any(_inside(p.outer[0], holes[j]) for j in near):
            kept.append(list(p.outer))
    return kept


def _dlon(lon: float, lon0: float) -> float:
    return (lon - lon0 + 180.0) % 360.0 - 180.0


def _inside(pt: tuple[float, float], ring: list[tuple[float, float]]) -> bool:
    lat0, lon0 = pt
    a = np.asarray(ring)
    y = a[:, 0]
    x = (a[:, 1] - lon0 + 180.0) % 360.0 - 180.0
    y2, x2 = np.roll(y, -1), np.roll(x, -1)
    crosses = (y > lat0) != (y2 > lat0)
    with np.errstate(divide="ignore", invalid="ignore"):
        xi = x + (lat0 - y) * (x2 - x) / (y2 - y)
    return bool(np.count_nonzero(crosses & (xi > 0.0)) % 2)


def _wrap_lon(lon: float) -> float:
    return (lon + 180.0) % 360.0 - 180.0 if not -180.0 <= lon <= 180.0 else lon


def _local_xy(lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat0 = float(np.mean(lat))
    dlon = (lon - lon[0] + 180.0) % 360.0 - 180.0
    return dlon * _KM_PER_DEG * math.cos(math.radians(lat0)), (lat - lat0) * _KM_PER_DEG


def _seg_dist(x, y, ax, ay, bx, by):
    dx, dy = bx - ax, by - ay
    ll = dx * dx + dy * dy
    if ll == 0.0:
        return np.hypot(x - ax, y - ay)
    t = np.clip(((x - ax) * dx + (y - ay) * dy) / ll, 0.0, 1.0)
    return np.hypot(x - (ax + t * dx), y - (ay + t * dy))


def _dp(x: np.ndarray, y: np.ndarray, i0: int, i1: int, tol: float, keep: set[int]) -> None:
    stack = [(i0, i1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        d = _seg_dist(x[a + 1 : b], y[a + 1 : b], x[a], y[a], x[b], y[b])
        j = int(np.argmax(d))
        if d[j] > tol:
            m = a + 1 + j
            keep.add(m)
            stack.append((a, m))
            stack.append((m, b))


def _simplify_closed(lat: np.ndarray, lon: np.ndarray, tol_km: float) -> list[int]:
    """Indices of the ring's vertices kept by Douglas-Peucker (>= 3, ring stays simple)."""
    n = len(lat)
    if tol_km <= 0.0 or n <= 4:
        return list(range(n))
    x, y = _local_xy(lat, lon)
    xc, yc = np.append(x, x[0]), np.append(y, y[0])
    far = int(np.argmax(np.hypot(x - x[0], y - y[0])))
    t = tol_km
    while t > 1e-3:
        keep = {0, far, n}
        _dp(xc, yc, 0, far, t, keep)
        _dp(xc, yc, far, n, t, keep)
        keep.discard(n)
        if len(keep) < 3:
            others = [i for i in range(n) if i not in keep]
            d = _seg_dist(x[others], y[others], x[0], y[0], x[far], y[far])
            keep.add(others[int(np.argmax(d))])
        idx = sorted(keep)
        if _is_simple(x[idx], y[idx]):
            return idx
        t /= 2.0
    return list(range(n))


def _is_simple(x: np.ndarray, y: np.ndarray) -> bool:
    """True when the closed ring through the points has no two properly crossing edges."""
    n = len(x)
    if n < 4:
        return True
    ax, ay = x, y
    bx, by = np.roll(x, -1), np.roll(y, -1)
    # edges i < j that share no vertex: j >= i + 2, and not (i = 0, j = n - 1)
    j = np.arange(n)
    for i0 in range(0, n - 2, 256):
        i = np.arange(i0, min(i0 + 256, n - 2))[:, None]
        pair = (j[None, :] >= i + 2) & ~((i == 0) & (j[None, :] == n - 1))
        d1 = _orient(ax[i], ay[i], bx[i], by[i], ax[None, :], ay[None, :])
        d2 = _orient(ax[i], ay[i], bx[i], by[i], bx[None, :], by[None, :])
        d3 = _orient(ax[None, :], ay[None, :], bx[None, :], by[None, :], ax[i], ay[i])
        d4 = _orient(ax[None, :], ay[None, :], bx[None, :], by[None, :], bx[i], by[i])
        if np.any(pair & (d1 * d2 < 0) & (d3 * d4 < 0)):
            return False
    return True


def _orient(ax, ay, bx, by, cx, cy):
    return (bx - ax) * (cy - ay) - (by - ay) * (cx - ax)
