"""SQL injection attempts in every string field and query parameter: stored verbatim or refused.

Run on SQLite and Postgres. Each payload goes into task names (header and
`metadata.task`), feedback sources, comments and idempotency keys, path ids,
webhook descriptions, and the `?task=`, `?status=`, `?state=`, `?since=`
parameters. Nothing may answer 5xx; free text must come back byte for byte;
afterwards every table still exists and holds exactly the rows we expect.
"""

from __future__ import annotations

import uuid
from urllib.parse import quote

import httpx
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.models import Feedback, Generation, Task
from tests.security.conftest import ADMIN, FEEDBACK, Sidecar

PAYLOADS = [
    "'; DROP TABLE generations; --",
    "x' OR '1'='1",
    '" OR 1=1 --',
    "qa'); DELETE FROM feedback; --",
    "1; SELECT pg_sleep(5); --",
    "1 UNION SELECT name, config FROM tasks --",
    "%' OR 1=1 --",
    "\\'; TRUNCATE tasks CASCADE; --",
    "$$; DROP TABLE feedback; $$",
    "Robert'); DROP TABLE metric_snapshots;--",
]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6}


def _counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        bind = session.get_bind()
        return {
            table: int(session.scalar(text(f'SELECT count(*) FROM "{table}"')) or 0)
            for table in inspect(bind).get_table_names()
        }


def test_injection_attempts_are_stored_verbatim_or_refused(sidecar: Sidecar) -> None:
    sessions = sidecar.runtime.sessions
    tables_before = set(_counts(sessions))
    assert {"generations", "feedback", "tasks", "metric_snapshots"} <= tables_before
    five_hundreds: list[tuple[str, str, int]] = []
    feedback_ids: dict[str, str] = {}

    def check(response: httpx.Response, allowed: set[int], what: str) -> httpx.Response:
        if response.status_code >= 500:
            five_hundreds.append((what, response.request.url.path, response.status_code))
        assert response.status_code in allowed, (what, response.status_code, response.text)
        return response

    with httpx.Client(base_url=sidecar.base, timeout=10) as client:
        ok = check(client.post("/v1/chat/completions", json=CHAT), {200}, "baseline")
        generation_id = ok.headers["x-thermostat-generation-id"]
        sidecar.runtime.extras["recorder"].wait_idle()
        for payload in PAYLOADS:
            # Task names: refused by the name rule, header or body.
            check(
                client.post(
                    "/v1/chat/completions", json=CHAT, headers={"X-Thermostat-Task": payload}
                ),
                {400, 422},
                "task header",
            )
            check(
                client.post("/v1/chat/completions", json={**CHAT, "metadata": {"task": payload}}),
                {400, 422},
                "metadata.task",
            )
            # Feedback: source refused by its pattern; comment and key stored verbatim.
            item = {"generation_id": generation_id, "label": True}
            check(
                client.post("/v1/feedback", json={**item, "source": payload}, headers=FEEDBACK),
                {422},
                "source",
            )
            body = {**item, "comment": payload, "idempotency_key": payload, "source": "grader"}
            created = check(client.post("/v1/feedback", json=body, headers=FEEDBACK), {201}, "fb")
            assert created.json()["comment"] == payload
            assert created.json()["idempotency_key"] == payload
            feedback_ids[payload] = created.json()["id"]
            again = check(client.post("/v1/feedback", json=body, headers=FEEDBACK), {200}, "key")
            assert again.json()["id"] == feedback_ids[payload]
            check(
                client.post(
                    "/v1/feedback",
                    json={"generation_id": payload, "label": True},
                    headers=FEEDBACK,
                ),
                {404},  # a string that names no generation
                "generation_id",
            )
            batch = {"items": [{**item, "comment": payload, "source": "batch"}]}
            result = check(
                client.post("/v1/feedback/batch", json=batch, headers=FEEDBACK), {207}, "batch"
            )
            assert result.json()["items"][0]["status"] == 201
            # Path ids and query parameters of the admin API.
            quoted = quote(payload, safe="")
            for path, allowed in (
                (f"/api/tasks/{quoted}", {404, 422}),
                (f"/api/tasks/{quoted}/metrics", {200, 404, 422}),
                (f"/api/tasks/{quoted}/reliability", {200, 404, 422}),
                (f"/api/generations/{quoted}", {404, 422}),
                (f"/api/jobs/{quoted}", {404, 422}),
                (f"/api/calibrations/{quoted}", {404, 422}),
                (f"/api/webhooks/{quoted}/deliveries", {404, 422}),
            ):
                check(client.get(path, headers=ADMIN), allowed, path)
            check(
                client.post(f"/api/tasks/{quoted}/recalibrate", headers=ADMIN),
                {400, 404, 422},
                "recalibrate",
            )
            for path, params, allowed in (
                ("/api/jobs", {"task": payload}, {200, 422}),
                ("/api/jobs", {"status": payload}, {422}),
                ("/api/calibrations", {"task": payload}, {200, 422}),
                ("/api/alerts", {"state": payload}, {422}),
                ("/api/tasks/default/metrics", {"since": payload}, {422}),
            ):
                response = check(client.get(path, params=params, headers=ADMIN), allowed, path)
                if response.status_code == 200:
                    assert response.json()["items"] == []
            hook = check(
                client.post(
                    "/api/webhooks",
                    headers=ADMIN,
                    json={
                        "url": "http://127.0.0.1:9/hook",
                        "events": ["alert.firing"],
                        "description": payload,
                    },
                ),
                {201},
                "webhook description",
            )
            assert hook.json()["description"] == payload
    assert not five_hundreds, five_hundreds

    counts = _counts(sessions)
    assert set(counts) == tables_before  # nothing dropped
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Generation)) == 1
        assert set(session.scalars(select(Task.name))) == {"default"}
        stored = {
            row.idempotency_key: row
            for row in session.scalars(select(Feedback).where(Feedback.source == "grader"))
        }
        assert set(stored) == set(PAYLOADS)
        for payload, row in stored.items():
            assert row.comment == payload and str(row.id) == feedback_ids[payload]
        assert session.scalar(select(func.count()).select_from(Feedback)) == 2 * len(PAYLOADS)
        assert session.get(Generation, uuid.UUID(generation_id)) is not None
    assert counts["webhooks"] == len(PAYLOADS)
