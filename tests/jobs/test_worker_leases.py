"""Claims, leases, heartbeats, retries, dead workers, and the worker service on both databases."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import Generation, RecalibrationJob
from monitor.db.models.enums import JobStatus
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.jobs.claim import ClaimedJob, claim_job, new_lease_owner
from monitor.jobs.recalibration import LeaseLost, fail_expired, run_job
from monitor.jobs.repository import hand_back, heartbeat
from monitor.jobs.worker import WorkerService
from monitor.runtime import open_runtime
from monitor.settings import Settings
from tests.jobs.support import (
    TRUE_T,
    active_versions,
    calibrations,
    enqueue,
    events,
    seed_generations,
    subscribe_all,
)

pytestmark = pytest.mark.timeout(60)


def claim(
    sessions: sessionmaker[Session], owner: str, lease_s: float = 60, now: datetime | None = None
) -> ClaimedJob | None:
    with session_scope(sessions) as session:
        return claim_job(session, owner, lease_s, now)


def job_row(sessions: sessionmaker[Session], job_id: int) -> RecalibrationJob:
    with session_scope(sessions) as session:
        row = session.get(RecalibrationJob, job_id)
        assert row is not None
        return row


def test_claim_sets_the_lease_and_a_job_is_claimed_once(sessions: sessionmaker[Session]) -> None:
    seed_generations(sessions, 10)
    job_id = enqueue(sessions)
    owner = new_lease_owner()
    assert owner.count(":") == 2

    first = claim(sessions, owner)
    second = claim(sessions, "other")

    assert first is not None and first.id == job_id and first.attempts == 1
    assert second is None
    row = job_row(sessions, job_id)
    assert (row.status, row.lease_owner, row.attempts) == ("running", owner, 1)
    assert row.started_at is not None and row.lease_expires_at is not None
    assert row.lease_expires_at > utcnow() + timedelta(seconds=50)


def test_heartbeat_extends_only_the_owners_lease(sessions: sessionmaker[Session]) -> None:
    seed_generations(sessions, 10)
    job_id = enqueue(sessions)
    claim(sessions, "w1", lease_s=1)
    before = job_row(sessions, job_id).lease_expires_at
    with session_scope(sessions) as session:
        assert heartbeat(session, job_id, "w1", lease_s=120)
        assert not heartbeat(session, job_id, "intruder", lease_s=120)
    after = job_row(sessions, job_id).lease_expires_at
    assert before is not None and after is not None and after > before + timedelta(seconds=100)


def test_hand_back_requeues_at_once_without_using_an_attempt(
    sessions: sessionmaker[Session],
) -> None:
    """A stopping worker's job is due again now, its attempt given back; only
    the lease's owner can hand it back, and only while it is running."""
    seed_generations(sessions, 10)
    job_id = enqueue(sessions, max_attempts=1)
    claim(sessions, "w1")
    with session_scope(sessions) as session:
        assert not hand_back(session, job_id, "intruder")
        assert hand_back(session, job_id, "w1")
        assert not hand_back(session, job_id, "w1")  # no longer running
    row = job_row(sessions, job_id)
    assert (row.status, row.attempts, row.lease_owner, row.lease_expires_at) == (
        "queued",
        0,
        None,
        None,
    )
    assert row.error == "the worker stopped mid-job; re-queued"

    again = claim(sessions, "w2")  # at its last attempt, yet claimable now
    assert again is not None and (again.id, again.attempts) == (job_id, 1)
    with session_scope(sessions) as session:
        session.execute(
            update(RecalibrationJob)
            .where(RecalibrationJob.id == job_id)
            .values(status=JobStatus.succeeded.value)
        )
        assert not hand_back(session, job_id, "w2")  # finished first: left alone
    assert job_row(sessions, job_id).status == "succeeded"


