"""Reader for accelerometer recordings as phones export them: a CSV file with columns ``t,x,y,z``.

The first non-blank line that is not a comment (``#``) is the header; it must name the
columns ``t``, ``x``, ``y`` and ``z`` (any order, any case, other columns are ignored).
Every later line is one sample:

* ``t`` — the sample time, in seconds, milliseconds, microseconds or nanoseconds (see
  :func:`time_unit_from_step`), either UNIX time or a relative clock (time since boot or
  since the start of the recording);
* ``x``, ``y``, ``z`` — acceleration along the device's axes, as the device gives it (for
  phones m/s^2 with gravity; the reader does not convert units, the device agent does).

Bad lines never stop the reader: a line with the wrong number of fields, a value that is
not a number, NaN or infinity, or a time not after the previous accepted line is skipped
and counted in a :class:`~yujing.rejects.Rejects` with the file, the line number and what
was wrong. Blank lines and ``#`` comments are skipped without a count. A missing header or
missing columns, or fewer than :data:`MIN_SAMPLES` good lines, is an error for the whole
file (``ValueError`` naming the file).

The reader streams: it yields chunks of :data:`CHUNK_ROWS` samples and holds only the
first :data:`UNIT_PROBE_ROWS` lines before it has decided the time unit, so a day-long
recording does not have to fit in memory.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yujing.rejects import Rejects

__all__ = [
    "AccelChunk",
    "CsvInfo",
    "iter_accel_csv",
    "time_unit_from_step",
    "TIME_UNITS",
    "MIN_SAMPLES",
    "ABSOLUTE_AFTER_S",
]

#: Seconds per unit of ``t``.
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}
#: Good lines a file must hold: fewer cannot even tell the sample rate.
MIN_SAMPLES = 16
#: Good lines read before the time unit is decided from their median step.
UNIT_PROBE_ROWS = 256
#: Samples per yielded chunk.
CHUNK_ROWS = 4096
#: A time (in s) later than this is taken as UNIX time; earlier ones as a relative clock.
#: 1e8 s is March 1973: no recording is that old, and no phone stays up for three years.
ABSOLUTE_AFTER_S = 1e8
#: Sample intervals accepted, s: 5 kHz down to 5 Hz. Each unit of TIME_UNITS maps this
#: band onto its own band of raw steps, without overlap (a factor 1000 apart).
STEP_RANGE_S = (2e-4, 0.2)
_COLUMNS = ("t", "x", "y", "z")


@dataclass(frozen=True)
class AccelChunk:
    """Consecutive good samples: ``t_s`` (float64, s, in the file's own clock, see
    :attr:`CsvInfo.absolute`) and ``xyz`` (float64, shape (n, 3), the file's units)."""

    t_s: np.ndarray
    xyz: np.ndarray


@dataclass
class CsvInfo:
    """What the reader learned about a file; filled in while it is read.

    ``time_unit``: the unit of ``t`` (a key of :data:`TIME_UNITS`), ``""`` until decided.
    ``absolute``: ``t`` is UNIX time (else a relative clock). ``lines``: lines read,
    ``samples``: good lines yielded.
    """

    path: str
    time_unit: str = ""
    absolute: bool = False
    lines: int = 0
    samples: int = 0
    columns: dict[str, int] = field(default_factory=dict)


def time_unit_from_step(median_step: float) -> str:
    """The unit of ``t`` that makes the median sample interval lie in :data:`STEP_RANGE_S`.

    Phones and sensors sample at 5 Hz to 5 kHz, so the step between samples is 0.2 ms to
    0.2 s: a median step of 10 is 10 ms (100 Hz), of 1e7 is 10 ms in nanoseconds. The size
    of ``t`` itself cannot tell: 1.7e12 is UNIX time in ms or half an hour since boot in ns.
    Raises ``ValueError`` when no unit fits.
    """
    lo, hi = STEP_RANGE_S
    for unit, scale in TIME_UNITS.items():
        if lo <= median_step * scale < hi:
            return unit
    raise ValueError(
        f"median step of t is {median_step:g}: no unit (s, ms, us, ns) makes it a sample "
        f"interval of {lo * 1e3:g} ms to {hi:g} s"
    )


def iter_accel_csv(path: str | os.PathLike[str], rejects: Rejects, info: CsvInfo | None = None) -> Iterator[AccelChunk]:
    """Yield the good samples of a ``t,x,y,z`` CSV file in chunks, times in seconds.

    Bad lines are counted in ``rejects`` (reasons ``bad_row``, ``not_a_number``,
    ``non_finite``, ``non_monotonic_time``) and skipped. ``info``, if given, is filled in
    with the time unit, whether ``t`` is UNIX time, and counts. Raises ``FileNotFoundError``
    for a missing file and ``ValueError`` (naming the file) for a missing header or
    columns, an undecidable time unit, or fewer than :data:`MIN_SAMPLES` good lines.
    """
    path = Path(path)
    info = info if info is not None else CsvInfo(str(path))
    info.path = str(path)
    name = str(path)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"CSV file {path} does not exist") from None
    with fh:
        reader = csv.reader(fh)
        cols = _header(reader, name)
        info.columns = cols
        it, ix, iy, iz = (cols[c] for c in _COLUMNS)
        width = max(cols.values()) + 1
        rows: list[tuple[float, float, float, float]] = []
        scale = 0.0
        last_t = -math.inf
        for row in reader:
            lineno = reader.line_num
            info.lines = lineno
            if not row or (len(row) == 1 and not row[0].strip()) or row[0].lstrip().startswith("#"):
                continue
            if len(row) < width:
                rejects.add("bad_row", f"{name}:{lineno}", f"{len(row)} fields; the header names {width} or more")
                continue
            values = []
            for c, i in zip(_COLUMNS, (it, ix, iy, iz)):
                try:
                    v = float(row[i])
                except ValueError:
                    rejects.add("not_a_number", f"{name}:{lineno}", f"{c}={row[i].strip()!r} is not a number")
                    break
                if not math.isfinite(v):
                    rejects.add("non_finite", f"{name}:{lineno}", f"{c}={row[i].strip()} is not a finite number")
                    break
                values.append(v)
            else:
                t = values[0]
                if t <= last_t:
                    rejects.add(
                        "non_monotonic_time",
                        f"{name}:{lineno}",
                        f"t={row[it].strip()} is not after the previous good line's t (times must increase)",
                    )
                    continue
                last_t = t
                rows.append((values[0], values[1], values[2], values[3]))
                if not scale and len(rows) >= UNIT_PROBE_ROWS:
                    scale = _decide_unit(rows, info, name)
                if scale and len(rows) >= CHUNK_ROWS:
                    yield _chunk(rows, scale, info)
                    rows = []
        if not scale:
            if len(rows) < MIN_SAMPLES:
                raise ValueError(
                    f"{name}: only {len(rows)} good lines of t,x,y,z; need at least {MIN_SAMPLES}"
                    + (f" ({rejects.total} bad lines skipped)" if rejects.total else "")
                )
            scale = _decide_unit(rows, info, name)
        if rows:
            yield _chunk(rows, scale, info)


def _header(reader, name: str) -> dict[str, int]:
    for row in reader:
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        names = [c.strip().lower() for c in row]
        cols = {c: names.index(c) for c in _COLUMNS if c in names}
        missing = [c for c in _COLUMNS if c not in cols]
        if missing:
            raise ValueError(
                f"{name}:{reader.line_num}: the header must name the columns t,x,y,z; "
                f"missing {','.join(missing)} (found {','.join(names)})"
            )
        return cols
    raise ValueError(f"{name}: empty file; expected a header line t,x,y,z and samples")


def _decide_unit(rows, info: CsvInfo, name: str) -> float:
    t = np.array([r[0] for r in rows])
    try:
        info.time_unit = time_unit_from_step(float(np.median(np.diff(t))))
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    scale = TIME_UNITS[info.time_unit]
    info.absolute = t[0] * scale > ABSOLUTE_AFTER_S
    return scale


def _chunk(rows, scale: float, info: CsvInfo) -> AccelChunk:
    a = np.array(rows, dtype=np.float64)
    info.samples += len(a)
    return AccelChunk(t_s=a[:, 0] * scale, xyz=np.ascontiguousarray(a[:, 1:]))
