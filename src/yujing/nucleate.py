"""New events: from pooled triggers to a quake, or to nothing.

A new event needs ``min_devices`` pooled triggers at distinct sites whose onsets are
pairwise consistent with P-wave move-out, a cheap polygon test of the silence around
them, then a joint location that fits (RMS, silent devices, the triggered share). Each
attempt costs a locate, so an engine step has a budget of attempts; what is left over
is tried at the step's end. The associator mixes this in."""

from __future__ import annotations

import math
from datetime import datetime, timezone

import numpy as np

from .event import Event
from .evidence import HULL_FRACTION_FACTOR, RETRACT_FRACTION_FACTOR
from .geo import KM_PER_DEG, distance_km
from .magnitude import _rupture_length_km, rupture_duration_s
from .records import EventUpdate, Trigger
from .traveltime import default_table

#: triggers tried together for a new event (the seed's nearest consistent ones), and
#: attempts per engine step: each attempt is one locate
NEW_EVENT_PICKS = 6
NEW_EVENT_TRIES = 3


class NewEvents:
    """Forming new events (mixed into the Associator: it reads and changes ``pool``,
    ``events``, the step's budget and the event ids)."""

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
        (the newest are the likeliest to complete a group), within a fresh budget; then
        the seeds of groups left undecided (their phones not yet due to report)."""
        fresh, self._fresh = self._fresh, []
        deferred, self._deferred = self._deferred, []
        self._tries_left = NEW_EVENT_TRIES
        out: list[EventUpdate] = []
        seeds = fresh[::-1] + deferred  # undecided groups after the new triggers
        if seeds:
            in_pool = {id(p) for p in self.pool}
            for i, seed in enumerate(seeds):
                if id(seed) not in in_pool:
                    continue
                made = self._attempt(seed, now_s)
                if made is None:
                    # out of budget: undecided groups wait for the next step (new
                    # triggers' seeds do not: a later trigger of theirs brings them back)
                    self._deferred += [d for d in seeds[max(i, len(fresh)):] if id(d) in in_pool]
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
        cols = self._pool_cols.of(self.pool)
        live = now_s - cols.onset <= a.candidate_ttl_s
        if not live.all():  # (the list is rebuilt only when a trigger expired)
            keep = np.flatnonzero(live)
            pool = self.pool
            self.pool = [pool[i] for i in keep.tolist()]
            cols = self._pool_cols.of(self.pool)  # a new list: its columns afresh
        if len(self.pool) < a.min_devices:
            return [], []
        # Greedy clique around the seed, nearest devices first: the triggers of a real
        # quake cluster in space, while false triggers (a phone picked up, a door) are
        # scattered; "earliest first" would let one false trigger tens of seconds early and
        # 200 km away (still within move-out) into every group and spoil the fit.
        # (_consistent_with on the pool's columns, then the seed and its device left out)
        d_all = distance_km(newest.latitude, newest.longitude, cols.lat, cols.lon)
        ok = (d_all <= a.max_pair_distance_km) & (
            np.abs(newest.onset_time_s - cols.onset) <= default_table().p_time_s(d_all, 0.0) + a.moveout_slack_s
        )
        pool = self.pool
        idx = [i for i in np.flatnonzero(ok).tolist() if pool[i] is not newest and pool[i].device_id != newest.device_id]
        if len(idx) < a.min_devices - 1:
            return [], []
        cand = [pool[i] for i in idx]
        near = np.argsort(d_all[idx], kind="stable")
        group = [newest]
        ids = {newest.device_id}
        sep = a.min_site_separation_km
        for k in near.tolist():
            p = cand[k]
            # the smallest group that can stand (min_devices sites): a larger one reaches
            # past the quake's own triggers to false ones far away while few have arrived,
            # and one false pick 30 s early can carry the origin time and the epicentre.
            # (Members lie at distinct sites, below: their number is the sites'.)
            if len(group) >= NEW_EVENT_PICKS or len(group) >= a.min_devices:
                break
            if p.device_id in ids:
                continue
            # a trigger at a member's site adds no site: in a city of thousands of still
            # phones the seed's nearest triggers all lie within one site, and a group of
            # them never stood (a quake right under the city went unannounced); the
            # event, once formed, takes them in from the pool
            if any(abs(p.latitude - g.latitude) * KM_PER_DEG < sep and
                   float(distance_km(p.latitude, p.longitude, g.latitude, g.longitude)) < sep for g in group):
                continue
            if self._consistent_with(p, group).all():
                group.append(p)
                ids.add(p.device_id)
        if len(group) < a.min_devices:
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
        k, quiet, pending = self._fraction_terms(loc, members, now_s)
        if k / (k + quiet) < a.min_triggered_fraction:
            return [], group
        if pending > quiet and k / (k + quiet + pending) < RETRACT_FRACTION_FACTOR * a.min_triggered_fraction:
            # Undecided: most of the phones around are not due to have reported yet, and
            # were they all to stay quiet the event would be retracted. Three phones of a
            # city that trigger by chance within a second fit a source right under them,
            # whose P reached thousands of phones a second ago: announced then, it was an
            # M8 with an alert, retracted seconds later. Tried again next step; a real
            # quake's triggers from those phones arrive meanwhile and carry it.
            self._deferred.append(newest)
            return [], group
        if self.presence.settling(now_s, a.presence_settle_s) and not any(self.presence.is_stream(g.device_id) for g in members):
            # phones still checking in after a (re)start: the quiet phones around are
            # unknown, and three chance triggers anywhere made an M8 in the first second
            self._deferred.append(newest)
            return [], group
        if self._inside_open_rupture(loc):
            return [], group
        picks = {g.device_id: g for g in members}
        ev = Event(event_id=self._new_id(loc.origin_time_s), location=loc, picks=picks)
        taken = {(g.device_id, g.onset_time_s) for g in members}
        self.pool = [p for p in self.pool if (p.device_id, p.onset_time_s) not in taken]
        self.events.append(ev)
        self._adopt_pool(ev)
        return self._refresh(ev, now_s, force=True), group

    def _inside_open_rupture(self, loc) -> bool:
        """Could a new event at ``loc`` be a part of an open one's rupture rather than a
        quake of its own? Its epicentre within the open event's rupture length (Wells &
        Coppersmith) plus three times both horizontal errors, and its origin time between
        the open one's and the end of its rupture (each widened by three pick sigmas and
        the origin time a mislocation of that distance trades for, ~1 s per 6 km).

        A large quake's phones at the edges of the network (S read as P, a late wave
        front) formed second events beside the real one: in the demo, the M7.9 Wenchuan
        one 18 km and 2.8 s from the first (it swung M7.0-8.5 and ended 180 km off), the
        M6.6 Lushan one 85 km off, 7 s later, located within 141 km. Both got alerts of their own.
        The cost: an aftershock inside a large rupture's area during its first seconds
        is not announced apart; the main event's alert already covers that area."""
        for ev in self._open_events():
            o = ev.location
            m = ev.magnitude if math.isfinite(ev.magnitude) else 0.0
            d = float(distance_km(o.latitude, o.longitude, loc.latitude, loc.longitude))
            reach = float(_rupture_length_km(m)) + 3.0 * (o.horizontal_error_km + loc.horizontal_error_km)
            slack = 3.0 * self.s.locate.pick_sigma_s + d / 6.0
            dt = loc.origin_time_s - o.origin_time_s
            if d <= reach and -slack <= dt <= rupture_duration_s(m) + slack:
                return True
        return False

    def _adopt_pool(self, ev: Event) -> None:
        """Pooled P triggers that a newly formed event explains join it (the refresh that
        follows relocates with them): with thousands of phones, dozens arrive in the step
        that forms the event. Pooled later phases stay pooled, as they did before.

        The roles of the whole pool are one array expression (:meth:`_role_codes`: a
        quake's burst pools tens of thousands, and one :meth:`_role` each cost 6.5 s in
        one engine step); a device already among the picks is never a P, as in
        :meth:`_role`, which the loop checks as the picks grow."""
        pool = self.pool
        if not pool:
            return
        cols = self._pool_cols.of(pool)
        codes = self._role_codes(ev, cols.lat, cols.lon, cols.onset).tolist()
        rest = []
        for p, c in zip(pool, codes):
            if c == 1 and p.device_id not in ev.picks:
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
