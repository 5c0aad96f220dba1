"""The feedback API and `GET /api/generations/{id}` through the real app and lifespan."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from monitor.app import create_app
from monitor.db.models import Feedback
from monitor.settings import Settings
from tests.recorder.helpers import make_record, recorder_of, unreachable_sessions, wait_for

FEEDBACK = {"Authorization": "Bearer fb-token"}
ADMIN = {"Authorization": "Bearer admin-token"}


@pytest.fixture
def client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    settings = make_settings(
        feedback_token="fb-token",
        admin_token="admin-token",
        recorder={"flush_interval_s": 0.05, "replay_interval_s": 0.1},
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _generation(client: TestClient, wait: bool = True, **overrides: Any) -> str:
    record = make_record(**overrides)
    recorder = recorder_of(client)
    assert recorder.submit(record)
    if wait:
        assert recorder.wait_idle()
    return str(record.id)


def _post(client: TestClient, body: Any, headers: dict[str, str] = FEEDBACK) -> Any:
    return client.post("/v1/feedback", json=body, headers=headers)


def _detail(client: TestClient, generation_id: str) -> dict[str, Any]:
    response = client.get(f"/api/generations/{generation_id}", headers=ADMIN)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_label_and_score_are_recorded_and_shown(client: TestClient) -> None:
    gid = _generation(client, n=3)
    created = _post(client, {"generation_id": gid, "label": True, "comment": "right"})
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["generation_id"] == gid and body["label"] is True and body["score"] is None
    assert body["source"] == "user" and body["stored"] == "database"
    uuid.UUID(body["id"])
    scored = _post(client, {"generation_id": gid, "score": 0.25, "source": "grader"})
    assert scored.status_code == 201
    assert scored.json()["score"] == 0.25 and scored.json()["label"] is None

    detail = _detail(client, gid)
    assert [f["id"] for f in detail["feedback"]] == [scored.json()["id"], body["id"]]
    assert detail["label"] == pytest.approx((1.0 + 0.25) / 2)
    assert detail["task"] == "qa" and detail["token_count"] == 3
    assert detail["confidence"] == pytest.approx(0.7)
    assert detail["raw_confidence"] == pytest.approx(0.8)
    assert detail["calibration_version"] == 2 and detail["temperature"] == pytest.approx(1.3)
    assert len(detail["logprobs"]) == 3
    first = detail["logprobs"][0]
    assert first["chosen_rank"] == 0 and len(first["top_logprobs"]) == 5
    assert first["chosen_logprob"] == pytest.approx(first["top_logprobs"][0], abs=1e-2)


def test_latest_feedback_per_source_counts(client: TestClient) -> None:
    gid = _generation(client)
    assert _post(client, {"generation_id": gid, "label": True}).status_code == 201
    assert _detail(client, gid)["label"] == 1.0
    assert _post(client, {"generation_id": gid, "label": False}).status_code == 201
    assert _detail(client, gid)["label"] == 0.0  # the user's latest verdict replaces the first
    assert _post(client, {"generation_id": gid, "score": 0.5, "source": "grader"}).status_code
    assert _detail(client, gid)["label"] == pytest.approx(0.25)  # mean over sources
    assert len(_detail(client, gid)["feedback"]) == 3


def test_idempotency_key_replays_or_conflicts(client: TestClient) -> None:
    gid = _generation(client)
    body = {"generation_id": gid, "label": True, "idempotency_key": "req-1"}
    first = _post(client, body)
    again = _post(client, body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    conflict = _post(client, {**body, "label": False})
    assert conflict.status_code == 409
    assert conflict.json()["error"]["param"] == "idempotency_key"
    assert len(_detail(client, gid)["feedback"]) == 1


@pytest.mark.parametrize(
    "generation_id", [str(uuid.uuid4()), "does-not-exist", "42"], ids=["uuid", "name", "number"]
)
def test_unknown_generation_is_404(client: TestClient, generation_id: str) -> None:
    """Any string that names no generation, a UUID or not, is unknown (the contract's `str`)."""
    response = _post(client, {"generation_id": generation_id, "label": True})
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert error["code"] == "not_found" and error["param"] == "generation_id"
    assert generation_id in error["message"]


def test_an_id_that_is_no_uuid_is_404_only_when_the_rest_is_valid(client: TestClient) -> None:
    response = _post(client, {"generation_id": "does-not-exist", "score": 1.5})
    assert response.status_code == 422 and response.json()["error"]["param"] == "score"


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"score": 1.5}, "score"),
        ({"score": -0.1}, "score"),
        ({}, "label"),
        ({"label": True, "score": 0.5}, "score"),
        ({"label": "yes"}, "label"),
        ({"label": True, "comment": "x" * 4001}, "comment"),
        ({"score": True}, "score"),  # a boolean is no score
        ({"score": "0.5"}, "score"),
        ({"label": True, "generation_id": ""}, "generation_id"),
        ({"label": True, "generation_id": 42}, "generation_id"),
        ({"label": True, "source": "Not A Slug!"}, "source"),
        ({"label": True, "idempotency_key": "k" * 256}, "idempotency_key"),
        ({"label": True, "comment": "a\x00b"}, "comment"),  # Postgres cannot store NUL
        ({"label": True, "idempotency_key": "k\x00"}, "idempotency_key"),
        ({"label": True, "labels": True}, "labels"),
    ],
)
def test_malformed_fields_are_422_naming_the_field(
    client: TestClient, change: dict[str, Any], param: str
) -> None:
    body = {"generation_id": str(uuid.uuid4()), **change}
    response = _post(client, body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert param in error["message"]


def test_comment_of_4000_characters_is_accepted(client: TestClient) -> None:
    gid = _generation(client)
    response = _post(client, {"generation_id": gid, "label": True, "comment": "x" * 4000})
    assert response.status_code == 201


@pytest.mark.parametrize("payload", [b"{not json", b"", b"[1, 2]", b'"text"'])
def test_malformed_json_is_422(client: TestClient, payload: bytes) -> None:
    response = client.post(
        "/v1/feedback", content=payload, headers={**FEEDBACK, "Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, ADMIN])
def test_missing_or_wrong_token_is_401(client: TestClient, headers: dict[str, str]) -> None:
    body = {"generation_id": str(uuid.uuid4()), "label": True}
    assert _post(client, body, headers).status_code == 401
    assert client.post("/v1/feedback", content=b"{bad", headers=headers).status_code == 401
    batch = client.post("/v1/feedback/batch", json={"items": [body]}, headers=headers)
    assert batch.status_code == 401


def test_batch_returns_one_result_per_item(client: TestClient) -> None:
    gid = _generation(client)
    items = [
        {"generation_id": gid, "label": True, "idempotency_key": "b-1"},
        {"generation_id": str(uuid.uuid4()), "label": True},
        {"generation_id": gid, "score": 2.0},
        {"generation_id": gid, "label": False, "idempotency_key": "b-1"},
        {"generation_id": gid, "label": True, "idempotency_key": "b-1"},
        "not an object",
        {"generation_id": gid, "score": 0.0, "source": "grader"},
        {"generation_id": "not-a-uuid", "label": True},
        {"generation_id": gid, "score": 1},  # an integer score is a number
    ]
    response = client.post("/v1/feedback/batch", json={"items": items}, headers=FEEDBACK)
    assert response.status_code == 207, response.text
    results = response.json()["items"]
    assert [r["index"] for r in results] == list(range(len(items)))
    assert [r["status"] for r in results] == [201, 404, 422, 409, 200, 422, 201, 404, 201]
    assert results[7]["error"]["param"] == "items.7.generation_id"
    assert results[4]["id"] == results[0]["id"]
    assert results[2]["error"]["param"] == "items.2.score"
    assert results[1]["error"]["code"] == "not_found"
    assert _detail(client, gid)["label"] == pytest.approx(0.5)  # latest per source: 1 and 0


@pytest.mark.parametrize("count", [0, 1001])
def test_batch_size_is_bounded(client: TestClient, count: int) -> None:
    items = [{"generation_id": str(uuid.uuid4()), "label": True}] * count
    response = client.post("/v1/feedback/batch", json={"items": items}, headers=FEEDBACK)
    assert response.status_code == 422
    assert response.json()["error"]["param"] == "items"


def test_feedback_before_its_generation_is_written(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        feedback_token="fb-token",
        admin_token="admin-token",
        recorder={"flush_interval_s": 0.3, "batch_size": 500},
    )
    with TestClient(create_app(settings)) as client:
        gid = _generation(client, wait=False)
        assert client.get(f"/api/generations/{gid}", headers=ADMIN).status_code == 404
        response = _post(client, {"generation_id": gid, "label": True, "source": "grader"})
        assert response.status_code == 201, response.text
        assert recorder_of(client).wait_idle()
        detail = _detail(client, gid)
        assert detail["label"] == 1.0
        assert [f["id"] for f in detail["feedback"]] == [response.json()["id"]]


def test_feedback_is_spooled_while_the_database_is_down(client: TestClient, backend: str) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    recorder = recorder_of(client)
    good = runtime.sessions
    down = unreachable_sessions(backend)
    runtime.sessions = recorder.sessions = down
    try:
        gid = _generation(client, wait=True)
        body = {"generation_id": gid, "label": False, "idempotency_key": "down-1"}
        first = _post(client, body)
        assert first.status_code == 201 and first.json()["stored"] == "spool"
        again = _post(client, body)
        assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
        assert _post(client, {**body, "label": True}).status_code == 409
    finally:
        runtime.sessions = recorder.sessions = good
    wait_for(lambda: not recorder.spool.has_data())
    detail = _detail(client, gid)
    assert detail["label"] == 0.0
    assert [f["id"] for f in detail["feedback"]] == [first.json()["id"]]
    with good() as session:
        assert session.scalar(select(func.count()).select_from(Feedback)) == 1


def test_generation_endpoint_errors(client: TestClient) -> None:
    missing = client.get(f"/api/generations/{uuid.uuid4()}", headers=ADMIN)
    assert missing.status_code == 404
    malformed = client.get("/api/generations/nope", headers=ADMIN)
    assert malformed.status_code == 422
    assert client.get(f"/api/generations/{uuid.uuid4()}", headers=FEEDBACK).status_code == 401


def test_feedback_metrics_are_exposed(client: TestClient) -> None:
    gid = _generation(client)
    _post(client, {"generation_id": gid, "label": True})
    _post(client, {"generation_id": str(uuid.uuid4()), "label": True})
    text = client.get("/metrics").text
    assert 'thermostat_feedback_total{outcome="created",source="user"} 1.0' in text
    assert 'thermostat_feedback_total{outcome="not_found",source="user"} 1.0' in text
    assert "thermostat_recorder_written_total" in text
