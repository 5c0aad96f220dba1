"""Enqueueing recalibration jobs: the scheduler, the API and cron only ever call this.

At most one queued or running job per task (a partial unique index enforces
it, this function checks first to answer politely), and a task in its
cooldown after a rejected fit is not re-enqueued by the threshold trigger.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from monitor.db.models import RecalibrationJob, Task
from monitor.db.models.enums import OPEN_JOB_STATUSES, JobStatus, JobTrigger
from monitor.db.types import utcnow
from monitor.tasks.repository import ensure_tasks


def open_job(session: Session, task: str) -> RecalibrationJob | None:
    stmt = select(RecalibrationJob).where(
        RecalibrationJob.task == task, RecalibrationJob.status.in_(OPEN_JOB_STATUSES)
    )
    return session.scalars(stmt).first()


def in_cooldown(session: Session, task: str, now: datetime | None = None) -> bool:
    row = session.get(Task, task)
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
        with session.begin_nested():
            session.add(job)
            session.flush()
    except IntegrityError:
        # Another process queued one between our check and insert.
        raced = open_job(session, task)
        if raced is None:
            raise
        return raced, False
    return job, True
