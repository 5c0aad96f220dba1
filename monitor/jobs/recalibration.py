"""One recalibration job: load the window, fit T, gate it, store a version, activate.

Runs synchronously in a worker thread (numpy and torch release the GIL in
their kernels, so the event loop keeps serving while a fit runs). The job
reads in one short transaction, fits with no transaction open, and writes its
outcome in one transaction that first re-checks the lease under a row lock:
either the whole outcome (calibration row, activation, job status, events) is
committed by the lease holder, or nothing is. That is what makes a job that
was re-claimed after its worker stalled finish exactly once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerting.events import emit_event
from monitor.calibrations import repository, service
from monitor.config import TaskConfig
from monitor.db.models import Calibration
from monitor.db.models.enums import CalibrationStatus, JobStatus
from monitor.db.session import session_scope
from monitor.db.types import as_json, utcnow
from monitor.jobs import claim
from monitor.jobs import repository as jobs_repository
from monitor.jobs.claim import ClaimedJob
from monitor.jobs.daemon import Interrupted
from monitor.settings import Settings
from monitor.tasks.repository import get_task

log = logging.getLogger(__name__)

# Below this a held-out split of 20% is too small to judge anything.
MIN_FIT_SAMPLES = 50


class LeaseLost(RuntimeError):
    """This worker no longer owns the job; its results are discarded."""


@dataclass
class JobOutcome:
    job_id: int
    status: JobStatus
    reason: str = ""
    calibration_id: int | None = None
    temperature: float | None = None
    device: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _Inputs:
    config: TaskConfig
    rows: repository.LabelledRows
    current_temperature: float
    current_version: int | None
    since: datetime
    until: datetime


def _load(session: Session, settings: Settings, task: str) -> _Inputs:
    config = settings.task_config(task)
    active = repository.active_calibration(session, task)
    until = utcnow()
    since = until - config.window
    rows = repository.labelled_window(session, task, since, until)
    return _Inputs(
        config=config,
        rows=rows,
        current_temperature=active.temperature if active else 1.0,
        current_version=active.version if active else None,
        since=since,
        until=until,
    )


def _majority_k(rows: repository.LabelledRows) -> tuple[list[bytes], list[Any], np.ndarray]:
    """Keep generations stored with the most common K (a config change may mix them)."""
    from monitor.calibration import unpack_token_logprobs

    ks = [int(unpack_token_logprobs(blob)[1].shape[1]) for blob in rows.blobs]
    k = Counter(ks).most_common(1)[0][0]
    keep = [i for i, value in enumerate(ks) if value == k]
    labels = np.asarray([rows.labels[i] for i in keep], dtype=np.float64)
    return [rows.blobs[i] for i in keep], [rows.spans[i] for i in keep], labels


def resolve_device(requested: str) -> str:
    from monitor.calibration.fitting import resolve_device as _resolve

    return _resolve(requested)


def run_job(
    sessions: sessionmaker[Session],
    settings: Settings,
    job: ClaimedJob,
    *,
    device: str | None = None,
    rescore_after: bool = True,
    stop: threading.Event | None = None,
) -> JobOutcome:
    """Run a claimed job to its outcome; raises on errors (the caller retries).

    Once `stop` is set (the worker is shutting down) the job writes nothing
    more and raises Interrupted: it keeps its lease, which expires and is
    re-queued, as after SIGTERM.
    """
    t0 = time.perf_counter()
    # The job is its own edge, and commits in steps on purpose: a short read, the
    # fit with no transaction open, then the outcome under the lease's row lock.
    with session_scope(sessions) as session:
        inputs = _load(session, settings, job.task)
    timings = {"load_s": time.perf_counter() - t0}
    needed = max(inputs.config.min_samples, MIN_FIT_SAMPLES)
    if len(inputs.rows) < needed:
        reason = (
            f"too few labelled generations with logprobs in the {inputs.config.window} window: "
            f"{len(inputs.rows)} < {needed} needed"
        )
        _check_stop(stop, job)
        return _finish_without_fit(sessions, settings, job, inputs, reason, timings)

    from monitor.calibration import TokenBatch, validate_sequence_temperature

    blobs, spans, labels = _majority_k(inputs.rows)
    batch = TokenBatch.from_blobs(blobs, spans)
    usable = batch.usable_generations()
    if usable.shape[0] < batch.n_generations:
        # A null logprob (stored as NaN) makes one generation unusable, not the fit.
        log.warning(
            "task %s: %d generations with a NaN or +inf logprob left out of the fit",
            job.task,
            batch.n_generations - usable.shape[0],
        )
        batch, labels = batch.subset(usable), labels[usable]
        if usable.shape[0] < needed:
            reason = (
                f"too few labelled generations with usable logprobs in the "
                f"{inputs.config.window} window: {usable.shape[0]} < {needed} needed"
            )
            _check_stop(stop, job)
            return _finish_without_fit(sessions, settings, job, inputs, reason, timings)
    dev = resolve_device(device or settings.worker.device)
    t1 = time.perf_counter()
    result = validate_sequence_temperature(
        batch,
        labels,
        aggregator=inputs.config.confidence.value,
        current_temperature=inputs.current_temperature,
        holdout_fraction=settings.worker.holdout_fraction,
        seed=settings.worker.seed,
        n_bins=inputs.config.n_bins,
        device=dev,
    )
    timings["fit_s"] = time.perf_counter() - t1
    _check_stop(stop, job)
    outcome = _store_outcome(sessions, settings, job, inputs, result, dev, timings)
    if (
        outcome.status == JobStatus.succeeded
        and outcome.calibration_id is not None
        and rescore_after
    ):
        t2 = time.perf_counter()
        service.rescore(sessions, outcome.calibration_id, inputs.config, stop=stop)
        outcome.timings["rescore_s"] = time.perf_counter() - t2
    return outcome


def _check_stop(stop: threading.Event | None, job: ClaimedJob) -> None:
    if stop is not None and stop.is_set():
        raise Interrupted(f"job {job.id}: worker stopping; left to its lease")


def _cooldown(session: Session, settings: Settings, task: str) -> datetime:
    until = utcnow() + timedelta(seconds=settings.scheduler.recalibration_cooldown_s)
    row = get_task(session, task)
    if row is not None:
        row.recalibrate_not_before = until
    return until


def _finish_without_fit(
    sessions: sessionmaker[Session],
    settings: Settings,
    job: ClaimedJob,
    inputs: _Inputs,
    reason: str,
    timings: dict[str, float],
) -> JobOutcome:
    with session_scope(sessions) as session:
        row = jobs_repository.lock_owned(session, job.id, job.owner)
        if row is None:
            raise LeaseLost(f"job {job.id}: lease lost before finishing")
        result = {"accepted": False, "reason": reason, "n_samples": len(inputs.rows), **timings}
        claim.finish(row, JobStatus.rejected, result=result, error=reason)
        until = _cooldown(session, settings, job.task)
        emit_event(
            session,
            "recalibration.rejected",
            {"task": job.task, "job_id": job.id, "reason": reason, "cooldown_until": until},
        )
    log.info("job %s (%s) rejected: %s", job.id, job.task, reason)
    return JobOutcome(job.id, JobStatus.rejected, reason=reason, timings=timings)


def _store_outcome(
    sessions: sessionmaker[Session],
    settings: Settings,
    job: ClaimedJob,
    inputs: _Inputs,
    result: Any,
    device: str,
    timings: dict[str, float],
) -> JobOutcome:
    """One transaction: the lease check, the version, activation or rejection, events."""
    with session_scope(sessions) as session:
        row = jobs_repository.lock_owned(session, job.id, job.owner)
        if row is None:
            raise LeaseLost(f"job {job.id}: lease lost during the fit; result discarded")
        before = {**as_json(result.before), "temperature": result.current_temperature}
        after = {**as_json(result.after), "temperature": result.temperature}
        calibration = Calibration(
            task=job.task,
            version=repository.next_version(session, job.task),
            method=result.method,
            temperature=float(result.temperature),
            status=CalibrationStatus.candidate.value,
            source="worker",
            metrics_before=before,
            metrics_after=after,
            n_train=result.n_train,
            n_holdout=result.n_holdout,
            window_start=inputs.rows.window_start or inputs.since,
            window_end=inputs.rows.window_end or inputs.until,
            device=device,
            fit_seconds=timings["fit_s"],
            job_id=job.id,
            reason=result.reason,
            created_at=utcnow(),
        )
        repository.add_calibration(session, calibration)
        summary = {
            "accepted": bool(result.accepted),
            "reason": result.reason,
            "temperature": float(result.temperature),
            "current_temperature": result.current_temperature,
            "current_version": inputs.current_version,
            "version": calibration.version,
            "n_samples": len(inputs.rows),
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
            "device": device,
            **timings,
        }
        event = {"task": job.task, "job_id": job.id, "calibration_id": calibration.id, **summary}
        if result.accepted:
            service.activate(session, calibration.id)
            claim.finish(
                row,
                JobStatus.succeeded,
                device=device,
                result=summary,
                calibration_id=calibration.id,
            )
            emit_event(session, "recalibration.succeeded", event)
            status = JobStatus.succeeded
        else:
            calibration.status = CalibrationStatus.rejected.value
            claim.finish(
                row,
                JobStatus.rejected,
                device=device,
                result=summary,
                error=result.reason,
                calibration_id=calibration.id,
            )
            event["cooldown_until"] = _cooldown(session, settings, job.task)
            emit_event(session, "recalibration.rejected", event)
            status = JobStatus.rejected
        calibration_id = calibration.id
    log.info(
        "job %s (%s) %s: T %.4f -> %.4f on %s (%s)",
        job.id,
        job.task,
        status.value,
        result.current_temperature,
        result.temperature,
        device,
        result.reason,
    )
    return JobOutcome(
        job.id,
        status,
        reason=result.reason,
        calibration_id=calibration_id,
        temperature=float(result.temperature),
        device=device,
        timings=timings,
    )


def record_failure(sessions: sessionmaker[Session], job: ClaimedJob, error: str) -> bool:
    """Retry with backoff, or fail at the last attempt (emitting the event); True if failed.

    A worker that no longer holds the lease records nothing: the job is
    someone else's now.
    """
    with session_scope(sessions) as session:
        row = jobs_repository.lock_owned(session, job.id, job.owner)
        if row is None:
            return False
        failed = claim.retry_or_fail(row, error[:4000])
        if failed:
            emit_event(
                session,
                "recalibration.failed",
                {"task": job.task, "job_id": job.id, "attempts": row.attempts, "error": error},
            )
    return failed


def fail_expired(sessions: sessionmaker[Session]) -> tuple[list[int], list[int]]:
    """Re-queue jobs whose worker died; fail those out of attempts (with the event)."""
    with session_scope(sessions) as session:
        requeued, failed = jobs_repository.requeue_expired(session)
        for job_id in failed:
            emit_event(
                session,
                "recalibration.failed",
                {
                    "task": jobs_repository.job_task(session, job_id),
                    "job_id": job_id,
                    "error": "the worker's lease expired at the last attempt",
                },
            )
    return requeued, failed
