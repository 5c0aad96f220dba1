"""A client that hangs up mid-stream still leaves its partial generation recorded."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.db.models import Generation
from monitor.settings import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import serve_app


def test_client_disconnect_mid_stream_records_partial_generation(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session]
) -> None:
    with FakeUpstream() as upstream:
        settings = make_settings(
            upstream_url=upstream.base_url, recorder={"flush_interval_s": 0.05}
        )
        with serve_app(create_app(settings, "api")) as url:
            body = {
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 40,
                "stream": True,
            }
            headers = {"X-Fake-Mode": "chunk_delay_ms=50", "X-Thermostat-Task": "s"}
            with (
                httpx.Client(timeout=10) as client,
                client.stream(
                    "POST", f"{url}/v1/chat/completions", json=body, headers=headers
                ) as response,
            ):
                generation_id = response.headers["x-thermostat-generation-id"]
                received = 0
                for line in response.iter_lines():
                    received += line.startswith("data: {")
                    if received == 3:
                        break  # hang up after three events
            deadline = time.monotonic() + 10
            row = None
            while row is None and time.monotonic() < deadline:
                with sessions() as session:
                    row = session.scalars(select(Generation).where(Generation.task == "s")).first()
                time.sleep(0.1)
    assert row is not None, "the abandoned stream was not recorded"
    assert str(row.id) == generation_id
    assert row.partial is True and row.stream is True
    assert 0 < row.token_count < 40
