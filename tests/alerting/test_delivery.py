"""Delivery: retries with backoff, one success, attempts recorded, auto-disable, admin API."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook as Verifier

from monitor.alerting import delivery
from monitor.alerting.events import emit_event
from monitor.alerting.router import router as webhooks_router
from monitor.alerting.service import close_shared_client, create_webhook, enable_webhook
from monitor.db.models import Webhook, WebhookAttempt, WebhookDelivery
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.http_errors import install_error_handlers
from monitor.runtime import Runtime, open_runtime
from monitor.scheduler.jobs import deliver_due
from monitor.settings import Settings
from tests.alerting.support import webhook_receiver


@pytest.fixture
def runtime(make_settings: Callable[..., Settings]) -> Iterator[Runtime]:
    settings = make_settings(
        admin_token="adm",
        webhooks={
            "backoff_base_s": 1,
            "max_attempts": 3,
            "disable_after_failures": 4,
            "timeout_s": 2,
        },
    )
    rt = open_runtime(settings, "scheduler")
    yield rt
    close_shared_client(rt)
    rt.engine.dispose()


def test_backoff_grows_exponentially_with_jitter(runtime: Runtime) -> None:
    config = runtime.settings.webhooks.model_copy(update={"backoff_base_s": 2, "backoff_max_s": 30})
    delays = [delivery.backoff_s(a, config) for a in (1, 2, 3, 4, 10)]
    for delay, ceiling in zip(delays, (2, 4, 8, 16, 30), strict=True):
        assert ceiling / 2 <= delay <= ceiling


def test_500_then_200_is_retried_and_delivered_once(runtime: Runtime) -> None:
    secret = delivery.new_secret()
    with webhook_receiver([500, 200]) as receiver:
        with session_scope(runtime.sessions) as session:
            create_webhook(session, receiver.url, ["alert.firing"], secret)
            emit_event(session, "alert.firing", {"rule": "r", "task": "t"})
        now = utcnow()
        first = deliver_due(runtime, now=now)
        assert [(r.delivered, r.status_code) for r in first] == [(False, 500)]
        assert deliver_due(runtime, now=now) == []  # not due yet: backoff
        second = deliver_due(runtime, now=now + timedelta(seconds=5))
        assert [(r.delivered, r.status_code) for r in second] == [(True, 200)]
        assert deliver_due(runtime, now=now + timedelta(hours=1)) == []
    assert len(receiver.requests) == 2
    (h1, b1), (h2, b2) = receiver.requests
    assert b1 == b2 and h1["webhook-id"] == h2["webhook-id"]  # same message, retried
    Verifier(secret).verify(b2, h2)
    with session_scope(runtime.sessions) as session:
        row = session.scalars(select(WebhookDelivery)).one()
        assert row.payload.encode() == b2  # the stored bytes, exactly
        assert (row.status, row.attempts, row.last_status_code) == ("delivered", 2, 200)
        attempts = list(session.scalars(select(WebhookAttempt).order_by(WebhookAttempt.attempt)))
        assert [(a.attempt, a.status_code) for a in attempts] == [(1, 500), (2, 200)]
        assert session.scalars(select(Webhook)).one().consecutive_failures == 0


def test_each_request_is_signed_at_its_own_send_time(runtime: Runtime) -> None:
    """The batch's `now` picks what is due; each signature carries its own send time.

    The batch's clock reads 6 minutes ago (as after a run of slow endpoints) and
    the first receiver takes 1.5 s to answer: a batch-stamped signature would be
    "too old" for a `standardwebhooks` receiver (5 minutes of tolerance).
    """
    secret = delivery.new_secret()
    batch_now = utcnow() - timedelta(minutes=6)
    with webhook_receiver(delays=[1.5]) as receiver:
        with session_scope(runtime.sessions) as session:
            create_webhook(session, receiver.url, ["alert.firing"], secret)
            for task in ("a", "b"):
                emit_event(session, "alert.firing", {"rule": "r", "task": task})
            session.execute(update(WebhookDelivery).values(next_attempt_at=batch_now))
        results = deliver_due(runtime, now=batch_now)
    assert [r.delivered for r in results] == [True, True]
    stamps = [int(headers["webhook-timestamp"]) for headers, _ in receiver.requests]
    for (headers, body), stamp, arrived in zip(
        receiver.requests, stamps, receiver.arrived, strict=True
    ):
        Verifier(secret).verify(body, headers)
        assert 0 <= arrived - stamp < 1.5  # stamped when sent (whole seconds)
    assert stamps[1] >= stamps[0] + 1  # the second was sent after the slow answer


def test_bad_secret_fails_its_own_delivery_not_the_batch(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret that cannot sign (stored before it was validated) is that delivery's failure."""
    secret = delivery.new_secret()
    with webhook_receiver() as receiver:
        with session_scope(runtime.sessions) as session:
            bad = create_webhook(session, receiver.url, ["alert.firing"], "whsec_abcde")
            good = create_webhook(session, receiver.url, ["alert.resolved"], secret)
            emit_event(session, "alert.firing", {"rule": "r", "task": "t"})
            emit_event(session, "alert.resolved", {"rule": "r", "task": "t"})
            bad_id, good_id = bad.id, good.id
        now = utcnow()
        with caplog.at_level(logging.ERROR, logger="monitor.alerting.delivery"):
            results = deliver_due(runtime, now=now)
    assert [(r.delivered, r.status_code) for r in results] == [(False, None), (True, 200)]
    assert any(r.levelno == logging.ERROR and r.exc_info for r in caplog.records)
    ((headers, body),) = receiver.requests
    assert Verifier(secret).verify(body, headers)["type"] == "alert.resolved"
    with session_scope(runtime.sessions) as session:
        rows = {r.webhook_id: r for r in session.scalars(select(WebhookDelivery))}
        failed = rows[bad_id]
        assert (failed.status, failed.attempts) == ("pending", 1)  # retried with backoff
        assert failed.last_error and failed.next_attempt_at and failed.next_attempt_at > now
        attempts = {a.delivery_id: a for a in session.scalars(select(WebhookAttempt))}
        assert attempts[failed.id].status_code is None and attempts[failed.id].error
        assert rows[good_id].status == "delivered"


