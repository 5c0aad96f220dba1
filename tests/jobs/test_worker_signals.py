"""Ctrl-C (SIGINT) or SIGTERM to a real `serve --role worker` process mid-fit.

The process must stop promptly and cleanly: exit status 0 (SIGTERM: uvicorn
re-raises it after the graceful shutdown, so -SIGTERM is clean too), no
traceback, and the running job handed back: `queued` again, due now, its
attempt not counted, for the next worker (before, it stayed `running` under
the dead worker's lease for a minute, and the stop used up an attempt).
Before the first fix a SIGINT'd worker waited at exit for the fit thread
(and then committed the job after "Finished server process"), and a second
Ctrl-C in that wait printed a CancelledError traceback.

The child is the real CLI entry point (`monitor.cli.main`) with the fit
made slow (a sleep before the real fit), so the signal lands mid-fit for
certain and a worker that waited for the fit would overrun the deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import RecalibrationJob
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.jobs.claim import claim_job
from tests.jobs.support import TASK, enqueue, seed_generations

pytestmark = pytest.mark.timeout(120)

FIT_SLEEP_S = 60.0
EXIT_DEADLINE_S = 20.0
FIT_STARTED = "test: fit started"

CHILD = f"""
import sys, time
import monitor.calibration as core

real = core.validate_sequence_temperature

def slow(*args, **kwargs):
    print({FIT_STARTED!r}, flush=True)
    time.sleep({FIT_SLEEP_S})
    return real(*args, **kwargs)

core.validate_sequence_temperature = slow
from monitor.cli import main
raise SystemExit(main(["serve", "--role", "worker", "--port", "0", *sys.argv[1:]]))
"""


@pytest.fixture(params=["sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def wait_for_output(
    path: Path, text: str, process: subprocess.Popen[bytes], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"worker exited early ({process.returncode})")
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not seen within {timeout}s")


@pytest.mark.parametrize("until_idle", [False, True], ids=["server", "until-idle"])
@pytest.mark.parametrize(
    "sig, times",
    [(signal.SIGINT, 1), (signal.SIGINT, 2), (signal.SIGTERM, 1)],
    ids=["SIGINT", "SIGINT-twice", "SIGTERM"],
)
def test_signal_mid_fit_stops_cleanly_and_hands_the_job_back(
    db_url: str,
    sessions: sessionmaker[Session],
    tmp_path: Path,
    sig: signal.Signals,
    times: int,
    until_idle: bool,
) -> None:
    """A second Ctrl-C at once is uvicorn's forced exit: it cancels the
    lifespan, which printed a CancelledError traceback before
    `ThermostatApp` read that cancellation as a shutdown. `--until-idle` (no
    HTTP server) exits 128 + the signal, as a shell reports a stopped batch job."""
    seed_generations(sessions, 400)
    job_id = enqueue(sessions)
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(
        THERMOSTAT_HOME=str(tmp_path / "home"),
        THERMOSTAT_DATABASE_URL=db_url,
        THERMOSTAT_WORKER__DEVICE="cpu",
        THERMOSTAT_WORKER__POLL_INTERVAL_S="0.2",
        PYTHONUNBUFFERED="1",
    )
    out_path, err_path = tmp_path / "stdout.log", tmp_path / "stderr.log"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", CHILD, *(["--until-idle"] if until_idle else [])],
            env=env,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
    try:
        wait_for_output(out_path, FIT_STARTED, process, 60)
        for _ in range(times):
            process.send_signal(sig)
            time.sleep(0.02)
        started = time.monotonic()
        rc = process.wait(timeout=EXIT_DEADLINE_S)
        took = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    stderr = err_path.read_text(errors="replace")
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    if until_idle:
        assert rc == 128 + sig, stderr
        assert f"worker stopped by signal {int(sig)} before the queue was drained" in stderr
    else:
        assert rc in ((0,) if sig == signal.SIGINT else (0, -signal.SIGTERM)), stderr
        assert "Finished server process" in stderr, stderr
    assert took < EXIT_DEADLINE_S

    assert f"job {job_id} ({TASK}) handed back to the queue" in stderr, stderr

    with session_scope(sessions) as session:
        job = session.get(RecalibrationJob, job_id)
        assert job is not None
        assert (job.status, job.attempts, job.lease_owner) == ("queued", 0, None), job.error
        assert job.not_before is not None and job.not_before <= utcnow()
    with session_scope(sessions) as session:
        claimed = claim_job(session, "next worker", lease_s=60)
    assert claimed is not None and (claimed.id, claimed.attempts) == (job_id, 1)
