"""Engine construction for both dialects, with the pragmas and timeouts each needs.

SQLite: WAL, foreign keys on, a busy timeout so concurrent writers wait
instead of failing, and explicit BEGIN IMMEDIATE so SQLAlchemy's transactions
are real ones that queue for the single write lock up front. Postgres: pre-ping (survives a
restarted server), a statement timeout, and the application name so
`pg_stat_activity` shows which role holds a connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from monitor.errors import ConfigError, redact_url

SQLITE_BUSY_TIMEOUT_MS = 30_000
POSTGRES_STATEMENT_TIMEOUT_MS = 60_000


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def build_engine(url: str, *, application_name: str = "thermostat", **kwargs: Any) -> Engine:
    """Create an engine for `url`; a malformed URL is a one-line ConfigError.

    The messages show the URL with its password masked: they reach the
    terminal and the logs, and the URL is a secret (`Settings.database_url`).
    """
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"database URL {shown!r} is not a valid SQLAlchemy URL") from None
    try:
        if parsed.get_backend_name() == "sqlite":
            return _sqlite_engine(url, parsed.database, **kwargs)
        if parsed.get_backend_name() == "postgresql":
            return _postgres_engine(url, application_name, **kwargs)
    except NoSuchModuleError as exc:  # its text names the plugin only, not the URL
        raise ConfigError(f"database URL {shown!r}: driver not installed ({exc})") from None
    raise ConfigError(f"database URL {shown!r}: only sqlite and postgresql are supported")


def _sqlite_engine(url: str, database: str | None, **kwargs: Any) -> Engine:
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # FULL: a commit is on disk when it returns, as the spool's fsync is. With
        # NORMAL, a WAL commit survives the process but not a power loss, and
        # feedback is acknowledged only after a durable write (DESIGN.md).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # IMMEDIATE: take the write lock at the start. A deferred transaction that
        # reads and then writes cannot wait for the lock (SQLite fails it with
        # "database is locked" at once); an immediate one waits the busy timeout.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _postgres_engine(url: str, application_name: str, **kwargs: Any) -> Engine:
    options = f"-c statement_timeout={POSTGRES_STATEMENT_TIMEOUT_MS}"
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    return create_engine(
        url,
        pool_pre_ping=True,
        connect_args={"application_name": application_name, "options": options},
        **kwargs,
    )