def test_receiver_down_records_attempts_and_disables_endpoint(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    with session_scope(runtime.sessions) as session:
        hook = create_webhook(session, "http://127.0.0.1:9/down-SECRET", ["alert.firing"])
        for i in range(2):
            emit_event(session, "alert.firing", {"rule": "r", "task": f"t{i}"})
    now = utcnow()
    for step in range(6):
        deliver_due(runtime, now=now + timedelta(hours=step))
    with session_scope(runtime.sessions) as session:
        rows = list(session.scalars(select(WebhookDelivery)))
        attempts = list(session.scalars(select(WebhookAttempt)))
        endpoint = session.get(Webhook, hook.id)
        assert endpoint is not None
        # 4 consecutive failures (disable_after_failures) then nothing more is sent.
        assert len(attempts) == 4 and all(a.status_code is None and a.error for a in attempts)
        assert not endpoint.enabled and endpoint.disabled_at is not None
        assert "4 consecutive" in (endpoint.disabled_reason or "")
        assert sum(r.attempts for r in rows) == 4
        enable_webhook(session, hook.id)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("webhook.")]
    assert line.startswith(f"webhook.disabled: endpoint {hook.id} (http://127.0.0.1:9/***) after 4")
    assert "SECRET" not in caplog.text
    with session_scope(runtime.sessions) as session:
        endpoint = session.get(Webhook, hook.id)
        assert endpoint is not None and endpoint.enabled and endpoint.consecutive_failures == 0


def test_webhooks_admin_api(runtime: Runtime) -> None:
    app = FastAPI()
    app.state.runtime = runtime
    app.state.settings = runtime.settings
    install_error_handlers(app)
    app.include_router(webhooks_router)
    with (
        webhook_receiver([200, 503]) as receiver,
        TestClient(app, headers={"authorization": "Bearer adm"}) as client,
    ):
        created = client.post(
            "/api/webhooks", json={"url": receiver.url, "events": ["alert.firing"]}
        )
        assert created.status_code == 201, created.text
        secret = created.json()["secret"]
        hook_id = created.json()["id"]
        assert secret.startswith("whsec_")
        listing = client.get("/api/webhooks").json()["items"]
        assert [h["id"] for h in listing] == [hook_id]
        assert listing[0]["secret"] != secret and secret not in str(listing)
        ok = client.post(f"/api/webhooks/{hook_id}/test").json()
        assert ok["delivered"] is True and ok["status_code"] == 200
        Verifier(secret).verify(receiver.requests[0][1], receiver.requests[0][0])
        failed = client.post(f"/api/webhooks/{hook_id}/test").json()
        assert failed["delivered"] is False and failed["status_code"] == 503
        deliveries = client.get(f"/api/webhooks/{hook_id}/deliveries").json()["items"]
        assert [d["status"] for d in deliveries] == ["failed", "delivered"]
        assert deliveries[1]["attempt_log"][0]["status_code"] == 200
        bad = client.post("/api/webhooks", json={"url": "ftp://x", "events": ["alert.firing"]})
        assert bad.status_code == 422
        bad = client.post("/api/webhooks", json={"url": receiver.url, "events": ["nope"]})
        assert bad.status_code == 422
        assert client.post(f"/api/webhooks/{hook_id}/enable").json()["enabled"] is True
        assert client.delete(f"/api/webhooks/{hook_id}").status_code == 204
        assert client.get("/api/webhooks").json()["items"] == []
        assert client.post(f"/api/webhooks/{hook_id}/test").status_code == 404
