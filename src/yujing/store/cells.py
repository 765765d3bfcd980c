"""The device registry's privacy rules: coarse cells only, k-anonymous counts.

A device is known by a coarse H3 cell (resolution 7, ~5 km², or coarser), never a finer
position; public maps show only cells that hold at least ``k`` devices.
"""

from __future__ import annotations

import operator
from collections import Counter
from typing import Iterable

import h3
import msgspec

#: Finest H3 resolution the store accepts (res 7: ~5.2 km² per cell).
MAX_CELL_RESOLUTION = 7
DEVICE_KINDS = ("phone", "sensor")


def check_cell(cell: str) -> str:
    """The cell in canonical (lowercase) form; ValueError unless it is a valid H3 cell of
    resolution <= MAX_CELL_RESOLUTION."""
    if not isinstance(cell, str) or not h3.is_valid_cell(cell):
        raise ValueError(f"device cell {cell!r} is not a valid H3 cell; send the device's H3 "
                         f"cell at resolution {MAX_CELL_RESOLUTION} or coarser")
    res = h3.get_resolution(cell)
    if res > MAX_CELL_RESOLUTION:
        raise ValueError(
            f"device cell {cell!r} has H3 resolution {res}; the store holds only cells of "
            f"resolution <= {MAX_CELL_RESOLUTION} (privacy rule): send "
            f"h3.cell_to_parent(cell, {MAX_CELL_RESOLUTION}) instead"
        )
    return cell.lower()


def check_resolution(res: int) -> int:
    try:
        value = operator.index(res)
    except TypeError:
        value = -1
    if not 0 <= value <= MAX_CELL_RESOLUTION:
        raise ValueError(f"map resolution must be an H3 resolution 0..{MAX_CELL_RESOLUTION}, got {res!r}")
    return value


class CellCensus(msgspec.Struct, frozen=True):
    """Devices seen since ``since_s`` per H3 cell at resolution ``res``, k-anonymous.

    ``counts`` holds only the cells with at least ``k`` devices. ``suppressed_cells`` and
    ``suppressed_devices`` say how many cells (and devices in them) were left out for having
    fewer. ``too_coarse_devices`` counts devices registered at a resolution coarser than
    ``res``, which cannot be placed in a cell that fine.
    """

    res: int
    since_s: float
    k: int
    counts: dict[str, int]
    suppressed_cells: int
    suppressed_devices: int
    too_coarse_devices: int


def census(rows: Iterable[tuple[str, int]], res: int, since_s: float, k: int) -> CellCensus:
    """Fold ``(cell, n_devices)`` rows into parents at ``res`` and drop cells below ``k``."""
    per_cell: Counter[str] = Counter()
    too_coarse = 0
    for cell, n in rows:
        r = h3.get_resolution(cell)
        if r < res:
            too_coarse += n
        else:
            per_cell[cell if r == res else h3.cell_to_parent(cell, res)] += n
    shown = {c: n for c, n in sorted(per_cell.items()) if n >= k}
    hidden = [n for n in per_cell.values() if n < k]
    return CellCensus(res, since_s, k, shown, len(hidden), sum(hidden), too_coarse)
