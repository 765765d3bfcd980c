"""An event the associator follows: its location, its picks, its magnitude and what was
last announced of it (the working record between the association's stages)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .locate import Location
from .records import EventUpdate, Trigger


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
