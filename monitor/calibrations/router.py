"""Admin API for calibration versions and recalibration jobs.

Handlers are thin: services only flush and the handler, being the edge,
commits before answering. (The request dependency would commit too, but only
after the response is sent: a client could hold a job id that is not yet
visible, or a 200 for a change that then failed to commit.) Re-scoring the
task's history under a newly activated version happens later in the worker,
never in the request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse

from monitor.calibrations import repository, service
from monitor.calibrations.schemas import CalibrationOut, JobOut, Listing, RecalibrateAccepted
from monitor.db.models.enums import JobStatus, JobTrigger
from monitor.deps import AdminAuth, SessionDep, SettingsDep
from monitor.errors import NotFoundError, ValidationFailed
from monitor.jobs.queue import enqueue_recalibration
from monitor.tasks.repository import get_task
from monitor.tasks.service import validate_task_name

router = APIRouter(prefix="/api", tags=["calibrations"], dependencies=[AdminAuth])

TaskQuery = Annotated[str | None, Query(description="only this task")]


@router.get("/calibrations")
def list_calibrations(session: SessionDep, task: TaskQuery = None) -> Listing[CalibrationOut]:
    rows = repository.list_calibrations(session, task)
    return Listing[CalibrationOut](items=[CalibrationOut.of(row) for row in rows])


@router.get("/calibrations/{calibration_id}")
def get_calibration(calibration_id: int, session: SessionDep) -> CalibrationOut:
    return CalibrationOut.of(service.require_calibration(session, calibration_id))


@router.post("/calibrations/{calibration_id}/activate")
def activate_calibration(calibration_id: int, session: SessionDep) -> CalibrationOut:
    """Roll forward or back: the target becomes active, the current one retired."""
    activation = service.activate(session, calibration_id)
    session.commit()
    return CalibrationOut.of(activation.calibration)


@router.get("/jobs")
def list_jobs(
    session: SessionDep, task: TaskQuery = None, status: str | None = None
) -> Listing[JobOut]:
    if status is not None and status not in JobStatus.__members__:
        known = ", ".join(JobStatus.__members__)
        raise ValidationFailed(f"status: must be one of {known}", field="status")
    rows = repository.list_jobs(session, task, status)
    return Listing[JobOut](items=[JobOut.of(row) for row in rows])


@router.get("/jobs/{job_id}")
def get_job(job_id: int, session: SessionDep) -> JobOut:
    job = repository.get_job(session, job_id)
    if job is None:
        raise NotFoundError(f"job {job_id} not found")
    return JobOut.of(job)


@router.post("/tasks/{task}/recalibrate", status_code=202)
def recalibrate(task: str, session: SessionDep, settings: SettingsDep) -> JSONResponse:
    """Queue a manual job (202); an already open job for the task is returned instead."""
    validate_task_name(task)
    if get_task(session, task) is None and task not in settings.config_file.tasks:
        raise NotFoundError(f"task {task!r} not found")
    job, created = enqueue_recalibration(
        session, task, JobTrigger.manual, max_attempts=settings.worker.max_attempts
    )
    body = RecalibrateAccepted(job_id=job.id, created=created, status=job.status)
    session.commit()
    return JSONResponse(body.model_dump(), status_code=202)
