"""`serve --role worker --until-idle`: the worker as a batch job (a Kubernetes CronJob).

It must run every due job, leave a job in retry backoff to the next run, and
exit 0 once idle; a failed poll exits 1 with one line. Stopping it by a
signal mid-fit is in `test_worker_signals.py`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.commands.serve import run_worker_until_idle
from monitor.db.models import RecalibrationJob
from monitor.db.session import session_scope
from monitor.jobs.worker import WorkerService
from monitor.runtime import open_runtime
from monitor.settings import Settings
from tests.jobs.support import TASK, enqueue, seed_generations
from tests.support.cli import thermostat

pytestmark = pytest.mark.timeout(120)

FINISHED = ("succeeded", "rejected")


def statuses(sessions: sessionmaker[Session]) -> dict[int, str]:
    with session_scope(sessions) as session:
        return {job.id: job.status for job in session.scalars(select(RecalibrationJob))}


def test_runs_every_due_job_then_returns(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    for task in (TASK, "summaries", "later"):
        seed_generations(sessions, 400, task=task)
    due = [enqueue(sessions, TASK), enqueue(sessions, "summaries")]
    backing_off = enqueue(sessions, "later", due_in_s=3600)

    async def scenario() -> tuple[int, int]:
        runtime = open_runtime(make_settings(), "worker")
        try:
            worker = WorkerService(runtime, device="cpu")
            return await worker.run_until_idle(), await worker.run_until_idle()
        finally:
            await runtime.stop()

    assert asyncio.run(scenario()) == (2, 0)
    after = statuses(sessions)
    assert all(after[job_id] in FINISHED for job_id in due), after
    assert after[backing_off] == "queued"


def test_a_failed_poll_exits_1_with_one_line(
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def database_gone(self: WorkerService) -> bool:
        raise ConnectionRefusedError("database down")

    monkeypatch.setattr(WorkerService, "run_once", database_gone)
    runtime = open_runtime(make_settings(), "worker")
    assert asyncio.run(run_worker_until_idle(runtime)) == 1
    assert "worker poll failed: ConnectionRefusedError: database down; exiting" in caplog.text


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_the_command_drains_the_queue_and_exits_0(
    db_url: str, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    seed_generations(sessions, 400)
    job_id = enqueue(sessions, TASK)
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(
        THERMOSTAT_HOME=str(tmp_path / "home"),
        THERMOSTAT_DATABASE_URL=db_url,
        THERMOSTAT_WORKER__DEVICE="cpu",
    )
    result = thermostat("serve", "--role", "worker", "--until-idle", env=env, timeout=90)
    assert result.returncode == 0, result.stderr
    assert "worker idle after 1 job(s): exiting" in result.stderr
    assert "Traceback" not in result.stderr
    assert statuses(sessions)[job_id] in FINISHED
