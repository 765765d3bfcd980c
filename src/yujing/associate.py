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

The stages live in their own modules: who is alive and quiet (:mod:`.presence`), silence
as evidence (:mod:`.evidence`), forming new events (:mod:`.nucleate`), sizing them
(:mod:`.sizing`); this module joins triggers to events and decides what to announce.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

import msgspec
import numpy as np

from .event import Event
from .evidence import REPORT_DELAY_SAMPLES, RETRACT_FRACTION_FACTOR, PoolColumns, SilenceEvidence
from .geo import distance_km
from .locate import Location, locate, search_centre
from .nucleate import NEW_EVENT_TRIES, NewEvents
from .presence import Presence
from .records import Device, EventUpdate, Trigger
from .settings import Settings
from .sizing import size_event
from .traveltime import default_table

MAG_STEP = 0.1
#: before its first announcement, an event's onsets must rise with the P travel times to
#: their sites at least half as fast as the wave (a real quake's: 0.9-1.2 in the demo):
#: see Associator._seen_travelling
MIN_MOVEOUT_SLOPE = 0.5
#: from this many P picks on, the move-out is judged by the regression; below, by the
#: spread of the onsets alone (Associator._seen_travelling)
MOVEOUT_REGRESSION_PICKS = 10
#: events with at least this many P picks are refreshed once per engine step rather than
#: at every trigger and amplitude update (a quake felt by thousands of phones)
BATCH_PICKS = 25
#: events with at least this many P picks are relocated at most every RELOCATE_LARGE_S
#: (or when their picks grew by a quarter): see Associator._relocation_due
RELOCATE_LARGE_PICKS = 100
RELOCATE_LARGE_S = 1.0
#: a large event (RELOCATE_LARGE_PICKS P picks or more) whose P picks did not change since
#: it was last sized, only their amplitudes (the phones' updates go on for a minute or
#: two after the wave front has passed them all), is re-sized at most this often: see
#: Associator._resize_due
RESIZE_LARGE_S = 1.0
#: picks used to locate a large event: the earliest half and an even spread of the rest
MAX_LOCATE_PICKS = 40
#: devices an event is sized from: a larger event's are an even spread of them in the
#: order they joined (about the order of P arrival, so of distance). The magnitude is a
#: network estimate: from 2,000 it came within 0.05 of the full solve on a synthetic
#: 8,000-phone M6.2 (tests) and within 0.02 on the Kahramanmaras demo's 28,565 triggers
#: at 10-15 km depth; solving it over a burst's 45,000 took 100-200 ms a step, on the
#: alert path
MAX_SIZE_DEVICES = 2000
#: an update is issued when the epicentre moves this far or the depth this much
LOC_STEP_KM = 2.0
DEPTH_STEP_KM = 10.0




def moveout_fit(tp_s: np.ndarray, onset_s: np.ndarray) -> tuple[float, float]:
    """How picks' onsets follow the wave's travel across their sites: (slope, span s) of
    the onsets regressed on the P travel times to the sites (both s, the onsets from any
    reference); a slope of 0 when the travel times do not vary."""
    dt = tp_s - tp_s.mean()
    var_t = float(dt @ dt)
    span = float(tp_s.max() - tp_s.min()) if len(tp_s) else 0.0
    if var_t <= 0.0:
        return 0.0, span
    return float(dt @ (onset_s - onset_s.mean())) / var_t, span


