"""Feedback that reaches another api process than the one that served the answer.

Behind a load balancer the feedback for an answer may land on a replica whose
recorder never saw the generation, while the serving replica has not written
it yet. Two app instances on one database stand for the two replicas.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.db.types import uuid7
from monitor.feedback.service import (
    IN_FLIGHT_HORIZON_S,
    may_be_in_flight,
    other_processes_wait_s,
)
from monitor.settings import Settings
from tests.recorder.helpers import make_record, recorder_of, unreachable_sessions

FEEDBACK = {"Authorization": "Bearer fb-token"}
ADMIN = {"Authorization": "Bearer admin-token"}


def _replica(make_settings: Callable[..., Settings], home: Path, flush_s: float) -> TestClient:
    settings = make_settings(
        home=home,
        feedback_token="fb-token",
        admin_token="admin-token",
        recorder={"flush_interval_s": flush_s, "batch_size": 500},
    )
    return TestClient(create_app(settings, role="api"))


def _uuid7_at(seconds_from_now: float) -> uuid.UUID:
    return uuid7(int((time.time() + seconds_from_now) * 1000))


def test_feedback_waits_for_a_generation_another_process_is_writing(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with (
        _replica(make_settings, tmp_path / "a", flush_s=0.5) as served,
        _replica(make_settings, tmp_path / "b", flush_s=0.25) as other,
    ):
        writer = recorder_of(served)
        assert writer.submit(make_record()) and writer.wait_idle()  # its writer is up
        record = make_record()
        assert writer.submit(record)
        gid = str(record.id)
        # Not written yet, and the other replica's recorder never saw it.
        assert other.get(f"/api/generations/{gid}", headers=ADMIN).status_code == 404
        assert not recorder_of(other).is_pending(record.id)
        response = other.post(
            "/v1/feedback", json={"generation_id": gid, "label": True}, headers=FEEDBACK
        )
        assert response.status_code == 201, response.text
        assert writer.wait_idle()
        detail = other.get(f"/api/generations/{gid}", headers=ADMIN).json()
        assert detail["label"] == 1.0
        assert [f["id"] for f in detail["feedback"]] == [response.json()["id"]]


def test_an_id_never_recorded_is_404_after_the_wait(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with _replica(make_settings, tmp_path / "b", flush_s=0.05) as client:
        settings = client.app.state.settings  # type: ignore[attr-defined]
        wait_s = other_processes_wait_s(settings.recorder)
        assert wait_s == pytest.approx(1.2)  # a second and four flush intervals

        def post(generation_id: uuid.UUID) -> tuple[int, float]:
            started = time.monotonic()
            body = {"generation_id": str(generation_id), "label": True}
            response = client.post("/v1/feedback", json=body, headers=FEEDBACK)
            assert response.json()["error"]["param"] == "generation_id"
            return response.status_code, time.monotonic() - started

        status, waited = post(uuid7())
        assert status == 404
        assert wait_s <= waited < wait_s + 5
        # Ids that cannot be in flight are answered at once.
        for never in (uuid.uuid4(), _uuid7_at(-2 * IN_FLIGHT_HORIZON_S)):
            status, waited = post(never)
            assert status == 404
            assert waited < wait_s
        # A batch waits once for all its items, not once per item.
        items = [{"generation_id": str(uuid7()), "label": True} for _ in range(3)]
        started = time.monotonic()
        batch = client.post("/v1/feedback/batch", json={"items": items}, headers=FEEDBACK)
        assert [r["status"] for r in batch.json()["items"]] == [404, 404, 404]
        assert time.monotonic() - started < 2 * wait_s


def test_an_outage_during_the_wait_spools_the_feedback(
    make_settings: Callable[..., Settings], tmp_path: Path, backend: str
) -> None:
    with _replica(make_settings, tmp_path / "b", flush_s=0.05) as client:
        runtime = client.app.state.runtime  # type: ignore[attr-defined]
        runtime.sessions = unreachable_sessions(backend)
        body = {"generation_id": str(uuid7()), "label": True}
        response = client.post("/v1/feedback", json=body, headers=FEEDBACK)
        assert response.status_code == 201, response.text
        assert response.json()["stored"] == "spool"


def test_which_ids_may_be_in_flight() -> None:
    now = time.time()
    assert may_be_in_flight(uuid7(), now)
    assert may_be_in_flight(_uuid7_at(-IN_FLIGHT_HORIZON_S / 2), now)
    assert not may_be_in_flight(_uuid7_at(-IN_FLIGHT_HORIZON_S - 60), now)
    assert not may_be_in_flight(_uuid7_at(600), now)  # beyond any clock skew
    assert not may_be_in_flight(uuid.uuid4(), now)
