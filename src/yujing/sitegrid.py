"""Site conditions (Vs30) per place, from a user's grid.

Ground motion depends strongly on the ground: soft lake-bed clay (Vs30 < 200 m/s) shakes
several times harder than rock (760 m/s). yujing assumes rock unless given a Vs30 grid: a
CSV of ``latitude,longitude,vs30_m_s`` points (for instance sampled from the USGS global
Vs30 model or a national microzonation map), looked up by nearest point.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from .geo import KM_PER_DEG


class Vs30Grid:
    """Nearest-point Vs30 lookup (m/s). Places farther than ``max_distance_km`` from every
    grid point get ``default_m_s``."""

    def __init__(self, latitude, longitude, vs30_m_s, default_m_s: float = 760.0, max_distance_km: float = 10.0):
        lat = np.asarray(latitude, dtype=float)
        lon = np.asarray(longitude, dtype=float)
        vs = np.asarray(vs30_m_s, dtype=float)
        if not (lat.shape == lon.shape == vs.shape) or lat.ndim != 1 or len(lat) == 0:
            raise ValueError("a Vs30 grid needs equally long, non-empty latitude, longitude and vs30 columns")
        bad = ~np.isfinite(vs) | (vs < 50.0) | (vs > 5000.0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"Vs30 grid point {i} has vs30 {vs[i]} m/s, outside 50-5000 m/s")
        self._ref_lat = float(np.mean(lat))
        self._tree = cKDTree(self._xy(lat, lon))
        self._vs = vs
        self.default_m_s = default_m_s
        self.max_distance_km = max_distance_km

    def min_vs30_m_s(self) -> float:
        """The lowest Vs30 any place can get from this grid (m/s): its softest point or
        the default, whichever is lower (the most amplified site, for bounds)."""
        return float(min(self._vs.min(), self.default_m_s))

    def _xy(self, lat, lon):
        c = math.cos(math.radians(self._ref_lat))
        return np.column_stack([np.asarray(lat) * KM_PER_DEG, np.asarray(lon) * KM_PER_DEG * c])

    @classmethod
    def from_csv(cls, path: str | Path, **kw) -> "Vs30Grid":
        """Read ``latitude,longitude,vs30_m_s`` rows (a header line with those names)."""
        lat, lon, vs = [], [], []
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            need = {"latitude", "longitude", "vs30_m_s"}
            if not need <= set(reader.fieldnames or ()):
                raise ValueError(f"{path}: the header must name latitude, longitude, vs30_m_s (got {reader.fieldnames})")
            for n, row in enumerate(reader, start=2):
                try:
                    lat.append(float(row["latitude"]))
                    lon.append(float(row["longitude"]))
                    vs.append(float(row["vs30_m_s"]))
                except ValueError:
                    raise ValueError(f"{path}:{n}: not a number in {row}") from None
        return cls(lat, lon, vs, **kw)

    def vs30_at(self, latitude, longitude) -> np.ndarray:
        """Vs30 (m/s) at each place."""
        d, i = self._tree.query(self._xy(np.atleast_1d(latitude), np.atleast_1d(longitude)))
        return np.where(d <= self.max_distance_km, self._vs[i], self.default_m_s)
