"""Dashboard pages (GET) and sign-in; actions live in `actions` and share this router.

Every route but the login page and the stylesheet depends on
`current_session`, which redirects (303) to the login page without a valid
session cookie or `Authorization: Bearer <admin token>`; in loopback mode (no
admin token) it lets local clients in.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, Response

from monitor.alerting import service as alerting
from monitor.auth import client_host
from monitor.calibrations import service as calibrations
from monitor.dashboard import repository, views
from monitor.dashboard.actions import router as actions_router
from monitor.dashboard.rendering import HERE, DashboardRoute, error_page, redirect, render
from monitor.dashboard.session import (
    DashboardSession,
    check_admin_token,
    current_session,
    issue_session,
    login_allowed_without_token,
    safe_next,
    set_session_cookie,
    signed_in,
    signing_key,
)
from monitor.deps import SessionDep, SettingsDep, get_runtime
from monitor.errors import NotFoundError
from monitor.evaluation.repository import active_calibration
from monitor.refused_tokens import refused_tokens
from monitor.tasks.repository import get_task
from monitor.tasks.service import validate_task_name

router = APIRouter(prefix="/dashboard", route_class=DashboardRoute, include_in_schema=False)
Page = Annotated[DashboardSession, Depends(current_session)]
PAGE_SIZE = 25
MAX_PAGE = 1_000_000  # above it a page number is a typo (and past SQLite's integer range)
STYLESHEET = HERE / "static" / "dashboard.css"


@router.get("/static/dashboard.css")
def stylesheet() -> FileResponse:
    """Public: the login page needs it, and it holds nothing secret."""
    return FileResponse(STYLESHEET, media_type="text/css", headers={"Cache-Control": "max-age=300"})


@router.get("/login")
def login_form(
    request: Request, settings: SettingsDep, session: SessionDep, next: str | None = None
) -> Response:
    if signed_in(request, session) is not None:
        return redirect(request, safe_next(next))
    context = {
        "next": safe_next(next),
        "error": None,
        "token_configured": settings.admin_token is not None,
        "loopback_ok": login_allowed_without_token(request),
    }
    return render(request, "login.html", context, None)


@router.post("/login")
def login(
    request: Request,
    settings: SettingsDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str | None, Form()] = None,
) -> Response:
    if settings.admin_token is None:
        if login_allowed_without_token(request):
            return redirect(
                request,
                safe_next(next),
                "No admin token is configured: local clients use the dashboard without signing in.",
            )
        return error_page(
            request,
            403,
            "No admin token is configured: only local (loopback) "
            "clients may use the dashboard. Set THERMOSTAT_ADMIN_TOKEN.",
        )
    if not check_admin_token(settings, token):
        refused_tokens(get_runtime(request)).refused("dashboard", client_host(request))
        context = {
            "next": safe_next(next),
            "error": "That token is not the admin token.",
            "token_configured": True,
            "loopback_ok": False,
        }
        return render(request, "login.html", context, None, status_code=401)
    cookie, _ = issue_session(signing_key(request))
    response = redirect(request, safe_next(next), "Signed in.")
    forwarded = request.headers.get("x-forwarded-proto", "")
    set_session_cookie(
        response, cookie, secure=request.url.scheme == "https" or forwarded == "https"
    )
    return response


@router.get("")
def overview(request: Request, page: Page, session: SessionDep, settings: SettingsDep) -> Response:
    now = datetime.now(UTC)
    rows = views.overview(session, settings, now)
    base = str(request.base_url).rstrip("/")
    context = {"rows": rows, "proxy_url": f"{base}/v1", "base_url": base, "active_nav": "overview"}
    return render(request, "overview.html", context, page)


def _cursor(value: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not value or "_" not in value:
        return None
    at, _, gen_id = value.partition("_")
    try:
        return datetime.fromisoformat(at).astimezone(UTC), uuid.UUID(gen_id)
    except ValueError:
        return None


@router.get("/tasks/{task}")
def task_detail(
    request: Request,
    task: str,
    page: Page,
    session: SessionDep,
    settings: SettingsDep,
    before: str | None = None,
) -> Response:
    validate_task_name(task)
    if get_task(session, task) is None and task not in settings.config_file.tasks:
        raise NotFoundError(f"task {task!r} not found")
    now = datetime.now(UTC)
    model = views.task_page(session, settings, task, now)
    cursor = _cursor(before)
    model.generations = repository.generations_page(session, task, cursor, PAGE_SIZE)
    last = model.generations[-1] if len(model.generations) == PAGE_SIZE else None
    context = {
        "t": model,
        "older": f"{last.created_at.isoformat()}_{last.id}" if last else None,
        "paged": cursor is not None,
        "duration": views.duration,
        "active_nav": "overview",
    }
    return render(request, "task.html", context, page)


def _page_number(value: int) -> int:
    return max(1, value)


@router.get("/alerts")
def alerts(
    request: Request,
    page: Page,
    session: SessionDep,
    state: Annotated[str | None, Query()] = None,
    p: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
) -> Response:
    state = state if state in ("pending", "firing", "resolved") else None
    firing = repository.open_alerts_by_task(session)
    rows, total = repository.alerts_page(session, state, (p - 1) * PAGE_SIZE, PAGE_SIZE)
    context = {
        "open": [a for items in firing.values() for a in items],
        "rows": rows,
        "total": total,
        "state": state,
        "p": p,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "active_nav": "alerts",
    }
    return render(request, "alerts.html", context, page)


@router.get("/jobs")
def jobs(
    request: Request,
    page: Page,
    session: SessionDep,
    status: Annotated[str | None, Query()] = None,
    task: Annotated[str | None, Query()] = None,
    p: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
) -> Response:
    status = status if status in ("queued", "running", "succeeded", "rejected", "failed") else None
    task = task or None
    rows, total = repository.jobs_page(session, status, task, (p - 1) * PAGE_SIZE, PAGE_SIZE)
    context = {
        "rows": rows,
        "total": total,
        "status": status,
        "task": task,
        "p": p,
        "pages": max(1, -(-total // PAGE_SIZE)),
        "duration": views.duration,
        "active_nav": "jobs",
    }
    return render(request, "jobs.html", context, page)


@router.get("/webhooks")
def webhooks(request: Request, page: Page, session: SessionDep) -> Response:
    hooks = alerting.list_webhooks(session)
    endpoints = [(hook, alerting.deliveries(session, hook.id, limit=10)) for hook in hooks]
    context = {"endpoints": endpoints, "active_nav": "webhooks"}
    return render(request, "webhooks.html", context, page)


@router.get("/calibrations/{calibration_id}/activate")
def confirm_activation(
    request: Request, calibration_id: int, page: Page, session: SessionDep
) -> Response:
    """Step one of two: say exactly what will change, then POST to confirm."""
    target = calibrations.require_calibration(session, calibration_id)
    current = active_calibration(session, target.task)
    if target.status == "rejected":
        return error_page(
            request,
            409,
            f"Version {target.version} was rejected by the "
            f"validation gate ({target.reason or 'no reason recorded'}).",
        )
    rollback = current is not None and target.version < current.version
    context = {"target": target, "current": current, "rollback": rollback, "active_nav": "overview"}
    return render(request, "confirm.html", context, page)


router.include_router(actions_router)
