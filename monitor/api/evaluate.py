"""`POST /api/evaluate`: one evaluation now, the same code path as the scheduler and CLI."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from monitor.deps import AdminAuth, SessionDep, SettingsDep
from monitor.evaluation.service import evaluate_all

router = APIRouter(prefix="/api", tags=["evaluation"], dependencies=[AdminAuth])


@router.post("/evaluate")
def evaluate(session: SessionDep, settings: SettingsDep) -> dict[str, Any]:
    return {"items": [result.as_dict() for result in evaluate_all(session, settings)]}
