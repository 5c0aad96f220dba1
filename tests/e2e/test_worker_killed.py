"""SIGKILL a real worker process mid-job; another worker re-claims the job and finishes it once.

Postgres. The job has no slow-fit hook, and a fit on a few thousand
generations takes well under a second, so the test stops the first worker at
the most dangerous moment instead of guessing one: it holds an ACCESS
EXCLUSIVE lock on `webhooks`, which the job first touches when it emits
`calibration.activated` -- after the fit, inside the outcome transaction that
has already inserted the calibration row and activated it. Once Postgres
shows the worker waiting on that lock, the worker is killed with SIGKILL, the
lock released, and a second worker started. Its lease expired, the job goes
back to the queue, is claimed again (attempt 2) and finishes once: one
calibration row, one activation, one of each event.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from monitor.config import EVENT_TYPES
from monitor.db.models import Calibration, RecalibrationJob, Webhook, WebhookDelivery
from monitor.db.models.enums import JobTrigger
from monitor.db.session import session_scope
from monitor.jobs.queue import enqueue_recalibration
from tests.e2e.support import Sidecar, start_sidecar, wait_for
from tests.jobs.support import TASK, seed_generations
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(180)

LEASE_S = 2.0


@pytest.fixture(params=["postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def job_row(sessions: sessionmaker[Session], job_id: int) -> RecalibrationJob:
    with session_scope(sessions) as session:
        row = session.get(RecalibrationJob, job_id)
        assert row is not None
        return row


def counts(sessions: sessionmaker[Session]) -> dict[str, Any]:
    with session_scope(sessions) as session:
        events = session.execute(
            select(WebhookDelivery.event_type, func.count()).group_by(WebhookDelivery.event_type)
        ).all()
        calibrations = session.scalars(select(Calibration).where(Calibration.task == TASK)).all()
        return {
            "events": dict(events),
            "calibrations": [(c.id, c.status, c.job_id) for c in calibrations],
            "activated": sum(1 for c in calibrations if c.activated_at is not None),
        }


def blocked_on_lock(dsn: str, database: str) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE datname = %s "
            "AND application_name = 'thermostat-worker' AND wait_event_type = 'Lock'",
            (database,),
        ).fetchall()
    return any("webhooks" in query for (query,) in rows)


def test_killed_worker_job_is_reclaimed_and_finishes_once(
    db_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    seed_generations(sessions, 2000)  # labelled, true temperature 2.5
    with session_scope(sessions) as session:
        session.add(Webhook(url="http://127.0.0.1:9/hook", secret="s", events=list(EVENT_TYPES)))
        job, _ = enqueue_recalibration(session, TASK, JobTrigger.manual, max_attempts=3)
        job_id = job.id
    url = make_url(db_url)
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    env = {
        "THERMOSTAT_DATABASE_URL": db_url,
        "THERMOSTAT_HOME": str(tmp_path / "home"),
        "THERMOSTAT_WORKER__LEASE_S": str(LEASE_S),
        "THERMOSTAT_WORKER__HEARTBEAT_S": "0.5",
        "THERMOSTAT_WORKER__POLL_INTERVAL_S": "0.2",
        "THERMOSTAT_WORKER__DEVICE": "cpu",
    }
    workers: list[Sidecar] = []
    try:
        with psycopg.connect(dsn) as locker:
            locker.execute("LOCK TABLE webhooks IN ACCESS EXCLUSIVE MODE")
            first = start_sidecar("worker", free_port(), env, tmp_path)
            workers.append(first)
            wait_for(
                lambda: blocked_on_lock(dsn, str(url.database)),
                60,
                "the first worker to reach its outcome transaction",
            )
            running = job_row(sessions, job_id)
            assert (running.status, running.attempts) == ("running", 1)
            assert running.lease_owner and f":{first.process.pid}:" in running.lease_owner
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait(timeout=10)
            locker.rollback()  # the dead worker's transaction can now only roll back

        killed = job_row(sessions, job_id)
        assert (killed.status, killed.attempts) == ("running", 1), "the kill was not mid-job"
        assert killed.lease_expires_at is not None
        lease_expired_at = killed.lease_expires_at
        assert counts(sessions)["calibrations"] == []  # nothing of the first attempt committed

        second = start_sidecar("worker", free_port(), env, tmp_path)
        workers.append(second)

        def finished() -> RecalibrationJob | None:
            row = job_row(sessions, job_id)
            return row if row.finished_at is not None else None

        done = wait_for(finished, 90, "the second worker to finish the job")
    finally:
        logs = [w.log() for w in workers]
        for worker in workers:
            worker.stop()

    assert done.status == "succeeded", (done.error, logs[-1])
    assert done.attempts == 2
    assert done.lease_owner is None
    assert done.started_at is not None and done.started_at >= lease_expired_at
    assert f"claimed job {job_id} ({TASK}, attempt 1)" in logs[0]
    assert f"claimed job {job_id} ({TASK}, attempt 2)" in logs[1]
    outcome = counts(sessions)
    assert outcome["calibrations"] == [(done.calibration_id, "active", job_id)], outcome
    assert outcome["activated"] == 1
    assert outcome["events"] == {"calibration.activated": 1, "recalibration.succeeded": 1}
    with session_scope(sessions) as session:
        assert session.scalar(select(func.count()).select_from(RecalibrationJob)) == 1
