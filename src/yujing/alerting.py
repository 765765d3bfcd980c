"""Alert policy: from event updates to tiered alerts per area, and the device-side view.

For each event update the forecast intensity (``shaking.forecast``: ground motion per H3
cell, Worden et al. 2012 MMI) decides which cells get which tier — ``be_aware`` where MMI is
3-4, ``take_action`` where it is 5 or more, the tiers of Android's earthquake alerts. The
policy (thresholds in ``AlertSettings``):

* no alert below ``min_magnitude`` (M4.5) or when no cell reaches a tier;
* the first alert for an event is ``msg_type="alert"``, version 1; an ``"update"`` follows
  when a cell's tier rises or falls (by the rules below) or the magnitude has moved by
  ``update_magnitude_step`` (0.3) since the last message; a ``"cancel"`` when the event is
  retracted (every area it ever reached is told);
* one alert per event: ``alert_id`` is derived from the event id and never changes;
* every message states the whole current picture (CAP's Update "supersedes" the earlier
  messages): a cell that an earlier message warned and this one does not is no longer
  warned, and the transports tell its area so (``bus.mqtt``, ``formats.cap``).

Rising and falling are not symmetric (hysteresis):

* **upgrades are immediate**: the newest estimate's tier for a cell, if higher than the
  one sent, goes out with this update (warning time is what the system is for);
* **downgrades wait**: a cell keeps its tier while any estimate of the last
  :data:`DOWNGRADE_HOLD_S` seconds (message time) *supports* it, and an estimate supports
  a tier if the forecast at its magnitude **plus** :func:`magnitude_margin` (its 1-sigma,
  clipped to 0.1-0.3 units) reaches it. So a cell is lowered only when the estimate has
  fallen by more than its uncertainty below what the tier needs, and stayed there for
  the hold; it is then lowered to the highest tier still supported. An event's areas
  are lowered at most once per hold, so a slowly falling estimate gives one downgrade
  every 10 s rather than a staircase of small ones, and only by a fall visible in the
  magnitude as shown: a downgrade must lower some cell that even 0.1 units above the
  highest estimate of the hold (plus its margin) would not warn as much, so that a settled
  estimate jittering by a few hundredths does not shave a ring of edge cells off the area
  every 10 s (each shave would be a message telling people to stand down). Between updates,
  :meth:`AlertPolicy.tick` issues a downgrade that came due without a new estimate.

Why these numbers (none is fitted to one event):

* ``DOWNGRADE_HOLD_S`` = 10 s. Early estimates of a growing rupture swing by several
  tenths for a few seconds as stations are added (a first M6.6 read as M7.4 and back is
  the case that asked for this rule); a rupture of M6.5-7 lasts ~5-20 s, and 10 s spans
  tens of engine updates, so one outlier (high or low) cannot decide a downgrade. The cost
  is small: for 10 s longer than needed a shrinking area's edge stays warned, while an
  upgrade never waits. An area whose S wave arrives within the hold is past helping
  anyway (10 s is ~35 km of S-wave travel).
* margin = clip(sigma, 0.1, 0.3): a fall inside the estimate's own 1-sigma is not evidence
  of a smaller quake. The floor 0.1 is the precision magnitudes are shown with (M6.6):
  a change people cannot see in the number must not move the areas back and forth, and
  it stops boundary cells flickering while a settled estimate jitters by a few hundredths.
  The cap 0.3 is ``update_magnitude_step``, the change the policy already treats as news:
  a larger fall that holds for 10 s is real even when the estimator reports a larger sigma.
* consequence: at rest the area is that of the estimate plus at most the margin (the
  band of a Schmitt trigger), never smaller than the estimate's own area.

``device_warning`` is what a device runs when an alert reaches it: from the event parameters
and its own position (which never leaves the device) it computes its own intensity, tier
and the seconds left until the S wave arrives.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import h3
import msgspec
import numpy as np
from h3.api import numpy_int as h3n

from .records import Alert, AlertTier, EventUpdate
from .settings import AlertSettings
from .geo import KM_PER_DEG, distance_km
from .shaking import _strike_averaged_table, choose_model, forecast, forecast_site
from .traveltime import default_table

TIERS = ("be_aware", "take_action")

#: seconds (message time) a lower tier must hold before a cell is lowered; see the module
#: docstring for why. ``AlertSettings.downgrade_hold_s``, when the settings have it, wins.
DOWNGRADE_HOLD_S = 10.0
#: the margin's floor and cap (magnitude units): a fall must exceed the estimate's 1-sigma
MARGIN_MIN_M, MARGIN_MAX_M = 0.1, 0.3


def magnitude_margin(sigma: float) -> float:
    """How far (magnitude units) an estimate must fall below what a tier needs before it
    stops supporting that tier: its 1-sigma, within [0.1, 0.3] (NaN counts as the cap)."""
    if not math.isfinite(sigma):
        return MARGIN_MAX_M
    return float(min(max(sigma, MARGIN_MIN_M), MARGIN_MAX_M))


def _disk_cells(lat: float, lon: float, radius_km: float, res: int) -> np.ndarray:
    """All H3 cells at ``res`` within ~``radius_km`` of a point (a hexagonal disk), as
    64-bit integers (the integer API skips ~80k string conversions for an M7.4)."""
    edge = h3.average_hexagon_edge_length(res, unit="km")
    k = max(1, int(math.ceil(radius_km / (1.5 * edge))))
    # sorted: every later lookup is a binary search of these into a sorted array, twice as
    # fast with the queries in order as in grid_disk's ring order (0.5 ms to sort 70,000)
    return np.sort(h3n.grid_disk(h3n.latlng_to_cell(lat, lon, res), k))


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


#: points of the radial forecast profile that bounds the cells an update evaluates
PROFILE_POINTS = 256


def reach_km(magnitude: float) -> float:
    """Generous radius (km) beyond which no M can produce MMI 3: cells outside are not
    evaluated. MMI 3 reaches ~30 km at M4.5 and ~600 km at M8 for the models used here."""
    return float(np.clip(30.0 * 10.0 ** (0.45 * (magnitude - 4.5)), 30.0, 900.0))


def cell_centres(cells) -> tuple[np.ndarray, np.ndarray]:
    ll = np.array([h3.cell_to_latlng(c) for c in cells])
    if len(ll) == 0:
        return np.zeros(0), np.zeros(0)
    return ll[:, 0], ll[:, 1]


class _AlertState:
    """What the policy has told about one event. Per cell ever alerted (``cells``, sorted
    64-bit H3): the tier sent (``held``, -1 none), the last message time an estimate
    supported tier >= 0 and >= 1 (``support_s``), the first time it was alerted."""

    def __init__(self, alert_id: str):
        self.alert_id = alert_id
        self.version = 0
        self.magnitude = math.nan  # of the last message
        self.cells = np.zeros(0, np.uint64)
        self.held = np.zeros(0, np.int8)
        self.support_s = np.zeros((0, 2))
        self.first_s = np.zeros(0)
        self.current = np.zeros(0, np.int8)  # tier the newest estimate supports (it stands until replaced)
        self.cancelled = False
        self.last: EventUpdate | None = None  # the newest estimate
        self.due_s = math.inf  # when the next downgrade falls due (if no estimate supports it)
        self.lowered_s = -math.inf  # when a cell was last lowered
        self.recent: list[tuple[float, float]] = []  # (time, magnitude + margin) of recent estimates

    def include(self, cells: np.ndarray) -> np.ndarray:
        """Add cells (new ones: no tier, never supported); their positions in ``cells``."""
        cells = np.asarray(cells, dtype=np.uint64)
        # ``self.cells`` is sorted: one binary search finds the cells it lacks (setdiff1d
        # hashed both sides, ~80,000 cells each for an M7, a third of an update's time)
        if len(self.cells):
            idx = np.minimum(np.searchsorted(self.cells, cells), len(self.cells) - 1)
            new = np.unique(cells[self.cells[idx] != cells])
        else:
            new = np.unique(cells)
        if len(new):
            allc = np.concatenate((self.cells, new))
            order = np.argsort(allc, kind="stable")
            n = len(new)
            self.cells = allc[order]
            self.held = np.concatenate((self.held, np.full(n, -1, np.int8)))[order]
            self.support_s = np.concatenate((self.support_s, np.full((n, 2), -np.inf)))[order]
            self.first_s = np.concatenate((self.first_s, np.full(n, np.nan)))[order]
            self.current = np.concatenate((self.current, np.full(n, -1, np.int8)))[order]
        return np.searchsorted(self.cells, cells)

    def lookup(self, tm: "TierMap") -> np.ndarray:
        """The map's tier for each of ``cells`` (-1 where the map has none)."""
        out = np.full(len(self.cells), -1, np.int8)
        if len(tm.cells_int) and len(self.cells):
            keys = tm.cells_int  # sorted (_disk_cells)
            idx = np.minimum(np.searchsorted(keys, self.cells), len(keys) - 1)
            hit = keys[idx] == self.cells
            out[hit] = tm.tier[idx[hit]]
        return out


