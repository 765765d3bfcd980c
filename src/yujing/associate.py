"""Association: from single-device triggers to earthquakes, and their updates.

A trigger first tries to join an event already known: its onset must match the event's
predicted P arrival at that device (then it is a new P pick) or fall inside the event's
shaking at that device (then it is that event's later phase, not a new quake). A young
event's location can be far off (three picks on one side of a network barely tell the
distance to the rest), so a trigger that misses the predicted P - later, but before the
predicted S, or earlier, but no earlier than P would come were the epicentre moved by its
horizontal error towards the device - is tried as P by relocating with it. Otherwise it
waits in a pool. A new event needs ``min_devices`` pooled triggers at distinct sites
(``min_site_separation_km`` apart) whose onsets are pairwise consistent with P-wave
move-out (``|t_i - t_j| <= tP(d_ij) + slack``) and whose joint location fits (RMS, and few
devices that should have triggered but stayed silent). One noisy device cannot pass (one
device is one site), nor can a bump that shakes the devices of one building block (one
site), nor triggers scattered at random in time (move-out); the silent devices around a
candidate vote against it.

Every accepted event is re-located when a pick joins it and re-sized at every amplitude
update; a new :class:`~yujing.records.EventUpdate` (version + 1) is issued when the
magnitude moves by ``>= 0.1``, the epicentre by ``>= 2 km``, the depth by ``>= 10 km``, or
the set of P picks changes size. An event whose support collapses (silent devices outvote
its picks) is retracted.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

import msgspec
import numpy as np

from .geo import KM_PER_DEG, distance_km
from .locate import Location, locate
from .magnitude import event_magnitude
from .records import Device, EventUpdate, Trigger
from .settings import Settings
from .traveltime import default_table

MAG_STEP = 0.1
#: events with at least this many P picks are refreshed once per engine step rather than
#: at every trigger and amplitude update (a quake felt by thousands of phones)
BATCH_PICKS = 25
#: events with at least this many P picks are relocated at most every RELOCATE_LARGE_S
#: (or when their picks grew by a quarter): see Associator._relocation_due
RELOCATE_LARGE_PICKS = 100
RELOCATE_LARGE_S = 1.0
#: picks used to locate a large event: the earliest half and an even spread of the rest
MAX_LOCATE_PICKS = 40
#: triggers tried together for a new event (the seed's nearest consistent ones), and
#: attempts per engine step: each attempt is one locate
NEW_EVENT_PICKS = 6
NEW_EVENT_TRIES = 3
#: recent triggers whose delays (arrival - onset) set how long ago a quiet phone is known
#: to have been quiet
REPORT_DELAY_SAMPLES = 256
#: a phone that sent a heartbeat within this long is online; its silence counts up to
#: AssociateSettings.phone_report_delay_s before the engine clock (a trigger of a P onset
#: before that would have arrived)
HEARTBEAT_WINDOW_S = 90.0
#: A candidate group is not located when, among the live devices inside the polygon of its
#: sites, the share that triggered is below this factor times min_triggered_fraction
#: (see Associator._hull_fraction): a margin for what a cheap test cannot know
HULL_FRACTION_FACTOR = 0.5


class Presence:
    """Which devices are alive and quiet, as arrays: a million phones are a million rows.

    Streaming sensors are seen through their packets (quiet up to the end of their newest
    packet, alive while packets keep coming, after a warm-up); phones through heartbeats
    (alive for ``HEARTBEAT_WINDOW_S``; able to detect only when their agent says the phone
    lies still). Positions are a sensor's surveyed place or a phone's coarse cell."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.ids: list[str] = []
        self.n = 0
        cap = 64
        self.lat = np.zeros(cap)
        self.lon = np.zeros(cap)
        self.last = np.full(cap, -np.inf)
        self.started = np.full(cap, -np.inf)
        self.heartbeat = np.zeros(cap, dtype=bool)

    def _slot(self, device_id: str) -> int:
        i = self.index.get(device_id)
        if i is None:
            i = self.index[device_id] = self.n
            self.ids.append(device_id)
            self.n += 1
            if self.n > len(self.lat):
                for name in ("lat", "lon", "last", "started", "heartbeat"):
                    a = getattr(self, name)
                    grown = np.empty(2 * len(a), dtype=a.dtype)
                    grown[: len(a)] = a
                    setattr(self, name, grown)
            self.started[i] = np.inf
        return i

    def note_packet(self, device_id: str, latitude: float, longitude: float, end_time_s: float, reset: bool):
        i = self._slot(device_id)
        if reset or not np.isfinite(self.started[i]):
            self.started[i] = end_time_s
        self.lat[i], self.lon[i], self.last[i] = latitude, longitude, end_time_s
        self.heartbeat[i] = False

    def note_heartbeats(self, device_ids, latitudes, longitudes, time_s, ready=None):
        """Bulk: phones alive at ``time_s``; ``ready`` False for phones that cannot detect
        now (carried, moving): they are alive but their silence says nothing."""
        idx = np.fromiter((self._slot(d) for d in device_ids), dtype=np.int64, count=len(device_ids))
        ok = np.ones(len(idx), dtype=bool) if ready is None else np.asarray(ready, dtype=bool)
        self.lat[idx] = latitudes
        self.lon[idx] = longitudes
        self.heartbeat[idx] = True
        self.last[idx] = np.where(ok, time_s, -np.inf)
        self.started[idx] = np.minimum(self.started[idx], time_s)

    def in_box(self, lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> np.ndarray:
        """Rows (indices) whose position lies strictly inside a latitude/longitude box."""
        n = self.n
        lat, lon = self.lat[:n], self.lon[:n]
        return np.flatnonzero((lat > lat_min) & (lat < lat_max) & (lon > lon_min) & (lon < lon_max))

    def silent(self, now_s: float, busy: set[str], warmup_s: float, report_delay_s: float = 2.5, kinds: bool = False):
        """Positions and 'quiet up to' times of the live devices not in ``busy`` (and,
        with ``kinds``, which of them are phones)."""
        n = self.n
        last, started, hb = self.last[:n], self.started[:n], self.heartbeat[:n]
        stream_ok = ~hb & (now_s - last <= 5.0) & (last - started >= warmup_s)
        phone_ok = hb & (now_s - last <= HEARTBEAT_WINDOW_S)
        ok = stream_ok | phone_ok
        for d in busy:
            i = self.index.get(d)
            if i is not None:
                ok[i] = False
        seen = np.where(hb, now_s - report_delay_s, last)
        if kinds:
            return self.lat[:n][ok], self.lon[:n][ok], seen[ok], hb[ok]
        return self.lat[:n][ok], self.lon[:n][ok], seen[ok]
LOC_STEP_KM = 2.0
DEPTH_STEP_KM = 10.0


@dataclass
class Event:
    event_id: str
    location: Location
    picks: dict[str, Trigger]  # device_id -> latest trigger/update of its P pick
    later: dict[str, Trigger] = field(default_factory=dict)  # later phases (S, coda)
    magnitude: float = float("nan")
    magnitude_sigma: float = float("nan")
    version: int = 0
    last: EventUpdate | None = None
    retracted: bool = False
    closed: bool = False
    dirty_location: bool = False
    dirty: bool = False  # waits for the end of the engine step
    located_s: float = -math.inf  # engine time of the last relocation
    located_picks: int = 0  # P picks it used
    next_check_s: float = 0.0


class Associator:
    """Turns triggers into events; see the module docstring."""

    def __init__(self, devices: dict[str, Device], settings: Settings | None = None, id_prefix: str = "yj"):
        self.s = settings or Settings()
        self.devices = devices
        self.pool: list[Trigger] = []
        self.events: list[Event] = []
        self._ids: set[str] = set()
        self.id_prefix = id_prefix
        self.presence = Presence()
        self._fresh: list[Trigger] = []  # pooled in this engine step, not yet tried
        self._delays: deque[float] = deque(maxlen=REPORT_DELAY_SAMPLES)  # arrival - onset
        self._delay_cache: float | None = None
        self._delay_sorted: np.ndarray | None = None
        self._tries_left = NEW_EVENT_TRIES
        self._tried: set[int] = set()  # triggers in a failed group in this step
        # (device id, onset s, new_device_s) -> whether the device enrolled itself too
        # recently to count toward announcing (the service's issuer knows); None: none is
        self.is_new: Callable[[str, float, float], bool] | None = None

    # liveness -------------------------------------------------------------------------
    def note_packet(self, device_id: str, end_time_s: float, reset: bool):
        dev = self.devices.get(device_id)
        if dev is not None:
            self.presence.note_packet(device_id, dev.latitude, dev.longitude, end_time_s, reset)

    def _silent(self, now_s: float, busy: set[str]):
        """Live devices not in ``busy``: their positions and the time up to which each is
        known to have stayed quiet."""
        return self.presence.silent(now_s, busy, self.s.picker.warmup_s, self._report_delay())

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
        if not picks:
            return 0.0
        lat = np.array([t.latitude for t in picks])
        lon = np.array([t.longitude for t in picks])
        # the phones in the farthest pick's own cell count too: a phone's position is its
        # cell's centre, so every phone of that cell is exactly as far (a strict "closer
        # than" left out the dozens of quiet phones sharing a cell with a fake's trigger)
        reach = float(distance_km(loc.latitude, loc.longitude, lat, lon).max()) + 0.01
        tab = default_table()
        k = len(picks)
        ids = {t.device_id for t in picks}
        pooled = [p for p in self.pool if p.device_id not in ids]
        if pooled:
            plat = np.fromiter((p.latitude for p in pooled), dtype=float, count=len(pooled))
            plon = np.fromiter((p.longitude for p in pooled), dtype=float, count=len(pooled))
            pt = np.fromiter((p.onset_time_s for p in pooled), dtype=float, count=len(pooled))
            pe = distance_km(loc.latitude, loc.longitude, plat, plon)
            fit = np.abs(pt - loc.origin_time_s - tab.p_time_s(pe, loc.depth_km)) <= self.s.associate.moveout_slack_s + 0.01 * pe
            k += len({p.device_id for p, f in zip(pooled, (pe < reach) & fit) if f})
        a = self.s
        slat, slon, seen, phone = self.presence.silent(now_s, self._busy(), a.picker.warmup_s, self._report_delay(), kinds=True)
        if len(slat) == 0:
            return 1.0
        epi = distance_km(loc.latitude, loc.longitude, slat, slon)
        near = epi < reach
        if not near.any():
            return 1.0
        tp = loc.origin_time_s + tab.p_time_s(epi[near], loc.depth_km) + a.locate.silent_grace_s
        ph = phone[near]
        n_streams = int(np.count_nonzero(~ph & (tp < seen[near])))
        n_phones = float(self._report_share(now_s - tp[ph]).sum()) if ph.any() else 0.0
        return k / (k + n_streams + n_phones)

    # triggers -------------------------------------------------------------------------
    def add(self, trig: Trigger, now_s: float) -> list[EventUpdate]:
        """Take a trigger (``update == 0``) or an amplitude update; return event updates."""
        if not math.isfinite(trig.latitude) or not math.isfinite(trig.longitude):
            return []
        if trig.update > 0:
            return self._amplitude(trig, now_s)
        self._delays.append(trig.issued_at_s - trig.onset_time_s)
        self._delay_cache = None
        self._delay_sorted = None
        for ev in self._open_events():
            role = self._role(ev, trig)
            if role == "P":
                ev.picks[trig.device_id] = trig
                ev.dirty_location = True
                return self._refresh_soon(ev, now_s)
            if role == "later":
                # only a young event's location is loose enough for this to matter; a large
                # one would pay a relocation for every S trigger of a thousand phones
                young = len(ev.picks) < BATCH_PICKS
                trial = None if trig.device_id in ev.picks or not young else self._fits_as_p(ev, trig, now_s)
                if trial is not None:
                    ev.picks[trig.device_id] = trig
                    ev.location = trial
                    ev.dirty_location = False
                    return self._refresh_soon(ev, now_s)
                ev.later[trig.device_id] = trig
                return []
            if role == "early" and len(ev.picks) < BATCH_PICKS:
                trial = self._fits_as_p(ev, trig, now_s)
                if trial is not None:
                    ev.picks[trig.device_id] = trig
                    ev.location = trial
                    ev.dirty_location = False
                    return self._refresh_soon(ev, now_s)
        self.pool.append(trig)
        made = self._attempt(trig, now_s)
        if made is None:
            self._fresh.append(trig)  # over this step's budget: tried at its end
            return []
        return made

    def _amplitude(self, trig: Trigger, now_s: float) -> list[EventUpdate]:
        for ev in self._open_events():
            old = ev.picks.get(trig.device_id)
            if old is not None and old.onset_time_s == trig.onset_time_s:
                ev.picks[trig.device_id] = trig
                return self._refresh_soon(ev, now_s)
            old = ev.later.get(trig.device_id)
            if old is not None and old.onset_time_s == trig.onset_time_s:
                ev.later[trig.device_id] = trig
                return []
        for i, p in enumerate(self.pool):
            if p.device_id == trig.device_id and p.onset_time_s == trig.onset_time_s:
                self.pool[i] = trig
                break
        return []

    def _open_events(self):
        return [e for e in self.events if not e.closed and not e.retracted]

    def _role(self, ev: Event, trig: Trigger) -> str | None:
        loc = ev.location
        epi = float(distance_km(loc.latitude, loc.longitude, trig.latitude, trig.longitude))
        tab = default_table()
        tp = loc.origin_time_s + float(tab.p_time_s(epi, loc.depth_km))
        # the location's own uncertainty widens the window, but only up to what a well-
        # constrained network allows: a 3-pick solution's error ellipse can be hundreds of
        # km long and would otherwise accept anything
        tol = self.s.associate.moveout_slack_s + 0.01 * epi + min(loc.horizontal_error_km, 30.0) / 6.0
        if trig.device_id in ev.picks:
            return "later" if trig.onset_time_s > ev.picks[trig.device_id].onset_time_s else None
        if abs(trig.onset_time_s - tp) <= tol:
            return "P"
        # before the predicted P, but not before the P time at the nearest point of the
        # location's own uncertainty: a P pick on the far side of a loose early solution
        # (three picks on one side of the network say little about the distance to the
        # others), to be tried by relocating with it (:meth:`_fits_as_p`)
        if trig.onset_time_s < tp and trig.onset_time_s >= (
            loc.origin_time_s
            + float(tab.p_time_s(max(epi - loc.horizontal_error_km, 0.0), loc.depth_km))
            - self.s.associate.moveout_slack_s
        ):
            return "early"
        # after the P arrival and within the event's shaking there: S or coda
        if tp < trig.onset_time_s < tp + 30.0 + 0.25 * epi:
            return "later"
        return None

    def _fits_as_p(self, ev: Event, trig: Trigger, now_s: float) -> Location | None:
        """An early location can be tens of km off, and a P pick that does not fit its
        prediction may still fit the event once the event may move. A trigger before the
        predicted S arrival (a late one, or an early one that the location's own error
        allows: :meth:`_role`) is tried as P: kept if the relocated event fits it (residual
        within 3 sigma), stays within the RMS limit and gains no silent-device objection."""
        loc = ev.location
        epi = float(distance_km(loc.latitude, loc.longitude, trig.latitude, trig.longitude))
        ts = loc.origin_time_s + float(default_table().s_time_s(epi, loc.depth_km))
        if trig.onset_time_s > ts - self.s.associate.moveout_slack_s:
            return None
        trial = self._locate(
            self._locate_set(list(ev.picks.values()))[: MAX_LOCATE_PICKS - 1] + [trig],
            now_s,
            exclude={trig.device_id},
            center=(loc.latitude, loc.longitude),
            half_km=max(60.0, 3 * loc.horizontal_error_km),
        )
        sig = self.s.locate.pick_sigma_s
        ok = (
            not trial.is_s[-1]
            and abs(trial.residual_s[-1]) <= 3 * sig
            and np.all(np.abs(trial.residual_s[:-1]) <= 3 * sig)
            and trial.rms_s <= self.s.associate.max_rms_s
            and trial.n_silent_violations <= loc.n_silent_violations
        )
        return trial if ok else None

    # new events -----------------------------------------------------------------------
    def _consistent_with(self, a: Trigger, others: list[Trigger]) -> np.ndarray:
        """For each of ``others``: could it and ``a`` be P arrivals of one quake?
        (Onsets differ by at most the P travel time between the two devices plus the slack;
        the devices are at most ``max_pair_distance_km`` apart.)"""
        lat = np.fromiter((o.latitude for o in others), dtype=float, count=len(others))
        lon = np.fromiter((o.longitude for o in others), dtype=float, count=len(others))
        t = np.fromiter((o.onset_time_s for o in others), dtype=float, count=len(others))
        d = distance_km(a.latitude, a.longitude, lat, lon)
        tmax = default_table().p_time_s(d, 0.0)
        return (d <= self.s.associate.max_pair_distance_km) & (
            np.abs(a.onset_time_s - t) <= tmax + self.s.associate.moveout_slack_s
        )

    def _attempt(self, seed: Trigger, now_s: float) -> list[EventUpdate] | None:
        """Try a new event around ``seed`` if this engine step's budget of
        ``NEW_EVENT_TRIES`` attempts (a locate each) allows; None when it does not. A
        trigger that was part of a failed group in this step is not tried again as a
        seed: its group would be much the same."""
        if id(seed) in self._tried:
            return []
        if self._tries_left <= 0:
            return None
        self._tries_left -= 1
        made, group = self._try_new_event(seed, now_s)
        if not made:
            self._tried.update(id(g) for g in group)
        return made

    def _end_of_step(self, now_s: float) -> list[EventUpdate]:
        """Triggers pooled after the step's budget ran out are tried now, newest first
        (the newest are the likeliest to complete a group), within a fresh budget."""
        fresh, self._fresh = self._fresh, []
        self._tries_left = NEW_EVENT_TRIES
        out: list[EventUpdate] = []
        if fresh:
            in_pool = {id(p) for p in self.pool}
            for seed in reversed(fresh):
                if id(seed) not in in_pool:
                    continue
                made = self._attempt(seed, now_s)
                if made is None:
                    break
                if made:
                    out += made
                    in_pool = {id(p) for p in self.pool}
        self._tries_left = NEW_EVENT_TRIES
        self._tried.clear()
        return out

    def _try_new_event(self, newest: Trigger, now_s: float) -> tuple[list[EventUpdate], list[Trigger]]:
        """Try one new event around ``newest``; returns its first update (or nothing) and
        the group of triggers that was tried."""
        a = self.s.associate
        self.pool = [p for p in self.pool if now_s - p.onset_time_s <= a.candidate_ttl_s]
        if len(self.pool) < a.min_devices:
            return [], []
        # Greedy clique around the seed, nearest devices first: the triggers of a real
        # quake cluster in space, while false triggers (a phone picked up, a door) are
        # scattered; "earliest first" would let one false trigger tens of seconds early and
        # 200 km away (still within move-out) into every group and spoil the fit.
        cand = [p for p in self.pool if p is not newest and p.device_id != newest.device_id]
        if len(cand) < a.min_devices - 1:
            return [], []
        ok = self._consistent_with(newest, cand)
        cand = [p for p, k in zip(cand, ok) if k]
        if len(cand) < a.min_devices - 1:
            return [], []
        lat = np.fromiter((p.latitude for p in cand), dtype=float, count=len(cand))
        lon = np.fromiter((p.longitude for p in cand), dtype=float, count=len(cand))
        near = np.argsort(distance_km(newest.latitude, newest.longitude, lat, lon), kind="stable")
        group = [newest]
        ids = {newest.device_id}
        for k in near.tolist():
            p = cand[k]
            # the smallest group that can stand (min_devices sites): a larger one reaches
            # past the quake's own triggers to false ones far away while few have arrived,
            # and one false pick 30 s early can carry the origin time and the epicentre
            if len(group) >= NEW_EVENT_PICKS or self._n_sites(group) >= a.min_devices:
                break
            if p.device_id in ids:
                continue
            if self._consistent_with(p, group).all():
                group.append(p)
                ids.add(p.device_id)
        if len(group) < a.min_devices or self._n_sites(group) < a.min_devices:
            return [], group
        sig = self.s.locate.pick_sigma_s
        # only when every member must fit (below): a member that may be left out as an
        # outlier says nothing about when P passed its site
        need = max(a.min_devices, (len(group) + 1) // 2)
        if need >= len(group) and self._hull_fraction(group, now_s) < HULL_FRACTION_FACTOR * a.min_triggered_fraction:
            return [], group
        loc = self._locate(group, now_s, exclude={g.device_id for g in group})
        fits = ~loc.is_s & (np.abs(loc.residual_s) <= 3 * sig)
        members = [g for g, f in zip(group, fits) if f]
        # Outliers (false triggers, S read as P) are left out of the RMS: the capped misfit
        # keeps them from moving the epicentre much, but one pick 30 s off would fail the
        # RMS test of a group whose other picks fit well. Most of the group must fit.
        n_p = len(members)
        if n_p < max(a.min_devices, (len(group) + 1) // 2) or self._n_sites(members) < a.min_devices:
            return [], group
        rms = float(np.sqrt(np.mean(loc.residual_s[fits] ** 2)))
        if rms > a.max_rms_s or loc.n_silent_violations > max(1, n_p // 2):
            return [], group
        if self._triggered_fraction(loc, members, now_s) < a.min_triggered_fraction:
            return [], group
        picks = {g.device_id: g for g in members}
        ev = Event(event_id=self._new_id(loc.origin_time_s), location=loc, picks=picks)
        taken = {(g.device_id, g.onset_time_s) for g in members}
        self.pool = [p for p in self.pool if (p.device_id, p.onset_time_s) not in taken]
        self.events.append(ev)
        self._adopt_pool(ev)
        return self._refresh(ev, now_s, force=True), group

    def _adopt_pool(self, ev: Event) -> None:
        """Pooled P triggers that a newly formed event explains join it (the refresh that
        follows relocates with them): with thousands of phones, dozens arrive in the step
        that forms the event. Pooled later phases stay pooled, as they did before."""
        rest = []
        for p in self.pool:
            role = self._role(ev, p)
            if role == "P" and p.device_id not in ev.picks:
                ev.picks[p.device_id] = p
                ev.dirty_location = True
            else:
                rest.append(p)
        self.pool = rest

    def _new_id(self, origin_time_s: float) -> str:
        """An id from the first origin-time estimate (UTC, to the second), so that ids stay
        unique across engine restarts; a letter is added if one second holds two events."""
        stamp = datetime.fromtimestamp(origin_time_s, tz=timezone.utc).strftime("%Y%m%dT%H%M%S")
        eid = f"{self.id_prefix}{stamp}"
        suffix = 0
        while eid in self._ids:
            suffix += 1
            eid = f"{self.id_prefix}{stamp}{chr(ord('a') + suffix - 1)}"
        self._ids.add(eid)
        return eid

    def _n_sites(self, trigs) -> int:
        """Number of distinct sites among triggers (greedy: a trigger within
        ``min_site_separation_km`` of an earlier site joins it)."""
        sites: list[Trigger] = []
        for t in trigs:
            if all(
                float(distance_km(t.latitude, t.longitude, q.latitude, q.longitude))
                >= self.s.associate.min_site_separation_km
                for q in sites
            ):
                sites.append(t)
        return len(sites)

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
        for p in self.pool:
            if p.device_id not in ids:
                x, y = (p.longitude - lon0) * kx, (p.latitude - lat0) * KM_PER_DEG
                if _inside_convex(np.array([x]), np.array([y]), hx, hy)[0]:
                    ids.add(p.device_id)
                    k += 1
        if not len(idx):
            return 1.0
        busy = self._busy() | ids
        free = np.array([pr.ids[i] not in busy for i in idx.tolist()], dtype=bool)
        idx, px, py = idx[free], px[free], py[free]
        last, hb = pr.last[idx], pr.heartbeat[idx]
        a = self.s
        stream_ok = ~hb & (now_s - last <= 5.0) & (last - pr.started[idx] >= a.picker.warmup_s)
        phone_ok = hb & (now_s - last <= HEARTBEAT_WINDOW_S)
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
        out.update(p.device_id for p in self.pool)
        return out

    def _locate(self, trigs, now_s: float, exclude: set[str] = frozenset(), **search) -> Location:
        """Locate from the triggers' onsets, with the silent live devices as evidence.
        ``trigs`` should be at most ``MAX_LOCATE_PICKS`` long (see ``_locate_set``)."""
        slat, slon, seen = self._silent(now_s, self._busy() | exclude)
        return locate(
            [t.latitude for t in trigs],
            [t.longitude for t in trigs],
            [t.onset_time_s for t in trigs],
            now_s,
            slat,
            slon,
            self.s.locate,
            silent_seen_s=seen,
            **search,
        )

    # updates --------------------------------------------------------------------------
    @staticmethod
    def _locate_set(trigs: list[Trigger]) -> list[Trigger]:
        """At most MAX_LOCATE_PICKS picks: the earliest half (they constrain the epicentre
        most) and an even spread of the rest (they constrain the move-out)."""
        if len(trigs) <= MAX_LOCATE_PICKS:
            return trigs
        srt = sorted(trigs, key=lambda t: t.onset_time_s)
        half = MAX_LOCATE_PICKS // 2
        rest = srt[half:]
        step = len(rest) / half
        return srt[:half] + [rest[int(i * step)] for i in range(half)]

    def _relocate(self, ev: Event, now_s: float):
        trs = self._locate_set(list(ev.picks.values()))
        old = ev.location
        ev.location = self._locate(
            trs, now_s, center=(old.latitude, old.longitude), half_km=max(60.0, 3 * old.horizontal_error_km)
        )
        # picks the new solution reads as S are later phases, not P (while the event is
        # small: in a large one a misfit pick is capped anyway, and demoting picks of the
        # locate subset one relocation after another lets the solution drift)
        if len(ev.picks) < BATCH_PICKS:
            for t, is_s, r in zip(trs, ev.location.is_s, ev.location.residual_s):
                if is_s or abs(r) > 3 * self.s.locate.pick_sigma_s:
                    if len(ev.picks) > self.s.associate.min_devices:
                        ev.later[t.device_id] = ev.picks.pop(t.device_id)
        ev.dirty_location = False

    def _magnitude(self, ev: Event, now_s: float):
        loc = ev.location
        trs = list(ev.picks.values()) + list(ev.later.values())
        lat = np.array([t.latitude for t in trs])
        lon = np.array([t.longitude for t in trs])
        epi = distance_km(loc.latitude, loc.longitude, lat, lon)
        hypo = np.hypot(epi, loc.depth_km)
        tab = default_table()
        tp, ts = tab.times_s(epi, loc.depth_km)
        tp = loc.origin_time_s + tp
        ts = loc.origin_time_s + ts
        seen_until = np.array([t.onset_time_s + t.window_s for t in trs])
        wa = np.array([t.wa_horizontal_nm for t in trs])
        noise = np.array([t.noise_wa_nm for t in trs])
        pgv = np.array([t.pgv_cm_s for t in trs])
        usable = wa > self.s.magnitude.detection_snr * np.maximum(noise, 1e-9)
        # one estimate per device: its later-phase trigger may hold the larger amplitude
        ids = [t.device_id for t in trs]
        best: dict[str, int] = {}
        for i, did in enumerate(ids):
            if did not in best or wa[i] > wa[best[did]]:
                best[did] = i
        idx = np.array(sorted(best.values()))
        args = (wa[idx], pgv[idx], hypo[idx], loc.depth_km, seen_until[idx], tp[idx], ts[idx], usable[idx])
        ev.magnitude, ev.magnitude_sigma = self_consistent_magnitude(lambda m: event_magnitude(*args, m), ev.magnitude)

    def _refresh_soon(self, ev: Event, now_s: float) -> list[EventUpdate]:
        """Refresh now while the event is small; a large one waits for the step's end
        (``tick``), so that a thousand picks cost one relocation, not a thousand."""
        if len(ev.picks) < BATCH_PICKS:
            return self._refresh(ev, now_s)
        ev.dirty = True
        return []

    @staticmethod
    def _relocation_due(ev: Event, now_s: float) -> bool:
        """A large event (hundreds of picks: its epicentre moves by a few km at most as the
        wave front adds picks) is relocated once per ``RELOCATE_LARGE_S`` or when its picks
        grew by a quarter, not at every engine step; its magnitude still follows every
        step. A relocation costs milliseconds to tens of them on a large network, and each
        step's work is on the alert path."""
        if len(ev.picks) < RELOCATE_LARGE_PICKS:
            return True
        return now_s - ev.located_s >= RELOCATE_LARGE_S or len(ev.picks) >= 1.25 * ev.located_picks

    def _refresh(self, ev: Event, now_s: float, force: bool = False) -> list[EventUpdate]:
        ev.dirty = False
        if ev.dirty_location:
            if self._relocation_due(ev, now_s):
                self._relocate(ev, now_s)
                ev.located_s, ev.located_picks = now_s, len(ev.picks)
            else:
                ev.dirty = True  # relocated at a later step
        self._magnitude(ev, now_s)
        return self._maybe_issue(ev, now_s, force)

    def _maybe_issue(self, ev: Event, now_s: float, force: bool = False) -> list[EventUpdate]:
        loc = ev.location
        last = ev.last
        if not force and last is not None:
            moved = float(distance_km(last.latitude, last.longitude, loc.latitude, loc.longitude))
            changed = (
                abs(ev.magnitude - last.magnitude) >= MAG_STEP
                or moved >= LOC_STEP_KM
                or abs(loc.depth_km - last.depth_km) >= DEPTH_STEP_KM
                or len(ev.picks) != last.n_devices
            )
            if not changed:
                return []
        if not math.isfinite(ev.magnitude):
            return []
        if ev.version == 0 and not self._established_enough(ev):
            return []  # located and sized, not announced: see _established_enough
        ev.version += 1
        upd = EventUpdate(
            event_id=ev.event_id,
            version=ev.version,
            issued_at_s=now_s,
            origin_time_s=loc.origin_time_s,
            latitude=round(loc.latitude, 4),
            longitude=round(loc.longitude, 4),
            depth_km=loc.depth_km,
            magnitude=round(ev.magnitude, 2),
            magnitude_sigma=round(ev.magnitude_sigma, 2),
            n_devices=len(ev.picks),
            horizontal_error_km=round(loc.horizontal_error_km, 1),
            device_ids=tuple(sorted(ev.picks)),
        )
        ev.last = upd
        return [upd]

    def _established_enough(self, ev: Event) -> bool:
        """Whether enough of the event's P picks come from devices that are not new
        (``Settings.associate.new_device_s``) to announce it. An attacker who enrols
        hundreds of pseudonyms and replays a real quake's triggers through them, shifted in
        time and place, sends a physically perfect earthquake with valid signatures; what
        gives it away is that none of those devices was there before. The picks of new
        devices still locate and size an event announced on established ones."""
        a = self.s.associate
        if self.is_new is None or a.new_device_s <= 0:
            return True
        is_new, new_s = self.is_new, a.new_device_s
        est = sum(1 for t in ev.picks.values() if not is_new(t.device_id, t.onset_time_s, new_s))
        return est >= a.min_devices and est >= a.min_established_share * len(ev.picks)

    # clock ----------------------------------------------------------------------------
    def tick(self, now_s: float) -> list[EventUpdate]:
        """Time-driven work: close old events, retract events whose support collapsed."""
        out = self._end_of_step(now_s)
        a = self.s.associate
        # forget finished events once no late trigger can concern them any more
        self.events = [
            e for e in self.events if not (e.closed or e.retracted) or now_s - e.location.origin_time_s < 2 * a.event_ttl_s
        ]
        for ev in self._open_events():
            age = now_s - ev.location.origin_time_s
            if age > a.event_ttl_s:
                ev.closed = True
                continue
            if ev.dirty:
                out.extend(self._refresh(ev, now_s))
            # A young event with few picks is re-checked against the devices that have
            # stayed silent since. The check's location is not adopted: with three or four
            # picks a relocation driven by silence alone can wander off; picks joining
            # are what move an event.
            if len(ev.picks) <= a.min_devices + 1 and age < 60.0 and ev.last is not None:
                if now_s >= ev.next_check_s:
                    ev.next_check_s = now_s + 2.0
                    old = ev.location
                    check = self._locate(
                        self._locate_set(list(ev.picks.values())),
                        now_s,
                        center=(old.latitude, old.longitude),
                        half_km=max(60.0, 3 * old.horizontal_error_km),
                    )
                    n_p = len(ev.picks)
                    frac = self._triggered_fraction(check, list(ev.picks.values()), now_s)
                    if check.n_silent_violations > max(2, n_p) or frac < 0.5 * a.min_triggered_fraction:
                        ev.retracted = True
                        ev.version += 1
                        last = ev.last
                        upd = msgspec.structs.replace(last, version=ev.version, issued_at_s=now_s, retracted=True)
                        ev.last = upd
                        out.append(upd)
                    else:
                        out.extend(self._refresh(ev, now_s))
        return out



def self_consistent_magnitude(estimate, guess: float, tol: float = 0.02) -> tuple[float, float]:
    """The magnitude ``m`` with ``estimate(m) = (m, sigma)``: which amplitudes are complete
    depends on the rupture duration, i.e. on the magnitude assumed. A longer rupture
    leaves fewer amplitudes complete, which mostly lowers the estimate, so iterating from
    the last value swung between two answers (M6.8 and M7.4 on consecutive steps of the
    demo's M6.6, one phone apart). The crossing of ``estimate(m) - m`` found by bisection is
    a function of the data alone, not of the path; where the estimate jumps across the
    diagonal (a set of amplitudes turning complete) it is the magnitude of the jump.
    ``guess`` (the last value, NaN for a new event) only places the first bracket."""
    m0, s0 = estimate(guess)
    if not math.isfinite(m0):
        return m0, s0
    if math.isfinite(guess):
        lo = hi = guess
        g_lo = g_hi = m0 - guess
    else:  # a new event: start from what the duration-free estimate says
        lo = hi = m0
        m1, s1 = estimate(m0)
        g_lo = g_hi = m1 - m0
        if abs(g_lo) < tol:
            return m1, s1
    if abs(g_lo) < tol:
        return m0, s0
    step = 0.25
    # bracket: estimate(lo) >= lo and estimate(hi) <= hi
    while g_lo < 0 and lo > 0.0:
        lo -= step
        g_lo = estimate(lo)[0] - lo
        step *= 2
    step = 0.25
    while g_hi > 0 and hi < 10.0:
        hi += step
        g_hi = estimate(hi)[0] - hi
        step *= 2
    if not (g_lo >= 0 >= g_hi):
        return m0, s0  # no crossing within M0-10: keep the plain estimate
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        if estimate(mid)[0] >= mid:
            lo = mid
        else:
            hi = mid
    m = 0.5 * (lo + hi)
    return m, estimate(m)[1]


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
