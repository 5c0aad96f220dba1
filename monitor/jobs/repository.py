"""The only SQL about recalibration job rows: enqueue, claim, lease writes, re-queue.

Every lease write is conditional on the lease (`_owned`): a worker that
stalled past its lease and was replaced matches no row. The claim itself is
`monitor.db.dialect.claim_next` (FOR UPDATE SKIP LOCKED on Postgres, one
atomic UPDATE on SQLite); the policy (what is due, what a lease means) is in
`monitor.jobs.claim`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from monitor.db.dialect import claim_next
from monitor.db.models import RecalibrationJob
from monitor.db.models.enums import OPEN_JOB_STATUSES, JobStatus
from monitor.db.types import utcnow


# ------------------------------------------------------------------ enqueue
def open_job(session: Session, task: str) -> RecalibrationJob | None:
    stmt = select(RecalibrationJob).where(
        RecalibrationJob.task == task, RecalibrationJob.status.in_(OPEN_JOB_STATUSES)
    )
    return session.scalars(stmt).first()


def insert_job(session: Session, job: RecalibrationJob) -> None:
    """Insert in a savepoint; raises IntegrityError (savepoint rolled back) when
    another process queued an open job for the task first (partial unique index)."""
    with session.begin_nested():
        session.add(job)
        session.flush()


# ------------------------------------------------------------------ leases
def claim_due(session: Session, owner: str, lease_s: float, now: datetime) -> Any | None:
    """Take the oldest due queued job (a retry waits for `not_before`); the row or None."""
    job = RecalibrationJob.__table__.c
    return claim_next(
        session,
        RecalibrationJob,
        where=and_(
            job.status == JobStatus.queued.value,
            or_(job.not_before.is_(None), job.not_before <= now),
        ),
        order_by=[job.created_at, job.id],
        values={
            "status": JobStatus.running.value,
            "attempts": job.attempts + 1,
            "lease_owner": owner,
            "lease_expires_at": now + timedelta(seconds=lease_s),
            "heartbeat_at": now,
            "started_at": now,
            "finished_at": None,
        },
    )


def _owned(job_id: int, owner: str) -> Any:
    return and_(
        RecalibrationJob.id == job_id,
        RecalibrationJob.lease_owner == owner,
        RecalibrationJob.status == JobStatus.running.value,
    )


def heartbeat(session: Session, job_id: int, owner: str, lease_s: float) -> bool:
    """Extend the lease; False means it was lost (expired and taken over)."""
    now = utcnow()
    stmt = (
        update(RecalibrationJob)
        .where(_owned(job_id, owner))
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return (session.execute(stmt).rowcount or 0) == 1  # type: ignore[attr-defined]


def lock_owned(session: Session, job_id: int, owner: str) -> RecalibrationJob | None:
    """The job, row-locked, if this owner still holds its lease; else None.

    Called first in a finishing transaction: holding the row lock until commit
    means no other worker can re-queue it between the check and the commit.
    """
    stmt = (
        update(RecalibrationJob)
        .where(_owned(job_id, owner))
        .values(heartbeat_at=utcnow())
        .returning(RecalibrationJob.id)
        .execution_options(synchronize_session=False)
    )
    if session.execute(stmt).first() is None:
        return None
    return session.get(RecalibrationJob, job_id, populate_existing=True)


def hand_back(session: Session, job_id: int, owner: str) -> bool:
    """A stopping worker's running job, back to the queue at once; False if not held.

    Without it the job would wait out its lease (a minute by default) and the
    stop would use up one of its attempts: enough rolling restarts during fits
    and a job fails that never failed. The stop is the operator's, not the
    job's, so the attempt is given back. Conditional on the lease like every
    lease write: a job that finished first, or was taken over, is left alone.
    """
    job = RecalibrationJob
    stmt = (
        update(job)
        .where(_owned(job_id, owner))
        .values(
            status=JobStatus.queued.value,
            attempts=job.attempts - 1,
            lease_owner=None,
            lease_expires_at=None,
            not_before=utcnow(),
            error="the worker stopped mid-job; re-queued",
        )
        .execution_options(synchronize_session=False)
    )
    return (session.execute(stmt).rowcount or 0) == 1  # type: ignore[attr-defined]


def requeue_expired(session: Session, now: datetime | None = None) -> tuple[list[int], list[int]]:
    """Jobs whose worker died: back to the queue, or failed after max attempts.

    Returns (re-queued ids, failed ids); the caller emits events for the failed.
    """
    now = now or utcnow()
    job = RecalibrationJob
    expired = and_(job.status == JobStatus.running.value, job.lease_expires_at < now)
    failed_stmt = (
        update(job)
        .where(expired, job.attempts >= job.max_attempts)
        .values(
            status=JobStatus.failed.value,
            finished_at=now,
            lease_owner=None,
            lease_expires_at=None,
            error="the worker's lease expired (worker died or stalled) at the last attempt",
        )
        .returning(job.id)
        .execution_options(synchronize_session=False)
    )
    failed = [int(i) for i in session.scalars(failed_stmt)]
    requeue_stmt = (
        update(job)
        .where(expired, job.attempts < job.max_attempts)
        .values(
            status=JobStatus.queued.value,
            lease_owner=None,
            lease_expires_at=None,
            not_before=now,
            error="the worker's lease expired (worker died or stalled); re-queued",
        )
        .returning(job.id)
        .execution_options(synchronize_session=False)
    )
    requeued = [int(i) for i in session.scalars(requeue_stmt)]
    return requeued, failed


def job_task(session: Session, job_id: int) -> str | None:
    return session.scalar(select(RecalibrationJob.task).where(RecalibrationJob.id == job_id))
