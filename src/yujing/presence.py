"""Who is alive and quiet: the devices whose silence is evidence.

Streaming sensors are known through their packets, phones through their heartbeats
(with the agent's word on whether the phone lies still enough to detect). The
associator asks it which devices should have triggered and did not."""

from __future__ import annotations

import math
from collections import deque
from itertools import repeat

import numpy as np

from .geo import KM_PER_DEG

#: a phone that sent a heartbeat within this many of its declared periods
#: (``HeartbeatMsg.every_s``) is online: one period plus half a period of slack for a
#: late one. Its silence counts up to AssociateSettings.phone_report_delay_s before the
#: engine clock (a trigger of a P onset before that would have arrived)
HEARTBEAT_WINDOW_PERIODS = 1.5
#: the window of a phone that declares no period (the protocol's default, a minute)
HEARTBEAT_WINDOW_S = HEARTBEAT_WINDOW_PERIODS * 60.0
#: after a (re)start, phones have checked in once fewer new ones than this share of those
#: known joined in the last second (Presence.settling)
SETTLED_GROWTH = 0.01


class Presence:
    """Which devices are alive and quiet, as arrays: a million phones are a million rows.

    Streaming sensors are seen through their packets (quiet up to the end of their newest
    packet, alive while packets keep coming, after a warm-up); phones through heartbeats
    (alive for ``HEARTBEAT_WINDOW_PERIODS`` of their declared period; able to detect only
    when their agent says the phone lies still). Positions are a sensor's surveyed place or a phone's coarse cell."""

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
        self.window = np.full(cap, HEARTBEAT_WINDOW_S)  # s a phone stays online after a heartbeat
        self.since_s: float | None = None  # when this engine first heard a phone's heartbeat
        self._joined: deque[tuple[float, int]] = deque()  # (time, phones new then), the last second's

    def _slot(self, device_id: str) -> int:
        i = self.index.get(device_id)
        if i is None:
            i = self.index[device_id] = self.n
            self.ids.append(device_id)
            self.n += 1
            if self.n > len(self.lat):
                for name in ("lat", "lon", "last", "started", "heartbeat", "window"):
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

    def note_heartbeats(self, device_ids, latitudes, longitudes, time_s, ready=None, every_s=None):
        """Bulk: phones alive at ``time_s``; ``ready`` False for phones that cannot detect
        now (carried, moving): they are alive but their silence says nothing. ``every_s``:
        each phone's declared heartbeat period, s (None: the protocol's default minute)."""
        # known devices by one lookup each (a million phones check in again and again);
        # only the new ones take a slot one by one
        get = self.index.get
        found = [get(d, -1) for d in device_ids]
        idx = np.array(found, dtype=np.int64) if found else np.zeros(0, dtype=np.int64)
        new = np.flatnonzero(idx < 0)
        if len(new):
            slot = self._slot
            for k in new.tolist():
                idx[k] = slot(device_ids[k])
        ok = np.ones(len(idx), dtype=bool) if ready is None else np.asarray(ready, dtype=bool)
        self.lat[idx] = latitudes
        self.lon[idx] = longitudes
        self.heartbeat[idx] = True
        self.window[idx] = HEARTBEAT_WINDOW_S if every_s is None else HEARTBEAT_WINDOW_PERIODS * np.asarray(every_s, dtype=float)
        self.last[idx] = np.where(ok, time_s, -np.inf)
        self.started[idx] = np.minimum(self.started[idx], time_s)
        if len(idx):
            self.heard(time_s)
        if len(new):
            self._joined.append((float(time_s), len(new)))

    def heard(self, time_s: float) -> None:
        """A phone's heartbeat reached the server at ``time_s`` (the live service says so on
        receipt, before the step that feeds it: the first starts the settling time)."""
        if self.since_s is None:
            self.since_s = float(time_s)

    def settling(self, now_s: float, settle_s: float) -> bool:
        """True while phones are still checking in after the first heartbeat this engine
        heard (a start or restart: each phone that (re)connects sends one), so that the
        silence around a place is not yet known: within ``settle_s`` of it, unless the
        roll call has stopped growing (fewer new phones in the last second than
        ``SETTLED_GROWTH`` of those known; a dashboard replay sends its minute of
        heartbeats at once). An engine that hears no heartbeats at all (sensors,
        trigger-only replays) has no phone presence to wait for."""
        if self.since_s is None or now_s - self.since_s >= settle_s:
            return False
        if self.n == 0:
            return True  # heard, not yet fed: nobody is known
        j = self._joined
        while j and j[0][0] < now_s - 1.0:
            j.popleft()
        return sum(k for _, k in j) > SETTLED_GROWTH * self.n

    def is_stream(self, device_id: str) -> bool:
        """A device known by its packets (a fixed sensor streaming), not a phone."""
        i = self.index.get(device_id)
        return i is not None and not self.heartbeat[i]

    def in_box(self, lat_min: float, lat_max: float, lon_min: float, lon_max: float) -> np.ndarray:
        """Rows (indices) whose position lies strictly inside a latitude/longitude box."""
        n = self.n
        lat, lon = self.lat[:n], self.lon[:n]
        return np.flatnonzero((lat > lat_min) & (lat < lat_max) & (lon > lon_min) & (lon < lon_max))

    def silent(self, now_s: float, busy: set[str], warmup_s: float, report_delay_s: float = 2.5, kinds: bool = False,
               box: tuple[float, float, float, float] | None = None):
        """Positions and 'quiet up to' times of the live devices not in ``busy`` (and,
        with ``kinds``, which of them are phones). ``box`` (lat_min, lat_max, lon_min,
        lon_max): only the devices strictly inside it, in row order (a million phones are
        a million rows; a test of one place needs the few thousand around it)."""
        n = self.n
        if box is None:
            rows = None
            last, started, hb = self.last[:n], self.started[:n], self.heartbeat[:n]
            lat, lon, window = self.lat[:n], self.lon[:n], self.window[:n]
        else:
            rows = self.in_box(*box)
            last, started, hb = self.last[rows], self.started[rows], self.heartbeat[rows]
            lat, lon, window = self.lat[rows], self.lon[rows], self.window[rows]
        stream_ok = ~hb & (now_s - last <= 5.0) & (last - started >= warmup_s)
        phone_ok = hb & (now_s - last <= window)
        ok = stream_ok | phone_ok
        if busy:
            if rows is not None and len(rows) < len(busy):
                # a quake's burst makes tens of thousands of devices busy, and a box holds
                # a few thousand rows: ask each row rather than look up every busy id
                ids = self.ids
                ok &= np.fromiter((ids[r] not in busy for r in rows.tolist()), bool, len(rows))
            else:
                found = np.fromiter(map(self.index.get, busy, repeat(-1)), np.int64, len(busy))
                found = found[found >= 0]
                if rows is None:
                    ok[found] = False
                elif len(found) and len(rows):
                    taken = np.zeros(n, dtype=bool)
                    taken[found] = True
                    ok &= ~taken[rows]
        seen = np.where(hb, now_s - report_delay_s, last)
        if kinds:
            return lat[ok], lon[ok], seen[ok], hb[ok]
        return lat[ok], lon[ok], seen[ok]


def box_around(latitude: float, longitude: float, radius_km: float) -> tuple[float, float, float, float] | None:
    """A latitude/longitude box holding every point within ``radius_km`` of a place (with
    a margin), for :meth:`Presence.silent`; None where such a box would reach a pole or
    cross the antimeridian (then every row is read)."""
    r = radius_km * 1.01 + 1.0
    dlat = r / KM_PER_DEG
    top = abs(latitude) + dlat
    if top >= 89.0:
        return None
    dlon = r / (KM_PER_DEG * math.cos(math.radians(top)))
    if abs(longitude) + dlon >= 180.0:
        return None
    return latitude - dlat, latitude + dlat, longitude - dlon, longitude + dlon
