"""Portable types and the dialect helpers behave the same on SQLite and Postgres."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.dialect import LeaderLock, claim_next, insert_ignoring_conflicts, upsert
from monitor.db.models import Generation, RecalibrationJob, Task
from monitor.db.session import session_scope
from monitor.db.types import uuid7, uuid7_unix_ms

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _task(engine: Engine, name: str = "t1") -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Task.__table__).values(
                name=name, config={}, configured=False, created_at=NOW, updated_at=NOW
            )
        )


def test_datetimes_are_utc_aware_and_naive_refused(engine: Engine) -> None:
    _task(engine)
    plus_two = timezone(timedelta(hours=2))
    with engine.begin() as conn:
        conn.execute(
            insert(Generation.__table__).values(
                id=uuid.uuid4(),
                task="t1",
                created_at=datetime(2026, 3, 1, 14, 0, tzinfo=plus_two),
                endpoint="chat",
                stream=False,
                partial=False,
                token_count=0,
                temperature=1.0,
            )
        )
        stored = conn.execute(select(Generation.created_at)).scalar_one()
    assert stored == NOW and stored.tzinfo is not None
    with pytest.raises(StatementError, match="naive datetime"), engine.begin() as conn:
        conn.execute(
            insert(Generation.__table__).values(
                id=uuid.uuid4(),
                task="t1",
                created_at=datetime(2026, 3, 1),
                endpoint="chat",
                stream=False,
                partial=False,
                token_count=0,
                temperature=1.0,
            )
        )


def test_uuid7_is_time_ordered_and_versioned() -> None:
    ids = [uuid7() for _ in range(200)]
    assert all(u.version == 7 for u in ids)
    assert len(set(ids)) == 200
    millis = [u.int >> 80 for u in ids]
    assert millis == sorted(millis)


def test_uuid7_carries_its_time() -> None:
    at = 1_765_000_000_123
    made = uuid7(at)
    assert made.version == 7 and made.int >> 80 == at
    assert uuid7_unix_ms(made) == at
    assert uuid7(at) != made  # the same millisecond, other random bits
    now_ms = uuid7_unix_ms(uuid7())
    assert now_ms is not None and abs(now_ms - time.time() * 1000) < 1000
    assert uuid7_unix_ms(uuid.uuid4()) is None


def test_insert_ignoring_conflicts_is_idempotent(engine: Engine) -> None:
    _task(engine)
    rows = [
        {
            "id": uuid.uuid4(),
            "task": "t1",
            "created_at": NOW,
            "endpoint": "chat",
            "stream": False,
            "partial": False,
            "token_count": 1,
            "temperature": 1.0,
        }
        for _ in range(3)
    ]
    with engine.begin() as conn:
        insert_ignoring_conflicts(conn, Generation.__table__, rows)
        insert_ignoring_conflicts(conn, Generation.__table__, rows)  # a replay
        count = len(conn.execute(select(Generation.id)).all())
    assert count == 3


def test_upsert_updates_existing_rows(engine: Engine) -> None:
    row = {
        "name": "t1",
        "config": {"a": 1},
        "configured": True,
        "created_at": NOW,
        "updated_at": NOW,
    }
    with engine.begin() as conn:
        upsert(conn, Task.__table__, [row], key=["name"], update_columns=["config"])
        upsert(
            conn,
            Task.__table__,
            [{**row, "config": {"a": 2}}],
            key=["name"],
            update_columns=["config"],
        )
        assert conn.execute(select(Task.config)).scalar_one() == {"a": 2}


def test_one_open_job_per_task_is_enforced(engine: Engine) -> None:
    _task(engine)
    job = {
        "task": "t1",
        "trigger": "manual",
        "status": "queued",
        "attempts": 0,
        "max_attempts": 3,
        "created_at": NOW,
    }
    with engine.begin() as conn:
        conn.execute(insert(RecalibrationJob.__table__).values(**job))
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(insert(RecalibrationJob.__table__).values(**job))
    with engine.begin() as conn:  # finished jobs do not count
        conn.execute(insert(RecalibrationJob.__table__).values(**{**job, "status": "failed"}))


def test_concurrent_claims_never_hand_out_a_job_twice(
    engine: Engine, sessions: sessionmaker[Session]
) -> None:
    table = RecalibrationJob.__table__
    with engine.begin() as conn:
        for i in range(12):
            conn.execute(
                insert(Task.__table__).values(
                    name=f"t{i}", config={}, configured=False, created_at=NOW, updated_at=NOW
                )
            )
            conn.execute(
                insert(table).values(
                    task=f"t{i}",
                    trigger="cron",
                    status="queued",
                    attempts=0,
                    max_attempts=3,
                    created_at=NOW,
                )
            )
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name: str) -> None:
        while True:
            with session_scope(sessions) as session:
                row = claim_next(
                    session,
                    table,
                    where=table.c.status == "queued",
                    order_by=[table.c.created_at, table.c.id],
                    values={"status": "running", "lease_owner": name},
                )
            if row is None:
                return
            with lock:
                claimed.append(row.id)

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(claimed) == sorted(set(claimed)) and len(claimed) == 12


def test_leader_lock_admits_one_leader(engine: Engine, tmp_path: object) -> None:
    first = LeaderLock(engine, key=4242)
    second = LeaderLock(engine, key=4242)
    try:
        assert first.try_acquire()
        assert first.try_acquire()  # still held
        assert not second.try_acquire()
        first.release()
        assert second.try_acquire()
    finally:
        first.release()
        second.release()


def test_every_connection_gets_the_engines_settings(engine: Engine, backend: str) -> None:
    """SQLite: WAL, foreign keys, the busy timeout, and commits that reach the disk
    (synchronous FULL); Postgres: the statement timeout and application name."""
    with engine.connect() as conn:
        if backend == "sqlite":
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
        else:
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "1min"
            assert conn.execute(text("SHOW application_name")).scalar() == "thermostat"
