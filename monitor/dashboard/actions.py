"""Dashboard actions: POST + CSRF, then redirect-after-post with a flash message.

The CSRF token is required of cookie-authorised requests only: one carrying
the admin bearer token cannot come from a cross-site form. Sign-out needs the
session alone (see `monitor.dashboard.session`).

Each action commits before redirecting: the request dependency would commit
only after the response is sent, and the browser follows the redirect at
once, so the next page could otherwise show the state before the action.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from monitor.alerting import service as alerting
from monitor.calibrations import service as calibrations
from monitor.dashboard.rendering import DashboardRoute, redirect
from monitor.dashboard.session import (
    DashboardSession,
    check_csrf,
    clear_session_cookie,
    current_session,
    revoke,
)
from monitor.db.models.enums import JobTrigger
from monitor.deps import RuntimeDep, SessionDep, SettingsDep
from monitor.errors import NotFoundError
from monitor.jobs.queue import enqueue_recalibration
from monitor.tasks.repository import get_task
from monitor.tasks.service import validate_task_name

router = APIRouter(route_class=DashboardRoute)


def csrf_checked(
    page: Annotated[DashboardSession, Depends(current_session)],
    csrf_token: Annotated[str | None, Form()] = None,
) -> DashboardSession:
    """Session first (no session: 303 to login), then the form's CSRF token (else 403).

    A request authorised by the admin bearer token needs none.
    """
    if not page.bearer:
        check_csrf(page, csrf_token)
    return page


Action = Annotated[DashboardSession, Depends(csrf_checked)]
Signed = Annotated[DashboardSession, Depends(current_session)]


@router.post("/logout")
def logout(request: Request, page: Signed, session: SessionDep) -> Response:
    """No CSRF token needed: a forged sign-out harms nothing, and the session cookie is
    SameSite=Strict, so a cross-site POST carries none. A form's token is ignored."""
    if page.from_cookie:
        revoke(session, page)
        session.commit()
    response = redirect(request, "/dashboard/login", "Signed out.")
    clear_session_cookie(response)
    return response


@router.post("/evaluate")
def evaluate_now(
    request: Request, page: Action, session: SessionDep, settings: SettingsDep
) -> Response:
    from monitor.evaluation.service import evaluate_all

    results = evaluate_all(session, settings)
    session.commit()
    if not results:
        return redirect(request, "/dashboard", "Evaluated: no tasks yet.", "info")
    parts = [
        f"{r.task}: {r.status.replace('_', ' ')}"
        + (f" (ECE {r.metrics['ece']:.3f})" if r.metrics.get("ece") is not None else "")
        for r in results
    ]
    return redirect(request, "/dashboard", "Evaluated " + "; ".join(parts) + ".")


@router.post("/tasks/{task}/recalibrate")
def recalibrate(
    request: Request, task: str, page: Action, session: SessionDep, settings: SettingsDep
) -> Response:
    validate_task_name(task)
    if get_task(session, task) is None and task not in settings.config_file.tasks:
        raise NotFoundError(f"task {task!r} not found")
    job, created = enqueue_recalibration(
        session, task, JobTrigger.manual, max_attempts=settings.worker.max_attempts
    )
    session.commit()
    message = (
        f"Recalibration job #{job.id} queued for {task}."
        if created
        else f"Job #{job.id} for {task} is already {job.status}; not queued again."
    )
    return redirect(request, f"/dashboard/tasks/{task}#jobs", message, "ok" if created else "info")


@router.post("/calibrations/{calibration_id}/activate")
def activate(
    request: Request,
    calibration_id: int,
    page: Action,
    session: SessionDep,
    confirm: Annotated[str | None, Form()] = None,
) -> Response:
    if confirm != "yes":
        return redirect(request, f"/dashboard/calibrations/{calibration_id}/activate")
    activation = calibrations.activate(session, calibration_id)
    session.commit()
    cal = activation.calibration
    message = (
        f"Version {cal.version} (T = {cal.temperature:.3f}) is now active for {cal.task}."
        if activation.changed
        else f"Version {cal.version} was already active; nothing changed."
    )
    return redirect(request, f"/dashboard/tasks/{cal.task}#versions", message)


@router.post("/webhooks/{webhook_id}/test")
def test_webhook(
    request: Request,
    webhook_id: int,
    page: Action,
    session: SessionDep,
    settings: SettingsDep,
    runtime: RuntimeDep,
) -> Response:
    _, result = alerting.send_test(session, alerting.shared_client(runtime), settings, webhook_id)
    session.commit()
    if result.delivered:
        return redirect(
            request,
            "/dashboard/webhooks",
            f"Test event delivered to webhook #{webhook_id} "
            f"(HTTP {result.status_code}, {result.duration_ms:.0f} ms).",
        )
    why = f"HTTP {result.status_code}" if result.status_code else (result.error or "no answer")
    return redirect(
        request,
        "/dashboard/webhooks",
        f"Test event to webhook #{webhook_id} failed: {why}.",
        "error",
    )


@router.post("/webhooks/{webhook_id}/enable")
def enable_webhook(
    request: Request, webhook_id: int, page: Action, session: SessionDep
) -> Response:
    hook = alerting.enable_webhook(session, webhook_id)
    session.commit()
    return redirect(request, "/dashboard/webhooks", f"Webhook #{hook.id} re-enabled.")
