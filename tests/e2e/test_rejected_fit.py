"""A fit that cannot improve held-out metrics is rejected and serving does not change.

Both databases, one sidecar (role `all`). The task already serves the true
temperature (version 1, T = 1.6) and its feedback is exactly calibrated: each
answer's score is its confidence at T = 1.6, computed from the very logprobs
the sidecar stored (soft feedback, allowed by the contract). T = 1.6 is then
the exact optimum of every example's loss, so no refit can strictly improve
held-out NLL and ECE; with Bernoulli labels a refit near 1.6 would beat it
on the held-out split by chance in roughly one run of four. An operator's
recalibration is therefore rejected, the candidate is stored as `rejected`,
version 1 stays active, and the same prompts get the same confidences.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.calibration import TokenBatch, sequence_confidences
from monitor.db.models import Calibration, Generation
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.settings import Settings
from monitor.tasks.repository import ensure_tasks
from tests.e2e.support import (
    Answer,
    SharpUpstream,
    ask_many,
    dump,
    get_json,
    post_feedback,
    wait_for,
)
from tests.support.servers import serve_app

pytestmark = pytest.mark.timeout(180)

TASK = "t"
SERVED_T = 1.6
N = 400


def activate_truth(sessions: sessionmaker[Session]) -> None:
    with session_scope(sessions) as session:
        ensure_tasks(session, [TASK])
        now = utcnow()
        session.add(
            Calibration(
                task=TASK,
                version=1,
                method="temperature",
                temperature=SERVED_T,
                status="active",
                source="test",
                created_at=now,
                activated_at=now,
                rescored_at=now,
            )
        )


def calibrated_scores(sessions: sessionmaker[Session], answers: list[Answer]) -> list[float] | None:
    """Each answer's confidence at the served T from its stored logprobs (None: not all written)."""
    ids = [uuid.UUID(a.generation_id) for a in answers]
    with session_scope(sessions) as session:
        stmt = select(Generation.id, Generation.logprobs).where(Generation.id.in_(ids))
        blobs = {row.id: bytes(row.logprobs) for row in session.execute(stmt) if row.logprobs}
    if len(blobs) < len(ids):
        return None
    batch = TokenBatch.from_blobs([blobs[i] for i in ids])
    return [float(c) for c in sequence_confidences(batch, SERVED_T, "geometric_mean")]


def test_a_fit_that_does_not_improve_is_rejected_and_serving_is_unchanged(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    activate_truth(sessions)
    config = tmp_path / "thermostat.yaml"
    config.write_text(yaml.safe_dump({"tasks": {TASK: {"min_samples": 300, "window": "1h"}}}))
    with SharpUpstream() as upstream:
        settings = make_settings(
            upstream_url=upstream.base_url,
            config=config,
            worker={"poll_interval_s": 0.2, "device": "cpu"},
            hot_swap={"poll_interval_s": 0.2},
            recorder={"flush_interval_s": 0.05},
        )
        with serve_app(create_app(settings, "all")) as base:
            client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)
            admin = httpx.Client(base_url=base, timeout=30)

            def get(path: str, **params: Any) -> Any:
                return get_json(admin, path, **params)

            answers = ask_many(client, TASK, range(N))
            assert {a.calibration_version for a in answers} == {1}
            assert all(a.confidence != a.raw_confidence for a in answers)
            scores = wait_for(
                lambda: calibrated_scores(sessions, answers), 60, "the traffic to be written"
            )
            post_feedback(
                base,
                [
                    {"generation_id": a.generation_id, "score": s, "source": "grader"}
                    for a, s in zip(answers, scores, strict=True)
                ],
            )

            response = admin.post(f"/api/tasks/{TASK}/recalibrate")
            assert response.status_code == 202, response.text
            job_id = response.json()["job_id"]
            job = wait_for(
                lambda: (
                    (j := get(f"/api/jobs/{job_id}"))["status"] not in ("queued", "running") and j
                ),
                90,
                "the job to finish",
            )
            assert job["status"] == "rejected", dump(job)
            assert job["trigger"] == "manual"
            assert "did not improve" in (job["error"] or ""), dump(job)

            calibrations = {c["version"]: c for c in get("/api/calibrations", task=TASK)["items"]}
            assert set(calibrations) == {1, 2}, dump(calibrations)
            assert calibrations[1]["status"] == "active"
            assert calibrations[1]["temperature"] == SERVED_T
            assert calibrations[2]["status"] == "rejected"
            assert calibrations[2]["activated_at"] is None
            assert calibrations[2]["id"] == job["calibration_id"]
            task = get(f"/api/tasks/{TASK}")
            assert task["active_calibration"]["version"] == 1

            # Serving unchanged: the same prompts, the same version and confidences.
            again = ask_many(client, TASK, range(50))
            assert [a.calibration_version for a in again] == [1] * 50
            assert [a.confidence for a in again] == [a.confidence for a in answers[:50]]
            admin.close()
