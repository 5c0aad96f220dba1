"""Job leases: claim, heartbeat, finish, retry, and re-queue after a worker died.

The job row is the truth. A worker owns a running job only while its lease
(`lease_owner`, `lease_expires_at`) is current; every write a worker makes
about the job is conditional on still owning it, so a worker that stalled past
its lease and was replaced can never finish the job a second time. Re-queueing
expired leases is a single conditional UPDATE that any worker may run: the
row lock (Postgres) or the single writer (SQLite) makes exactly one win.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from monitor.db.dialect import claim_next
from monitor.db.models import RecalibrationJob
from monitor.db.models.enums import JobStatus
from monitor.db.types import utcnow

RETRY_BACKOFF_BASE_S = 5.0
RETRY_BACKOFF_MAX_S = 300.0


def new_lease_owner() -> str:
    """hostname:pid:random, unique per worker service instance."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    task: str
    trigger: str
    attempts: int
    max_attempts: int
    owner: str


def claim_job(
    session: Session, owner: str, lease_s: float, now: datetime | None = None
) -> ClaimedJob | None:
    """Take the oldest due queued job (a retry waits for `not_before`)."""
    now = now or utcnow()
    job = RecalibrationJob.__table__.c
    row = claim_next(
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
    if row is None:
        return None
    m = row._mapping
    return ClaimedJob(m["id"], m["task"], m["trigger"], m["attempts"], m["max_attempts"], owner)


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


def finish(
    job: RecalibrationJob,
    status: JobStatus,
    *,
    device: str | None = None,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    calibration_id: int | None = None,
) -> None:
    job.status = status.value
    job.finished_at = utcnow()
    job.lease_owner = None
    job.lease_expires_at = None
    job.device = device or job.device
    job.result = result
    job.error = error
    job.calibration_id = calibration_id


def retry_delay(attempts: int) -> float:
    return min(RETRY_BACKOFF_BASE_S * 2 ** max(attempts - 1, 0), RETRY_BACKOFF_MAX_S)


def retry_or_fail(job: RecalibrationJob, error: str, now: datetime | None = None) -> bool:
    """After an error: queue again with backoff, or fail at max attempts; True if failed."""
    now = now or utcnow()
    if job.attempts >= job.max_attempts:
        finish(job, JobStatus.failed, error=error)
        return True
    job.status = JobStatus.queued.value
    job.error = error
    job.lease_owner = None
    job.lease_expires_at = None
    job.not_before = now + timedelta(seconds=retry_delay(job.attempts))
    return False


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
