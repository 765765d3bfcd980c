"""A self-contained HTML report of one run: works offline (inline SVG, no CDN, no tiles).

Shows the map of alerted cells by tier with cities, the true and estimated epicentres and
the triggering devices; a record section (trigger onset against distance, with the iasp91
P and S curves); the magnitude against time; and a table of warning times per city.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import h3
import numpy as np

from .records import Alert, EventUpdate
from .traveltime import default_table

TIER_COLOURS = {"be_aware": "#f2c94c", "take_action": "#eb5757"}


@dataclass
class CityWarning:
    name: str
    latitude: float
    longitude: float
    distance_km: float
    tier: str
    mmi: float
    warning_s: float  # S arrival minus first alert covering the city (negative: late)


@dataclass
class ReportData:
    title: str
    true_latitude: float
    true_longitude: float
    true_depth_km: float
    true_magnitude: float
    origin_time_s: float
    updates: list[EventUpdate]
    alerts: list[Alert]
    trigger_lat: np.ndarray  # coarse cells of the phones that sent a trigger (update 0)
    trigger_lon: np.ndarray
    trigger_onset_s: np.ndarray
    trigger_arrival_s: np.ndarray
    cities: list[CityWarning] = field(default_factory=list)
    summary: dict = field(default_factory=dict)


def _bbox(lat, lon, pad=0.3):
    return float(np.min(lat)) - pad, float(np.max(lat)) + pad, float(np.min(lon)) - pad, float(np.max(lon)) + pad


#: most hexagons drawn on the map: an M8 alert covers ~100,000 cells at resolution 6
MAX_MAP_CELLS = 4000


def _map_cells(alert: Alert) -> list[tuple[str, str]]:
    """(tier, cell) to draw: the alert's cells, coarsened until there are at most
    MAX_MAP_CELLS (a coarse cell takes the highest tier of the cells inside it), so the
    report stays a few hundred kB."""
    tier_of: dict[str, int] = {}
    names = [t.name for t in alert.tiers]
    for i, tier in enumerate(alert.tiers):
        for c in h3.uncompact_cells(list(tier.cells), alert.h3_resolution):
            tier_of[c] = max(tier_of.get(c, -1), i)
    res = alert.h3_resolution
    while len(tier_of) > MAX_MAP_CELLS and res > 0:
        res -= 1
        coarse: dict[str, int] = {}
        for c, i in tier_of.items():
            p = h3.cell_to_parent(c, res)
            coarse[p] = max(coarse.get(p, -1), i)
        tier_of = coarse
    return [(names[i], c) for c, i in tier_of.items()]


def _map_svg(d: ReportData, width=760, height=560) -> str:
    final_alert = d.alerts[-1] if d.alerts else None
    polys = []
    lats, lons = [d.true_latitude], [d.true_longitude]
    if final_alert is not None and final_alert.msg_type != "cancel":
        for name, c in _map_cells(final_alert):
            b = h3.cell_to_boundary(c)
            polys.append((name, b))
            lats.append(b[0][0])
            lons.append(b[0][1])
    for c in d.cities:
        lats.append(c.latitude)
        lons.append(c.longitude)
    # the triggering phones within 300 km frame the map too (far false triggers do not)
    if len(d.trigger_lat):
        from .geo import distance_km

        near = distance_km(d.true_latitude, d.true_longitude, d.trigger_lat, d.trigger_lon) <= 300.0
        lats.extend(d.trigger_lat[near].tolist())
        lons.extend(d.trigger_lon[near].tolist())
    la0, la1, lo0, lo1 = _bbox(np.array(lats), np.array(lons))
    kx = math.cos(math.radians(0.5 * (la0 + la1)))
    sx = width / ((lo1 - lo0) * kx)
    sy = height / (la1 - la0)
    s = min(sx, sy)

    def xy(lat, lon):
        return (lon - lo0) * kx * s, (la1 - lat) * s

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="map">',
           f'<rect width="{width}" height="{height}" fill="#eef3f7"/>']
    for name, b in polys:
        pts = " ".join("%.1f,%.1f" % xy(la, lo) for la, lo in b)
        out.append(f'<polygon points="{pts}" fill="{TIER_COLOURS.get(name, "#ccc")}" fill-opacity="0.55" stroke="none"/>')
    for la, lo in zip(d.trigger_lat[:5000], d.trigger_lon[:5000]):
        x, y = xy(la, lo)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="1.6" fill="#2f80ed" fill-opacity="0.6"/>')
    for c in d.cities:
        x, y = xy(c.latitude, c.longitude)
        out.append(f'<rect x="{x - 3:.1f}" y="{y - 3:.1f}" width="6" height="6" fill="#333"/>')
        out.append(f'<text x="{x + 6:.1f}" y="{y + 4:.1f}" font-size="12">{html.escape(c.name)}</text>')
    x, y = xy(d.true_latitude, d.true_longitude)
    out.append(f'<path d="M{x - 8:.1f},{y:.1f} L{x + 8:.1f},{y:.1f} M{x:.1f},{y - 8:.1f} L{x:.1f},{y + 8:.1f}" stroke="#000" stroke-width="3"/>')
    if d.updates:
        u = d.updates[-1]
        x, y = xy(u.latitude, u.longitude)
        out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="7" fill="none" stroke="#9b51e0" stroke-width="3"/>')
    out.append('</svg>')
    return "\n".join(out)


def _plot_svg(xs, ys, width=760, height=300, xlabel="", ylabel="", lines=(), points_colour="#2f80ed", step=False) -> str:
    xs = np.asarray(xs, dtype=float)
    ys = np.asarray(ys, dtype=float)
    allx = np.concatenate([xs] + [np.asarray(lx) for lx, _, _ in lines]) if len(xs) or lines else np.array([0, 1])
    ally = np.concatenate([ys] + [np.asarray(ly) for _, ly, _ in lines]) if len(ys) or lines else np.array([0, 1])
    x0, x1 = float(np.nanmin(allx)), float(np.nanmax(allx))
    y0, y1 = float(np.nanmin(ally)), float(np.nanmax(ally))
    if x1 <= x0:
        x1 = x0 + 1
    if y1 <= y0:
        y1 = y0 + 1
    m = 45

    def px(x):
        return m + (x - x0) / (x1 - x0) * (width - 2 * m)

    def py(y):
        return height - m + -(y - y0) / (y1 - y0) * (height - 2 * m)

    out = [f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" class="plot">',
           f'<rect width="{width}" height="{height}" fill="#fff" stroke="#ccc"/>']
    for k in range(6):
        xv = x0 + k * (x1 - x0) / 5
        yv = y0 + k * (y1 - y0) / 5
        out.append(f'<text x="{px(xv):.0f}" y="{height - m + 16}" font-size="11" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{m - 6}" y="{py(yv) + 4:.0f}" font-size="11" text-anchor="end">{yv:.1f}</text>')
    out.append(f'<text x="{width / 2:.0f}" y="{height - 6}" font-size="12" text-anchor="middle">{html.escape(xlabel)}</text>')
    out.append(f'<text x="12" y="{height / 2:.0f}" font-size="12" transform="rotate(-90 12 {height / 2:.0f})" text-anchor="middle">{html.escape(ylabel)}</text>')
    for lx, ly, colour in lines:
        pts = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(lx, ly) if np.isfinite(a) and np.isfinite(b))
        out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
    if step and len(xs):
        pts = []
        for i in range(len(xs)):
            if i:
                pts.append(f"{px(xs[i]):.1f},{py(ys[i - 1]):.1f}")
            pts.append(f"{px(xs[i]):.1f},{py(ys[i]):.1f}")
        out.append(f'<polyline points="{" ".join(pts)}" fill="none" stroke="{points_colour}" stroke-width="2"/>')
    for a, b in list(zip(xs, ys))[:5000]:
        out.append(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2" fill="{points_colour}" fill-opacity="0.6"/>')
    out.append('</svg>')
    return "\n".join(out)


def _warning_text(w: float) -> str:
    if not math.isfinite(w):
        return "-"
    return f"late by {-w:.1f} s" if w < 0 else f"{w:.1f} s"


def render(d: ReportData) -> str:
    """The report as one HTML document."""
    from .geo import distance_km

    tab = default_table()
    dist = distance_km(d.true_latitude, d.true_longitude, d.trigger_lat, d.trigger_lon)
    onset = d.trigger_onset_s - d.origin_time_s
    rmax = float(max(np.max(dist) if len(dist) else 100.0, 50.0))
    r = np.linspace(0, rmax, 60)
    p_curve = tab.p_time_s(r, d.true_depth_km)
    s_curve = tab.s_time_s(r, d.true_depth_km)
    record = _plot_svg(dist, onset, xlabel="epicentral distance (km)", ylabel="trigger onset after origin (s)",
                       lines=[(r, p_curve, "#27ae60"), (r, s_curve, "#eb5757")])
    t = [u.issued_at_s - d.origin_time_s for u in d.updates]
    mags = [u.magnitude for u in d.updates]
    mag_plot = _plot_svg(t, mags, xlabel="seconds after origin", ylabel="magnitude",
                         lines=[([0, max(t + [1.0])], [d.true_magnitude, d.true_magnitude], "#333")],
                         points_colour="#9b51e0", step=True)
    rows = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{c.distance_km:.0f} km</td><td>{c.mmi:.1f}</td>"
        f"<td>{html.escape(c.tier or 'not alerted')}</td><td>{_warning_text(c.warning_s)}</td></tr>"
        for c in sorted(d.cities, key=lambda c: c.distance_km)
    )
    summ = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in d.summary.items())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(d.title)}</title>
<style>body{{font-family:system-ui,sans-serif;margin:24px;max-width:820px}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ddd;padding:4px 8px;text-align:left}} .legend span{{display:inline-block;width:14px;height:14px;margin:0 4px 0 12px;vertical-align:middle}}</style>
</head><body>
<h1>{html.escape(d.title)}</h1>
<table>{summ}</table>
<h2>Alerted areas</h2>
<p class="legend"><span style="background:{TIER_COLOURS['take_action']}"></span>take action (MMI 5+)
<span style="background:{TIER_COLOURS['be_aware']}"></span>be aware (MMI 3-4)
<span style="background:#2f80ed"></span>phones that triggered (coarse cells) &nbsp; + true epicentre &nbsp; <span style="border:3px solid #9b51e0;border-radius:50%;width:8px;height:8px"></span>estimated</p>
{_map_svg(d)}
<h2>Warning time by city</h2>
<table><tr><th>city</th><th>distance</th><th>forecast MMI</th><th>tier</th><th>warning before S</th></tr>{rows}</table>
<h2>Record section</h2>
<p>Trigger onsets of the phones against distance; green: iasp91 P, red: S.</p>
{record}
<h2>Magnitude over time</h2>
<p>Each update of the event (purple) against the true magnitude (black).</p>
{mag_plot}
</body></html>
"""
