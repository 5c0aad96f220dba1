"""`thermostat demo --exit --postgres URL`, run twice on the same home and the same database.

The first run is the demo on a fresh Postgres database (created and dropped
here); the second is a newcomer running it again, which must reset the demo's
own rows and close the loop the same way, leaving anything else alone. One
test covers both cases because each demo run costs a minute or two of the
suite's time; the SQLite demo test keeps its single run.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url

from monitor.db.models import Calibration, Generation, RecalibrationJob, Task, Webhook
from tests.demo.test_demo import assert_loop_closed, demo_home, in_transaction, run_demo
from tests.support.databases import database_from, postgres_url

pytestmark = pytest.mark.postgres


@pytest.fixture
def database(tmp_path: Path) -> Iterator[str]:
    """A fresh, empty (never migrated) Postgres database: the demo migrates it."""
    with database_from("postgres", None, tmp_path) as url:
        yield url


# Two demo runs: about 2 minutes beside .ci/test's other worker on a slow 2-core host
# (5 minutes there before the model server ran on one torch thread).
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(600)
def test_demo_on_postgres_twice_on_the_same_home(
    tmp_path: Path, tiny_model_path: Path, database: str
) -> None:
    home = demo_home(tmp_path, tiny_model_path)

    out, first = run_demo(home, "--postgres", database)
    assert_loop_closed(out, first)
    assert "(all roles, Postgres)" in out
    assert not (home / "demo" / "demo.db").exists()  # nothing went to the embedded default

    with in_transaction(database) as conn:  # a task that is not the demo's must survive its reset
        conn.execute(insert(Task).values(name="not-the-demos", config={}))

    out, second = run_demo(home, "--postgres", database)
    assert_loop_closed(out, second)
    assert second["dashboard_url"] != first["dashboard_url"]  # a new sidecar, a new port

    with in_transaction(database) as conn:
        tasks = set(conn.scalars(select(Task.name)))
        assert tasks == {"quiz", "autocomplete", "not-the-demos"}
        # The first run's rows were reset: one job and one active calibration, from run 2.
        jobs = conn.execute(select(RecalibrationJob.task, RecalibrationJob.status)).all()
        assert [tuple(j) for j in jobs] == [("autocomplete", "succeeded")]
        versions = conn.execute(
            select(Calibration.version, Calibration.status).where(
                Calibration.task == "autocomplete"
            )
        ).all()
        assert [tuple(v) for v in versions if v.status == "active"] == [(1, "active")], versions
        # One receiver's endpoint: the first run's was removed, not left to fail.
        hooks = list(conn.scalars(select(Webhook.url)))
        assert len(hooks) == 1 and hooks[0].endswith("/demo-hooks"), hooks
        per_task = dict(
            conn.execute(select(Generation.task, func.count()).group_by(Generation.task)).all()
        )
        # Run 2's traffic only: 300 quiz answers; 300 + 300 fresh autocomplete ones
        # and the hot-swap probes.
        assert per_task["quiz"] == 300, per_task
        assert per_task["autocomplete"] >= 600, per_task


def test_demo_on_a_missing_postgres_database_fails_in_one_line(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    home = demo_home(tmp_path, tiny_model_path)
    missing = f"no_such_db_{uuid.uuid4().hex[:8]}"
    url = make_url(postgres_url(missing)).set(password="s3cret")
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(THERMOSTAT_HOME=str(home))
    result = subprocess.run(
        [
            *(sys.executable, "-m", "monitor", "demo", "--exit"),
            *("--postgres", url.render_as_string(hide_password=False)),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], result.stderr[-2000:]
    assert missing in lines[0] and "s3cret" not in result.stderr + result.stdout
