"""Persistent state of the live service: SQLite (default, one file) or PostgreSQL.

- :mod:`.sql`: :class:`Store` (events and their updates, alerts, device registry, audit
  log, retention) and :func:`open_store`.
- :mod:`.backend`: store URLs and the two back ends' connections.
- :mod:`.migrations`: the schema as numbered steps.
- :mod:`.cells`: the privacy rules of the device registry (cells of H3 resolution <= 7,
  k-anonymous counts).
- :mod:`.audit`: the byte layout of the audit log's hash chain.
- :mod:`.journal`: the short-lived journal of accepted device messages (restarts).

docs/store.md describes the tables, URLs and rules.
"""

from .backend import StoreError, parse_url
from .cells import MAX_CELL_RESOLUTION, CellCensus
from .journal import Journal
from .migrations import LATEST as SCHEMA_LATEST
from .sql import Store, open_store

__all__ = [
    "Store", "open_store", "StoreError", "CellCensus", "MAX_CELL_RESOLUTION", "SCHEMA_LATEST",
    "parse_url", "Journal",
]
