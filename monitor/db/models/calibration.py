"""Calibration versions per task and the recalibration jobs that produce them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from monitor.db.base import Base
from monitor.db.types import JSONType, UTCDateTime, utcnow


class Calibration(Base):
    """One fitted parameter set. At most one `active` per task (a partial unique index)."""

    __tablename__ = "calibrations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    method: Mapped[str] = mapped_column(String(16), default="temperature")
    temperature: Mapped[float] = mapped_column(Float, default=1.0)
    bias: Mapped[list[float] | None] = mapped_column(JSONType)
    params: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16), default="candidate")
    source: Mapped[str] = mapped_column(String(16), default="worker")
    metrics_before: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    metrics_after: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    n_train: Mapped[int] = mapped_column(Integer, default=0)
    n_holdout: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime | None] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime | None] = mapped_column(UTCDateTime)
    device: Mapped[str | None] = mapped_column(String(16))
    fit_seconds: Mapped[float | None] = mapped_column(Float)
    job_id: Mapped[int | None] = mapped_column(Integer)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    rescored_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        UniqueConstraint("task", "version"),
        Index(
            "uq_calibrations_one_active_per_task",
            "task",
            unique=True,
            sqlite_where=text("status = 'active'"),
            postgresql_where=text("status = 'active'"),
        ),
    )


class RecalibrationJob(Base):
    """The job row is the truth: the scheduler enqueues, workers claim with a lease."""

    __tablename__ = "recalibration_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    not_before: Mapped[datetime | None] = mapped_column(UTCDateTime)
    device: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    calibration_id: Mapped[int | None] = mapped_column(
        ForeignKey("calibrations.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_recalibration_jobs_status_created_at", "status", "created_at"),
        Index("ix_recalibration_jobs_task_created_at", "task", "created_at"),
        # At most one queued or running job per task, enforced by the database.
        Index(
            "uq_recalibration_jobs_one_open_per_task",
            "task",
            unique=True,
            sqlite_where=text("status IN ('queued', 'running')"),
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )
