"""Silence as evidence: of the devices that should have felt a candidate quake by now,
how many did. False triggers (phones picked up, doors) are scattered among thousands of
quiet phones; a quake's first triggers are not. The associator mixes this in.

How long ago a quiet phone is known to have been quiet is learnt from the triggers'
own delays (onset to arrival); a streaming sensor is quiet up to the end of its data."""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from .geo import KM_PER_DEG, distance_km
from .locate import MAX_SILENT, Location
from .presence import Presence, box_around
from .records import Trigger
from .settings import Settings
from .traveltime import default_table

#: recent triggers whose delays (arrival - onset) set how long ago a quiet phone is known
#: to have been quiet
REPORT_DELAY_SAMPLES = 256
#: A candidate group is not located when, among the live devices inside the polygon of its
#: sites, the share that triggered is below this factor times min_triggered_fraction
#: (see SilenceEvidence._hull_fraction): a margin for what a cheap test cannot know
HULL_FRACTION_FACTOR = 0.5
#: An announced event is retracted when its triggered fraction falls below this factor
#: times min_triggered_fraction; a new group whose fraction would fall there, were the
#: phones around that are not yet due all to stay quiet, waits for them (nucleate.py)
RETRACT_FRACTION_FACTOR = 0.5
#: The locator's silent devices are read from a box of this radius (km) around its search
#: centre when its MAX_SILENT nearest lie inside it (SilenceEvidence._silent_near)
NEAR_SILENT_KM = 100.0


