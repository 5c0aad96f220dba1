"""The contract's calibration and job shapes (CONTRACT.md: names fixed, extras welcome)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from monitor.db.models import Calibration, RecalibrationJob

Item = TypeVar("Item")


class CalibrationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task: str
    version: int
    method: str
    temperature: float
    status: str
    metrics_before: dict[str, Any] | None
    metrics_after: dict[str, Any] | None
    n_train: int
    n_holdout: int
    created_at: datetime
    activated_at: datetime | None
    # beyond the contract's minimum
    source: str
    reason: str | None
    device: str | None
    fit_seconds: float | None
    job_id: int | None
    window_start: datetime | None
    window_end: datetime | None
    retired_at: datetime | None
    rescored_at: datetime | None

    @classmethod
    def of(cls, row: Calibration) -> CalibrationOut:
        return cls.model_validate(row)


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    task: str
    trigger: str
    status: str
    device: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    calibration_id: int | None
    # beyond the contract's minimum
    max_attempts: int
    result: dict[str, Any] | None
    reason: str | None = None
    duration_s: float | None = None

    @classmethod
    def of(cls, row: RecalibrationJob) -> JobOut:
        out = cls.model_validate(row)
        result = row.result or {}
        out.reason = result.get("reason") if isinstance(result.get("reason"), str) else None
        if row.started_at is not None and row.finished_at is not None:
            out.duration_s = (row.finished_at - row.started_at).total_seconds()
        return out


class Listing(BaseModel, Generic[Item]):
    items: list[Item]


class RecalibrateAccepted(BaseModel):
    job_id: int
    created: bool
    status: str
