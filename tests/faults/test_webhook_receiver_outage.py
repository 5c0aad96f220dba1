"""A webhook receiver that is down, then back: retried by the running scheduler, delivered once.

The scheduler role runs for real (APScheduler thread, short delivery interval
and backoff); the receiver's port refuses connections at first, then a real
HTTP server starts on that same port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook as Verifier

from monitor.alerting.delivery import new_secret
from monitor.alerting.events import emit_event
from monitor.alerting.service import create_webhook
from monitor.app import create_app
from monitor.db.models import WebhookAttempt, WebhookDelivery
from monitor.db.session import session_scope
from monitor.settings import Settings
from tests.recorder.helpers import wait_for
from tests.support.servers import free_port


@contextmanager
def receiver_on(port: int, seen: list[tuple[dict[str, str], bytes]]) -> Iterator[None]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(60)
def test_receiver_down_then_back_is_delivered_exactly_once(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        evaluate_interval_s=3600,
        scheduler={
            "webhook_delivery_interval_s": 0.2,
            "retention_enabled": False,
            "cron_recalibration_enabled": False,
        },
        webhooks={"backoff_base_s": 0.1, "backoff_max_s": 0.4, "timeout_s": 1, "max_attempts": 50},
    )
    port = free_port()
    secret = new_secret()
    seen: list[tuple[dict[str, str], bytes]] = []
    app = create_app(settings, "scheduler")
    with TestClient(app):
        sessions = app.state.runtime.sessions
        with session_scope(sessions) as session:
            create_webhook(session, f"http://127.0.0.1:{port}/hook", ["alert.firing"], secret)
            emit_event(session, "alert.firing", {"rule": "ece", "task": "t", "value": 0.3})

        def attempts() -> list[WebhookAttempt]:
            with sessions() as session:
                return list(session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.id)))

        wait_for(lambda: len(attempts()) >= 3, timeout=20)  # refused, retried, refused...
        with receiver_on(port, seen):
            wait_for(lambda: len(seen) >= 1, timeout=20)
            time.sleep(1.0)  # several more delivery ticks: nothing may be sent again
        with sessions() as session:
            delivery = session.scalars(select(WebhookDelivery)).one()
    rows = attempts()
    assert len(seen) == 1
    assert delivery.status == "delivered" and delivery.delivered_at is not None
    assert delivery.attempts == len(rows) >= 4
    assert [r.attempt for r in rows] == list(range(1, len(rows) + 1))
    *failed, last = rows
    assert all(r.status_code is None and r.error for r in failed)
    assert last.status_code == 204 and last.error is None
    headers, body = seen[0]
    Verifier(secret).verify(body, headers)
    assert headers["webhook-id"] == delivery.message_id
