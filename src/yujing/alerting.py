"""Alert policy: from event updates to tiered alerts per area, and the device-side view.

For each event update the forecast intensity (``shaking.forecast``: ground motion per H3
cell, Worden et al. 2012 MMI) decides which cells get which tier — ``be_aware`` where MMI is
3-4, ``take_action`` where it is 5 or more, the tiers of Android's earthquake alerts. The
policy (thresholds in ``AlertSettings``):

* (thresholds in :class:`~yujing.settings.AlertSettings`) no alert below ``min_magnitude`` (M4.5) or when no cell reaches a tier;
* the first alert for an event is ``msg_type="alert"``, version 1; an ``"update"`` follows
  when the magnitude has moved by ``update_magnitude_step`` (0.3) since the last message or
  the alerted area grows; a ``"cancel"`` when the event is retracted;
* one alert per event: ``alert_id`` is derived from the event id and never changes;
* areas only grow: a cell once told to take action is not told later that it is merely to
  be aware (the shaking may already be on its way; a downgrade mid-warning helps nobody).

``device_warning`` is what a device runs when an alert reaches it: from the event parameters
and its own position (which never leaves the device) it computes its own intensity, tier
and the seconds left until the S wave arrives.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
import h3
import numpy as np
from h3.api import numpy_int as h3n

from .records import Alert, AlertTier, EventUpdate
from .settings import AlertSettings
from .geo import distance_km
from .shaking import choose_model, forecast, forecast_site
from .traveltime import default_table

TIERS = ("be_aware", "take_action")


def _disk_cells(lat: float, lon: float, radius_km: float, res: int) -> np.ndarray:
    """All H3 cells at ``res`` within ~``radius_km`` of a point (a hexagonal disk), as
    64-bit integers (the integer API skips ~80k string conversions for an M7.4)."""
    edge = h3.average_hexagon_edge_length(res, unit="km")
    k = max(1, int(math.ceil(radius_km / (1.5 * edge))))
    return h3n.grid_disk(h3n.latlng_to_cell(lat, lon, res), k)


class CellCentres:
    """Cell centres (degrees) by 64-bit H3 index, computed once and looked up in bulk.

    H3 has no vectorised cell-to-point call: an M7.4's ~80,000 alert cells cost ~130 ms
    one at a time, most of the alert policy's time, on the path from the first trigger to
    the first alert. Kept as sorted arrays, a known disk costs one ``searchsorted``.
    :meth:`warm` fills the cache for an area ahead of time (the live service warms the
    regions its devices report from). Bounded: past ``max_cells`` it starts afresh.
    """

    def __init__(self, max_cells: int = 4_000_000):
        self.max_cells = max_cells
        self._state = (np.zeros(0, np.uint64), np.zeros(0), np.zeros(0))
        self._lock = threading.Lock()  # writers (warm-up threads, the alert path) merge in turn

    def __len__(self) -> int:
        return len(self._state[0])

    def get(self, cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cells = np.asarray(cells, dtype=np.uint64)
        keys, lat, lon = self._state  # one tuple: a reader never sees a half-made update
        if len(keys):
            idx = np.minimum(np.searchsorted(keys, cells), len(keys) - 1)
            hit = keys[idx] == cells
            if hit.all():
                return lat[idx], lon[idx]
        with self._lock:
            keys, lat, lon = self._state  # another writer may have merged meanwhile
            if len(keys) + len(cells) > self.max_cells:
                keys, lat, lon = np.zeros(0, np.uint64), np.zeros(0), np.zeros(0)  # start afresh
            if len(keys):
                idx = np.minimum(np.searchsorted(keys, cells), len(keys) - 1)
                missing = np.unique(cells[keys[idx] != cells])
            else:
                missing = np.unique(cells)
            mll = np.array([h3n.cell_to_latlng(c) for c in missing.tolist()]).reshape(-1, 2)
            keys = np.concatenate((keys, missing))
            order = np.argsort(keys, kind="stable")
            keys, lat, lon = keys[order], np.concatenate((lat, mll[:, 0]))[order], np.concatenate((lon, mll[:, 1]))[order]
            self._state = (keys, lat, lon)
        idx = np.searchsorted(keys, cells)
        return lat[idx], lon[idx]

    def warm(self, latitude: float, longitude: float, radius_km: float, res: int) -> int:
        """Compute the centres of the cells within ``radius_km`` of a point; returns how
        many the cache holds."""
        self.get(_disk_cells(latitude, longitude, radius_km, res))
        return len(self)


#: shared by every policy in the process (cell centres never change)
CENTRES = CellCentres()


def reach_km(magnitude: float) -> float:
    """Generous radius (km) beyond which no M can produce MMI 3: cells outside are not
    evaluated. MMI 3 reaches ~30 km at M4.5 and ~600 km at M8 for the models used here."""
    return float(np.clip(30.0 * 10.0 ** (0.45 * (magnitude - 4.5)), 30.0, 900.0))


def cell_centres(cells) -> tuple[np.ndarray, np.ndarray]:
    ll = np.array([h3.cell_to_latlng(c) for c in cells])
    if len(ll) == 0:
        return np.zeros(0), np.zeros(0)
    return ll[:, 0], ll[:, 1]


@dataclass
class _AlertState:
    alert_id: str
    version: int
    magnitude: float
    tier_of: dict[int, int] = field(default_factory=dict)  # cell (64-bit H3) -> tier index
    cancelled: bool = False
    first_alert_s: dict[int, float] = field(default_factory=dict)  # cell -> first time alerted


@dataclass(frozen=True)
class TierMap:
    """Forecast for one event update: the cells that reach a tier and their MMI.
    ``cells_int`` are 64-bit H3 indexes; ``cells`` the same as strings (made on demand)."""

    cells_int: np.ndarray
    mmi: np.ndarray
    tier: np.ndarray  # -1 none, 0 be_aware, 1 take_action

    @property
    def cells(self) -> np.ndarray:
        return np.array([h3.int_to_str(c) for c in self.cells_int.tolist()], dtype=object)


class AlertPolicy:
    """Turns event updates into alert messages. See the module docstring."""

    def __init__(self, settings: AlertSettings | None = None, model: str | None = None, vs30_grid=None):
        self.s = settings or AlertSettings()
        self.vs30_grid = vs30_grid  # a sitegrid.Vs30Grid, or None for uniform vs30_m_s
        if not 5 <= self.s.h3_resolution <= 7:
            raise ValueError(
                f"alert h3_resolution {self.s.h3_resolution} is outside 5-7: coarser cells alert "
                "whole regions, finer ones make messages too big"
            )
        self.model = model
        self._alerts: dict[str, _AlertState] = {}

    def warm(self, latitude: float, longitude: float, radius_km: float = 900.0) -> int:
        """Compute ahead the cell centres an alert near this point could need (up to
        ``radius_km``, the reach of an M8), so the first alert there does not pay for them."""
        return CENTRES.warm(latitude, longitude, radius_km, self.s.h3_resolution)

    def tier_map(self, u: EventUpdate) -> TierMap:
        model = self.model or choose_model(u.latitude, u.longitude, u.depth_km)
        cells = _disk_cells(u.latitude, u.longitude, reach_km(u.magnitude), self.s.h3_resolution)
        lat, lon = CENTRES.get(cells)
        vs30 = self.vs30_grid.vs30_at(lat, lon) if self.vs30_grid is not None else self.s.vs30_m_s
        sh = forecast(u.latitude, u.longitude, u.depth_km, u.magnitude, lat, lon, vs30=vs30, model=model)
        tier = np.full(len(cells), -1)
        tier[sh.mmi >= self.s.be_aware_mmi] = 0
        tier[sh.mmi >= self.s.take_action_mmi] = 1
        keep = tier >= 0
        return TierMap(cells_int=cells[keep], mmi=sh.mmi[keep], tier=tier[keep])

    def on_update(self, u: EventUpdate) -> list[Alert]:
        """The alert messages (zero or one) that this event update calls for."""
        st = self._alerts.get(u.event_id)
        if u.retracted:
            if st is None or st.cancelled:
                return []
            st.cancelled = True
            st.version += 1
            return [self._message(u, st, "cancel")]
        if st is not None and st.cancelled:
            return []
        if u.magnitude < self.s.min_magnitude and st is None:
            return []
        tm = self.tier_map(u)
        if st is None:
            if len(tm.cells_int) == 0:
                return []
            st = self._alerts[u.event_id] = _AlertState(alert_id=f"{u.event_id}-alert", version=0, magnitude=u.magnitude)
            grew = self._merge(st, tm, u.issued_at_s)
            st.version = 1
            st.magnitude = u.magnitude
            return [self._message(u, st, "alert")]
        grew = self._merge(st, tm, u.issued_at_s)
        if grew or abs(u.magnitude - st.magnitude) >= self.s.update_magnitude_step:
            st.version += 1
            st.magnitude = u.magnitude
            return [self._message(u, st, "update")]
        return []

    def _merge(self, st: _AlertState, tm: TierMap, now_s: float) -> bool:
        """Raise cells to their new tier (never lower); True when any cell rose."""
        grew = False
        for c, t in zip(tm.cells_int.tolist(), tm.tier.tolist()):
            old = st.tier_of.get(c, -1)
            if t > old:
                st.tier_of[c] = t
                grew = True
            if c not in st.first_alert_s:
                st.first_alert_s[c] = now_s
        return grew

    def _message(self, u: EventUpdate, st: _AlertState, msg_type: str) -> Alert:
        tiers = []
        if msg_type != "cancel":
            for i, name in enumerate(TIERS):
                cells = [c for c, t in st.tier_of.items() if t == i]
                if cells:
                    compact = sorted(h3.int_to_str(c) for c in h3n.compact_cells(np.array(cells, dtype=np.uint64)).tolist())
                    tiers.append(
                        AlertTier(
                            name=name,
                            min_mmi=self.s.be_aware_mmi if i == 0 else self.s.take_action_mmi,
                            cells=tuple(compact),
                        )
                    )
        return Alert(
            alert_id=st.alert_id,
            event_id=u.event_id,
            version=st.version,
            msg_type=msg_type,
            issued_at_s=u.issued_at_s,
            origin_time_s=u.origin_time_s,
            latitude=u.latitude,
            longitude=u.longitude,
            depth_km=u.depth_km,
            magnitude=u.magnitude,
            magnitude_sigma=u.magnitude_sigma,
            tiers=tuple(tiers),
            h3_resolution=self.s.h3_resolution,
            gmpe=self.model or choose_model(u.latitude, u.longitude, u.depth_km),
            event_version=u.version,
        )

    def first_alert_times(self, event_id: str) -> dict[str, tuple[int, float]]:
        """cell -> (final tier, time it was first alerted), for warning-time accounting."""
        st = self._alerts.get(event_id)
        if st is None:
            return {}
        return {h3.int_to_str(c): (t, st.first_alert_s[c]) for c, t in st.tier_of.items()}


# ------------------------------------------------------------------------- device side


@dataclass(frozen=True)
class DeviceWarning:
    """What a device shows: its own forecast intensity, tier and countdown.

    ``tier`` is ``"take_action"``, ``"be_aware"`` or ``""``: the higher of the tier its own
    forecast gives and the tier of the alert area it stands in (the server's cells are
    coarse; the device knows better where it is, but never shows less than its area was
    told). ``seconds_to_s_wave`` is negative once the S wave has passed.
    """

    mmi: float
    tier: str
    seconds_to_s_wave: float
    distance_km: float


def device_warning(
    alert: Alert,
    latitude: float,
    longitude: float,
    now_s: float,
    vs30_m_s: float = 760.0,
    settings: AlertSettings | None = None,
) -> DeviceWarning:
    """Compute, on the device, its intensity, tier and seconds until the S wave.

    Uses only the alert's event parameters and cells and the device's own position; the
    position is never sent anywhere. Cost: one scalar ground-motion evaluation.
    """
    s = settings or AlertSettings()
    if alert.msg_type == "cancel":
        return DeviceWarning(mmi=0.0, tier="", seconds_to_s_wave=float("nan"), distance_km=float("nan"))
    site = forecast_site(
        alert.latitude, alert.longitude, alert.depth_km, alert.magnitude, latitude, longitude, vs30_m_s, alert.gmpe
    )
    mmi = float(site.mmi)
    own = 1 if mmi >= s.take_action_mmi else 0 if mmi >= s.be_aware_mmi else -1
    area = area_tier(alert, latitude, longitude)
    best = max(own, area)
    epi = float(distance_km(alert.latitude, alert.longitude, latitude, longitude))
    ts = alert.origin_time_s + float(default_table().s_time_s(epi, alert.depth_km))
    return DeviceWarning(mmi=mmi, tier=TIERS[best] if best >= 0 else "", seconds_to_s_wave=ts - now_s, distance_km=epi)


def area_tier(alert: Alert, latitude: float, longitude: float) -> int:
    """Index of the alert tier whose cells contain the point (-1 if none).

    A compact cell set holds parents of several resolutions. H3 parents do not contain
    their children geometrically, so the point's cell is found at the alert's resolution
    and its ancestors are looked up, never the point's cell at a parent's resolution."""
    here = h3.latlng_to_cell(latitude, longitude, alert.h3_resolution)
    found = -1
    for i, tier in enumerate(alert.tiers):
        idx = TIERS.index(tier.name) if tier.name in TIERS else i
        cells = set(tier.cells)
        for res in {h3.get_resolution(c) for c in cells}:
            if res <= alert.h3_resolution and h3.cell_to_parent(here, res) in cells:
                found = max(found, idx)
                break
    return found


# ------------------------------------------------------------------ warning accounting


@dataclass(frozen=True)
class TierWarning:
    """Warning time over the cells of one tier (seconds between the first alert message
    that covered a cell and the S-wave arrival at its centre; negative = late)."""

    tier: str
    n_cells: int
    n_late: int
    median_s: float
    min_s: float
    max_s: float


def warning_times(policy: AlertPolicy, final: EventUpdate) -> list[TierWarning]:
    """Per tier: how much warning each alerted cell got, with S arrivals computed from the
    event's final location (the engine's best estimate; no catalogue needed)."""
    alerted = policy.first_alert_times(final.event_id)
    if not alerted:
        return []
    cells = list(alerted)
    tier = np.array([alerted[c][0] for c in cells])
    first = np.array([alerted[c][1] for c in cells])
    lat, lon = cell_centres(cells)
    epi = distance_km(final.latitude, final.longitude, lat, lon)
    ts = final.origin_time_s + default_table().s_time_s(epi, final.depth_km)
    warn = ts - first
    out = []
    for i, name in enumerate(TIERS):
        w = warn[tier == i]
        if len(w):
            out.append(
                TierWarning(
                    tier=name,
                    n_cells=len(w),
                    n_late=int((w < 0).sum()),
                    median_s=float(np.median(w)),
                    min_s=float(w.min()),
                    max_s=float(w.max()),
                )
            )
    return out


def alert_to_json(alert: Alert) -> dict:
    """The replay's JSON line for an alert message (times as ISO 8601 UTC)."""
    from .replay import iso

    return {
        "alert_id": alert.alert_id,
        "event_id": alert.event_id,
        "version": alert.version,
        "msg_type": alert.msg_type,
        "issued_at": iso(alert.issued_at_s),
        "origin_time": iso(alert.origin_time_s),
        "latitude": alert.latitude,
        "longitude": alert.longitude,
        "depth_km": alert.depth_km,
        "magnitude": alert.magnitude,
        "magnitude_sigma": alert.magnitude_sigma,
        "gmpe": alert.gmpe,
        "h3_resolution": alert.h3_resolution,
        "tiers": [{"name": t.name, "min_mmi": t.min_mmi, "cells": list(t.cells)} for t in alert.tiers],
    }
