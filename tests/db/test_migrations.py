"""The migration chain: one head, no drift from the models, a full round trip with rows."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, func, insert, inspect, select

from monitor.db import migrate
from monitor.db.base import Base
from monitor.db.engine import build_engine
from monitor.db.models import (
    Alert,
    Calibration,
    Feedback,
    Generation,
    MetricSnapshot,
    RecalibrationJob,
    RevokedDashboardSession,
    Task,
    Webhook,
    WebhookAttempt,
    WebhookDelivery,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _seed_every_table(engine: Engine) -> None:
    gen_id = uuid.uuid4()
    with engine.begin() as conn:
        conn.execute(
            insert(Task.__table__).values(
                name="t1", config={}, configured=True, created_at=NOW, updated_at=NOW
            )
        )
        conn.execute(
            insert(Generation.__table__).values(
                id=gen_id,
                task="t1",
                created_at=NOW,
                endpoint="chat",
                stream=False,
                partial=False,
                token_count=2,
                temperature=1.0,
                logprobs=b"\x00\x01",
                label=1.0,
                sampling={"temperature": 0.5},
            )
        )
        conn.execute(
            insert(Feedback.__table__).values(
                id=uuid.uuid4(),
                generation_id=gen_id,
                label=1.0,
                kind="label",
                source="user",
                created_at=NOW,
            )
        )
        conn.execute(
            insert(MetricSnapshot.__table__).values(
                task="t1",
                evaluated_at=NOW,
                window_start=NOW,
                window_end=NOW,
                status="ok",
                n=1,
                n_generations=1,
            )
        )
        cal = conn.execute(
            insert(Calibration.__table__).values(
                task="t1",
                version=1,
                method="temperature",
                temperature=1.2,
                status="active",
                source="worker",
                n_train=1,
                n_holdout=1,
                created_at=NOW,
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(RecalibrationJob.__table__).values(
                task="t1",
                trigger="manual",
                status="succeeded",
                attempts=1,
                max_attempts=3,
                calibration_id=cal,
                created_at=NOW,
            )
        )
        conn.execute(
            insert(Alert.__table__).values(
                rule="ece_above_threshold",
                task="t1",
                state="firing",
                severity="warning",
                consecutive=2,
                started_at=NOW,
                updated_at=NOW,
            )
        )
        hook = conn.execute(
            insert(Webhook.__table__).values(
                url="http://127.0.0.1:1/h",
                secret="whsec_x",
                events=["alert.firing"],
                source="api",
                enabled=True,
                consecutive_failures=0,
                created_at=NOW,
            )
        ).inserted_primary_key[0]
        delivery = conn.execute(
            insert(WebhookDelivery.__table__).values(
                webhook_id=hook,
                event_type="alert.firing",
                message_id="msg_1",
                payload="{}",
                status="delivered",
                attempts=1,
                created_at=NOW,
            )
        ).inserted_primary_key[0]
        conn.execute(
            insert(WebhookAttempt.__table__).values(
                delivery_id=delivery,
                attempt=1,
                attempted_at=NOW,
                status_code=200,
            )
        )
        conn.execute(
            insert(RevokedDashboardSession.__table__).values(session_id="s1", expires_at=NOW)
        )


def test_single_head() -> None:
    engine = build_engine("sqlite://")
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(migrate.alembic_config(engine)).get_heads()
    assert len(heads) == 1


def test_no_drift_between_models_and_migrations(engine: Engine) -> None:
    assert migrate.check(engine) is None


def test_upgrade_downgrade_round_trip_with_rows(empty_db_url: str) -> None:
    engine = build_engine(empty_db_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision(engine)
        _seed_every_table(engine)
        migrate.downgrade(engine, "base")
        remaining = set(inspect(engine).get_table_names()) - {"alembic_version"}
        assert remaining == set()
        migrate.upgrade(engine)
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        _seed_every_table(engine)  # the schema accepts the same rows again
        with engine.connect() as conn:
            assert (
                conn.execute(select(func.count()).select_from(Generation.__table__)).scalar() == 1
            )
        assert migrate.check(engine) is None
    finally:
        engine.dispose()


def test_ensure_schema_refuses_stale_postgres_and_migrates_sqlite(empty_db_url: str) -> None:
    from monitor.errors import DatabaseError

    engine = build_engine(empty_db_url)
    try:
        if engine.dialect.name == "postgresql":
            with pytest.raises(DatabaseError, match="thermostat db upgrade"):
                migrate.ensure_schema(engine, auto_upgrade=False)
            migrate.upgrade(engine)
            assert migrate.ensure_schema(engine, auto_upgrade=False) == migrate.head_revision(
                engine
            )
        else:
            migrate.ensure_schema(engine, auto_upgrade=True)
            assert migrate.current_revision(engine) == migrate.head_revision(engine)
    finally:
        engine.dispose()


def test_migration_scripts_import_no_orm_classes() -> None:
    for script in migrate.migrations_dir().joinpath("versions").glob("*.py"):
        assert "monitor" not in script.read_text(), f"{script.name} imports project code"
