"""The store: events, alerts, the device registry and the audit log, in SQLite or PostgreSQL.

Synchronous on purpose: the service calls it from a worker thread. One connection per
:class:`Store`; every method takes the store's lock, so threads may share one store. Times
are UNIX seconds. Records keep their full msgspec JSON beside the columns that queries need,
so they load back equal to what was saved.
"""

from __future__ import annotations

import math
import os
import secrets
import threading
import time
from datetime import datetime, timezone
from typing import Any, Iterable

import msgspec

from ..records import Alert, EventUpdate
from . import audit as _audit
from .backend import Backend, connect
from .cells import DEVICE_KINDS, CellCensus, census, check_cell, check_resolution
from .migrations import current_version, migrate

# Columns of `events` that follow the newest saved version of the event.
_EVENT_FIELDS = ("origin_time_s", "latitude", "longitude", "depth_km", "magnitude", "n_devices",
                 "retracted")
_EVENT_COLUMNS = ("event_id", "version", "first_issued_s", "last_issued_s") + _EVENT_FIELDS


def _newer(table: str, order: str, columns: tuple[str, ...], or_equal: bool = False) -> str:
    # Updates may arrive out of order (a re-save after a restart): take a column from the
    # incoming row only if that row is newer. SET expressions all see the old row, so the
    # test on `order` holds for every column. Plain CASE works in both dialects.
    op = ">=" if or_equal else ">"
    return ", ".join(
        f"{c} = CASE WHEN excluded.{order} {op} {table}.{order} THEN excluded.{c} ELSE {table}.{c} END"
        for c in columns
    )


_UPSERT_EVENT = (
    f"INSERT INTO events ({', '.join(_EVENT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_EVENT_COLUMNS))}) "
    "ON CONFLICT (event_id) DO UPDATE SET "
    "first_issued_s = CASE WHEN excluded.first_issued_s < events.first_issued_s "
    "THEN excluded.first_issued_s ELSE events.first_issued_s END, "
    "last_issued_s = CASE WHEN excluded.last_issued_s > events.last_issued_s "
    "THEN excluded.last_issued_s ELSE events.last_issued_s END, "
    + _newer("events", "version", ("version",) + _EVENT_FIELDS)
)

_UPSERT_DEVICE = (
    "INSERT INTO devices (pseudonym, cell, kind, first_seen_s, last_seen_s, raw_consent) "
    "VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (pseudonym) DO UPDATE SET "
    "first_seen_s = CASE WHEN excluded.first_seen_s < devices.first_seen_s "
    "THEN excluded.first_seen_s ELSE devices.first_seen_s END, "
    + _newer("devices", "last_seen_s", ("cell", "kind", "raw_consent", "last_seen_s"), or_equal=True)
)

# Retention: (table, SQL expression of a row's time, UNIX s); purge(before_s) deletes rows
# whose time is older. Devices go by when they were last heard; a tag key of the audit log
# once its whole hour is past (its tags then name nobody). Events, alerts, the audit log's
# rows and API keys are kept: they hold no device's data (docs/privacy.md).
_RETENTION: tuple[tuple[str, str], ...] = (
    ("devices", "last_seen_s"),
    # a running server keeps its journal minutes only (store/journal.py); this catches the
    # journal of a server that died and was never started again
    ("journal", "arrival_s"),
    ("audit_subject_keys", f"(period + 1) * {_audit.SUBJECT_KEY_PERIOD_S}"),
)

_BOOL_COLUMNS = ("retracted", "raw_consent")


def _row(d: dict[str, Any]) -> dict[str, Any]:
    # SQLite hands booleans back as 0/1.
    for c in _BOOL_COLUMNS:
        if c in d:
            d[c] = bool(d[c])
    return d


def _limit(limit: int) -> int:
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a whole number >= 0, got {limit!r}")
    return limit


def _time(name: str, t: float) -> float:
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"{name} must be a finite UNIX time in seconds, got {t}")
    return t


def _sighting(pseudonym: str, cell: str, kind: str, seen_s: float, raw_consent: bool = False) -> tuple:
    cell = check_cell(cell)
    if kind not in DEVICE_KINDS:
        raise ValueError(f"device kind {kind!r} must be one of {', '.join(DEVICE_KINDS)}")
    if not isinstance(pseudonym, str) or not pseudonym or "\x00" in pseudonym:
        raise ValueError(f"device pseudonym must be a non-empty string, got {pseudonym!r}")
    seen_s = _time("seen_s", seen_s)
    return (pseudonym, cell, kind, seen_s, seen_s, bool(raw_consent))


