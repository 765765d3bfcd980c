"""Scoring a replay against a catalogue, kept apart from detection.

Detection never reads a catalogue. After a replay, this module compares the updates with
``catalog.csv`` (one row per event folder: origin time, epicentre, magnitude) and counts
false events against the full network catalogue (``ssn_catalog.csv``): an event is false
when no catalogued quake lies within 30 s of its origin time and 300 km of its epicentre.

The "data-limited" delay is measured from the moment the P wave (iasp91, from the
catalogue hypocentre) reached the third device that recorded the quake: no network-based
system can announce before three devices have seen the P wave.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .geo import distance_km
from .records import Device, EventUpdate
from .traveltime import default_table

MATCH_TIME_S = 30.0
MATCH_DISTANCE_KM = 300.0
#: depth assumed where the catalogue gives none (typical of the Mexican subduction zone
#: interface); only the data-limited P times use it.
DEFAULT_DEPTH_KM = 20.0


@dataclass(frozen=True)
class CatalogEvent:
    key: str
    origin_time_s: float
    latitude: float
    longitude: float
    depth_km: float | None
    magnitude: float


def _time(s: str) -> float:
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def load_catalog(path: Path) -> list[CatalogEvent]:
    """Read ``catalog.csv`` (with ``event``) or ``ssn_catalog.csv`` (keyed by catalog_id)."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            depth = row.get("depth_km") or ""
            out.append(
                CatalogEvent(
                    key=row.get("event") or row.get("catalog_id") or "",
                    origin_time_s=_time(row["origin_time"]),
                    latitude=float(row["latitude"]),
                    longitude=float(row["longitude"]),
                    depth_km=float(depth) if depth else None,
                    magnitude=float(row["magnitude"]),
                )
            )
    return out


def matches(u: EventUpdate, c: CatalogEvent) -> bool:
    return (
        abs(u.origin_time_s - c.origin_time_s) <= MATCH_TIME_S
        and float(distance_km(u.latitude, u.longitude, c.latitude, c.longitude)) <= MATCH_DISTANCE_KM
    )


def p_at_nth_device(c: CatalogEvent, devices: list[Device], n: int = 3) -> float:
    """Time (UNIX s) the iasp91 P wave reaches the n-th nearest of ``devices``."""
    if len(devices) < n:
        return float("nan")
    lat = np.array([d.latitude for d in devices])
    lon = np.array([d.longitude for d in devices])
    epi = distance_km(c.latitude, c.longitude, lat, lon)
    depth = c.depth_km if c.depth_km is not None else DEFAULT_DEPTH_KM
    tp = np.sort(default_table().p_time_s(epi, depth))
    return c.origin_time_s + float(tp[n - 1])


@dataclass
class EventScore:
    key: str
    magnitude: float
    detected: bool
    event_id: str = ""
    first_delay_origin_s: float = math.nan
    first_delay_p3_s: float = math.nan
    first_location_error_km: float = math.nan
    final_location_error_km: float = math.nan
    first_magnitude_error: float = math.nan
    final_magnitude_error: float = math.nan
    final_magnitude: float = math.nan
    n_versions: int = 0


def score_folder(
    key: str,
    updates: list[EventUpdate],
    truth: CatalogEvent,
    recorded: list[Device],
) -> EventScore:
    """Score the updates of one folder against its catalogue event."""
    by_event: dict[str, list[EventUpdate]] = {}
    for u in updates:
        by_event.setdefault(u.event_id, []).append(u)
    cands = []
    for eid, us in by_event.items():
        # a withdrawn announcement is not a detection, whatever it said before
        if us[-1].retracted:
            continue
        if matches(us[-1], truth):
            cands.append((us[0].issued_at_s, eid, us))
    if not cands:
        return EventScore(key, truth.magnitude, False)
    _, eid, us = min(cands)
    first, final = us[0], us[-1]
    p3 = p_at_nth_device(truth, recorded, 3)
    return EventScore(
        key=key,
        magnitude=truth.magnitude,
        detected=True,
        event_id=eid,
        first_delay_origin_s=first.issued_at_s - truth.origin_time_s,
        first_delay_p3_s=first.issued_at_s - p3,
        first_location_error_km=float(distance_km(first.latitude, first.longitude, truth.latitude, truth.longitude)),
        final_location_error_km=float(distance_km(final.latitude, final.longitude, truth.latitude, truth.longitude)),
        first_magnitude_error=first.magnitude - truth.magnitude,
        final_magnitude_error=final.magnitude - truth.magnitude,
        final_magnitude=final.magnitude,
        n_versions=len(us),
    )


def false_events(updates: list[EventUpdate], catalog: list[CatalogEvent]) -> list[EventUpdate]:
    """Final updates of events that match no catalogued quake (30 s, 300 km)."""
    last: dict[str, EventUpdate] = {}
    for u in updates:
        last[u.event_id] = u
    times = np.array([c.origin_time_s for c in catalog])
    out = []
    for u in last.values():
        if u.retracted:
            continue
        near = np.flatnonzero(np.abs(times - u.origin_time_s) <= MATCH_TIME_S)
        if not any(matches(u, catalog[i]) for i in near):
            out.append(u)
    return out


@dataclass
class Summary:
    n_events: int
    n_detected: int
    n_false: int
    median_first_delay_p3_s: float
    median_final_location_error_km: float
    median_first_magnitude_error: float
    median_final_magnitude_error: float


def summarise(scores: list[EventScore], n_false: int) -> Summary:
    det = [s for s in scores if s.detected]

    def med(vals):
        return float(np.median(vals)) if len(vals) else math.nan

    return Summary(
        n_events=len(scores),
        n_detected=len(det),
        n_false=n_false,
        median_first_delay_p3_s=med([s.first_delay_p3_s for s in det]),
        median_final_location_error_km=med([s.final_location_error_km for s in det]),
        median_first_magnitude_error=med([abs(s.first_magnitude_error) for s in det]),
        median_final_magnitude_error=med([abs(s.final_magnitude_error) for s in det]),
    )
