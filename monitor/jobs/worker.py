"""The worker role's service: poll, claim, run the job in a thread, heartbeat the lease.

The event loop only schedules; every database call and the fit itself run in
threads, so an `all`-role process keeps answering HTTP during a fit. While a
job runs, a heartbeat extends its lease every `heartbeat_s`; if the process
dies the lease expires and any worker re-queues the job. Between jobs the
loop also re-scores history for versions activated through the API.

The fit and the re-scoring run in daemon threads (`monitor.jobs.daemon`), so
stopping (Ctrl-C or SIGTERM) never waits for them: the running job writes
nothing more and is handed back to the queue at once, its attempt not
counted, for the next worker to run from the start. A worker that dies
instead (SIGKILL, a lost host) leaves the job to its lease, which expires and
is re-queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import traceback
from typing import Any

from monitor.calibrations import service as calibrations
from monitor.db.session import session_scope
from monitor.jobs import claim, repository
from monitor.jobs.claim import ClaimedJob
from monitor.jobs.daemon import Interrupted, run_in_daemon_thread
from monitor.jobs.recalibration import JobOutcome, LeaseLost, fail_expired, record_failure, run_job
from monitor.runtime import Runtime

log = logging.getLogger(__name__)

# A stop waits this long for the database to take the job back, at most.
HAND_BACK_TIMEOUT_S = 5.0


class WorkerService:
    name = "worker"

    def __init__(self, runtime: Runtime, *, device: str | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.worker
        self.device = device
        self.owner = claim.new_lease_owner()
        self._task: asyncio.Task[Any] | None = None
        self._stopping = asyncio.Event()
        self._halt = threading.Event()  # read by job threads: write nothing more
        self.outcomes: list[JobOutcome] = []  # recent outcomes, for tests and logs
        self.current_job: ClaimedJob | None = None
        self.jobs_run = 0

    async def start(self) -> None:
        self._stopping.clear()
        self._halt.clear()
        self._task = asyncio.create_task(self._run(), name=f"worker {self.owner}")

    async def stop(self) -> None:
        self._halt.set()  # from here the job's thread writes nothing more
        self._stopping.set()
        running, self.current_job = self.current_job, None
        if self._task is not None:
            # A fit in its (daemon) thread cannot be interrupted; it ends with
            # the process, and its job goes back to the queue below.
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if running is not None:
            await self._hand_back(running)

    async def run_until_idle(self) -> int:
        """Run every due job and pending re-score, then return how many jobs ran.

        The worker as a batch job (`serve --role worker --until-idle`, run by a
        Kubernetes CronJob): it holds its GPU only while there is work. A job
        waiting out a retry's backoff is not due and is left to the next run.
        `stop()` (on a signal) ends it and hands back a running job, and one
        called before it started leaves it nothing to do; a failed poll (the
        database down) raises.
        """
        self._task = asyncio.current_task()  # what stop() cancels
        ran_before = self.jobs_run
        while not self._stopping.is_set() and await self.run_once():
            pass
        return self.jobs_run - ran_before

    async def _hand_back(self, job: ClaimedJob) -> None:
        """Re-queue the interrupted job now; on any failure its lease still expires."""
        try:
            handed = await asyncio.wait_for(
                run_in_daemon_thread(self._release, job, name="thermostat-hand-back"),
                HAND_BACK_TIMEOUT_S,
            )
        except Exception as exc:
            log.warning(
                "job %s: not handed back (%s); it is re-queued when its lease expires",
                job.id,
                type(exc).__name__,
            )
            return
        if handed:
            log.info("worker stopping: job %s (%s) handed back to the queue", job.id, job.task)

    def _release(self, job: ClaimedJob) -> bool:
        with session_scope(self.runtime.sessions) as session:
            return repository.hand_back(session, job.id, job.owner)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                worked = await self.run_once()
            except Exception:
                log.exception("worker poll failed (database down?); retrying")
                worked = False
            if not worked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), self.settings.poll_interval_s)

    async def run_once(self) -> bool:
        """One poll: re-queue dead leases, run one due job or one re-score; True if busy."""
        await asyncio.to_thread(fail_expired, self.runtime.sessions)
        job = await asyncio.to_thread(self._claim)
        if job is not None:
            await self.execute(job)
            return True
        return await self._rescore_one()

    def _claim(self) -> ClaimedJob | None:
        # Committed before the work starts: other workers must see the claim and lease.
        with session_scope(self.runtime.sessions) as session:
            return claim.claim_job(session, self.owner, self.settings.lease_s)

    async def execute(self, job: ClaimedJob) -> JobOutcome | None:
        """Run a claimed job with heartbeats; errors become retries or failure."""
        self.current_job = job
        self.jobs_run += 1
        log.info(
            "worker %s claimed job %s (%s, attempt %s)", self.owner, job.id, job.task, job.attempts
        )
        beat = asyncio.create_task(self._heartbeat(job))
        outcome: JobOutcome | None = None
        try:
            outcome = await run_in_daemon_thread(
                run_job,
                self.runtime.sessions,
                self.runtime.settings,
                job,
                device=self.device,
                stop=self._halt,
                name=f"thermostat-job-{job.id}",
            )
        except (LeaseLost, Interrupted) as exc:
            log.warning("%s", exc)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.error("job %s failed: %s\n%s", job.id, error, traceback.format_exc())
            await asyncio.to_thread(record_failure, self.runtime.sessions, job, error)
        finally:
            beat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beat
        # Not in `finally`: a cancellation mid-fit (its thread runs on) leaves the
        # job current for stop() to hand back, even when the loop's exit cancelled
        # this task before stop() ran (uvicorn's forced exit skips the shutdown).
        self.current_job = None
        if outcome is not None:
            self.outcomes = [*self.outcomes[-19:], outcome]
        return outcome

    async def _heartbeat(self, job: ClaimedJob) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                held = await asyncio.to_thread(self._beat, job)
            except Exception:
                log.warning("heartbeat for job %s failed; will retry", job.id, exc_info=True)
                continue
            if not held:
                log.warning("job %s: lease lost; its result will be discarded", job.id)
                return

    def _beat(self, job: ClaimedJob) -> bool:
        with session_scope(self.runtime.sessions) as session:
            return repository.heartbeat(session, job.id, job.owner, self.settings.lease_s)

    async def _rescore_one(self) -> bool:
        pending = await asyncio.to_thread(self._pending_rescores)
        if not pending:
            return False
        calibration_id, task = pending[0]
        config = self.runtime.settings.task_config(task)
        await run_in_daemon_thread(
            calibrations.rescore,
            self.runtime.sessions,
            calibration_id,
            config,
            stop=self._halt,
            name=f"thermostat-rescore-{calibration_id}",
        )
        return True

    def _pending_rescores(self) -> list[tuple[int, str]]:
        with session_scope(self.runtime.sessions) as session:
            return calibrations.pending_rescores(session)


def create_worker(runtime: Runtime) -> WorkerService:
    return WorkerService(runtime)
