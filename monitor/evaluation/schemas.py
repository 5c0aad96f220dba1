"""HTTP shapes of tasks, snapshots, alerts and evaluation results (CONTRACT.md names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from monitor.calibrations.schemas import CalibrationOut
from monitor.db.models import Alert, MetricSnapshot


class SnapshotOut(BaseModel):
    id: int
    task: str
    evaluated_at: datetime
    window_start: datetime
    window_end: datetime
    status: str
    n: int
    n_generations: int
    accuracy: float | None
    mean_confidence: float | None
    ece: float | None
    ece_low: float | None
    ece_high: float | None
    mce: float | None
    brier: float | None
    nll: float | None
    calibration_version: int | None
    signals: dict[str, Any]

    @classmethod
    def of(cls, row: MetricSnapshot) -> SnapshotOut:
        fields = {name: getattr(row, name) for name in cls.model_fields if name != "signals"}
        return cls(**fields, signals=dict(row.signals or {}))


class TaskOut(BaseModel):
    name: str
    configured: bool
    status: str | None
    last_evaluated_at: datetime | None
    created_at: datetime
    config: dict[str, Any]
    metrics: SnapshotOut | None
    active_calibration: CalibrationOut | None


class ReliabilityOut(BaseModel):
    task: str
    evaluated_at: datetime | None
    window_start: datetime | None
    window_end: datetime | None
    calibration_version: int | None
    n: int
    bins: list[dict[str, Any]]


class AlertOut(BaseModel):
    id: int
    rule: str
    task: str
    state: str
    severity: str
    value: float | None
    threshold: float | None
    samples: int | None
    consecutive: int
    started_at: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    last_notified_at: datetime | None

    @classmethod
    def of(cls, row: Alert) -> AlertOut:
        return cls(**{name: getattr(row, name) for name in cls.model_fields})
