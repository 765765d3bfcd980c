"""Events and intensity maps as GeoJSON (plain dicts, ready for ``json.dumps``).

``events_to_geojson(updates)`` is shaped like the USGS earthquake summary feed: a
FeatureCollection with ``metadata`` (generated, url, title, status, api, count), a ``bbox``
and one Feature per event (its final update), newest first. Properties as in the USGS feed
(``mag``, ``place``, ``time`` and ``updated`` in ms, ``type`` "earthquake", ``ids``,
``sources``, ``net``, ``code``, ``magType``, ``nst``, ``status``, ``title``, ...) -- fields
the engine does not know (felt reports, PAGER alert, ...) are ``null`` -- plus the
uncertainties under the names of the USGS CSV feed (``magError``, ``horizontalError`` in km)
and ``version``. ``status`` is ``automatic``, or ``deleted`` for a retracted event (as USGS
marks a deleted event). Geometry: Point ``[lon, lat, depth_km]``.

``mmi_to_geojson(cells, mmi, ...)`` is a forecast (or observed) intensity map like
ShakeMap's MMI polygons: one Polygon per H3 cell with ``mmi`` (rounded to 0.1) and its
``color`` on the USGS ShakeMap intensity scale (the continuous palette of ShakeMap's
``shakecpt.cpt``, linear between integer intensities), optionally ``pga_g`` and
``pgv_cm_s``. With ``bin_width`` the cells are merged per intensity band instead (one
MultiPolygon per band, like ShakeMap's contour polygons), which keeps a large map small.
Polygons crossing the antimeridian are not split (RFC 7946 asks for it; not needed for the
regions run so far).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import h3
import numpy as np

from ..records import SCHEMA_VERSION, EventUpdate
from .quakeml import group_updates

NETWORK = "yj"

#: USGS ShakeMap intensity palette (RGB at MMI 0..10; ShakeMap ``shakecpt.cpt``).
MMI_PALETTE = (
    (255, 255, 255),  # 0
    (255, 255, 255),  # I
    (191, 204, 255),  # II
    (160, 230, 255),  # III
    (128, 255, 255),  # IV
    (122, 255, 147),  # V
    (255, 255, 0),  # VI
    (255, 200, 0),  # VII
    (255, 145, 0),  # VIII
    (255, 0, 0),  # IX
    (200, 0, 0),  # X+
)


def mmi_color(mmi: float) -> str:
    """``#rrggbb`` of an intensity on the USGS ShakeMap scale (linear between integers)."""
    if not math.isfinite(mmi):
        return "#ffffff"
    m = min(max(float(mmi), 0.0), 10.0)
    i = min(int(m), 9)
    f = m - i
    a, b = MMI_PALETTE[i], MMI_PALETTE[i + 1]
    rgb = [math.floor(a[k] + f * (b[k] - a[k]) + 0.5) for k in range(3)]
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _ms(t_s: float) -> int:
    return int(round(t_s * 1000.0))


def _sig(mag: float) -> int:
    """USGS significance from magnitude alone: mag * 100 * mag / 6.5 (no felt/PAGER terms)."""
    return max(0, int(round(mag * 100.0 * mag / 6.5)))


def events_to_geojson(
    updates: Iterable[EventUpdate],
    *,
    generated_s: float | None = None,
    title: str = "yujing earthquakes",
    url: str | None = None,
) -> dict:
    """USGS-feed-like FeatureCollection of the events (final update of each event id).

    ``generated_s`` defaults to the newest ``issued_at_s`` among the updates (0 if none),
    so that the output depends on its input only.
    """
    groups = group_updates(updates)
    finals = sorted((g[-1] for g in groups.values()), key=lambda u: (-u.origin_time_s, u.event_id))
    if generated_s is None:
        generated_s = max((g[-1].issued_at_s for g in groups.values()), default=0.0)
    features = []
    for u in finals:
        eid = f"{NETWORK}{u.event_id}"
        title_ = f"M {u.magnitude:.1f}"
        mag_type = getattr(u, "magnitude_type", "") or "m"
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "mag": round(float(u.magnitude), 2),
                    "place": "",
                    "time": _ms(u.origin_time_s),
                    "updated": _ms(u.issued_at_s),
                    "tz": None,
                    "url": None,
                    "detail": None,
                    "felt": None,
                    "cdi": None,
                    "mmi": None,
                    "alert": None,
                    "status": "deleted" if u.retracted else "automatic",
                    "tsunami": 0,
                    "sig": _sig(u.magnitude),
                    "net": NETWORK,
                    "code": u.event_id,
                    "ids": f",{eid},",
                    "sources": f",{NETWORK},",
                    "types": ",origin,",
                    "nst": int(u.n_devices),
                    "dmin": None,
                    "rms": None,
                    "gap": None,
                    "magType": mag_type.lower(),
                    "type": "earthquake",
                    "title": title_,
                    "magError": round(float(u.magnitude_sigma), 3),
                    "horizontalError": round(float(u.horizontal_error_km), 3),
                    "version": int(u.version),
                },
                "geometry": {
                    "type": "Point",
                    "coordinates": [round(float(u.longitude), 5), round(float(u.latitude), 5), round(float(u.depth_km), 2)],
                },
                "id": eid,
            }
        )
    out: dict = {
        "type": "FeatureCollection",
        "metadata": {
            "generated": _ms(generated_s),
            "url": url,
            "title": title,
            "status": 200,
            "api": f"yujing-{SCHEMA_VERSION}",
            "count": len(features),
        },
        "features": features,
    }
    if features:
        c = np.array([f["geometry"]["coordinates"] for f in features], dtype=float)
        out["bbox"] = [float(c[:, 0].min()), float(c[:, 1].min()), float(c[:, 2].min()),
                       float(c[:, 0].max()), float(c[:, 1].max()), float(c[:, 2].max())]
    return out


