"""Job leases: claim, heartbeat, finish, retry, and re-queue after a worker died.

The job row is the truth. A worker owns a running job only while its lease
(`lease_owner`, `lease_expires_at`) is current; every write a worker makes
about the job is conditional on still owning it, so a worker that stalled past
its lease and was replaced can never finish the job a second time. Re-queueing
expired leases is a single conditional UPDATE that any worker may run: the
row lock (Postgres) or the single writer (SQLite) makes exactly one win.
The statements are in `monitor.jobs.repository`; this module is the policy.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from monitor.db.models import RecalibrationJob
from monitor.db.models.enums import JobStatus
from monitor.db.types import utcnow
from monitor.jobs import repository

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
    row = repository.claim_due(session, owner, lease_s, now or utcnow())
    if row is None:
        return None
    m = row._mapping
    return ClaimedJob(m["id"], m["task"], m["trigger"], m["attempts"], m["max_attempts"], owner)


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