class SilenceEvidence:
    """The quiet devices' side of the association (mixed into the Associator, whose
    ``s``, ``presence``, ``pool``, ``_delays`` and open events it reads)."""

    s: Settings
    presence: Presence
    pool: list[Trigger]
    _pool_cols: "PoolColumns"
    _delays: deque
    _delay_cache: float | None
    _delay_sorted: np.ndarray | None

    def _silent(self, now_s: float, busy: set[str]):
        """Live devices not in ``busy``: their positions, the time up to which each is
        known to have stayed quiet, and which are phones."""
        return self.presence.silent(now_s, busy, self.s.picker.warmup_s, self._report_delay(), kinds=True)

    def _silent_near(self, now_s: float, busy: set[str], centre: tuple[float, float]):
        """:meth:`_silent` as the locator uses it (only the ``MAX_SILENT`` nearest the
        search ``centre`` count): when those lie within ``NEAR_SILENT_KM``, the devices
        read from a box around the centre, which holds them all; else every device. The
        same nearest devices either way, read from a few thousand rows rather than a
        million (27 ms a locate, and the search for the nearest as much again)."""
        box = box_around(centre[0], centre[1], NEAR_SILENT_KM)
        if box is not None:
            got = self.presence.silent(now_s, busy, self.s.picker.warmup_s, self._report_delay(), kinds=True, box=box)
            if len(got[0]) > MAX_SILENT:
                d = distance_km(centre[0], centre[1], got[0], got[1])
                if float(np.partition(d, MAX_SILENT - 1)[MAX_SILENT - 1]) < NEAR_SILENT_KM:
                    return got
        return self._silent(now_s, busy)

    def _report_delay(self) -> float:
        """How long a trigger takes from its onset to the engine (s): a device that sends
        triggers is known to be quiet only up to that long ago. Learnt from the triggers
        themselves (their window and network delay differ by device type)."""
        if self._delay_cache is None:
            if self._delays:
                q = float(np.percentile(np.fromiter(self._delays, dtype=float), 80))
                self._delay_cache = min(max(q, 0.25), 10.0)
            else:
                self._delay_cache = self.s.associate.phone_report_delay_s
        return self._delay_cache

    def _report_share(self, dt_s: np.ndarray) -> np.ndarray:
        """Share of device triggers that reach the engine within ``dt_s`` seconds of their
        onset: the empirical distribution of the recent triggers' delays (before any has
        arrived, a step at ``phone_report_delay_s``)."""
        if not self._delays:
            return (dt_s >= self.s.associate.phone_report_delay_s).astype(float)
        if self._delay_sorted is None:
            self._delay_sorted = np.sort(np.fromiter(self._delays, dtype=float))
        d = self._delay_sorted
        return np.searchsorted(d, dt_s, side="right") / len(d)

    def _triggered_fraction(self, loc: Location, picks: list[Trigger], now_s: float) -> float:
        """Of the devices that should have seen this event's P by now (live, able to
        detect, closer than its farthest P pick), the fraction that triggered. Counted
        over every live device, not the locator's nearest few: a cluster of three false
        triggers can be located far from the quiet phones around it, but not so that those
        phones lie beyond its own picks. Triggered are ``picks`` and the pooled triggers
        within that reach whose onsets fit the P time there.

        A quiet streaming sensor counts once its data run ``silent_grace_s`` past its P
        time. A quiet phone counts by the share of phones' reports that would have arrived
        by now had its onset been picked ``silent_grace_s`` after its P time (the learnt
        report delays run from the picked onset, which can be that late): three phones in a
        city that trigger by chance within a second of each other fit a source deep under
        them, whose P reaches the thousands of phones around them at the same moment; a
        yes-or-no "due" test would count none of those phones until their reports were
        all due, and the event would already be out."""
        k, n_quiet, _ = self._fraction_terms(loc, picks, now_s)
        return k / (k + n_quiet) if k else 0.0

    def _fraction_terms(self, loc: Location, picks: list[Trigger], now_s: float) -> tuple[float, float, float]:
        """:meth:`_triggered_fraction`'s parts: triggered devices, quiet devices counted by
        now (streams, and phones weighted by the share of reports due), and the quiet
        phones' weight not yet due (``1 - share`` each: what the verdict still waits for)."""
        if not picks:
            return 0.0, 0.0, 0.0
        lat = np.array([t.latitude for t in picks])
        lon = np.array([t.longitude for t in picks])
        # the phones in the farthest pick's own cell count too: a phone's position is its
        # cell's centre, so every phone of that cell is exactly as far (a strict "closer
        # than" left out the dozens of quiet phones sharing a cell with a fake's trigger)
        reach = float(distance_km(loc.latitude, loc.longitude, lat, lon).max()) + 0.01
        tab = default_table()
        k = len(picks)
        ids = {t.device_id for t in picks}
        pool = self.pool
        if pool:
            cols = self._pool_cols.of(pool)
            pe = distance_km(loc.latitude, loc.longitude, cols.lat, cols.lon)
            fit = np.abs(cols.onset - loc.origin_time_s - tab.p_time_s(pe, loc.depth_km)) <= self.s.associate.moveout_slack_s + 0.01 * pe
            k += len({pool[i].device_id for i in np.flatnonzero((pe < reach) & fit).tolist()} - ids)
        a = self.s
        # only the devices around (a box holding the reach): the same counts, read from a
        # few thousand rows instead of a million (69 ms a try with every phone present)
        slat, slon, seen, phone = self.presence.silent(now_s, self._busy(), a.picker.warmup_s, self._report_delay(), kinds=True,
                                                       box=box_around(loc.latitude, loc.longitude, reach))
        if len(slat) == 0:
            return float(k), 0.0, 0.0
        epi = distance_km(loc.latitude, loc.longitude, slat, slon)
        near = epi < reach
        if not near.any():
            return float(k), 0.0, 0.0
        tp = loc.origin_time_s + tab.p_time_s(epi[near], loc.depth_km) + a.locate.silent_grace_s
        ph = phone[near]
        n_streams = int(np.count_nonzero(~ph & (tp < seen[near])))
        share = self._report_share(now_s - tp[ph]) if ph.any() else np.zeros(0)
        n_phones = float(share.sum())
        return float(k), n_streams + n_phones, len(share) - n_phones

    def _hull_fraction(self, group: list[Trigger], now_s: float) -> float:
        """Of the live devices able to detect inside the polygon (convex hull) of a
        candidate's sites, the share that triggered, as :meth:`_triggered_fraction` counts
        it; 1.0 when the sites span no area. A locate costs tens of milliseconds (a million
        phones bring a dozen chance groups of false triggers a second), this a few.

        No location is needed: were the group's triggers P onsets of one quake (the full
        test asks that of all of a three-site group, within ``3 sigma``), a device inside
        the polygon is no farther from the epicentre than the farthest site, so within the
        reach the full test counts; and P reached it no later than ``onset_i + 3 sigma +
        slowness x distance_i`` for every site ``i`` (the steepest P slowness of the table,
        the triangle inequality), so a quiet phone near a site that triggered long ago is
        long overdue. Chance groups span tens to hundreds of km around thousands of quiet
        phones; a quake's first sites enclose few, reached seconds ago. Triggered are the
        group and the pooled triggers inside the polygon."""
        lat0 = sum(g.latitude for g in group) / len(group)
        lon0 = sum(g.longitude for g in group) / len(group)
        kx = KM_PER_DEG * max(math.cos(math.radians(lat0)), 0.05)
        pts = [((g.longitude - lon0) * kx, (g.latitude - lat0) * KM_PER_DEG, g.onset_time_s) for g in group]
        hull = _convex_hull([(x, y) for x, y, _ in pts])
        if len(hull) < 3:
            return 1.0
        hx = np.array([p[0] for p in hull])
        hy = np.array([p[1] for p in hull])
        pr = self.presence
        idx = pr.in_box(lat0 + hy.min() / KM_PER_DEG, lat0 + hy.max() / KM_PER_DEG, lon0 + hx.min() / kx, lon0 + hx.max() / kx)
        px = (pr.lon[idx] - lon0) * kx
        py = (pr.lat[idx] - lat0) * KM_PER_DEG
        keep = _inside_convex(px, py, hx, hy)
        idx, px, py = idx[keep], px[keep], py[keep]
        ids = {g.device_id for g in group}
        k = len(ids)
        # the pooled triggers inside, in one array test (a quake's burst pools tens of
        # thousands: one numpy call each cost 0.25 s a candidate, 60 s of an 80 s run)
        pool = self.pool
        if pool:
            cols = self._pool_cols.of(pool)
            qx = (cols.lon - lon0) * kx
            qy = (cols.lat - lat0) * KM_PER_DEG
            cand = np.flatnonzero((qx > hx.min()) & (qx < hx.max()) & (qy > hy.min()) & (qy < hy.max()))
            if len(cand):
                for j in cand[_inside_convex(qx[cand], qy[cand], hx, hy)].tolist():
                    if pool[j].device_id not in ids:
                        ids.add(pool[j].device_id)
                        k += 1
        if not len(idx):
            return 1.0
        busy = self._busy() | ids
        free = np.array([pr.ids[i] not in busy for i in idx.tolist()], dtype=bool)
        idx, px, py = idx[free], px[free], py[free]
        last, hb = pr.last[idx], pr.heartbeat[idx]
        a = self.s
        stream_ok = ~hb & (now_s - last <= 5.0) & (last - pr.started[idx] >= a.picker.warmup_s)
        phone_ok = hb & (now_s - last <= pr.window[idx])
        slowness = _steepest_p_slowness(a.locate.depths_km)
        reached = np.full(len(idx), np.inf)
        for x, y, t in pts:
            np.minimum(reached, t + 3 * a.locate.pick_sigma_s + slowness * np.hypot(px - x, py - y), out=reached)
        due = reached + a.locate.silent_grace_s
        n_streams = int(np.count_nonzero(stream_ok & (due < last)))
        n_phones = float(self._report_share(now_s - due[phone_ok]).sum()) if phone_ok.any() else 0.0
        return k / (k + n_streams + n_phones)

    def _busy(self) -> set[str]:
        out = set()
        for ev in self._open_events():
            out.update(ev.picks)
            out.update(ev.later)
        out.update(self._pool_cols.of(self.pool).devices)
        return out


