"""First-arrival P and S travel times from a precomputed iasp91 table.

The table (``yujing/data/traveltime_iasp91.npz``, built by
``scripts/make_traveltime_table.py`` with ObsPy TauP) holds the earliest P-type and
S-type arrival for a receiver at the surface on a non-uniform grid of epicentral
distance (0-2000 km) x source depth (0-200 km).  Lookups are bilinear; against TauP
the interpolation error is below 0.05 s (P) and 0.1 s (S) everywhere in the table.

Units: distances and depths in km, times in seconds.  Epicentral distance is the
great-circle distance on a sphere of radius 6371 km (as :func:`yujing.geo.distance_km`).

Out-of-range inputs: distances beyond the last node are extrapolated linearly with the
slope of the last cell (negative distances are treated as 0); depths are clamped to
the table's depth range.  NaN inputs give NaN.
"""

from __future__ import annotations

import bisect
import functools
import json
import math
from importlib import resources

import numpy as np

DEFAULT_TABLE_FILE = "traveltime_iasp91.npz"

__all__ = ["TravelTimeTable", "default_table", "DEFAULT_TABLE_FILE"]


class _Axis:
    """One non-uniform grid axis with O(1) cell lookup.

    If every node is an integer multiple of a common step (true for the shipped
    table), the cell of a value is found with one division and one look-up in a
    table of bins of that step; otherwise :func:`numpy.searchsorted` is used.
    """

    def __init__(self, nodes, extrapolate_high: bool):
        x = np.asarray(nodes, dtype=np.float64)
        if x.ndim != 1 or len(x) < 2 or not np.all(np.diff(x) > 0):
            raise ValueError("grid axis must be 1-D, strictly increasing, with at least 2 nodes")
        self.x = x
        self.lo = float(x[0])
        self.hi = float(x[-1])
        self.inv_h = 1.0 / np.diff(x)  # (n-1,)
        self.extrapolate_high = extrapolate_high
        self.lut = None
        step = float(np.min(np.diff(x)))
        k = (x - x[0]) / step
        nbins = int(round(k[-1]))
        if np.allclose(k, np.round(k), rtol=0, atol=1e-6) and nbins <= 1_000_000:
            self.step = step
            self.inv_step = 1.0 / step
            centres = x[0] + (np.arange(nbins) + 0.5) * step
            self.lut = (np.searchsorted(x, centres, side="right") - 1).astype(np.intp)
        # Python lists for locate1
        self._lut1 = self.lut.tolist() if self.lut is not None else None
        self._x1 = self.x.tolist()
        self._inv_h1 = self.inv_h.tolist()

    def locate1(self, v: float) -> tuple[int, float]:
        """:meth:`locate` of one Python float, without numpy: the same operations in the
        same order, so the same bits (a scalar through numpy costs ~30 us of call
        overhead; the associator asks once per trigger and open event). ``v`` not NaN."""
        hi = math.inf if self.extrapolate_high else self.hi
        v = self.lo if v < self.lo else (hi if v > hi else v)
        if self._lut1 is not None:
            f = (v - self.lo) * self.inv_step
            b = int(f) if f < len(self._lut1) else len(self._lut1) - 1
            i = self._lut1[b if b > 0 else 0]
        else:
            i = bisect.bisect_right(self._x1, v) - 1
            i = 0 if i < 0 else (len(self._inv_h1) - 1 if i > len(self._inv_h1) - 1 else i)
        return i, (v - self._x1[i]) * self._inv_h1[i]

    def locate(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell index (int, 0..n-2) and fractional position (float64) of values ``v``.

        The fraction is in [0, 1] inside the range; above the range it exceeds 1 when
        extrapolating, otherwise values are clamped.  Values below the range are clamped.
        """
        v = np.array(v, dtype=np.float64)  # private copy: clipped in place below
        shape = v.shape
        v = v.reshape(-1)
        np.clip(v, self.lo, np.inf if self.extrapolate_high else self.hi, out=v)  # NaN stays NaN
        if self.lut is not None:
            f = v - self.lo
            f *= self.inv_step
            with np.errstate(invalid="ignore"):
                b = f.astype(np.intp)  # NaN/inf give junk, clipped next
            np.clip(b, 0, len(self.lut) - 1, out=b)
            i = self.lut.take(b)
        else:
            i = np.searchsorted(self.x, v, side="right") - 1
            np.clip(i, 0, len(self.inv_h) - 1, out=i)
        w = self.x.take(i)
        np.subtract(v, w, out=w)
        w *= self.inv_h.take(i)
        return i.reshape(shape), w.reshape(shape)


class TravelTimeTable:
    """Bilinear first-arrival P/S travel-time table on a (depth, distance) grid.

    Parameters
    ----------
    distance_km : (nd,) strictly increasing epicentral distances, km.
    depth_km : (nz,) strictly increasing source depths, km.
    p_s, s_s : (nz, nd) first-arrival P and S travel times, seconds.
    meta : free-form provenance string (JSON for the shipped table).
    """

    def __init__(self, distance_km, depth_km, p_s, s_s, meta: str = ""):
        self._dist = _Axis(distance_km, extrapolate_high=True)
        self._depth = _Axis(depth_km, extrapolate_high=False)
        shape = (len(self._depth.x), len(self._dist.x))
        self.distance_km = self._dist.x
        self.depth_km = self._depth.x
        self.p_table_s = np.ascontiguousarray(p_s, dtype=np.float64)
        self.s_table_s = np.ascontiguousarray(s_s, dtype=np.float64)
        for name, t in (("p_s", self.p_table_s), ("s_s", self.s_table_s)):
            if t.shape != shape:
                raise ValueError(f"{name} has shape {t.shape}, expected (n_depth, n_distance) = {shape}")
        self.meta = str(meta)
        self._coef = {"p": self._coefficients(self.p_table_s), "s": self._coefficients(self.s_table_s)}
        self._coef1 = {k: tuple(x.tolist() for x in v) for k, v in self._coef.items()}
        self._nd = len(self._dist.x)

    @staticmethod
    def _coefficients(t: np.ndarray):
        """Per-cell bilinear coefficients, flattened with row stride n_distance.

        Inside cell (j, i): ``t = a + u*b + v*(c + u*d)`` with u, v the fractional
        positions in distance and depth.  The last column/row are padding (never used
        as a cell origin).
        """
        a = t
        b = np.zeros_like(t)
        b[:, :-1] = t[:, 1:] - t[:, :-1]
        c = np.zeros_like(t)
        c[:-1, :] = t[1:, :] - t[:-1, :]
        d = np.zeros_like(t)
        d[:-1, :-1] = t[1:, 1:] - t[1:, :-1] - t[:-1, 1:] + t[:-1, :-1]
        return tuple(np.ascontiguousarray(x).ravel() for x in (a, b, c, d))

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_npz(cls, path) -> "TravelTimeTable":
        """Load a table file with arrays distance_km, depth_km, p_s, s_s (and meta)."""
        with np.load(path, allow_pickle=False) as z:
            meta = str(z["meta"]) if "meta" in z.files else ""
            return cls(z["distance_km"], z["depth_km"], z["p_s"], z["s_s"], meta)

    @classmethod
    def from_package(cls, name: str = DEFAULT_TABLE_FILE) -> "TravelTimeTable":
        """Load a table shipped in ``yujing/data``."""
        ref = resources.files("yujing").joinpath("data", name)
        with resources.as_file(ref) as path:
            return cls.from_npz(path)

    @property
    def meta_dict(self) -> dict:
        """Provenance of the table (parsed ``meta``), empty if not JSON."""
        try:
            return json.loads(self.meta)
        except ValueError:
            return {}

    # ------------------------------------------------------------------ lookups

    def _index(self, distance_km, depth_km):
        """Broadcast flat cell index and fractions; work done on the unbroadcast inputs."""
        i, u = self._dist.locate(distance_km)
        j, v = self._depth.locate(depth_km)
        k = j * len(self._dist.x)  # small when depths are few: scale before broadcasting
        k = k + i
        return k, u, v

    @staticmethod
    def _eval(coef, k, u, v) -> np.ndarray:
        a, b, c, d = coef
        out = d.take(k)
        out *= u
        out += c.take(k)
        out *= v
        tmp = b.take(k)
        tmp *= u
        out += tmp
        out += a.take(k)
        return np.asarray(out, dtype=np.float64)  # 0-d array for scalar input

    def p_time_s(self, distance_km, depth_km) -> np.ndarray:
        """First-arrival P travel time in seconds.

        ``distance_km`` (epicentral, km) and ``depth_km`` (source depth, km) are
        array-likes that broadcast against each other; the result is a float64 array
        of the broadcast shape (0-d for scalars).
        """
        k, u, v = self._index(distance_km, depth_km)
        return self._eval(self._coef["p"], k, u, v)

    def s_time_s(self, distance_km, depth_km) -> np.ndarray:
        """First-arrival S travel time in seconds (same conventions as :meth:`p_time_s`)."""
        k, u, v = self._index(distance_km, depth_km)
        return self._eval(self._coef["s"], k, u, v)

    def _time1(self, coef1, distance_km: float, depth_km: float) -> float:
        if distance_km != distance_km or depth_km != depth_km:  # NaN in, NaN out
            return math.nan
        i, u = self._dist.locate1(distance_km)
        j, v = self._depth.locate1(depth_km)
        k = j * self._nd + i
        a, b, c, d = coef1
        out = d[k] * u
        out += c[k]
        out *= v
        out += b[k] * u
        return out + a[k]

    def p_time1(self, distance_km: float, depth_km: float) -> float:
        """:meth:`p_time_s` of one (distance, depth) as a Python float: the same bits,
        without numpy's per-call cost (for code that asks one trigger at a time)."""
        return self._time1(self._coef1["p"], float(distance_km), float(depth_km))

    def s_time1(self, distance_km: float, depth_km: float) -> float:
        """:meth:`s_time_s` of one (distance, depth) as a Python float (see :meth:`p_time1`)."""
        return self._time1(self._coef1["s"], float(distance_km), float(depth_km))

    def times_s(self, distance_km, depth_km) -> tuple[np.ndarray, np.ndarray]:
        """``(P, S)`` first-arrival times in seconds, sharing the index computation."""
        k, u, v = self._index(distance_km, depth_km)
        return self._eval(self._coef["p"], k, u, v), self._eval(self._coef["s"], k, u, v)


    def at_depths(self, depths_km) -> "DepthRows":
        """The table at fixed trial depths (a locator's grid), for fast lookups over many
        distances at once: see :class:`DepthRows`. Cached per tuple of depths."""
        key = tuple(float(d) for d in np.atleast_1d(depths_km))
        rows = self._rows.get(key) if hasattr(self, "_rows") else None
        if rows is None:
            if not hasattr(self, "_rows"):
                self._rows = {}
            rows = self._rows[key] = DepthRows(self, key)
        return rows


class DepthRows:
    """P and S times at a few fixed depths on a uniform distance grid.

    At a fixed depth the bilinear table is linear in distance between its distance nodes,
    and every node is a multiple of the axis step, so linear interpolation on a uniform grid
    of that step gives the same times (to rounding) with two gathers per value instead of
    a two-axis cell search and four gathers. Distances beyond the table extrapolate with the
    last cell's slope, as :meth:`TravelTimeTable.p_time_s` does; negative ones count as 0.
    """

    def __init__(self, table: TravelTimeTable, depths_km: tuple[float, ...]):
        ax = table._dist
        if ax.lut is None:
            raise ValueError("DepthRows needs a distance axis whose nodes are multiples of one step")
        self.depths_km = np.asarray(depths_km, dtype=float)
        n = int(round((ax.hi - ax.lo) * ax.inv_step))
        grid = ax.lo + np.arange(n + 1) * ax.step
        self.lo, self.inv_step, self.n = ax.lo, ax.inv_step, n
        dd = self.depths_km[:, None]
        self.p, self.s = (np.ascontiguousarray(t) for t in table.times_s(grid[None, :], dd))  # (D, n+1)
        self.dp = np.ascontiguousarray(np.diff(self.p, axis=1))  # (D, n) per step
        self.ds = np.ascontiguousarray(np.diff(self.s, axis=1))

    def _cells(self, distance_km):
        x = np.asarray(distance_km, dtype=float)
        f = x - self.lo
        f *= self.inv_step
        np.maximum(f, 0.0, out=f)
        with np.errstate(invalid="ignore"):
            i = f.astype(np.intp)  # NaN gives junk, clipped next (its time stays NaN)
        np.clip(i, 0, self.n - 1, out=i)
        f -= i  # > 1 beyond the table: extrapolation
        return i, f, x.shape[:-1] + (len(self.depths_km),) + x.shape[-1:]

    def _gather(self, vals, slopes, i, f, shape):
        out = np.empty(shape)
        for k in range(len(self.depths_km)):
            dst = out[..., k, :]
            np.take(vals[k], i, out=dst)
            dst += f * slopes[k].take(i)
        return out

    def times_s(self, distance_km: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """P and S times (s) for distances (km) of shape ``(G, N)``: arrays ``(G, D, N)``."""
        i, f, shape = self._cells(distance_km)
        return self._gather(self.p, self.dp, i, f, shape), self._gather(self.s, self.ds, i, f, shape)

    def p_time_s(self, distance_km: np.ndarray) -> np.ndarray:
        """P times only, as :meth:`times_s`."""
        i, f, shape = self._cells(distance_km)
        return self._gather(self.p, self.dp, i, f, shape)


@functools.lru_cache(maxsize=None)
def default_table() -> TravelTimeTable:
    """The shipped iasp91 table, loaded on first use and cached."""
    return TravelTimeTable.from_package(DEFAULT_TABLE_FILE)
