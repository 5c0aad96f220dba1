"""Enqueueing recalibration jobs: the scheduler, the API and cron only ever call this.

At most one queued or running job per task (a partial unique index enforces
it, this function checks first to answer politely), and a task in its
cooldown after a rejected fit is not re-enqueued by the threshold trigger.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.db.models import RecalibrationJob
from monitor.db.models.enums import JobStatus, JobTrigger
from monitor.db.types import utcnow
from monitor.jobs.repository import insert_job, open_job
from monitor.tasks.repository import ensure_tasks, get_task

__all__ = ["enqueue_recalibration", "in_cooldown", "open_job"]


def in_cooldown(session: Session, task: str, now: datetime | None = None) -> bool:
    row = get_task(session, task)
    until = row.recalibrate_not_before if row else None
    return until is not None and until > (now or utcnow())


def enqueue_recalibration(
    session: Session, task: str, trigger: JobTrigger, *, max_attempts: int = 3
) -> tuple[RecalibrationJob, bool]:
    """Queue a job for `task`; returns (job, created). An open job is returned as is.

    Cooldown applies to the threshold trigger only: an operator's button or a
    cron schedule is a deliberate request.
    """
    existing = open_job(session, task)
    if existing is not None:
        return existing, False
    ensure_tasks(session, [task])
    job = RecalibrationJob(
        task=task,
        trigger=trigger.value,
        status=JobStatus.queued.value,
        attempts=0,
        max_attempts=max_attempts,
        created_at=utcnow(),
    )
    try:
        insert_job(session, job)
    except IntegrityError:
        # Another process queued one between our check and insert.
        raced = open_job(session, task)
        if raced is None:
            raise
        return raced, False
    return job, True