def _ring(latlngs: Sequence[tuple[float, float]]) -> list[list[float]]:
    ring = [[round(lng, 6), round(lat, 6)] for lat, lng in latlngs]
    ring.append(ring[0])
    return ring


def mmi_to_geojson(
    cells: Sequence[str],
    mmi: Sequence[float],
    pga_g: Sequence[float] | None = None,
    pgv_cm_s: Sequence[float] | None = None,
    *,
    bin_width: float | None = None,
) -> dict:
    """An intensity map as a FeatureCollection of H3 cell polygons (see the module docstring).

    Per cell (``bin_width=None``): properties ``cell``, ``mmi`` (0.1), ``color``, and
    ``pga_g`` / ``pgv_cm_s`` when given. Per band (``bin_width``, e.g. 0.5 or 1): the cells
    with ``lo <= mmi < lo + bin_width`` merged into one MultiPolygon with ``mmi`` = ``lo``,
    ``mmi_max`` = ``lo + bin_width``, ``color`` of ``lo``, ``cells`` (count) and the band's
    largest ``pga_g`` / ``pgv_cm_s`` as ``pga_g_max`` / ``pgv_cm_s_max``; cells without a
    finite MMI are left out of the bands.
    """
    cells = list(cells)
    m = np.asarray(mmi, dtype=float)
    if len(m) != len(cells):
        raise ValueError("cells and mmi differ in length")
    pga = None if pga_g is None else np.asarray(pga_g, dtype=float)
    pgv = None if pgv_cm_s is None else np.asarray(pgv_cm_s, dtype=float)
    for name, arr in (("pga_g", pga), ("pgv_cm_s", pgv)):
        if arr is not None and len(arr) != len(cells):
            raise ValueError(f"cells and {name} differ in length")
    features = []
    if bin_width is None:
        for i, c in enumerate(cells):
            props: dict = {"cell": c, "mmi": round(float(m[i]), 1), "color": mmi_color(round(float(m[i]), 1))}
            if pga is not None:
                props["pga_g"] = round(float(pga[i]), 5)
            if pgv is not None:
                props["pgv_cm_s"] = round(float(pgv[i]), 3)
            features.append(
                {
                    "type": "Feature",
                    "properties": props,
                    "geometry": {"type": "Polygon", "coordinates": [_ring(h3.cell_to_boundary(c))]},
                }
            )
    else:
        if bin_width <= 0:
            raise ValueError("bin_width must be positive")
        finite = np.isfinite(m)
        band = np.full(len(m), np.iinfo(np.int64).min, dtype=np.int64)
        band[finite] = np.floor(m[finite] / bin_width + 1e-9).astype(np.int64)
        for b in sorted(set(band[finite].tolist())):
            sel = np.flatnonzero(band == b)
            lo = b * bin_width
            shape = h3.cells_to_h3shape([cells[i] for i in sel])
            polys = [shape] if isinstance(shape, h3.LatLngPoly) else list(shape)
            coords = [[_ring(p.outer)] + [_ring(h) for h in p.holes] for p in polys]
            props = {
                "mmi": round(lo, 1),
                "mmi_max": round(lo + bin_width, 1),
                "color": mmi_color(lo),
                "cells": int(len(sel)),
            }
            if pga is not None:
                props["pga_g_max"] = round(float(pga[sel].max()), 5)
            if pgv is not None:
                props["pgv_cm_s_max"] = round(float(pgv[sel].max()), 3)
            features.append({"type": "Feature", "properties": props, "geometry": {"type": "MultiPolygon", "coordinates": coords}})
    return {
        "type": "FeatureCollection",
        "metadata": {"title": "yujing intensity (MMI)", "count": len(features), "api": f"yujing-{SCHEMA_VERSION}"},
        "features": features,
    }
