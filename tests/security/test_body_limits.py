"""Request bodies over `proxy.max_body_bytes` are refused with 413 before they are parsed.

The proxy enforces the limit while reading (a chunked body with no
Content-Length included); the feedback and admin APIs get the same limit from
the app-wide `BodySizeLimit` middleware.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.security.conftest import ADMIN, FEEDBACK, Sidecar

LIMIT = 64 * 1024  # proxy.max_body_bytes in the secured_settings fixture


@pytest.fixture
def backend() -> str:
    return "sqlite"


def _big_chat(size: int) -> dict[str, object]:
    return {"model": "m", "messages": [{"role": "user", "content": "x" * size}]}


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_proxy_refuses_oversized_bodies_with_413(sidecar: Sidecar, path: str) -> None:
    before = len(sidecar.upstream.requests)
    with httpx.Client(base_url=sidecar.base, timeout=10) as client:
        response = client.post(path, json=_big_chat(LIMIT + 10))
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
            yield b'{"model": "m", "prompt": "'
            for _ in range(LIMIT // 1024 + 2):
                yield b"y" * 1024
            yield b'"}'

        chunked = client.post(path, content=chunks(), headers={"content-type": "application/json"})
        assert chunked.status_code == 413
        assert client.post(path, json=_big_chat(LIMIT // 2)).status_code == 200
    assert len(sidecar.upstream.requests) == before + 1  # nothing oversized went upstream


def test_feedback_refuses_oversized_bodies_with_413(sidecar: Sidecar) -> None:
    # A valid item padded past the limit with a batch of (individually valid) items.
    item = {"generation_id": str(uuid.uuid4()), "label": True, "comment": "c" * 3000}
    response = httpx.post(
        f"{sidecar.base}/v1/feedback/batch",
        json={"items": [item] * 30},  # ~90 KB > 64 KB
        headers=FEEDBACK,
        timeout=10,
    )
    assert response.status_code == 413


def test_admin_post_refuses_oversized_bodies_with_413(sidecar: Sidecar) -> None:
    body = {
        "url": "http://127.0.0.1:9/hook",
        "events": ["alert.firing"],
        "description": "d" * LIMIT,
    }
    response = httpx.post(f"{sidecar.base}/api/webhooks", json=body, headers=ADMIN, timeout=10)
    assert response.status_code == 413
