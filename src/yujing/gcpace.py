"""Garbage-collector pacing for the long-running server (``yujing serve``).

CPython's full collection walks every tracked object. A server holding a million devices'
registry and presence rows paused 132-219 ms in each one, 7-10 times in a 40 s load run
(docs/performance.md, "Where the time goes"); one landing on an alert adds that to its
latency. The rows are long-lived and free themselves by reference counting (no cycles),
so there is nothing for the collector to find among them.

:class:`GcPacer` moves what survived into the permanent generation every ``freeze_s``
(``gc.freeze``: the young generations are collected first, so the short-lived cycles of
the last seconds are not frozen with it). Full collections then walk only what is newer
than the last freeze. Frozen objects that later become cyclic garbage are not reclaimed
until ``full_s``, when everything is unfrozen and collected once (one full pause, hourly
by default), then frozen again.

It changes process-wide state, so the process's entry point owns it
(:func:`yujing.serve.run`), not a library object: a test process running many servers
keeps CPython's defaults.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

log = logging.getLogger(__name__)

FREEZE_S = 10.0
FULL_S = 3600.0


class GcStats:
    """Collections and their pauses per generation, from ``gc.callbacks`` (for /metrics:
    whether the pacing works shows as few, short generation-2 pauses)."""

    def __init__(self):
        self.count = [0, 0, 0]
        self.pause_s = [0.0, 0.0, 0.0]
        self.max_pause_s = [0.0, 0.0, 0.0]
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        g = info.get("generation", 0)
        d = time.perf_counter() - self._t0
        self.count[g] += 1
        self.pause_s[g] += d
        if d > self.max_pause_s[g]:
            self.max_pause_s[g] = d


STATS: GcStats | None = None


def observe() -> GcStats:
    """The process's collection figures, observed from the first call on (idempotent)."""
    global STATS
    if STATS is None:
        STATS = GcStats()
        gc.callbacks.append(STATS)
    return STATS


class GcPacer:
    """Freeze the collector's survivors every ``freeze_s``; unfreeze and collect all every
    ``full_s`` (seconds of the loop's monotonic clock)."""

    def __init__(self, freeze_s: float = FREEZE_S, full_s: float = FULL_S):
        if not (0 < freeze_s <= full_s):
            raise ValueError(f"GcPacer: need 0 < freeze_s ({freeze_s}) <= full_s ({full_s})")
        self.freeze_s = freeze_s
        self.full_s = full_s
        self.task: asyncio.Task | None = None
        self.freezes = 0
        self.full_collections = 0
        self.last_full_pause_s = 0.0

    def freeze(self) -> None:
        gc.collect(1)
        gc.freeze()
        self.freezes += 1

    def full(self) -> int:
        """Unfreeze, collect everything, freeze again; returns the objects collected."""
        t = time.perf_counter()
        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self.last_full_pause_s = time.perf_counter() - t
        self.full_collections += 1
        log.info("gc: full collection %.0f ms, %d unreachable", 1e3 * self.last_full_pause_s, found)
        return found

    def start(self) -> None:
        """Freeze now (what start-up built: modules, tables, the store's rows) and keep
        pacing from a task on the running loop."""
        self.freeze()
        self.task = asyncio.get_running_loop().create_task(self._loop(), name="gc-pace")

    async def _loop(self) -> None:
        next_full = time.monotonic() + self.full_s
        while True:
            await asyncio.sleep(self.freeze_s)
            if time.monotonic() >= next_full:
                self.full()
                next_full = time.monotonic() + self.full_s
            else:
                self.freeze()

    async def stop(self) -> None:
        """Stop pacing and give the frozen objects back to the collector."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            self.task = None
        gc.unfreeze()
