"""The model server misbehaves; the client gets an honest answer and the sidecar stays up.

A real FakeUpstream on loopback (or a port nobody listens on), the sidecar
served by uvicorn, plain httpx as the client. After each fault `/healthz`
must still answer and a normal request must still go through.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from sqlalchemy import select

from monitor.app import create_app
from monitor.db.models import Generation
from monitor.settings import Settings
from tests.recorder.helpers import wait_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import free_port, serve_app

CHAT = {"model": "m", "messages": [{"role": "user", "content": "2 + 2?"}], "max_tokens": 16}
TASK = {"X-Thermostat-Task": "faults"}

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


def _sidecar(make_settings: Callable[..., Settings], upstream_url: str):  # type: ignore[no-untyped-def]
    settings = make_settings(
        upstream_url=upstream_url,
        proxy={"read_timeout_s": 0.5, "connect_timeout_s": 0.5},
        recorder={"flush_interval_s": 0.05},
    )
    return create_app(settings, "api")


def _assert_openai_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] and error["message"]


def _still_healthy(base: str, upstream: FakeUpstream | None) -> None:
    assert httpx.get(f"{base}/healthz").status_code == 200
    if upstream is not None:
        ok = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=TASK, timeout=5)
        assert ok.status_code == 200 and "thermostat" in ok.json()


def test_upstream_refusing_connections_gives_502(make_settings: Callable[..., Settings]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    with serve_app(_sidecar(make_settings, dead)) as base:
        for _ in range(3):
            response = httpx.post(f"{base}/v1/chat/completions", json=CHAT, timeout=5)
            _assert_openai_error(response, 502, "upstream_unavailable")
        _still_healthy(base, None)


def test_upstream_stalling_gives_504_within_the_read_timeout(
    make_settings: Callable[..., Settings], upstream: FakeUpstream
) -> None:
    with serve_app(_sidecar(make_settings, upstream.base_url)) as base:
        headers = {**TASK, "X-Fake-Mode": "stall=3"}
        response = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers, timeout=5)
        _assert_openai_error(response, 504, "upstream_timeout")
        assert response.elapsed.total_seconds() < 2.0  # read_timeout_s is 0.5
        _still_healthy(base, upstream)


def test_upstream_500_status_and_body_are_passed_through(
    make_settings: Callable[..., Settings], upstream: FakeUpstream
) -> None:
    direct = httpx.post(
        f"{upstream.base_url}/chat/completions", json=CHAT, headers={"X-Fake-Mode": "error=500"}
    )
    with serve_app(_sidecar(make_settings, upstream.base_url)) as base:
        for status in (500, 503, 429):
            headers = {**TASK, "X-Fake-Mode": f"error={status}"}
            response = httpx.post(f"{base}/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == status
            if status == 500:
                assert response.content == direct.content  # byte for byte
            assert "thermostat" not in response.json()
        _still_healthy(base, upstream)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_stream_cut_half_way_relays_what_was_sent_and_records_it_partial(
    make_settings: Callable[..., Settings], upstream: FakeUpstream, endpoint: str
) -> None:
    if endpoint == "chat":
        path, body = "/chat/completions", {**CHAT, "stream": True, "max_tokens": 20}
    else:
        path, body = "/completions", {"model": "m", "prompt": "count", "max_tokens": 20}
        body["stream"] = True
    full = httpx.post(f"{upstream.base_url}{path}", json=body).text
    full_events = [e for e in full.split("\n\n") if e.startswith("data: {")]
    app = _sidecar(make_settings, upstream.base_url)
    with serve_app(app) as base:
        headers = {**TASK, "X-Fake-Mode": "cut"}
        with httpx.stream("POST", f"{base}/v1{path}", json=body, headers=headers) as response:
            assert response.status_code == 200
            generation_id = uuid.UUID(response.headers["x-thermostat-generation-id"])
            try:
                text = "".join(response.iter_text())
            except httpx.HTTPError:  # a client may see the cut as a broken chunked body
                text = ""
        received = [e for e in text.split("\n\n") if e.startswith("data: {")]
        relayed = [e for e in received if '"thermostat"' not in e]
        # Everything the upstream sent before the cut reached the client, in order.
        assert 0 < len(relayed) < len(full_events)
        assert [json.loads(e[6:])["choices"] for e in relayed] == [
            json.loads(e[6:])["choices"] for e in full_events[: len(relayed)]
        ]
        runtime = app.state.runtime
        recorder = runtime.extras["recorder"]
        assert recorder.wait_idle()

        def recorded() -> Generation | None:
            with runtime.sessions() as session:
                return session.scalar(select(Generation).where(Generation.id == generation_id))

        wait_for(lambda: recorded() is not None, timeout=10)
        row = recorded()
        assert row is not None and row.partial is True and row.stream is True
        assert row.task == "faults"
        assert 0 < row.token_count < 20
        assert row.token_count == len(relayed) - (1 if endpoint == "chat" else 0)  # role chunk
        _still_healthy(base, upstream)
