"""Prompts, answers' inputs and tokens never reach the logs at INFO.

Traffic with distinctive canary strings (prompt text, the upstream API key,
the admin and feedback tokens, wrong tokens, a feedback comment) goes
through a real sidecar, including the failure paths that log (upstream 500,
stall, a cut stream, a bad task name); then every captured log record is
searched for the canaries.
"""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest

from tests.security.conftest import ADMIN, ADMIN_TOKEN, FEEDBACK, FEEDBACK_TOKEN, Sidecar

PROMPT = "CANARY-PROMPT-q8z1 what is the secret plan"
API_KEY = "sk-CANARY-APIKEY-7v3n"
WRONG = "CANARY-WRONGTOKEN-m2k9"
COMMENT = "CANARY-COMMENT-p4d6"


@pytest.fixture
def backend() -> str:
    return "sqlite"


def test_no_prompt_or_token_in_logs_at_info(
    sidecar: Sidecar, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    upstream_auth = {"Authorization": f"Bearer {API_KEY}"}
    chat = {"model": "m", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 8}
    with httpx.Client(base_url=sidecar.base, timeout=10) as client:
        ok = client.post("/v1/chat/completions", json=chat, headers=upstream_auth)
        assert ok.status_code == 200
        generation_id = ok.headers["x-thermostat-generation-id"]
        completion = {"model": "m", "prompt": PROMPT, "max_tokens": 8, "logprobs": 2}
        assert client.post("/v1/completions", json=completion).status_code == 200
        for mode in ("error=500", "stall=3", "cut"):
            body = {**chat, "stream": mode == "cut"}
            client.post(
                "/v1/chat/completions", json=body, headers={**upstream_auth, "X-Fake-Mode": mode}
            )
        bad_task = client.post(
            "/v1/chat/completions", json=chat, headers={"X-Thermostat-Task": f"Bad {PROMPT}"}
        )
        assert bad_task.status_code in (400, 422)
        assert client.post("/v1/chat/completions", content=PROMPT.encode()).status_code == 400
        sidecar.runtime.extras["recorder"].wait_idle()
        feedback = {"generation_id": generation_id, "label": True, "comment": COMMENT}
        assert client.post("/v1/feedback", json=feedback, headers=FEEDBACK).status_code == 201
        unknown = {**feedback, "generation_id": str(uuid.uuid4())}
        assert client.post("/v1/feedback", json=unknown, headers=FEEDBACK).status_code == 404
        wrong = {"Authorization": f"Bearer {WRONG}"}
        assert client.post("/v1/feedback", json=feedback, headers=wrong).status_code == 401
        assert client.get("/api/tasks", headers=wrong).status_code == 401
        assert client.get(f"/api/generations/{generation_id}", headers=ADMIN).status_code == 200
        client.post("/dashboard/login", data={"token": WRONG})
        client.post("/dashboard/login", data={"token": ADMIN_TOKEN})
        client.post("/api/evaluate", headers=ADMIN)
    records = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert any("upstream failure" in r.getMessage() for r in records)  # the paths did log
    text = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''} {r.args!r} {vars(r)!r}" for r in records
    )
    for canary in (
        "CANARY-PROMPT",
        "secret plan",
        API_KEY,
        WRONG,
        COMMENT,
        ADMIN_TOKEN,
        FEEDBACK_TOKEN,
    ):
        assert canary not in text, f"{canary!r} appears in the logs"
