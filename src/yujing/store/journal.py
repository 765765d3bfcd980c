"""The journal: device messages the live service accepted, kept for a few minutes.

``yujing serve`` runs one engine in one process; its state (triggers, events, the alert
policy's versions) lives in memory, and MQTT keeps nothing for a subscriber that is gone.
So that a server killed in the middle of an earthquake can rebuild the engine when it is
started again, the service appends every message that passed its door (signature, replay
window, rate limits) here — ``(arrival_s, topic, payload)``, the exact bytes — in batches,
from a worker thread, a fraction of a second after it was accepted
(:class:`yujing.service.Service`). The embedded MQTT broker acknowledges a device's QoS 1
message only once the batch holding it is written (``Service.journaled``), so a server
killed has acknowledged nothing it loses: the device sends the rest again. On start it
reads the recent window back and replays it through a fresh engine on message time
(``Service.resume``).

Personal data: a payload names a device's daily pseudonym and its res-7 cell. The journal
is therefore short-lived (docs/privacy.md): a running server deletes rows older than its
window (``ServiceConfig.journal_s``, default 300 s) every few seconds and keeps at most
``journal_max_rows``; a clean stop, after which nothing needs replaying, deletes every
row; the retention purge (:meth:`yujing.store.Store.purge`) deletes what a server that
died and never came back left behind.

It uses a connection of its own (a second one to the same database), so that its writes
never wait behind the store's lock (API reads, event and alert writes) or hold it. An
in-memory SQLite store has no journal: nothing in it survives the process anyway.
"""

from __future__ import annotations

import os
import threading

from .backend import SQLITE, Backend, connect, parse_url

_INSERT = "INSERT INTO journal (arrival_s, topic, payload) VALUES (?, ?, ?)"


class Journal:
    """Append, read back, purge. Thread-safe (one lock); synchronous: call it from a
    worker thread."""

    def __init__(self, db: Backend):
        self._db = db
        self._lock = threading.Lock()
        self._final = False  # cleared at a clean stop: a late append must not write rows back

    @classmethod
    def open(cls, url: str | os.PathLike) -> "Journal | None":
        """A journal in the store at ``url`` (whose migrations have been applied, e.g. by
        :func:`~yujing.store.open_store`); None for an in-memory store."""
        dialect, target = parse_url(url)
        if dialect == SQLITE and target == ":memory:":
            return None
        return cls(connect(url))

    def append(self, rows: list[tuple[float, str, bytes]]) -> int:
        """Append ``(arrival_s, topic, payload)`` rows in one transaction; returns how many."""
        if not rows:
            return 0
        with self._lock, self._db.transaction():
            if self._final:
                return 0
            self._db.executemany(_INSERT, rows)
        return len(rows)

    def since(self, since_s: float) -> list[tuple[float, str, bytes]]:
        """Rows that arrived at or after ``since_s``, in the order they were accepted."""
        with self._lock:
            cur = self._db.execute(
                "SELECT arrival_s, topic, payload FROM journal WHERE arrival_s >= ? ORDER BY seq", (float(since_s),))
            return [(float(a), str(t), bytes(p)) for a, t, p in cur.fetchall()]

    def purge(self, before_s: float, max_rows: int | None = None) -> int:
        """Delete rows that arrived before ``before_s``, and beyond the newest ``max_rows``;
        returns how many."""
        with self._lock, self._db.transaction():
            n = self._db.execute("DELETE FROM journal WHERE arrival_s < ?", (float(before_s),)).rowcount
            if max_rows is not None:
                top = self._db.query("SELECT max(seq) AS m FROM journal")[0]["m"]
                if top is not None:
                    n += self._db.execute("DELETE FROM journal WHERE seq <= ?", (int(top) - int(max_rows),)).rowcount
        return max(n, 0)

    def clear(self, final: bool = False) -> int:
        """Delete every row (a clean stop: everything in it was processed); ``final``:
        append nothing more (a write still in flight from the stopping service)."""
        with self._lock, self._db.transaction():
            self._final = self._final or final
            return max(self._db.execute("DELETE FROM journal").rowcount, 0)

    def count(self) -> int:
        with self._lock:
            return int(self._db.query("SELECT count(*) AS n FROM journal")[0]["n"])

    def close(self) -> None:
        with self._lock:
            self._db.close()
