"""`/api/alerts`: alert episodes, newest first, filtered by state and task."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter

from monitor.deps import AdminAuth, SessionDep
from monitor.evaluation import queries

router = APIRouter(prefix="/api/alerts", tags=["alerts"], dependencies=[AdminAuth])


@router.get("")
def list_alerts(
    session: SessionDep,
    state: Literal["pending", "firing", "resolved"] | None = None,
    task: str | None = None,
) -> dict[str, Any]:
    return {"items": queries.alerts(session, state, task)}
