"""Retention: how long data that no event needs is kept, and the purge that enforces it.

Minimal storage time (PIPL art. 19, GB/T 35273-2020 6.1): what the service holds about a
device (its registry row: pseudonym, coarse cell, kind, consent, when heard) is needed only
while the device is active, so it is deleted once the device has been silent for the
retention period (default :data:`DEFAULT_RETENTION_DAYS`). Pseudonyms rotate daily, so a
row is one device-day and is gone at most ``retention`` after that day ends.

What a purge deletes (all by time, older than ``now - retention``):

- store: ``devices`` rows by ``last_seen_s``; the audit log's tag keys
  (``audit_subject_keys``) whose hour has passed, after which the audit rows that named a
  device no longer say which (see :mod:`yujing.store.audit`);
- memory of a running service: registry entries by last heard, the dashboard's recent
  triggers by issue time, enrolments by enrolment time.

Events and alerts are not purged: they are public records of earthquakes and name no
device (the store drops the pseudonyms behind an update). Each purge is recorded in the
audit log with its cut-off and counts, never an id. ``yujing serve`` purges at start and
then every :data:`DEFAULT_PURGE_INTERVAL_S`; ``yujing purge`` does it once. docs/privacy.md
lists everything kept and for how long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DAY_S = 86_400.0
#: Default retention period for data not linked to an event, days.
DEFAULT_RETENTION_DAYS = 7.0
#: Default time between two purges of a running server, s. Data lives at most this much
#: beyond the retention period.
DEFAULT_PURGE_INTERVAL_S = 3600.0


@dataclass(frozen=True)
class RetentionPolicy:
    """``retention_s``: how long data not linked to an event is kept, s; ``interval_s``:
    time between two purges of a running server, s."""

    retention_s: float = DEFAULT_RETENTION_DAYS * DAY_S
    interval_s: float = DEFAULT_PURGE_INTERVAL_S

    def __post_init__(self) -> None:
        for name in ("retention_s", "interval_s"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"retention {name} must be a positive number of seconds, got {v!r}")

    @classmethod
    def from_days(cls, days: float, interval_s: float = DEFAULT_PURGE_INTERVAL_S) -> "RetentionPolicy":
        """A policy keeping data ``days`` days (fractions allowed: 0.5 is 12 hours)."""
        if not isinstance(days, (int, float)) or not math.isfinite(days) or days <= 0:
            raise ValueError(f"the retention period must be a positive number of days, got {days!r}")
        return cls(days * DAY_S, interval_s)

    def cutoff(self, now_s: float) -> float:
        """UNIX s before which data not linked to an event is deleted."""
        return now_s - self.retention_s

    def label(self) -> str:
        """``retention 7 d`` (the audit row's purpose)."""
        return f"retention {self.retention_s / DAY_S:g} d"


def purge_memory(service: Any, before_s: float) -> dict[str, int]:
    """Forget what a running :class:`yujing.service.Service` holds in memory about devices
    last heard (or triggers issued, or pseudonyms enrolled) before ``before_s`` (UNIX s);
    returns counts. Call it in the service's event-loop thread: the engine loop changes
    the registry there.

    It works on the service's public attributes (``registry``, ``recent_triggers``,
    ``issuer``), as the API does; the engine's own working state is not touched (see
    docs/privacy.md, "Known limits")."""
    reg = service.registry
    old = [k for k, d in reg.devs.items() if d.last_seen_s < before_s]
    for k in old:
        del reg.devs[k]
        reg.dirty.discard(k)  # a pending flush would write the row back
    recent = service.recent_triggers
    kept = [t for t in recent if t.issued_at_s >= before_s]
    n_trig = len(recent) - len(kept)
    if n_trig:
        recent.clear()
        recent.extend(kept)
    issuer = getattr(service, "issuer", None)
    n_enrol = issuer.forget_before(before_s) if issuer is not None else 0
    return {"memory_registry": len(old), "memory_recent_triggers": n_trig, "memory_enrolments": n_enrol}


def purge(store: Any, now_s: float, policy: RetentionPolicy | None = None, service: Any = None,
          actor: str = "system:retention") -> dict[str, int]:
    """One purge at ``now_s`` (UNIX s): the service's memory (if given), then the store,
    which records the purge and every count in its audit log in the same transaction.
    Returns rows or entries deleted per place."""
    policy = policy or RetentionPolicy()
    before_s = policy.cutoff(now_s)
    counts = purge_memory(service, before_s) if service is not None else {}
    counts.update(store.purge(before_s, at_s=now_s, actor=actor, purpose=policy.label(), extra=counts))
    return counts
