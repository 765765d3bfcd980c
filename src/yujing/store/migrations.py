"""The store's schema as numbered migration steps, and the code that applies them.

Steps are never edited once released: a change to the schema is a new step at the end.
Both back ends get the same tables and columns. The column types are spelled so that both
engines read them the same way (``DOUBLE PRECISION`` is SQLite REAL, ``BOOLEAN`` is stored
0/1 by SQLite); where the SQL itself must differ (triggers), a step lists the statements of
each dialect explicitly. The SQL lives here, not in .sql files, so that it ships inside the
package with no package-data rule.

``schema_migrations(version, applied_at_s)`` records each applied step; each step and its
row commit in one transaction, so a crash leaves the schema at a whole step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from .backend import SQLITE, Backend, StoreError


@dataclass(frozen=True)
class Step:
    version: int
    name: str
    common: tuple[str, ...] = ()
    sqlite: tuple[str, ...] = ()
    postgresql: tuple[str, ...] = ()

    def statements(self, dialect: str) -> tuple[str, ...]:
        return self.common + (self.sqlite if dialect == SQLITE else self.postgresql)


STEPS: tuple[Step, ...] = (
    Step(1, "events, event updates, alerts", common=(
        """CREATE TABLE event_updates (
            event_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            issued_at_s DOUBLE PRECISION NOT NULL,
            json TEXT NOT NULL,
            PRIMARY KEY (event_id, version))""",
        # One row per event, mirroring its newest update (derived from event_updates).
        """CREATE TABLE events (
            event_id TEXT PRIMARY KEY,
            version INTEGER NOT NULL,
            first_issued_s DOUBLE PRECISION NOT NULL,
            last_issued_s DOUBLE PRECISION NOT NULL,
            origin_time_s DOUBLE PRECISION NOT NULL,
            latitude DOUBLE PRECISION NOT NULL,
            longitude DOUBLE PRECISION NOT NULL,
            depth_km DOUBLE PRECISION NOT NULL,
            magnitude DOUBLE PRECISION NOT NULL,
            n_devices INTEGER NOT NULL,
            retracted BOOLEAN NOT NULL)""",
        "CREATE INDEX events_origin_time ON events (origin_time_s)",
        """CREATE TABLE alerts (
            alert_id TEXT NOT NULL,
            version INTEGER NOT NULL,
            event_id TEXT NOT NULL,
            msg_type TEXT NOT NULL,
            issued_at_s DOUBLE PRECISION NOT NULL,
            json TEXT NOT NULL,
            PRIMARY KEY (alert_id, version))""",
        "CREATE INDEX alerts_issued ON alerts (issued_at_s)",
        "CREATE INDEX alerts_event ON alerts (event_id, issued_at_s)",
    )),
    Step(2, "device registry (coarse cells only)", common=(
        # cell: an H3 cell of resolution <= 7, checked by Store.note_device; no column can
        # hold a finer position.
        """CREATE TABLE devices (
            pseudonym TEXT PRIMARY KEY,
            cell TEXT NOT NULL,
            kind TEXT NOT NULL,
            first_seen_s DOUBLE PRECISION NOT NULL,
            last_seen_s DOUBLE PRECISION NOT NULL,
            raw_consent BOOLEAN NOT NULL)""",
        "CREATE INDEX devices_last_seen ON devices (last_seen_s)",
    )),
    Step(3, "hash-chained audit log, append-only", common=(
        """CREATE TABLE audit_log (
            seq BIGINT PRIMARY KEY,
            at_s DOUBLE PRECISION NOT NULL,
            actor TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT NOT NULL,
            purpose TEXT NOT NULL,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL)""",
    # The chain detects edits; the triggers refuse them in the first place. Someone who can
    # drop a trigger can also rewrite the chain's tail: anchor head hashes elsewhere.
    ), sqlite=(
        """CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
           BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
        """CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
           BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END""",
    ), postgresql=(
        """CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$""",
        """CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
           FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()""",
        """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
           FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()""",
    )),
    Step(4, "API keys (hashes only)", common=(
        # key_hash: SHA-256 hex of the key; the key itself is shown once and never stored.
        # A revoked key keeps its row (revoked_at_s set) so that its name, which the audit
        # log records as the actor, can never be given to someone else.
        """CREATE TABLE api_keys (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            key_hash TEXT NOT NULL UNIQUE,
            created_at_s DOUBLE PRECISION NOT NULL,
            revoked_at_s DOUBLE PRECISION)""",
    )),
    Step(5, "keys of the audit log's device tags (deleted by the retention purge)", common=(
        # The audit log is append-only, so a pseudonym written into it would outlive the
        # retention period. It holds a keyed tag instead (yujing.store.audit.subject_tag),
        # under a key per hour of audit time (period = floor(at_s / 3600)); the purge
        # deletes a key once its hour is older than the retention period, and from then
        # on nobody can tell which pseudonym a tag stood for. Rows are never touched.
        """CREATE TABLE audit_subject_keys (
            period BIGINT PRIMARY KEY,
            key TEXT NOT NULL,
            created_at_s DOUBLE PRECISION NOT NULL)""",
    )),
    Step(6, "journal of accepted device messages (minutes; personal data)", sqlite=(
        # What passed the service's door, in arrival order, kept for a few minutes
        # (ServiceConfig.journal_s) so that a restarted `yujing serve` can rebuild the
        # engine of a quake in progress (yujing.store.journal). The payloads name
        # pseudonyms and cells: a running server deletes rows past the window, a clean
        # stop deletes them all, and the retention purge catches what a dead server left.
        """CREATE TABLE journal (
            seq INTEGER PRIMARY KEY,
            arrival_s DOUBLE PRECISION NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL)""",
        "CREATE INDEX journal_arrival ON journal (arrival_s)",
    ), postgresql=(
        """CREATE TABLE journal (
            seq BIGSERIAL PRIMARY KEY,
            arrival_s DOUBLE PRECISION NOT NULL,
            topic TEXT NOT NULL,
            payload BYTEA NOT NULL)""",
        "CREATE INDEX journal_arrival ON journal (arrival_s)",
    )),
)

LATEST = STEPS[-1].version

_CREATE_VERSIONS = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at_s DOUBLE PRECISION NOT NULL)"""


def current_version(db: Backend) -> int:
    """Highest applied step (0 for an empty database)."""
    db.execute(_CREATE_VERSIONS)
    [row] = db.query("SELECT max(version) AS v FROM schema_migrations")
    return row["v"] or 0


def migrate(db: Backend, target: int | None = None) -> list[int]:
    """Apply the steps after the database's version up to ``target`` (default: all);
    returns the versions applied ([] when already there)."""
    target = LATEST if target is None else target
    if not 0 <= target <= LATEST:
        raise ValueError(f"no migration step {target}; steps are 1..{LATEST}")
    applied = []
    with db.migration_lock():
        have = current_version(db)
        if have > LATEST:
            raise StoreError(
                f"the database at {db.url} is at schema version {have}, newer than this yujing "
                f"knows (up to {LATEST}); upgrade yujing, or point it at another database"
            )
        for step in STEPS:
            if step.version > target:
                break
            with db.transaction():
                # Asked again inside the write lock (SQLite has no migration lock: another
                # process may have applied the step since we looked).
                if db.query("SELECT 1 AS x FROM schema_migrations WHERE version = ?", (step.version,)):
                    continue
                for sql in step.statements(db.dialect):
                    db.execute(sql)
                db.execute(
                    "INSERT INTO schema_migrations (version, applied_at_s) VALUES (?, ?)",
                    (step.version, time.time()),
                )
            applied.append(step.version)
    return applied

