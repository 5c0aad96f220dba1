"""The admin API for calibrations and jobs, and activation/re-scoring, on both databases."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration import generation_confidence, unpack_token_logprobs
from monitor.calibrations import service
from monitor.calibrations.router import router
from monitor.db.session import session_scope
from monitor.http_errors import install_error_handlers
from monitor.runtime import open_runtime
from monitor.settings import Settings
from tests.jobs.support import (
    TASK,
    active_versions,
    add_calibration,
    calibrations,
    confidences,
    events,
    seed_generations,
    subscribe_all,
)

pytestmark = pytest.mark.timeout(60)
TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """Only this feature's router, so the test does not depend on other features."""
    settings = make_settings(admin_token=TOKEN)
    runtime = open_runtime(settings, "api")
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.runtime = runtime
    app.state.settings = settings
    with TestClient(app) as test_client:
        yield test_client
    runtime.engine.dispose()


def test_list_and_roll_back_through_the_api(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    first = add_calibration(sessions, version=1, temperature=1.8, status="retired")
    second = add_calibration(sessions, version=2, temperature=2.4, status="active")
    subscribe_all(sessions)

    listed = client.get("/api/calibrations", params={"task": TASK}, headers=AUTH)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [c["version"] for c in items] == [2, 1]  # newest first
    expected = {"id", "task", "version", "method", "temperature", "status", "metrics_before",
                "metrics_after", "n_train", "n_holdout", "created_at", "activated_at"}  # fmt: skip
    assert expected <= set(items[0])
    assert client.get("/api/calibrations", params={"task": "other"}, headers=AUTH).json() == {
        "items": []
    }

    rolled = client.post(f"/api/calibrations/{first}/activate", headers=AUTH)

    assert rolled.status_code == 200
    assert rolled.json()["status"] == "active" and rolled.json()["version"] == 1
    statuses = {c.id: c.status for c in calibrations(sessions)}
    assert statuses == {first: "active", second: "retired"}
    assert next(c for c in calibrations(sessions) if c.id == second).retired_at is not None
    assert events(sessions) == ["calibration.activated"]
    # Activating the active version again is a no-op (no second event).
    assert client.post(f"/api/calibrations/{first}/activate", headers=AUTH).status_code == 200
    assert events(sessions) == ["calibration.activated"]
    # Roll forward again.
    assert client.post(f"/api/calibrations/{second}/activate", headers=AUTH).status_code == 200
    assert active_versions(sessions) == [2]


def test_unknown_ids_are_404_and_rejected_versions_409(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    rejected = add_calibration(sessions, version=1, temperature=3.0, status="rejected")
    missing = client.post("/api/calibrations/9999/activate", headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert client.get("/api/calibrations/9999", headers=AUTH).status_code == 404
    assert client.get("/api/jobs/9999", headers=AUTH).status_code == 404
    conflict = client.post(f"/api/calibrations/{rejected}/activate", headers=AUTH)
    assert conflict.status_code == 409
    assert active_versions(sessions) == []
    assert client.post("/api/tasks/never-seen/recalibrate", headers=AUTH).status_code == 404
    assert client.post("/api/tasks/Bad%20Name/recalibrate", headers=AUTH).status_code == 422
    assert client.get("/api/jobs", params={"status": "bogus"}, headers=AUTH).status_code == 422
    assert client.get("/api/calibrations").status_code == 401


def test_recalibrate_returns_202_with_the_job_and_jobs_are_listed(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    seed_generations(sessions, 5)

    accepted = client.post(f"/api/tasks/{TASK}/recalibrate", headers=AUTH)
    again = client.post(f"/api/tasks/{TASK}/recalibrate", headers=AUTH)

    assert accepted.status_code == 202 and again.status_code == 202
    job_id = accepted.json()["job_id"]
    assert accepted.json()["created"] is True
    assert again.json() == {"job_id": job_id, "created": False, "status": "queued"}
    job = client.get(f"/api/jobs/{job_id}", headers=AUTH).json()
    expected = {"id", "task", "trigger", "status", "device", "attempts", "created_at",
                "started_at", "finished_at", "error", "calibration_id"}  # fmt: skip
    assert expected <= set(job)
    assert (job["task"], job["trigger"], job["status"], job["attempts"]) == (
        TASK, "manual", "queued", 0,
    )  # fmt: skip
    listed = client.get("/api/jobs", params={"task": TASK, "status": "queued"}, headers=AUTH)
    assert [j["id"] for j in listed.json()["items"]] == [job_id]
    none = client.get("/api/jobs", params={"task": TASK, "status": "failed"}, headers=AUTH)
    assert none.json()["items"] == []


def pending(sessions: sessionmaker[Session]) -> list[tuple[int, str]]:
    with session_scope(sessions) as session:
        return service.pending_rescores(session)


def test_activation_rescores_history_served_under_other_versions(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    unversioned = seed_generations(sessions, 30, seed=1)
    add_calibration(sessions, version=1, temperature=1.7, status="retired")
    under_v1 = seed_generations(sessions, 30, seed=2, served_version=1, served_temperature=1.7)
    target = add_calibration(sessions, version=2, temperature=2.2, status="retired")
    under_v2 = seed_generations(sessions, 20, seed=3, served_version=2, served_temperature=2.2)

    with session_scope(sessions) as session:
        service.activate(session, target)
    assert pending(sessions) == [(target, TASK)]
    written = service.rescore(sessions, target, settings.task_config(TASK), batch_size=7)

    assert written == 60
    rows = confidences(sessions, unversioned + under_v1 + under_v2)
    for gen_id in unversioned + under_v1:
        row = rows[gen_id]
        assert row.logprobs is not None
        chosen, top, rank = unpack_token_logprobs(row.logprobs)
        expected = generation_confidence(chosen.tolist(), top.tolist(), rank.tolist(), 2.2)
        assert row.rescored_version == 2
        assert row.rescored_confidence == pytest.approx(expected, rel=1e-9)
    for gen_id in under_v2:  # served under the active version: already right
        assert rows[gen_id].rescored_version is None
    assert pending(sessions) == []
    # A second run has nothing left to do.
    assert service.rescore(sessions, target, settings.task_config(TASK)) == 0
    assert np.isfinite([rows[g].rescored_confidence or np.nan for g in unversioned]).all()


def test_answers_served_while_the_swap_propagated_are_rescored_once_it_settles(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    from datetime import timedelta

    config = make_settings().task_config(TASK)
    target = add_calibration(sessions, version=1, temperature=2.0, status="retired")
    with session_scope(sessions) as session:
        service.activate(session, target)
    service.rescore(sessions, target, config)
    with session_scope(sessions) as session:
        activated = service.require_calibration(session, target).activated_at
    assert activated is not None
    assert pending(sessions) == []  # the first pass is done
    # An answer served under no version (in flight during the swap) lands afterwards.
    straggler = seed_generations(sessions, 1, seed=9)
    with session_scope(sessions) as session:
        early = service.pending_rescores(session, now=activated + timedelta(seconds=5))
        settled = activated + service.RESCORE_SETTLE + timedelta(seconds=1)
        due = service.pending_rescores(session, now=settled)
    assert early == [] and due == [(target, TASK)]
    assert service.rescore(sessions, target, config, now=settled) == 1
    assert confidences(sessions, straggler)[straggler[0]].rescored_version == 1
    with session_scope(sessions) as session:  # the settle pass happens once
        assert service.pending_rescores(session, now=settled + timedelta(hours=1)) == []