#: roles an API key can carry (the public needs no key); yujing.api.auth gives them meaning
API_KEY_ROLES = ("researcher", "operator")


def _check_key_fields(name: str, role: str, key_hash: str) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not name.isprintable() or name != name.strip():
        raise ValueError(f"API key name {name!r} must be 1 to 64 printable characters, no leading or trailing space")
    if role not in API_KEY_ROLES:
        raise ValueError(f"API key role {role!r} must be one of {', '.join(API_KEY_ROLES)}")
    if not (isinstance(key_hash, str) and len(key_hash) == 64 and all(c in "0123456789abcdef" for c in key_hash)):
        raise ValueError("API key hash must be 64 lowercase hex digits (SHA-256 of the key)")


class Store:
    """Persistent state of the live service; see docs/store.md. Open with :func:`open_store`."""

    def __init__(self, db: Backend):
        self._db = db
        self._lock = threading.RLock()

    # -- housekeeping ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Where the store lives (any password redacted)."""
        return self._db.url

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._db.dialect

    def schema_version(self) -> int:
        with self._lock:
            return current_version(self._db)

    def migrate(self, target: int | None = None) -> list[int]:
        """Apply pending migration steps (open_store already did); returns those applied."""
        with self._lock:
            return migrate(self._db, target)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    # -- events ---------------------------------------------------------------------------

    def save_update(self, u: EventUpdate) -> str:
        """Keep an event update; a second save of the same (event_id, version) is ignored.
        The event's row follows its newest version. Returns ``"saved"``, ``"same"`` (that
        record was there already: a retried write) or ``"conflict"`` (a *different* record
        is stored under that id and version, and stays: the caller must count it)."""
        if not isinstance(u, EventUpdate):
            raise TypeError(f"save_update takes an EventUpdate, not {type(u).__name__}")
        # The pseudonyms behind an update are the engine's working data: stored, they would
        # tie devices to a place and time for as long as the event is kept (for ever). The
        # service strips them already; the store refuses to be the place they leak to.
        if u.device_ids:
            u = msgspec.structs.replace(u, device_ids=())
        js = msgspec.json.encode(u).decode()
        with self._lock, self._db.transaction():
            cur = self._db.execute(
                "INSERT INTO event_updates (event_id, version, issued_at_s, json) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (event_id, version) DO NOTHING",
                (u.event_id, u.version, u.issued_at_s, js),
            )
            if cur.rowcount == 1:
                self._db.execute(_UPSERT_EVENT, (
                    u.event_id, u.version, u.issued_at_s, u.issued_at_s, u.origin_time_s,
                    u.latitude, u.longitude, u.depth_km, u.magnitude, u.n_devices, u.retracted,
                ))
                return "saved"
            return self._same_or_conflict("event_updates", "event_id", u.event_id, u.version, js)

    def _same_or_conflict(self, table: str, key: str, ident: str, version: int, js: str) -> str:
        # a second save of an (id, version): the same record again (a retry) or another one
        rows = self._db.query(f"SELECT json FROM {table} WHERE {key} = ? AND version = ?", (ident, version))
        return "same" if rows and rows[0]["json"] == js else "conflict"

    def events(self, limit: int = 100, since_s: float | None = None,
               include_retracted: bool = True) -> list[dict]:
        """Events, newest origin time first; ``since_s`` keeps origin_time_s >= since_s."""
        where, params = ["1 = 1"], []
        if since_s is not None:
            where.append("origin_time_s >= ?")
            params.append(_time("since_s", since_s))
        if not include_retracted:
            where.append("retracted = ?")
            params.append(False)
        with self._lock:
            rows = self._db.query(
                f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE {' AND '.join(where)} "
                "ORDER BY origin_time_s DESC, event_id DESC LIMIT ?",
                (*params, _limit(limit)),
            )
        return [_row(r) for r in rows]

    def event(self, event_id: str) -> dict | None:
        with self._lock:
            rows = self._db.query(
                f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events WHERE event_id = ?", (event_id,)
            )
        return _row(rows[0]) if rows else None

    def updates(self, event_id: str) -> list[EventUpdate]:
        """All saved versions of an event, oldest first (``device_ids`` empty: never kept)."""
        with self._lock:
            rows = self._db.query(
                "SELECT json FROM event_updates WHERE event_id = ? ORDER BY version", (event_id,)
            )
        return [msgspec.json.decode(r["json"], type=EventUpdate) for r in rows]

    # -- alerts ---------------------------------------------------------------------------

    def save_alert(self, a: Alert) -> str:
        """Keep an alert message; a second save of the same (alert_id, version) is ignored.
        Returns ``"saved"``, ``"same"`` or ``"conflict"`` as :meth:`save_update` does."""
        if not isinstance(a, Alert):
            raise TypeError(f"save_alert takes an Alert, not {type(a).__name__}")
        js = msgspec.json.encode(a).decode()
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO alerts (alert_id, version, event_id, msg_type, issued_at_s, json) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (alert_id, version) DO NOTHING",
                (a.alert_id, a.version, a.event_id, a.msg_type, a.issued_at_s, js),
            )
            if cur.rowcount == 1:
                return "saved"
            return self._same_or_conflict("alerts", "alert_id", a.alert_id, a.version, js)

    def alerts(self, event_id: str | None = None, limit: int = 100,
               since_s: float | None = None) -> list[Alert]:
        """Alert messages (every version), newest issued first; ``since_s`` keeps
        issued_at_s >= since_s."""
        where, params = ["1 = 1"], []
        if event_id is not None:
            where.append("event_id = ?")
            params.append(event_id)
        if since_s is not None:
            where.append("issued_at_s >= ?")
            params.append(_time("since_s", since_s))
        with self._lock:
            rows = self._db.query(
                f"SELECT json FROM alerts WHERE {' AND '.join(where)} "
                "ORDER BY issued_at_s DESC, alert_id DESC, version DESC LIMIT ?",
                (*params, _limit(limit)),
            )
        return [msgspec.json.decode(r["json"], type=Alert) for r in rows]

    def latest_alert(self, alert_id: str) -> Alert | None:
        """The highest version of an alert."""
        with self._lock:
            rows = self._db.query(
                "SELECT json FROM alerts WHERE alert_id = ? ORDER BY version DESC LIMIT 1", (alert_id,)
            )
        return msgspec.json.decode(rows[0]["json"], type=Alert) if rows else None

    # -- device registry ------------------------------------------------------------------

    def note_device(self, pseudonym: str, cell: str, kind: str, seen_s: float,
                    raw_consent: bool = False) -> None:
        """Record that a device was seen at ``seen_s`` in ``cell`` (H3, resolution <= 7;
        anything finer raises ValueError). The newest sighting sets cell, kind and consent."""
        self.note_devices([(pseudonym, cell, kind, seen_s, raw_consent)])

    def note_devices(self, sightings: Iterable[tuple[str, str, str, float, bool]]) -> int:
        """:meth:`note_device` for many ``(pseudonym, cell, kind, seen_s, raw_consent)``
        in one transaction; all or nothing: one bad row raises ValueError before any is
        written. Returns the number of rows."""
        rows = [_sighting(*s) for s in sightings]
        with self._lock, self._db.transaction():
            for row in rows:
                self._db.execute(_UPSERT_DEVICE, row)
        return len(rows)

    def device(self, pseudonym: str) -> dict | None:
        """The registry row of a device (pseudonym, cell, kind, first_seen_s, last_seen_s,
        raw_consent). Reading it is a read of personal data: the caller audits it."""
        with self._lock:
            rows = self._db.query(
                "SELECT pseudonym, cell, kind, first_seen_s, last_seen_s, raw_consent "
                "FROM devices WHERE pseudonym = ?", (pseudonym,)
            )
        return _row(rows[0]) if rows else None

    def delete_device(self, pseudonym: str) -> bool:
        """Forget a device; True if it was known."""
        with self._lock:
            return self._db.execute("DELETE FROM devices WHERE pseudonym = ?", (pseudonym,)).rowcount > 0

    def cell_census(self, res: int, since_s: float, k: int = 10) -> CellCensus:
        """Devices seen at or after ``since_s`` per H3 cell at resolution ``res`` (<= 7),
        with cells of fewer than ``k`` devices left out and counted as suppressed."""
        res = check_resolution(res)
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a whole number >= 1, got {k!r}")
        since_s = _time("since_s", since_s)
        with self._lock:
            rows = self._db.query(
                "SELECT cell, count(*) AS n FROM devices WHERE last_seen_s >= ? GROUP BY cell",
                (since_s,),
            )
        return census(((r["cell"], r["n"]) for r in rows), res, since_s, k)

    def devices_per_cell(self, res: int, since_s: float, k: int = 10) -> dict[str, int]:
        """``cell_census(res, since_s, k).counts``: only cells with >= k devices."""
        return self.cell_census(res, since_s, k).counts

    # -- audit log ------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, purpose: str, at_s: float,
              subjects: Iterable[str] | None = None) -> str:
        """Append an audit row; returns its hash (chain layout in :mod:`.audit`).

        ``subjects``: the device pseudonyms the row names. Each is stored as a keyed tag
        (:func:`.audit.subject_tag`) wherever it occurs in actor, target or purpose, never in
        the clear, because the log outlives the retention period. None: the built-in rule
        (:func:`.audit.personal_subjects`: the target of a device read or data-rights
        request, ``device:<pseudonym>`` actors)."""
        at_s = _audit.check_fields(at_s, actor=actor, action=action, target=target, purpose=purpose)
        subjects = (_audit.personal_subjects(actor, action, target) if subjects is None
                    else [s for s in subjects if s])
        for s in subjects:
            _audit.check_fields(at_s, subject=s)
        with self._lock, self._db.transaction():
            return self._append_audit(actor, action, target, purpose, at_s, subjects)

    def _append_audit(self, actor: str, action: str, target: str, purpose: str, at_s: float,
                      subjects: Iterable[str] = ()) -> str:
        # inside a transaction: the chain's next row depends on the last, so appenders queue
        self._db.lock_for_append("audit_log")
        subjects = list(subjects)
        if subjects:
            key = self._subject_key(_audit.key_period(at_s), at_s)
            actor, target, purpose = _audit.pseudonymise(
                actor, target, purpose, {s: _audit.subject_tag(key, s) for s in subjects})
        last = self._db.query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        seq, prev = (last[0]["seq"] + 1, last[0]["hash"]) if last else (1, _audit.GENESIS_HASH)
        h = _audit.row_hash(prev, seq, at_s, actor, action, target, purpose)
        self._db.execute(
            "INSERT INTO audit_log (seq, at_s, actor, action, target, purpose, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, at_s, actor, action, target, purpose, prev, h),
        )
        return h

    def _subject_key(self, period: int, at_s: float) -> str:
        # under the audit append lock, so two workers cannot make two keys for one period
        rows = self._db.query("SELECT key FROM audit_subject_keys WHERE period = ?", (period,))
        if rows:
            return rows[0]["key"]
        key = secrets.token_hex(32)
        self._db.execute(
            "INSERT INTO audit_subject_keys (period, key, created_at_s) VALUES (?, ?, ?) "
            "ON CONFLICT (period) DO NOTHING", (period, key, at_s))
        return self._db.query("SELECT key FROM audit_subject_keys WHERE period = ?", (period,))[0]["key"]

    def audit_rows_about(self, subject: str) -> list[dict]:
        """The audit rows that name ``subject`` (a pseudonym), oldest first, found by
        recomputing its tag under every key still kept: after the retention period the
        keys are gone and so is the answer (for a data-subject request: who read my data)."""
        with self._lock:
            keys = self._db.query("SELECT period, key FROM audit_subject_keys ORDER BY period")
            out = []
            for k in keys:
                tag = _audit.subject_tag(k["key"], subject)
                p0 = k["period"] * _audit.SUBJECT_KEY_PERIOD_S
                rows = self._db.query(
                    "SELECT seq, at_s, actor, action, target, purpose, prev_hash, hash FROM audit_log "
                    "WHERE at_s >= ? AND at_s < ? ORDER BY seq", (p0, p0 + _audit.SUBJECT_KEY_PERIOD_S))
                out += [r for r in rows if any(tag in r[f] for f in ("actor", "target", "purpose"))]
        return out

    def audit_log(self, limit: int = 100) -> list[dict]:
        """The newest ``limit`` audit rows, newest first."""
        with self._lock:
            return self._db.query(
                "SELECT seq, at_s, actor, action, target, purpose, prev_hash, hash FROM audit_log "
                "ORDER BY seq DESC LIMIT ?", (_limit(limit),)
            )

    def verify_audit(self) -> tuple[bool, int | None]:
        """Recompute the chain from seq 1: ``(True, None)`` if every row holds, else
        ``(False, seq)`` of the first row that does not (edited, missing before it, or out
        of sequence). A cut-off tail cannot be seen from inside: compare the head hash with
        a copy kept elsewhere."""
        prev, expected = _audit.GENESIS_HASH, 1
        with self._lock:
            cur = self._db.execute(
                "SELECT seq, at_s, actor, action, target, purpose, prev_hash, hash "
                "FROM audit_log ORDER BY seq"
            )
            for seq, at_s, actor, action, target, purpose, prev_hash, h in cur:
                ok = (seq == expected and prev_hash == prev
                      and h == _audit.row_hash(prev, seq, at_s, actor, action, target, purpose))
                if not ok:
                    return False, seq
                prev, expected = h, seq + 1
        return True, None

    # -- API keys -------------------------------------------------------------------------

    def add_api_key(self, name: str, role: str, key_hash: str, at_s: float) -> None:
        """Keep a new API key: its ``name`` (unique forever, also after revocation: it is
        the actor in the audit log), ``role`` and ``key_hash`` (64 hex digits: SHA-256 of
        the key; the key itself is never stored). ValueError for a taken name or a bad field."""
        _check_key_fields(name, role, key_hash)
        at_s = _time("at_s", at_s)
        with self._lock, self._db.transaction():
            if self._db.query("SELECT 1 AS x FROM api_keys WHERE name = ?", (name,)):
                raise ValueError(f"an API key named {name!r} exists (or existed: names are never reused); "
                                 "choose another name")
            self._db.execute(
                "INSERT INTO api_keys (name, role, key_hash, created_at_s, revoked_at_s) VALUES (?, ?, ?, ?, NULL)",
                (name, role, key_hash, at_s),
            )

    def api_key(self, key_hash: str) -> dict | None:
        """The live (not revoked) key with this hash: ``{name, role, created_at_s}``, or None."""
        with self._lock:
            rows = self._db.query(
                "SELECT name, role, created_at_s FROM api_keys WHERE key_hash = ? AND revoked_at_s IS NULL",
                (key_hash,),
            )
        return rows[0] if rows else None

    def api_keys(self) -> list[dict]:
        """Every key, revoked ones too, oldest first: ``{name, role, created_at_s,
        revoked_at_s}`` (no hashes: nobody needs them outside the lookup)."""
        with self._lock:
            return self._db.query(
                "SELECT name, role, created_at_s, revoked_at_s FROM api_keys ORDER BY created_at_s, name"
            )

    def revoke_api_key(self, name: str, at_s: float) -> bool:
        """Revoke a key by name; False if there is no live key of that name."""
        at_s = _time("at_s", at_s)
        with self._lock:
            return self._db.execute(
                "UPDATE api_keys SET revoked_at_s = ? WHERE name = ? AND revoked_at_s IS NULL", (at_s, name)
            ).rowcount > 0

    # -- retention ------------------------------------------------------------------------

    def purge(self, before_s: float, at_s: float | None = None, actor: str = "system:retention",
              purpose: str = "retention period", extra: dict[str, int] | None = None) -> dict[str, int]:
        """Delete what the retention rules (``_RETENTION``) say is older than ``before_s``
        (UNIX s): devices last heard before it, audit tag keys whose hour ended before it.
        Returns rows deleted per table. The purge is recorded in the audit log in the same
        transaction (``action`` ``purge``; the cut-off and the counts, never an id), at
        ``at_s`` (default: now), so a purge that happened is never missing from the log.
        ``extra``: counts of what the caller purged elsewhere (a service's memory), written
        into the same audit row."""
        before_s = _time("before_s", before_s)
        at_s = _time("at_s", time.time() if at_s is None else at_s)
        counts = {}
        with self._lock, self._db.transaction():
            for table, when in _RETENTION:
                counts[table] = self._db.execute(
                    f"DELETE FROM {table} WHERE {when} <= ?" if table == "audit_subject_keys"
                    else f"DELETE FROM {table} WHERE {when} < ?", (before_s,)
                ).rowcount
            if not counts.get("journal"):
                # the journal is the running server's to keep short (store/journal.py):
                # named here only when this purge found some of it left behind
                counts.pop("journal", None)
            cut = datetime.fromtimestamp(before_s, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            shown = {**counts, **{k: int(v) for k, v in (extra or {}).items()}}
            target = f"before {cut}: " + ", ".join(f"{t}={n}" for t, n in shown.items())
            self._append_audit(actor, "purge", target, purpose, _audit.check_fields(
                at_s, actor=actor, purpose=purpose))
        return counts


def open_store(url: str | os.PathLike) -> Store:
    """Open the store at ``url`` and apply pending migrations.

    ``sqlite:///relative.db``, ``sqlite:////absolute.db``, ``sqlite://:memory:`` (or
    ``sqlite://``), a bare path (``x.db``), or ``postgresql://user@host:port/db``; any other
    scheme raises ValueError. StoreError when the database cannot be reached or is newer
    than this code.
    """
    db = connect(url)
    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return Store(db)

