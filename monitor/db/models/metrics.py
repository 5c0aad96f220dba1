"""Metric snapshots: one row per task per evaluation, the history the dashboard plots."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from monitor.db.base import Base
from monitor.db.types import JSONType, UTCDateTime, utcnow


class MetricSnapshot(Base):
    __tablename__ = "metric_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(ForeignKey("tasks.name", ondelete="CASCADE"))
    evaluated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    window_end: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[str] = mapped_column(String(24))
    n: Mapped[int] = mapped_column(Integer, default=0)
    n_generations: Mapped[int] = mapped_column(Integer, default=0)
    accuracy: Mapped[float | None] = mapped_column(Float)
    mean_confidence: Mapped[float | None] = mapped_column(Float)
    ece: Mapped[float | None] = mapped_column(Float)
    ece_low: Mapped[float | None] = mapped_column(Float)
    ece_high: Mapped[float | None] = mapped_column(Float)
    mce: Mapped[float | None] = mapped_column(Float)
    brier: Mapped[float | None] = mapped_column(Float)
    nll: Mapped[float | None] = mapped_column(Float)
    calibration_version: Mapped[int | None] = mapped_column(Integer)
    bins: Mapped[list[dict[str, Any]] | None] = mapped_column(JSONType)
    signals: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (Index("ix_metric_snapshots_task_evaluated_at", "task", "evaluated_at"),)
