"""The scheduler's jobs and their registry: `<feature>.<action>` -> switch, cadence, function.

Each function is the job's edge: it opens the session scopes and commits,
so tests (and `thermostat evaluate`) call the very functions the scheduler
runs, with no sleeping. Every job has an on/off switch in
`SchedulerSettings`; a test keeps this registry and the switches in step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from monitor.alerting.delivery import AttemptResult, deliver_one
from monitor.alerting.repository import due_delivery_ids
from monitor.alerting.service import shared_client
from monitor.db.models.enums import JobTrigger
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.evaluation.service import TaskEvaluation, evaluate_all
from monitor.jobs.queue import enqueue_recalibration
from monitor.runtime import Runtime
from monitor.scheduler import repository
from monitor.settings import Settings
from monitor.tasks.repository import list_tasks

log = logging.getLogger(__name__)

RETENTION_BATCH = 5_000
# Snapshots outlive generations: the ECE trend of a quarter is worth keeping.
SNAPSHOT_RETENTION_FACTOR = 4
SNAPSHOT_RETENTION_MIN = timedelta(days=90)


def run_evaluation(runtime: Runtime, now: datetime | None = None) -> list[TaskEvaluation]:
    with session_scope(runtime.sessions) as session:
        return evaluate_all(session, runtime.settings, now=now)


def deliver_due(
    runtime: Runtime, now: datetime | None = None, limit: int = 100
) -> list[AttemptResult]:
    """Send every due delivery once; each delivery commits on its own.

    `now` picks what is due and schedules retries; each request is signed
    with its own send time. One delivery's failure never stops the others.
    """
    now = now or utcnow()
    with session_scope(runtime.sessions) as session:
        ids = due_delivery_ids(session, now, limit)
    client = shared_client(runtime)
    results = []
    for delivery_id in ids:
        try:
            with session_scope(runtime.sessions) as session:
                result = deliver_one(session, client, runtime.settings, delivery_id, now=now)
        except Exception:
            log.exception("webhook delivery %s could not be processed", delivery_id)
            continue
        if result is not None:
            results.append(result)
    return results


def purge_retention(
    runtime: Runtime, now: datetime | None = None, batch: int = RETENTION_BATCH
) -> dict[str, int]:
    """Delete generations past each task's retention, batch by batch; old snapshots too."""
    now = now or utcnow()
    with session_scope(runtime.sessions) as session:
        names = [task.name for task in list_tasks(session)]
    deleted: dict[str, int] = {}
    for name in names:
        retention = runtime.settings.task_config(name).retention
        total = 0
        while True:
            with session_scope(runtime.sessions) as session:
                count = repository.purge_generations_batch(session, name, now - retention, batch)
            total += count
            if count < batch:
                break
        keep = max(retention * SNAPSHOT_RETENTION_FACTOR, SNAPSHOT_RETENTION_MIN)
        with session_scope(runtime.sessions) as session:
            repository.purge_snapshots(session, name, now - keep)
        deleted[name] = total
        if total:
            log.info("retention: purged %d generations of %s", total, name)
    return deleted


def cron_recalibrate(runtime: Runtime, task: str) -> int:
    """Enqueue a cron-triggered job; the queue keeps one open job per task."""
    with session_scope(runtime.sessions) as session:
        job, created = enqueue_recalibration(
            session, task, JobTrigger.cron, max_attempts=runtime.settings.worker.max_attempts
        )
        if created:
            log.info("cron: recalibration job %s queued for %s", job.id, task)
        return job.id


@dataclass(frozen=True)
class JobSpec:
    name: str
    switch: str  # a boolean field of SchedulerSettings
    run: Callable[..., Any]
    interval_s: Callable[[Settings], float] | None = None  # None: a cron trigger per task

    def enabled(self, settings: Settings) -> bool:
        return bool(getattr(settings.scheduler, self.switch))


JOBS: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "evaluation.evaluate",
            "evaluate_enabled",
            run_evaluation,
            lambda s: s.evaluate_interval_s,
        ),
        JobSpec(
            "webhooks.deliver",
            "webhook_delivery_enabled",
            deliver_due,
            lambda s: s.scheduler.webhook_delivery_interval_s,
        ),
        JobSpec(
            "retention.purge",
            "retention_enabled",
            purge_retention,
            lambda s: s.scheduler.retention_interval_s,
        ),
        JobSpec("recalibration.cron", "cron_recalibration_enabled", cron_recalibrate),
    )
}
