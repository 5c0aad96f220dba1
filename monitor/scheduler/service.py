"""The scheduler service: APScheduler 3 in the scheduler role, gated by leadership.

Every process of the scheduler role runs the same APScheduler timetable, but
a job body runs only while this process holds the leader lock (a Postgres
advisory lock on a dedicated connection, or a file lock beside a SQLite
database). Followers retry the lock on every tick, so when the leader dies
(its connection closes and the server drops the lock) another process takes
over at its next tick, well within two evaluation intervals. The scheduler
only enqueues recalibration jobs; the job rows are the truth.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from monitor.alerting.rules import load_rules
from monitor.alerting.service import close_shared_client, sync_config_webhooks
from monitor.db.dialect import LeaderLock
from monitor.db.session import session_scope
from monitor.runtime import Runtime
from monitor.scheduler.jobs import JOBS
from monitor.tasks.repository import list_tasks
from monitor.tasks.service import sync_configured_tasks

log = logging.getLogger(__name__)

# pg_try_advisory_lock key of the scheduler leader ("thmo" in ASCII).
LEADER_LOCK_KEY = 0x74686D6F
CRON_JOB = "recalibration.cron"


class SchedulerService:
    name = "scheduler"

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.lock = LeaderLock(runtime.engine, LEADER_LOCK_KEY)
        self._lock_guard = threading.Lock()
        self._scheduler: BackgroundScheduler | None = None
        self._was_leader = False

    # ---- leadership -------------------------------------------------------

    def is_leader(self) -> bool:
        with self._lock_guard:
            try:
                leader = self.lock.try_acquire()
            except Exception:
                log.exception("leader lock check failed")
                leader = False
        if leader != self._was_leader:
            log.info("scheduler %s leadership", "acquired" if leader else "lost")
            self._was_leader = leader
        return leader

    def run_job(self, name: str, *args: Any) -> Any:
        """Run a registered job now if this process leads; None when it does not."""
        spec = JOBS[name]
        if not spec.enabled(self.settings) or not self.is_leader():
            return None
        return spec.run(self.runtime, *args)

    def _tick(self, name: str, *args: Any) -> None:
        try:
            self.run_job(name, *args)
        except Exception:
            log.exception("scheduled job %s failed", name)
        if name == "evaluation.evaluate":
            self._sync_cron_jobs()

    # ---- timetable --------------------------------------------------------

    def enabled_jobs(self) -> list[str]:
        return [name for name, spec in JOBS.items() if spec.enabled(self.settings)]

    def cron_schedules(self) -> dict[str, str]:
        """Task -> crontab for every known task with `recalibrate_cron`."""
        with session_scope(self.runtime.sessions) as session:
            names = {task.name for task in list_tasks(session)}
        names |= set(self.settings.config_file.tasks)
        out = {}
        for name in sorted(names):
            expression = self.settings.task_config(name).recalibrate_cron
            if expression:
                out[name] = expression
        return out

    def _sync_cron_jobs(self) -> None:
        scheduler = self._scheduler
        if scheduler is None or not JOBS[CRON_JOB].enabled(self.settings):
            return
        try:
            wanted = {
                f"{CRON_JOB}:{task}": (task, cron) for task, cron in self.cron_schedules().items()
            }
        except Exception:
            log.exception("reading cron schedules failed")
            return
        for job in scheduler.get_jobs():
            if job.id.startswith(f"{CRON_JOB}:") and job.id not in wanted:
                job.remove()
        for job_id, (task, cron) in wanted.items():
            current = scheduler.get_job(job_id)
            if current is not None and getattr(current, "name", "") == cron:
                continue
            scheduler.add_job(
                self._tick,
                CronTrigger.from_crontab(cron, timezone=UTC),
                args=[CRON_JOB, task],
                id=job_id,
                name=cron,
                replace_existing=True,
            )

    def build(self) -> BackgroundScheduler:
        scheduler = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 60},
        )
        for name, spec in JOBS.items():
            if spec.interval_s is None or not spec.enabled(self.settings):
                continue
            # Deliveries start at once; next_run_time=None would mean "paused" in APScheduler.
            first = {"next_run_time": datetime.now(UTC)} if name == "webhooks.deliver" else {}
            scheduler.add_job(
                self._tick,
                IntervalTrigger(seconds=spec.interval_s(self.settings), timezone=UTC),
                args=[name],
                id=name,
                name=name,
                **first,
            )
        self._scheduler = scheduler
        self._sync_cron_jobs()
        return scheduler

    # ---- service ----------------------------------------------------------

    def prepare(self) -> None:
        """Fail fast on bad rules; bring config-file tasks and webhooks into the tables."""
        rules = load_rules(self.settings.alert_rules)
        with session_scope(self.runtime.sessions) as session:
            sync_configured_tasks(session, self.settings)
            sync = sync_config_webhooks(session, self.settings.config_file.webhooks)
        log.info(
            "scheduler: %d alert rules; config webhooks +%d ~%d -%d",
            len(rules),
            sync.added,
            sync.updated,
            sync.removed,
        )

    async def start(self) -> None:
        await asyncio.to_thread(self.prepare)
        scheduler = self.build()
        scheduler.start()
        log.info("scheduler jobs: %s", ", ".join(job.id for job in scheduler.get_jobs()))

    async def stop(self) -> None:
        scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None and scheduler.running:
            await asyncio.to_thread(scheduler.shutdown, True)
        with self._lock_guard:
            self.lock.release()
        close_shared_client(self.runtime)


def create_scheduler(runtime: Runtime) -> SchedulerService:
    return SchedulerService(runtime)
