"""Read side for the admin API: tasks with their latest snapshot, history, bins, alerts."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from monitor.alerting import repository as alert_repository
from monitor.db.models import Calibration, MetricSnapshot, Task
from monitor.evaluation import repository
from monitor.evaluation.schemas import (
    AlertOut,
    CalibrationOut,
    ReliabilityOut,
    SnapshotOut,
    TaskOut,
)
from monitor.settings import Settings
from monitor.tasks.repository import list_tasks
from monitor.tasks.service import config_as_dict, require_task


def _task_out(
    settings: Settings,
    row: Task,
    snapshot: MetricSnapshot | None,
    calibration: Calibration | None,
) -> TaskOut:
    return TaskOut(
        name=row.name,
        configured=row.configured,
        status=row.status,
        last_evaluated_at=row.last_evaluated_at,
        created_at=row.created_at,
        config=config_as_dict(settings.task_config(row.name)),
        metrics=SnapshotOut.of(snapshot) if snapshot is not None else None,
        active_calibration=(CalibrationOut.of(calibration) if calibration is not None else None),
    )


def list_task_views(session: Session, settings: Settings) -> list[TaskOut]:
    """Every task, newest first, with its latest snapshot and active calibration."""
    latest = repository.latest_snapshots(session)
    active = repository.active_calibrations(session)
    rows = sorted(list_tasks(session), key=lambda t: (t.created_at, t.name), reverse=True)
    return [_task_out(settings, t, latest.get(t.name), active.get(t.name)) for t in rows]


def task_view(session: Session, settings: Settings, name: str) -> TaskOut:
    row = require_task(session, name)
    return _task_out(
        settings,
        row,
        repository.latest_snapshot(session, name),
        repository.active_calibration(session, name),
    )


def task_metrics(session: Session, name: str, since: datetime | None) -> list[SnapshotOut]:
    require_task(session, name)
    return [SnapshotOut.of(row) for row in repository.snapshots(session, name, since)]


def task_reliability(session: Session, name: str) -> ReliabilityOut:
    require_task(session, name)
    row = repository.latest_snapshot(session, name)
    if row is None:
        return ReliabilityOut(
            task=name,
            evaluated_at=None,
            window_start=None,
            window_end=None,
            calibration_version=None,
            n=0,
            bins=[],
        )
    return ReliabilityOut(
        task=name,
        evaluated_at=row.evaluated_at,
        window_start=row.window_start,
        window_end=row.window_end,
        calibration_version=row.calibration_version,
        n=row.n,
        bins=list(row.bins or []),
    )


def alerts(session: Session, state: str | None, task: str | None) -> list[AlertOut]:
    return [AlertOut.of(row) for row in alert_repository.list_alerts(session, state, task)]
