"""Dialect-specific statements behind one portable interface.

- `insert_ignoring_conflicts` / `upsert`: idempotent writes (spool replay,
  config sync) with each dialect's ON CONFLICT.
- `claim_next`: hand one queued row to one worker. Postgres uses
  `FOR UPDATE SKIP LOCKED` so workers never wait on each other; SQLite has a
  single writer at a time, so one atomic `UPDATE ... WHERE id = (SELECT ...)
  RETURNING` is already exclusive.
- `LeaderLock`: one scheduler leads. Postgres: a session-level advisory lock
  held on a dedicated connection (dies with the process, so another takes over).
  SQLite: an exclusive lock on a file beside the database (one host).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from monitor.db.base import Base

TableLike = Table | type[Base]


def as_table(target: TableLike) -> Table:
    """Accept an ORM class or a Table; Core statements need the Table."""
    return target if isinstance(target, Table) else cast(Table, target.__table__)


def dialect_name(db: Session | Connection) -> str:
    bind = db if isinstance(db, Connection) else db.get_bind()
    return bind.dialect.name


def _insert_for(session_or_conn: Session | Connection, table: TableLike) -> Any:
    name = dialect_name(session_or_conn)
    if name == "postgresql":
        return postgresql.insert(as_table(table))
    if name == "sqlite":
        return sqlite.insert(as_table(table))
    raise NotImplementedError(name)


def insert_ignoring_conflicts(
    db: Session | Connection, table: TableLike, rows: Sequence[dict[str, Any]]
) -> int:
    """Insert rows, skipping any whose primary or unique key already exists."""
    if not rows:
        return 0
    stmt = _insert_for(db, table).on_conflict_do_nothing()
    result = db.execute(stmt, list(rows))
    return int(getattr(result, "rowcount", 0) or 0)


def upsert(
    db: Session | Connection,
    table: TableLike,
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update_columns: Sequence[str],
) -> None:
    """Insert rows or update `update_columns` where `key` already exists."""
    if not rows:
        return
    stmt = _insert_for(db, table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(key),
        set_={column: stmt.excluded[column] for column in update_columns},
    )
    db.execute(stmt, list(rows))


def claim_next(
    session: Session,
    target: TableLike,
    *,
    where: ColumnElement[bool],
    order_by: Sequence[Any],
    values: dict[str, Any],
) -> Any | None:
    """Atomically set `values` on the first row matching `where`; return it or None."""
    table = as_table(target)
    pk = next(iter(table.primary_key.columns))
    candidate = select(pk).where(where).order_by(*order_by).limit(1)
    if dialect_name(session) == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    stmt = (
        update(table)
        .where(pk == candidate.scalar_subquery())
        .where(where)
        .values(**values)
        .returning(*table.columns)
    )
    return session.execute(stmt).first()


class LeaderLock:
    """Non-blocking leadership: `try_acquire()` is True while this process leads."""

    def __init__(self, engine: Engine, key: int, lock_dir: Path | None = None) -> None:
        self.engine = engine
        self.key = key
        self.lock_dir = lock_dir
        self._connection: Connection | None = None
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._connection is not None or self._fd is not None

    def try_acquire(self) -> bool:
        if self.held:
            return self._still_held()
        if self.engine.dialect.name == "postgresql":
            return self._acquire_postgres()
        return self._acquire_file()

    def _acquire_postgres(self) -> bool:
        connection = self.engine.connect()
        # The lock lives as long as this server session: keep the connection out
        # of the pool so that closing it really ends the session and the lock.
        connection.detach()
        try:
            got = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar()
            connection.commit()
        except Exception:
            connection.close()
            raise
        if got:
            self._connection = connection
            return True
        connection.close()
        return False

    def _still_held(self) -> bool:
        if self._connection is None:
            return True
        try:
            self._connection.execute(text("SELECT 1"))
            self._connection.commit()
            return True
        except Exception:
            # The connection died, and the server released the lock with it.
            self.release()
            return False

    def _acquire_file(self) -> bool:
        directory = self.lock_dir or Path(self.engine.url.database or ".").expanduser().parent
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / f"leader-{self.key}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None
        if self._fd is not None:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            finally:
                os.close(self._fd)
                self._fd = None
