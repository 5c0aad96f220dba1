"""`/api/tasks`: configuration, latest metrics, metric history and reliability bins."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query

from monitor.deps import AdminAuth, SessionDep, SettingsDep
from monitor.evaluation import queries
from monitor.evaluation.schemas import ReliabilityOut, TaskOut

router = APIRouter(prefix="/api/tasks", tags=["tasks"], dependencies=[AdminAuth])


@router.get("")
def list_tasks(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    return {"items": queries.list_task_views(session, settings)}


@router.get("/{task}")
def get_task(task: str, session: SessionDep, settings: SettingsDep) -> TaskOut:
    return queries.task_view(session, settings, task)


@router.get("/{task}/metrics")
def task_metrics(
    task: str,
    session: SessionDep,
    since: datetime | None = Query(default=None, description="ISO 8601; snapshots at or after"),
) -> dict[str, Any]:
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return {"items": queries.task_metrics(session, task, since)}


@router.get("/{task}/reliability")
def task_reliability(task: str, session: SessionDep) -> ReliabilityOut:
    return queries.task_reliability(session, task)
