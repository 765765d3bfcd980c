"""Connections for the store: store URLs, SQLite and PostgreSQL behind one small interface.

The queries in :mod:`.sql` are written once, with ``?`` placeholders and SQL that both
engines accept; what differs (placeholder style, how a write transaction takes its lock,
booleans coming back as 0/1 from SQLite, the migration lock) is handled here.
"""

from __future__ import annotations

import os
import sqlite3
import time
import zlib
from contextlib import contextmanager
from typing import Any, Iterator
from urllib.parse import urlsplit, urlunsplit

SQLITE = "sqlite"
POSTGRESQL = "postgresql"

ACCEPTED_URLS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite://:memory: "
    "(or sqlite://), a bare file path such as yujing.db, "
    "or postgresql://user@host:port/dbname (postgres:// too)"
)

#: Seconds a SQLite writer waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 30.0
#: Seconds to wait for a PostgreSQL server to answer before reporting it unreachable.
PG_CONNECT_TIMEOUT_S = 10

# One key for every yujing store in a database: two workers migrating different schemas of
# the same database just wait for each other, which costs nothing worth a per-schema key.
PG_MIGRATION_LOCK_KEY = zlib.crc32(b"yujing.store.migrations")


class StoreError(RuntimeError):
    """The store cannot do what was asked; the message says what to check."""


def _one_line(e: Exception) -> str:
    # libpq messages span lines; log lines and HTTP errors read better in one.
    return " ".join(str(e).split())


def parse_url(url: str | os.PathLike) -> tuple[str, str]:
    """``(dialect, target)``: the SQLite file (``":memory:"`` for memory) or the PostgreSQL
    connection URL. ``sqlite:///x.db`` is relative and ``sqlite:////x.db`` absolute, as in
    SQLAlchemy."""
    url = os.fspath(url)
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"empty store URL {url!r}; use {ACCEPTED_URLS}")
    if "://" not in url:
        return SQLITE, url  # a bare path (":memory:" included, as sqlite3 itself reads it)
    scheme, rest = url.split("://", 1)
    scheme = scheme.lower()
    if scheme == "sqlite":
        if rest in ("", ":memory:", "/:memory:"):
            return SQLITE, ":memory:"
        if not rest.startswith("/") or rest == "/":
            raise ValueError(
                f"cannot read the SQLite URL {url!r}: after sqlite:// put a slash and the path "
                f"(sqlite:///relative.db, sqlite:////absolute.db) or :memory:"
            )
        return SQLITE, rest[1:]
    if scheme in ("postgresql", "postgres"):
        return POSTGRESQL, url
    raise ValueError(f"unknown store URL scheme {scheme!r} in {redact(url)!r}; accepted: {ACCEPTED_URLS}")


def redact(url: str) -> str:
    """The URL with any password replaced by ``***``, fit for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def connect(url: str | os.PathLike) -> "Backend":
    """Open a connection for the store URL (no migrations: see :func:`.migrations.migrate`)."""
    dialect, target = parse_url(url)
    if dialect == SQLITE:
        return SqliteBackend(target)
    return PostgresBackend(target)


class Backend:
    """One connection. Not thread-safe on its own: :class:`~.sql.Store` holds a lock."""

    dialect: str
    url: str  # for messages; never holds a password

    def execute(self, sql: str, params: tuple | list | None = None) -> Any:
        raise NotImplementedError

    def executemany(self, sql: str, rows: list) -> None:
        """One statement for many parameter rows (inside a transaction)."""
        for r in rows:
            self.execute(sql, r)

    def query(self, sql: str, params: tuple | list | None = None) -> list[dict]:
        """Rows as dicts keyed by column name."""
        cur = self.execute(sql, params)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A write transaction, committed on success, rolled back on an exception."""
        raise NotImplementedError
        yield

    def lock_for_append(self, table: str) -> None:
        """Inside a transaction: keep other connections from appending to ``table`` until
        commit (for the audit chain, whose next row depends on the last)."""

    @contextmanager
    def migration_lock(self) -> Iterator[None]:
        """Held while migrating, so two processes starting together migrate once."""
        yield

    def close(self) -> None:
        raise NotImplementedError