def test_a_stop_that_cannot_hand_back_leaves_the_job_to_its_lease(
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refusing the hand-back (down at shutdown) must not hold
    up or break the stop: the job keeps its lease, which expires as before."""
    seed_generations(sessions, 10)
    job_id = enqueue(sessions)

    def refused(*args: Any) -> bool:
        raise ConnectionRefusedError("database down")

    monkeypatch.setattr("monitor.jobs.repository.hand_back", refused)

    async def scenario() -> None:
        runtime = open_runtime(make_settings(), "worker")
        try:
            worker = WorkerService(runtime, device="cpu")
            worker.current_job = await asyncio.to_thread(claim, runtime.sessions, worker.owner)
            await asyncio.wait_for(worker.stop(), 10)
        finally:
            await runtime.stop()

    asyncio.run(scenario())
    row = job_row(sessions, job_id)
    assert (row.status, row.attempts) == ("running", 1)
    assert f"job {job_id}: not handed back (ConnectionRefusedError)" in caplog.text


def test_a_worker_cancelled_before_its_stop_still_hands_the_job_back(
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn's forced exit (Ctrl-C twice within 0.1 s) skips the lifespan's
    shutdown; the event loop's close then cancels every task at once, the
    worker's loop among them, and the lifespan stops the runtime only after.
    The job the cancelled loop was running must still be handed back (it was
    lost to its lease when the loop forgot it on cancellation: a CI flake)."""
    seed_generations(sessions, 10)
    job_id = enqueue(sessions)

    def halted_fit(*args: Any, stop: Any, **kwargs: Any) -> None:
        stop.wait(30)  # a fit running until the stop halts its thread

    monkeypatch.setattr("monitor.jobs.worker.run_job", halted_fit)

    async def scenario() -> None:
        runtime = open_runtime(make_settings(worker={"poll_interval_s": 0.05}), "worker")
        worker = WorkerService(runtime, device="cpu")
        try:
            await worker.start()
            while worker.current_job is None:
                await asyncio.sleep(0.01)
            assert worker._task is not None
            worker._task.cancel()  # as asyncio.run cancels the tasks left at exit
            with contextlib.suppress(asyncio.CancelledError):
                await worker._task
            await asyncio.wait_for(worker.stop(), 10)
        finally:
            await runtime.stop()

    asyncio.run(scenario())
    row = job_row(sessions, job_id)
    assert (row.status, row.attempts, row.lease_owner) == ("queued", 0, None), row.error


def test_dead_worker_job_is_reclaimed_and_finishes_exactly_once(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    """Worker A claims and dies mid-fit; B re-claims after the lease; A's late result is refused."""
    seed_generations(sessions, 1000)
    subscribe_all(sessions)
    job_id = enqueue(sessions)
    dead = claim(sessions, "worker-a", lease_s=0.2)
    assert dead is not None
    assert fail_expired(sessions) == ([], [])  # lease still current
    time.sleep(0.3)

    requeued, failed = fail_expired(sessions)
    assert (requeued, failed) == ([job_id], [])
    alive = claim(sessions, "worker-b")
    assert alive is not None and alive.attempts == 2

    outcome = run_job(sessions, make_settings(), alive, device="cpu")
    assert outcome.status == JobStatus.succeeded
    # Worker A wakes up and tries to store its own result: nothing is written.
    with pytest.raises(LeaseLost):
        run_job(sessions, make_settings(), dead, device="cpu")

    row = job_row(sessions, job_id)
    assert (row.status, row.attempts) == ("succeeded", 2)
    assert [c.job_id for c in calibrations(sessions)] == [job_id]
    assert active_versions(sessions) == [1]
    assert events(sessions).count("calibration.activated") == 1


def test_expired_lease_at_the_last_attempt_fails_the_job(sessions: sessionmaker[Session]) -> None:
    seed_generations(sessions, 10)
    subscribe_all(sessions)
    job_id = enqueue(sessions, max_attempts=1)
    claim(sessions, "worker-a", lease_s=0.05)
    time.sleep(0.1)

    assert fail_expired(sessions) == ([], [job_id])

    row = job_row(sessions, job_id)
    assert row.status == "failed" and row.error and "lease expired" in row.error
    assert events(sessions) == ["recalibration.failed"]


def test_errors_are_retried_with_backoff_then_fail(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    seed_generations(sessions, 400)
    with session_scope(sessions) as session:
        session.execute(update(Generation).values(logprobs=b"not a packed blob"))
    subscribe_all(sessions)
    job_id = enqueue(sessions, max_attempts=2)

    async def scenario() -> None:
        runtime = open_runtime(make_settings(), "worker")
        try:
            worker = WorkerService(runtime, device="cpu")
            first = await asyncio.to_thread(claim, runtime.sessions, worker.owner)
            assert first is not None
            assert await worker.execute(first) is None
            row = job_row(sessions, job_id)
            assert (row.status, row.attempts) == ("queued", 1)
            assert row.error and "ValueError" in row.error
            assert row.not_before is not None and row.not_before > utcnow()
            assert claim(sessions, worker.owner) is None  # not due yet
            later = utcnow() + timedelta(hours=1)
            second = claim(sessions, worker.owner, now=later)
            assert second is not None and second.attempts == 2
            assert await worker.execute(second) is None
        finally:
            runtime.engine.dispose()

    asyncio.run(scenario())
    row = job_row(sessions, job_id)
    assert (row.status, row.attempts) == ("failed", 2)
    assert row.finished_at is not None
    assert events(sessions) == ["recalibration.failed"]


def test_worker_service_runs_a_queued_job_and_heartbeats_during_the_fit(
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import monitor.calibration as core

    real_validate = core.validate_sequence_temperature

    def slow_validate(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)  # a fit long enough to need heartbeats
        return real_validate(*args, **kwargs)

    monkeypatch.setattr(core, "validate_sequence_temperature", slow_validate)
    seed_generations(sessions, 1000)
    settings = make_settings(worker={"poll_interval_s": 0.05, "heartbeat_s": 0.05, "lease_s": 5})
    job_id = enqueue(sessions)
    heartbeats: list[object] = []

    async def scenario() -> None:
        runtime = open_runtime(settings, "worker")
        worker = WorkerService(runtime, device="cpu")
        real = worker._beat

        def counting_beat(job: ClaimedJob) -> bool:
            heartbeats.append(job.id)
            return real(job)

        worker._beat = counting_beat  # type: ignore[method-assign]
        await worker.start()
        try:
            ticks = 0
            while job_row(sessions, job_id).status in ("queued", "running"):
                await asyncio.sleep(0.01)  # the loop stays responsive during the fit
                ticks += 1
            assert ticks > 5
        finally:
            await worker.stop()
            await runtime.stop()

    asyncio.run(scenario())
    row = job_row(sessions, job_id)
    assert row.status == "succeeded" and row.device == "cpu"
    assert len(heartbeats) >= 3 and set(heartbeats) == {job_id}
    (calibration,) = calibrations(sessions)
    assert abs(calibration.temperature - TRUE_T) / TRUE_T < 0.15