@dataclass(frozen=True)
class TierMap:
    """Forecast for one event update: the cells that reach a tier and their MMI.
    ``cells_int`` are 64-bit H3 indexes; ``cells`` the same as strings (made on demand)."""

    cells_int: np.ndarray  # sorted
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
        ``radius_km``, the reach of an M8), so the first alert there does not pay for them
        (nor for the finite-fault table, 40-60 ms once per process)."""
        _strike_averaged_table()
        return CENTRES.warm(latitude, longitude, radius_km, self.s.h3_resolution)

    def tier_map(self, u: EventUpdate) -> TierMap:
        model = self.model or choose_model(u.latitude, u.longitude, u.depth_km)
        cells = _disk_cells(u.latitude, u.longitude, self._aware_radius_km(u, model), self.s.h3_resolution)
        lat, lon = CENTRES.get(cells)
        vs30 = self.vs30_grid.vs30_at(lat, lon) if self.vs30_grid is not None else self.s.vs30_m_s
        sh = forecast(u.latitude, u.longitude, u.depth_km, u.magnitude, lat, lon, vs30=vs30, model=model)
        tier = np.full(len(cells), -1)
        tier[sh.mmi >= self.s.be_aware_mmi] = 0
        tier[sh.mmi >= self.s.take_action_mmi] = 1
        keep = tier >= 0
        return TierMap(cells_int=cells[keep], mmi=sh.mmi[keep], tier=tier[keep])

    def _aware_radius_km(self, u: EventUpdate, model: str) -> float:
        """How far (km) any site can forecast ``be_aware_mmi``: the forecast on a radial
        profile out to :func:`reach_km`, with the lowest Vs30 any cell can have (the most
        amplified site), to the first profile point below the tier. The forecast falls
        with distance, so no cell beyond can reach a tier: evaluating only the disk within
        saves ~40 % of the cells of an M7.5-8 (reach 670-900 km, aware to 510-650 km), on
        the alert path of every update."""
        reach = reach_km(u.magnitude)
        r = np.linspace(0.0, reach, PROFILE_POINTS)
        lat = u.latitude + r / KM_PER_DEG  # due north: the forecast depends on the distance only
        if lat[-1] >= 89.0:
            return reach
        vs30 = self.s.vs30_m_s if self.vs30_grid is None else self.vs30_grid.min_vs30_m_s()
        mmi = forecast(u.latitude, u.longitude, u.depth_km, u.magnitude, lat, np.full(len(r), u.longitude),
                       vs30=vs30, model=model).mmi
        below = np.flatnonzero(mmi < self.s.be_aware_mmi)
        if not len(below):
            return reach
        # the first point below, plus a step: the profile's own distances are geodesic,
        # the disk's are from the centre cell (_disk_cells pads by its ring count)
        return float(min(reach, r[below[0]] + reach / (PROFILE_POINTS - 1)))

    @property
    def hold_s(self) -> float:
        return float(getattr(self.s, "downgrade_hold_s", DOWNGRADE_HOLD_S))

    def on_update(self, u: EventUpdate) -> list[Alert]:
        """The alert messages (zero or one) that this event update calls for."""
        st = self._alerts.get(u.event_id)
        if u.retracted:
            if st is None or st.cancelled:
                return []
            st.cancelled = True
            st.version += 1
            st.due_s = math.inf
            return [self._message(u, st, "cancel")]
        if st is not None and st.cancelled:
            return []
        if u.magnitude < self.s.min_magnitude and st is None:
            return []
        tm = self.tier_map(u)
        if st is None:
            if len(tm.cells_int) == 0:
                return []
            st = self._alerts[u.event_id] = _AlertState(alert_id=f"{u.event_id}-alert")
        first = st.version == 0
        st.last = u
        rose, fell = self._step(st, u.issued_at_s, u, tm)
        if first:
            if not (st.held >= 0).any():
                return []
            msg_type = "alert"
        elif rose or fell or abs(u.magnitude - st.magnitude) >= self.s.update_magnitude_step:
            msg_type = "update"
        else:
            return []
        st.version += 1
        st.magnitude = u.magnitude
        return [self._message(u, st, msg_type)]

    def resume(self, event_id: str, alert: Alert | None) -> bool:
        """Go on from what devices were actually told about ``event_id``: ``alert`` is the
        newest message sent for it (by this service's previous life: a restart), None if
        none was sent. The next message continues its version; its areas are the cells
        held (so an upgrade beyond them is news, a fall waits for the hold as usual); a
        cancel stays cancelled. What this policy computed for the event itself (a rebuilt
        engine's estimates: the cells' support times, the newest estimate) is kept.

        Returns whether what this policy would have told differs from what was told (then
        ``on_update(newest estimate)`` says what the devices still miss); False leaves
        the policy exactly as it was."""
        st = self._alerts.get(event_id)
        if alert is None:
            if st is None or st.cancelled or st.version == 0:
                return False
            # nothing was sent: the first message to go out is the alert, version 1
            st.version, st.magnitude = 0, math.nan
            st.held[:] = -1
            st.first_s[:] = np.nan
            st.due_s = math.inf
            return True
        if st is None:
            st = self._alerts[event_id] = _AlertState(alert_id=alert.alert_id)
        told = np.full(0, -1, np.int8)
        for i, name in enumerate(TIERS):
            tier = next((t for t in alert.tiers if t.name == name), None)
            if tier is None or not tier.cells:
                continue
            ints = np.array([h3.str_to_int(c) for c in tier.cells], dtype=np.uint64)
            cells = np.asarray(h3n.uncompact_cells(ints, alert.h3_resolution), dtype=np.uint64)
            idx = st.include(cells)
            if len(told) < len(st.cells):
                told = np.concatenate((told, np.full(len(st.cells) - len(told), -1, np.int8)))
            told[idx] = np.maximum(told[idx], i)
        told = np.concatenate((told, np.full(len(st.cells) - len(told), -1, np.int8)))
        cancelled = alert.msg_type == "cancel"
        if (st.version == alert.version and st.cancelled == cancelled and st.magnitude == alert.magnitude
                and np.array_equal(st.held, told)):
            return False  # the same picture: its timing (hold, due downgrades) stands
        st.alert_id = alert.alert_id
        st.version = alert.version
        st.magnitude = alert.magnitude
        st.cancelled = cancelled
        st.held = told
        st.first_s[(told >= 0) & np.isnan(st.first_s)] = alert.issued_at_s
        if cancelled or not (st.held > st.current).any():
            st.due_s = math.inf
        else:
            # cells held above what the newest estimate supports: they may fall, after the hold
            st.due_s = max(alert.issued_at_s, st.lowered_s) + self.hold_s
        return True

    def tick(self, now_s: float) -> list[Alert]:
        """Downgrades that have come due at ``now_s`` (message-time clock, like
        ``issued_at_s``) without a new estimate: one ``update`` per event whose areas fall,
        with the newest estimate's parameters and ``issued_at_s = now_s``. Cheap when
        nothing is due; a live service calls it about once a second."""
        out = []
        for st in self._alerts.values():
            if st.cancelled or st.last is None or now_s < st.due_s:
                continue
            rose, fell = self._step(st, now_s, None, None)
            if fell:
                st.version += 1
                st.magnitude = st.last.magnitude
                out.append(self._message(msgspec.structs.replace(st.last, issued_at_s=now_s), st, "update"))
        return out

    def _step(self, st: _AlertState, now_s: float, u: EventUpdate | None, tm: TierMap | None) -> tuple[bool, bool]:
        """Apply one estimate (or, with ``u`` None, only the passing of time) to the cells'
        tiers; returns (some cell rose, some cell fell). See the module docstring."""
        if tm is not None:
            # the estimate being replaced stood until now
            st.support_s[st.current >= 0, 0] = now_s
            st.support_s[st.current >= 1, 1] = now_s
            st.include(tm.cells_int)
            margin = magnitude_margin(u.magnitude_sigma)
            target = st.lookup(tm)
            if u.magnitude < self.s.min_magnitude:
                target[:] = -1  # no alert below min_magnitude: nothing rises
            support = target.copy()
            if u.magnitude + margin < self.s.min_magnitude:
                pass  # below it beyond the margin: supports nothing
            elif (st.held > target).any():
                # cells this estimate would lower: does it still support them, with the margin?
                up = msgspec.structs.replace(u, magnitude=u.magnitude + margin)
                support = np.maximum(support, st.lookup(self.tier_map(up)))
            st.current = support
            st.recent.append((now_s, u.magnitude + margin))
        else:
            target = np.full(len(st.cells), -1, np.int8)
        # the newest estimate stands until a newer one comes: it supports its cells now
        st.support_s[st.current >= 0, 0] = now_s
        st.support_s[st.current >= 1, 1] = now_s
        hold = self.hold_s
        recent = now_s - st.support_s < hold  # (n, 2): tier k supported within the hold
        supported = np.where(recent[:, 1], 1, np.where(recent[:, 0], 0, -1)).astype(np.int8)
        if now_s - st.lowered_s >= hold:
            new = np.maximum(target, np.minimum(st.held, supported))
        else:
            new = np.maximum(target, st.held)  # at most one downgrade per hold: no staircase
        st.recent = [r for r in st.recent[:-1] if now_s - r[0] < hold] + st.recent[-1:]
        if (new < st.held).any():
            # a downgrade must be visible in the magnitude as shown (0.1): it must lower a
            # cell that even 0.1 above the highest recent estimate (+ margin) would not
            # warn as much; else a settled estimate's jitter would shave a ring of cells
            # off the area every hold
            gate = msgspec.structs.replace(st.last, magnitude=max(m for _, m in st.recent) + MARGIN_MIN_M)
            clear_fall = (new < st.held) & (st.lookup(self.tier_map(gate)) < st.held)
            if not clear_fall.any():
                new = np.maximum(new, st.held)
        rose, fell = bool((new > st.held).any()), bool((new < st.held).any())
        if fell:
            st.lowered_s = now_s
        st.first_s[(new >= 0) & np.isnan(st.first_s)] = now_s
        st.held = new
        on = new > st.current  # held above what the newest estimate supports: may fall later
        if on.any():
            k = new[on].astype(int)
            st.due_s = max(float(st.support_s[on, :][np.arange(len(k)), k].min()), st.lowered_s) + hold
        else:
            st.due_s = math.inf
        return rose, fell

    def _message(self, u: EventUpdate, st: _AlertState, msg_type: str) -> Alert:
        tiers = []
        if msg_type != "cancel":
            for i, name in enumerate(TIERS):
                cells = st.cells[st.held == i]
                if len(cells):
                    compact = sorted(h3.int_to_str(c) for c in h3n.compact_cells(cells).tolist())
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
        """cell -> (tier now, time it was first alerted), for warning-time accounting: the
        cells the last message warned (a cell warned earlier and since dropped is not
        counted as warned; after a cancel, none is)."""
        st = self._alerts.get(event_id)
        if st is None or st.cancelled:
            return {}
        on = np.flatnonzero(st.held >= 0)
        return {h3.int_to_str(int(st.cells[i])): (int(st.held[i]), float(st.first_s[i])) for i in on}


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
    # an update with no tiers says the event no longer warns anyone (its estimate fell below
    # min_magnitude): the device's own forecast must not warn where the server stopped
    own = (1 if mmi >= s.take_action_mmi else 0 if mmi >= s.be_aware_mmi else -1) if alert.tiers else -1
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