class PoolColumns:
    """The pool's positions, onsets and device ids as arrays, kept beside the list.

    A quake's burst pools tens of thousands of triggers, and every new-event try read them
    all from the Trigger records again (numpy.fromiter over attributes: a few ms a column,
    several columns a try, dozens of tries a second). The pool list is only appended to,
    replaced whole (filtered), or has a record replaced in place by its own amplitude
    update (same device, place and onset): so the columns are extended with the new tail
    while the list object stays the same, and rebuilt when it is another list."""

    __slots__ = ("src", "n", "lat", "lon", "onset", "devices")

    def __init__(self):
        self.src: list | None = None
        self.n = 0
        self.lat = self.lon = self.onset = np.zeros(0)
        self.devices: set[str] = set()

    def of(self, pool: list[Trigger]) -> "PoolColumns":
        if pool is not self.src or len(pool) < self.n:
            self.src, self.n = pool, 0
            self.lat = self.lon = self.onset = np.zeros(0)
            self.devices = set()
        if len(pool) > self.n:
            new = pool[self.n:]
            m = len(new)
            self.lat = np.concatenate([self.lat, np.fromiter((p.latitude for p in new), dtype=float, count=m)])
            self.lon = np.concatenate([self.lon, np.fromiter((p.longitude for p in new), dtype=float, count=m)])
            self.onset = np.concatenate([self.onset, np.fromiter((p.onset_time_s for p in new), dtype=float, count=m)])
            self.devices.update(p.device_id for p in new)
            self.n = len(pool)
        return self


def _convex_hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (counter-clockwise, no collinear points) of a few points in a plane."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 1e-9:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 1e-9:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _inside_convex(x: np.ndarray, y: np.ndarray, hx: np.ndarray, hy: np.ndarray) -> np.ndarray:
    """Points strictly inside a counter-clockwise convex polygon (the edge is outside: a
    phone in a site's own cell is that site's neighbour, not enclosed by the group)."""
    ok = np.ones(len(x), dtype=bool)
    m = len(hx)
    for i in range(m):
        x1, y1, x2, y2 = hx[i], hy[i], hx[(i + 1) % m], hy[(i + 1) % m]
        ok &= (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) > 1e-6
    return ok


_SLOWNESS: dict[tuple, float] = {}


def _steepest_p_slowness(depths_km) -> float:
    """Largest d(P time)/d(distance) of the travel-time table at these depths, s/km."""
    key = tuple(depths_km)
    got = _SLOWNESS.get(key)
    if got is None:
        rows = default_table().at_depths(key)
        got = _SLOWNESS[key] = float(rows.dp.max()) * rows.inv_step
    return got