class SqliteBackend(Backend):
    dialect = SQLITE

    def __init__(self, path: str):
        self.url = "sqlite://:memory:" if path == ":memory:" else f"sqlite:///{path}"
        self.path = path
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves (sqlite3's implicit
            # transactions would commit DDL behind our back and cannot BEGIN IMMEDIATE).
            # check_same_thread=False: the service calls from worker threads; Store locks.
            self._conn = sqlite3.connect(
                path, timeout=SQLITE_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
            )
            # secure_delete: a purged row is overwritten with zeros, not left readable in a
            # free page of the file until SQLite happens to reuse it (retention means gone)
            self._conn.execute("PRAGMA secure_delete=ON")
            if path != ":memory:":
                # WAL: readers (the API) never wait for the writer (the engine), and a
                # crash mid-write leaves the last commit intact.
                self._set_wal()
                self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as e:
            raise StoreError(
                f"cannot open the SQLite database {path!r}: {e}; check that its folder exists "
                f"and is writable by this user"
            ) from e

    def _set_wal(self) -> None:
        # Switching a new file to WAL needs the file to itself, and SQLite answers "locked"
        # at once, without its busy timeout, while another connection opens it too (two
        # workers starting together): retry for as long as the busy timeout would wait.
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def execute(self, sql, params=None):
        try:
            return self._conn.execute(sql, params or ())
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError(
                    f"SQLite database {self.path!r} stayed locked by another writer for "
                    f"{SQLITE_BUSY_TIMEOUT_S:.0f} s ({e}); is another process holding a long "
                    f"transaction? For many writers use PostgreSQL"
                ) from e
            raise

    def executemany(self, sql, rows):
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                raise StoreError(f"SQLite database {self.path!r} stayed locked by another writer ({e})") from e
            raise

    @contextmanager
    def transaction(self):
        # IMMEDIATE takes the write lock now, so a read-then-write (the audit chain, a
        # migration step) cannot interleave with another connection's.
        self.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self):
        self._conn.close()


class PostgresBackend(Backend):
    dialect = POSTGRESQL

    def __init__(self, url: str):
        import psycopg  # only PostgreSQL users need it loaded
        from psycopg.conninfo import conninfo_to_dict

        self.url = redact(url)
        self._psycopg = psycopg
        kwargs: dict[str, Any] = {"autocommit": True}  # transactions are explicit
        try:
            if "connect_timeout" not in conninfo_to_dict(url):
                kwargs["connect_timeout"] = PG_CONNECT_TIMEOUT_S
            self._conn = psycopg.connect(url, **kwargs)
        except psycopg.Error as e:
            params = conninfo_to_dict(url)
            probe = f"pg_isready -h {params.get('host', 'localhost')} -p {params.get('port', 5432)}"
            raise StoreError(
                f"cannot connect to PostgreSQL at {self.url}: {_one_line(e)}; check that the "
                f"server is running and reachable ({probe}), and the user, password and "
                f"database name in the URL"
            ) from e

    def execute(self, sql, params=None):
        # The shared queries use "?" and contain no literal "%" or "?"; psycopg wants "%s".
        if params is not None:
            sql = sql.replace("?", "%s")
        try:
            return self._conn.execute(sql, params)
        except self._psycopg.OperationalError as e:
            raise StoreError(
                f"PostgreSQL at {self.url} failed: {_one_line(e)}; check the server, then "
                f"reopen the store"
            ) from e

    def executemany(self, sql, rows):
        try:
            with self._conn.cursor() as cur:
                cur.executemany(sql.replace("?", "%s"), rows)
        except self._psycopg.OperationalError as e:
            raise StoreError(f"PostgreSQL at {self.url} failed: {_one_line(e)}; check the server") from e

    @contextmanager
    def transaction(self):
        with self._conn.transaction():
            yield

    def lock_for_append(self, table):
        # SHARE ROW EXCLUSIVE conflicts with itself (so appenders queue) but not with
        # plain reads, which keep going.
        self.execute(f"LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE")

    @contextmanager
    def migration_lock(self):
        self.execute("SELECT pg_advisory_lock(?)", (PG_MIGRATION_LOCK_KEY,))
        try:
            yield
        finally:
            self.execute("SELECT pg_advisory_unlock(?)", (PG_MIGRATION_LOCK_KEY,))

    def close(self):
        self._conn.close()
