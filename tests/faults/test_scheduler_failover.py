"""The scheduler leader is killed (-9); the follower takes over within two intervals.

Two real `thermostat serve --role scheduler` processes on one Postgres
database. Leadership is a session advisory lock: when the leader dies its
connection closes, the server drops the lock, and the follower's next tick
takes it. Snapshots are keyed by evaluation time: one leader at a time means
never two snapshots of a task for the same (or nearly the same) tick.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from itertools import pairwise
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import MetricSnapshot
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from tests.alerting.support import add_generations, calibrated
from tests.faults.test_sigterm import serve_env, wait_ready
from tests.recorder.helpers import wait_for
from tests.support.servers import free_port

INTERVAL_S = 2.0
SERVE_SCHEDULER = [sys.executable, "-m", "monitor", "serve", "--role", "scheduler"]


@pytest.fixture
def backend() -> str:
    return "postgres"  # leadership across processes is a Postgres advisory lock


def _snapshots(sessions: sessionmaker[Session]) -> list[MetricSnapshot]:
    with sessions() as session:
        return list(session.scalars(select(MetricSnapshot).order_by(MetricSnapshot.evaluated_at)))


@pytest.mark.timeout(90)
def test_killing_the_leader_hands_over_within_two_intervals(
    db_url: str, tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with session_scope(sessions) as session:
        add_generations(session, "qa", *calibrated(50), now=utcnow())
    processes: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
    try:
        for i in range(2):
            port = free_port()
            log_path = tmp_path / f"scheduler-{i}.log"
            env = serve_env(
                db_url,
                tmp_path / f"home-{i}",
                THERMOSTAT_EVALUATE_INTERVAL_S=str(INTERVAL_S),
                THERMOSTAT_SCHEDULER__RETENTION_ENABLED="false",
            )
            with log_path.open("wb") as log_file:
                process = subprocess.Popen(
                    [*SERVE_SCHEDULER, "--port", str(port)],
                    env=env,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                )
            processes[port] = (process, log_path)
        for port, (process, _) in processes.items():
            wait_ready(f"http://127.0.0.1:{port}", process)

        def leaders() -> list[int]:
            return [
                port
                for port, (_, log_path) in processes.items()
                if "scheduler acquired leadership" in log_path.read_text(errors="replace")
            ]

        wait_for(lambda: len(_snapshots(sessions)) >= 2 and len(leaders()) == 1, timeout=20)
        [leader] = leaders()
        [follower] = [port for port in processes if port != leader]
        # The moment of the signal, not of the reaping: the follower can take the
        # lock as soon as the leader is dead, before this process gets to run
        # again, and its first evaluation must count as after the kill.
        killed_at = utcnow()
        processes[leader][0].send_signal(signal.SIGKILL)
        processes[leader][0].wait(timeout=10)
        wait_for(
            lambda: any(s.evaluated_at > killed_at for s in _snapshots(sessions)),
            timeout=4 * INTERVAL_S,
        )
        taken_over_at = min(
            s.evaluated_at for s in _snapshots(sessions) if s.evaluated_at > killed_at
        )
        assert taken_over_at - killed_at <= timedelta(seconds=2 * INTERVAL_S)
        assert "scheduler acquired leadership" in processes[follower][1].read_text()
        time.sleep(INTERVAL_S * 1.5)  # and it keeps leading alone
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process, _ in processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    snapshots = _snapshots(sessions)
    per_tick = Counter((s.task, s.evaluated_at) for s in snapshots)
    assert max(per_tick.values()) == 1, per_tick
    times = [s.evaluated_at for s in snapshots if s.task == "qa"]
    before = [t for t in times if t <= killed_at]
    after = [t for t in times if t > killed_at]
    assert len(before) >= 2 and len(after) >= 2
    # One leader at a time: within each leader's reign, never two evaluations of a
    # task closer than half an interval (two schedulers ticking would interleave).
    gaps = [(b - a).total_seconds() for phase in (before, after) for a, b in pairwise(phase)]
    assert min(gaps) > INTERVAL_S / 2, gaps