class Associator(SilenceEvidence, NewEvents):
    """Turns triggers into events; see the module docstring. The silence around a
    candidate (:mod:`.evidence`) and the forming of new events (:mod:`.nucleate`) are
    mixed in from their own modules; the sizing is :func:`.sizing.size_event`."""

    def __init__(self, devices: dict[str, Device], settings: Settings | None = None, id_prefix: str = "yj"):
        self.s = settings or Settings()
        self.devices = devices
        self.pool: list[Trigger] = []
        self._pool_cols = PoolColumns()  # the pool's columns as arrays (evidence.PoolColumns)
        self.events: list[Event] = []
        self._ids: set[str] = set()
        self.id_prefix = id_prefix
        self.presence = Presence()
        self._fresh: list[Trigger] = []  # pooled in this engine step, not yet tried
        self._deferred: list[Trigger] = []  # seeds of undecided groups: tried again next step
        self._delays: deque[float] = deque(maxlen=REPORT_DELAY_SAMPLES)  # arrival - onset
        self._delay_cache: float | None = None
        self._delay_sorted: np.ndarray | None = None
        self._tries_left = NEW_EVENT_TRIES
        self._tried: set[int] = set()  # triggers in a failed group in this step
        self._sized: dict[str, tuple[float, int]] = {}  # event id -> (engine s, P picks) of its last sizing
        # (device id, onset s, new_device_s) -> whether the device enrolled itself too
        # recently to count toward announcing (the service's issuer knows); None: none is
        self.is_new: Callable[[str, float, float], bool] | None = None

    # liveness -------------------------------------------------------------------------
    def note_packet(self, device_id: str, end_time_s: float, reset: bool):
        dev = self.devices.get(device_id)
        if dev is not None:
            self.presence.note_packet(device_id, dev.latitude, dev.longitude, end_time_s, reset)





    # triggers -------------------------------------------------------------------------
    def add(self, trig: Trigger, now_s: float) -> list[EventUpdate]:
        """Take a trigger (``update == 0``) or an amplitude update; return event updates."""
        if not math.isfinite(trig.latitude) or not math.isfinite(trig.longitude):
            return []
        if trig.update > 0:
            return self._amplitude(trig, now_s)
        return self._add_first(trig, now_s, None, -1)

    def add_batch(self, trigs: list[Trigger], errors: list | None = None) -> list[EventUpdate]:
        """First triggers (``update == 0``) that arrived within one engine step, in arrival
        order, each associated as of its own arrival (``issued_at_s``): the same updates
        as :meth:`add` one by one. A large event (``BATCH_PICKS`` picks or more) is not
        relocated before the step's end (:meth:`_refresh_soon`), so the role of every
        trigger of the batch for it is one numpy expression (:meth:`_role_codes`); a
        young event, which may move with each pick, and an event formed within the batch
        are asked trigger by trigger as before.

        ``errors``: given a list, a trigger whose association raises is put there with
        the exception (``(trigger, exception)``) and the rest of the batch goes on, as it
        would have one by one; without it the exception propagates."""
        trigs = [t for t in trigs if math.isfinite(t.latitude) and math.isfinite(t.longitude)]
        if not trigs:
            return []
        codes = None
        if len(trigs) > 1:
            large = [ev for ev in self._open_events() if len(ev.picks) >= BATCH_PICKS]
            if large:
                n = len(trigs)
                lat = np.fromiter((t.latitude for t in trigs), float, n)
                lon = np.fromiter((t.longitude for t in trigs), float, n)
                onset = np.fromiter((t.onset_time_s for t in trigs), float, n)
                codes = {id(ev): self._role_codes(ev, lat, lon, onset).tolist() for ev in large}
        out: list[EventUpdate] = []
        for k, trig in enumerate(trigs):
            if errors is None:
                out += self._add_first(trig, trig.issued_at_s, codes, k)
                continue
            try:
                out += self._add_first(trig, trig.issued_at_s, codes, k)
            except Exception as exc:  # this trigger is lost, not the batch
                errors.append((trig, exc))
        return out

    def _add_first(self, trig: Trigger, now_s: float, codes: dict | None, k: int) -> list[EventUpdate]:
        self._delays.append(trig.issued_at_s - trig.onset_time_s)
        self._delay_cache = None
        self._delay_sorted = None
        for ev in self._open_events():
            c = codes.get(id(ev)) if codes is not None else None
            if c is None:
                role = self._role(ev, trig)
            elif trig.device_id in ev.picks:  # membership may change within the batch
                role = "later" if trig.onset_time_s > ev.picks[trig.device_id].onset_time_s else None
            else:
                role = _ROLES[c[k]]
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
        # most trigger messages of a quake are these (an update every second or so per
        # phone while it shakes): no list of the open events is made for each
        dev, onset = trig.device_id, trig.onset_time_s
        for ev in self.events:
            if ev.closed or ev.retracted:
                continue
            old = ev.picks.get(dev)
            if old is not None and old.onset_time_s == onset:
                ev.picks[dev] = trig
                return self._refresh_soon(ev, now_s)
            old = ev.later.get(dev)
            if old is not None and old.onset_time_s == onset:
                ev.later[dev] = trig
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
        tp = loc.origin_time_s + tab.p_time1(epi, loc.depth_km)
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
            + tab.p_time1(max(epi - loc.horizontal_error_km, 0.0), loc.depth_km)
            - self.s.associate.moveout_slack_s
        ):
            return "early"
        # after the P arrival and within the event's shaking there: S or coda
        if tp < trig.onset_time_s < tp + 30.0 + 0.25 * epi:
            return "later"
        return None

    def _role_codes(self, ev: Event, lat: np.ndarray, lon: np.ndarray, onset: np.ndarray) -> np.ndarray:
        """:meth:`_role` of many triggers at once, for triggers whose device is not among
        ``ev``'s picks (the caller checks that): 0 none, 1 "P", 2 "early", 3 "later"
        (:data:`_ROLES`). The same expressions, on arrays."""
        loc = ev.location
        tab = default_table()
        epi = distance_km(loc.latitude, loc.longitude, lat, lon)
        tp = loc.origin_time_s + tab.p_time_s(epi, loc.depth_km)
        slack = self.s.associate.moveout_slack_s
        tol = slack + 0.01 * epi + min(loc.horizontal_error_km, 30.0) / 6.0
        is_p = np.abs(onset - tp) <= tol
        early = (onset < tp) & (
            onset >= loc.origin_time_s + tab.p_time_s(np.maximum(epi - loc.horizontal_error_km, 0.0), loc.depth_km) - slack
        )
        later = (tp < onset) & (onset < tp + 30.0 + 0.25 * epi)
        return np.where(is_p, 1, np.where(early, 2, np.where(later, 3, 0))).astype(np.int8)

    def _fits_as_p(self, ev: Event, trig: Trigger, now_s: float) -> Location | None:
        """An early location can be tens of km off, and a P pick that does not fit its
        prediction may still fit the event once the event may move. A trigger before the
        predicted S arrival (a late one, or an early one that the location's own error
        allows: :meth:`_role`) is tried as P: kept if the relocated event fits it (residual
        within 3 sigma), stays within the RMS limit and gains no silent-device objection."""
        loc = ev.location
        epi = float(distance_km(loc.latitude, loc.longitude, trig.latitude, trig.longitude))
        ts = loc.origin_time_s + default_table().s_time1(epi, loc.depth_km)
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

    def _locate(self, trigs, now_s: float, exclude: set[str] = frozenset(), **search) -> Location:
        """Locate from the triggers' onsets, with the silent live devices as evidence.
        ``trigs`` should be at most ``MAX_LOCATE_PICKS`` long (see ``_locate_set``)."""
        centre = search.get("center") or search_centre([t.latitude for t in trigs], [t.longitude for t in trigs],
                                                       [t.onset_time_s for t in trigs], [t.late_onset for t in trigs])
        slat, slon, seen, phone = self._silent_near(now_s, self._busy() | exclude, centre)
        return locate(
            [t.latitude for t in trigs],
            [t.longitude for t in trigs],
            [t.onset_time_s for t in trigs],
            now_s,
            slat,
            slon,
            self.s.locate,
            silent_seen_s=seen,
            silent_phone=phone,
            picks_late=[t.late_onset for t in trigs],
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


    @staticmethod
    def _size_set(ev: Event) -> list[Trigger]:
        """The triggers an event is sized from: every P pick and later phase of at most
        ``MAX_SIZE_DEVICES`` devices, spread evenly over the order they joined."""
        picks, later = ev.picks, ev.later
        if len(picks) + len(later) <= MAX_SIZE_DEVICES:
            return list(picks.values()) + list(later.values())
        ids = list(picks) + [d for d in later if d not in picks]
        if len(ids) > MAX_SIZE_DEVICES:
            step = len(ids) / MAX_SIZE_DEVICES
            ids = [ids[int(i * step)] for i in range(MAX_SIZE_DEVICES)]
        out = [picks[d] for d in ids if d in picks]
        out += [later[d] for d in ids if d in later]
        return out

    def _magnitude(self, ev: Event, now_s: float):
        trs = self._size_set(ev)
        a = self.s.associate
        if self.is_new is not None and a.new_device_s > 0:
            # new devices do not size an event their elders can size: fakes enrolled an
            # hour ago, their picks fitting a real quake's published origin, must not be
            # able to inflate its magnitude and the alert areas with it
            is_new, new_s = self.is_new, a.new_device_s
            est = [t for t in trs if not is_new(t.device_id, t.onset_time_s, new_s)]
            if len(est) < len(trs) and len({t.device_id for t in est}) >= a.min_devices:
                trs = est
        ev.magnitude, ev.magnitude_sigma = size_event(ev.location, trs, self.s.magnitude.detection_snr, ev.magnitude)

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

    def _resize_due(self, ev: Event, now_s: float) -> bool:
        """Whether a dirty event is refreshed at this step's end. A large event whose P
        picks are the ones it was last sized with, and that needs no relocation now, has
        only amplitude updates pending: its magnitude (milliseconds to solve over
        hundreds of phones) follows them once per ``RESIZE_LARGE_S``, not at every step.
        While picks join (the wave front crossing the network, when the magnitude grows
        and the alerts with it) it is re-sized at every step as before."""
        n = len(ev.picks)
        if n < RELOCATE_LARGE_PICKS or (ev.dirty_location and self._relocation_due(ev, now_s)):
            return True
        last = self._sized.get(ev.event_id)
        return last is None or last[1] != n or now_s - last[0] >= RESIZE_LARGE_S

    def _refresh(self, ev: Event, now_s: float, force: bool = False) -> list[EventUpdate]:
        ev.dirty = False
        if ev.dirty_location:
            if self._relocation_due(ev, now_s):
                self._relocate(ev, now_s)
                ev.located_s, ev.located_picks = now_s, len(ev.picks)
            else:
                ev.dirty = True  # relocated at a later step
        self._magnitude(ev, now_s)
        self._sized[ev.event_id] = (now_s, len(ev.picks))
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
        if ev.version == 0 and not (self._established_enough(ev) and self._seen_travelling(ev)
                                    and self._silence_allows(ev, now_s)):
            return []  # located and sized, not announced: see those three
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

    def _close(self, ev: Event, now_s: float) -> list[EventUpdate]:
        """Stop updating ``ev``; its final solution goes out if it differs at all from the
        last one announced. Updates are sent only for changes that matter to an alert
        (``MAG_STEP``, ``LOC_STEP_KM``), so the last announced magnitude can lag the
        engine's own by up to 0.1: a catalogue, QuakeML or an operator wants the best."""
        ev.closed = True
        last = ev.last
        if last is None or last.retracted or not math.isfinite(ev.magnitude):
            return []
        loc = ev.location
        same = (
            round(ev.magnitude, 2) == last.magnitude
            and round(loc.latitude, 4) == round(last.latitude, 4)
            and round(loc.longitude, 4) == round(last.longitude, 4)
            and round(loc.depth_km, 1) == round(last.depth_km, 1)
            and len(ev.picks) == last.n_devices
        )
        return [] if same else self._maybe_issue(ev, now_s, force=True)

    def close_all(self, now_s: float) -> list[EventUpdate]:
        """The data have ended (end of a replay): close every open event with its final
        solution (UNIX s ``now_s``)."""
        out = []
        for ev in self._open_events():
            if ev.dirty:
                out.extend(self._refresh(ev, now_s))
            out.extend(self._close(ev, now_s))
        return out

    def _established_enough(self, ev: Event) -> bool:
        """Whether enough of the event's P picks come from devices that are not new
        (``Settings.associate.new_device_s``) to announce it. An attacker who enrols
        hundreds of pseudonyms and replays a real quake's triggers through them, shifted in
        time and place, sends a physically perfect earthquake with valid signatures; what
        gives it away is that none of those devices was there before. The picks of new
        devices still locate an event announced on established ones (and size it while
        fewer than min_devices established ones can: _magnitude)."""
        a = self.s.associate
        if self.is_new is None or a.new_device_s <= 0:
            return True
        is_new, new_s = self.is_new, a.new_device_s
        est = sum(1 for t in ev.picks.values() if not is_new(t.device_id, t.onset_time_s, new_s))
        return est >= a.min_devices and est >= a.min_established_share * len(ev.picks)

    def _silence_allows(self, ev: Event, now_s: float) -> bool:
        """The silence tests a new group passed when it formed (nucleate.py), held again
        for the event's picks when it is first announced: at least min_triggered_fraction
        of the phones around that are due to have reported triggered, and no waiting for a
        verdict most of them have not yet given. An event held back (:meth:`_seen_travelling`)
        and announced steps later must be judged on the phones due then: nine fakes whose
        triggers came 3 s ahead of 991 others (onsets within 1 s) were announced on ten of
        them, the rest quiet and not yet due. Asked of an event announced as it forms too,
        although its group was just judged: the event has taken in the pooled triggers
        since and reaches farther, over phones not yet due (asked only of events held back,
        nine fakes with onsets within 2 s were announced as they formed). Asking it costs a
        real quake where the move-out test held it back: the dense Luxian M6.0 of the demo
        waited 2.2 s more on one seed of five (docs/security.md)."""
        k, quiet, pending = self._fraction_terms(ev.location, list(ev.picks.values()), now_s)
        a = self.s.associate
        if k / (k + quiet) < a.min_triggered_fraction:
            return False
        return not (pending > quiet and k / (k + quiet + pending) < RETRACT_FRACTION_FACTOR * a.min_triggered_fraction)

    def _seen_travelling(self, ev: Event) -> bool:
        """Whether the event's P picks show the wave moving across them
        (``Settings.associate.min_moveout_s``, ``MIN_MOVEOUT_SLOPE``,
        ``MOVEOUT_REGRESSION_PICKS``). With that many picks or more, their onsets regressed
        on the P travel times from its location to their sites rise at least half as fast
        as the wave, and by ``min_moveout_s`` or more over those sites. With fewer, the
        onsets span ``min_moveout_s`` or more.

        A thousand fakes enrolled a day ahead in an area with nobody else around, triggering
        together, fit a source deep under the area (45 km for a 25 km wide area, 100 km for
        a 74 km one); no quiet phone is there to refuse them, and they were announced as an
        M7.2 (tests/test_attacks.py). Under a deep enough source the travel times to the
        area span seconds, but the fakes' onsets do not follow them: the slope is near
        zero (-0.02 to 0.32 measured) where a real quake's is near one (0.89-1.19 in the
        demo). A few picks are too few to regress: the first three to five strong-motion
        picks of the Napa M6.0 had slopes of 0.23-0.39 against a first location 15-20 km
        off, and ten fakes' onsets, which the location was fitted to, gave 0.89. What a few
        fakes triggering together cannot show is onsets spread over time. What this does
        not stop: fakes whose onsets are staggered to fit a source (the limit
        tests/test_attacks.py states for a replayed quake)."""
        need = self.s.associate.min_moveout_s
        if need <= 0:
            return True
        picks = ev.picks.values()
        n = len(ev.picks)
        onset = np.fromiter((t.onset_time_s for t in picks), float, n)
        if n < MOVEOUT_REGRESSION_PICKS:
            return bool(onset.max() - onset.min() >= need)
        loc = ev.location
        lat = np.fromiter((t.latitude for t in picks), float, n)
        lon = np.fromiter((t.longitude for t in picks), float, n)
        tp = default_table().p_time_s(distance_km(loc.latitude, loc.longitude, lat, lon), loc.depth_km)
        slope, span = moveout_fit(tp, onset - loc.origin_time_s)
        return slope >= MIN_MOVEOUT_SLOPE and slope * span >= need

    # clock ----------------------------------------------------------------------------
    def tick(self, now_s: float) -> list[EventUpdate]:
        """Time-driven work: the open events' (:meth:`tick_events`), then new events from
        the step's pooled triggers (:meth:`tick_new`)."""
        return self.tick_events(now_s) + self.tick_new(now_s)

    def tick_events(self, now_s: float) -> list[EventUpdate]:
        """The open events' time-driven work: refresh the ones that wait for the step's
        end, close old ones, retract those whose support collapsed. What an alert follows,
        so it comes before the new-event tries (tens of ms each, dozens a step in a
        burst), and a live service publishes it before running them."""
        a = self.s.associate
        # forget finished events once no late trigger can concern them any more
        self.events = [
            e for e in self.events if not (e.closed or e.retracted) or now_s - e.location.origin_time_s < 2 * a.event_ttl_s
        ]
        if len(self._sized) > len(self.events):
            keep = {e.event_id for e in self.events}
            self._sized = {k: v for k, v in self._sized.items() if k in keep}
        out: list[EventUpdate] = []
        for ev in self._open_events():
            out.extend(self._tick_event(ev, now_s))
        return out

    def tick_new(self, now_s: float) -> list[EventUpdate]:
        """New events from the triggers pooled in the step (:meth:`~yujing.nucleate.NewEvents._end_of_step`),
        and the first time-driven check of the events they made."""
        before = {id(e) for e in self.events}
        out = self._end_of_step(now_s)
        for ev in self._open_events():
            if id(ev) not in before:
                out.extend(self._tick_event(ev, now_s))
        return out

    def _tick_event(self, ev: Event, now_s: float) -> list[EventUpdate]:
        a = self.s.associate
        out: list[EventUpdate] = []
        age = now_s - ev.location.origin_time_s
        if age > a.event_ttl_s:
            out.extend(self._close(ev, now_s))
            return out
        if ev.dirty and self._resize_due(ev, now_s):
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
                if check.n_silent_violations > max(2, n_p) or frac < RETRACT_FRACTION_FACTOR * a.min_triggered_fraction:
                    ev.retracted = True
                    ev.version += 1
                    last = ev.last
                    upd = msgspec.structs.replace(last, version=ev.version, issued_at_s=now_s, retracted=True)
                    ev.last = upd
                    out.append(upd)
                else:
                    out.extend(self._refresh(ev, now_s))
        return out









_SLOWNESS: dict[tuple, float] = {}
#: :meth:`Associator._role_codes` -> the names :meth:`Associator._role` returns
_ROLES = (None, "P", "early", "later")


