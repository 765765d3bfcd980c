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


# ------------------------------------------------------------------ recorded shaking


@dataclass(frozen=True)
class RecordedPGA:
    """Peak horizontal acceleration a device recorded (g): the geometric mean of the two
    horizontal components' peaks after a 0.075 Hz high-pass (close to the RotD50 the
    ground-motion models predict), with the same measure of the noise before the quake."""

    device_id: str
    latitude: float
    longitude: float
    pga_g: float
    noise_g: float


def recorded_pga(event_dir: Path, devices: dict[str, Device], origin_time_s: float) -> list[RecordedPGA]:
    """Read a folder's recordings once more and measure each device's horizontal PGA after
    ``origin_time_s`` and its noise in the minute before."""
    from scipy import signal

    from .ingest import Ingest
    from .rejects import Rejects
    from .sources.openeew import iter_packets

    rejects = Rejects()
    ingest = Ingest(devices, rejects)
    per: dict[str, list] = {}
    for p in iter_packets(event_dir, devices, rejects):
        q = ingest.accept(p)  # the engine's own clock correction
        if q is not None:
            per.setdefault(q.device_id, []).append(q)
    out = []
    for did, pk in per.items():
        sr = pk[0].sample_rate_hz
        if any(q.sample_rate_hz != sr for q in pk):
            continue
        n = [len(q.samples_gal) for q in pk]
        t = np.concatenate([q.end_time_s - (k - 1 - np.arange(k)) / sr for q, k in zip(pk, n)])
        yz = np.concatenate([q.samples_gal[:, 1:] for q in pk])
        b, a = signal.butter(2, 0.075 / (sr / 2), "highpass")
        f = signal.lfilter(b, a, yz - yz[: int(10 * sr)].mean(axis=0), axis=0)
        after = t >= origin_time_s - 5.0
        before = (t < origin_time_s - 5.0) & (t >= origin_time_s - 65.0)
        if after.sum() < sr or before.sum() < sr:
            continue
        peak = np.sqrt(np.abs(f[after, 0]).max() * np.abs(f[after, 1]).max())
        noise = np.sqrt(np.abs(f[before, 0]).max() * np.abs(f[before, 1]).max())
        dev = devices[did]
        out.append(RecordedPGA(did, dev.latitude, dev.longitude, peak / 980.665, noise / 980.665))
    return out


@dataclass(frozen=True)
class PgaResidual:
    device_id: str
    distance_km: float
    observed_g: float
    predicted_g: float
    model: str

    @property
    def log10_residual(self) -> float:
        """log10(observed / predicted)."""
        return math.log10(self.observed_g / self.predicted_g)


def pga_residuals(
    event_dir: Path, devices: dict[str, Device], final: EventUpdate, model: str | None = None, min_snr: float = 3.0
) -> list[PgaResidual]:
    """Predicted PGA (from the event's final location and magnitude, Vs30 760 m/s) against
    the PGA each device recorded; devices whose record does not stand ``min_snr`` above
    their noise are left out (their PGA is the noise's, not the quake's)."""
    from .shaking import choose_model, forecast

    model = model or choose_model(final.latitude, final.longitude, final.depth_km)
    rec = [r for r in recorded_pga(event_dir, devices, final.origin_time_s) if r.pga_g > min_snr * r.noise_g]
    if not rec:
        return []
    lat = np.array([r.latitude for r in rec])
    lon = np.array([r.longitude for r in rec])
    sh = forecast(final.latitude, final.longitude, final.depth_km, final.magnitude, lat, lon, model=model)
    epi = distance_km(final.latitude, final.longitude, lat, lon)
    return [
        PgaResidual(r.device_id, float(d), r.pga_g, float(p), model)
        for r, d, p in zip(rec, np.atleast_1d(epi), np.atleast_1d(sh.pga_g))
    ]
