"""`/api/webhooks`: endpoints, their deliveries, a signed test send, re-enabling."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from monitor.alerting import service
from monitor.alerting.schemas import DeliveryOut, TestResult, WebhookCreate, WebhookOut
from monitor.deps import AdminAuth, RuntimeDep, SessionDep, SettingsDep

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"], dependencies=[AdminAuth])


@router.get("")
def list_webhooks(session: SessionDep) -> dict[str, Any]:
    return {"items": [WebhookOut.of(hook) for hook in service.list_webhooks(session)]}


@router.post("", status_code=201)
def create_webhook(body: WebhookCreate, session: SessionDep) -> WebhookOut:
    secret = body.plain_secret()
    hook = service.create_webhook(session, body.url, body.events, secret, body.description)
    # The secret is shown once, on creation, so a generated one can be copied.
    return WebhookOut.of(hook, reveal=True)


@router.delete("/{webhook_id}", status_code=204)
def delete_webhook(webhook_id: int, session: SessionDep) -> Response:
    service.delete_webhook(session, webhook_id)
    return Response(status_code=204)


@router.post("/{webhook_id}/enable")
def enable_webhook(webhook_id: int, session: SessionDep) -> WebhookOut:
    return WebhookOut.of(service.enable_webhook(session, webhook_id))


@router.post("/{webhook_id}/test")
def test_webhook(
    webhook_id: int, session: SessionDep, runtime: RuntimeDep, settings: SettingsDep
) -> TestResult:
    client = service.shared_client(runtime)
    delivery, result = service.send_test(session, client, settings, webhook_id)
    return TestResult(
        webhook_id=webhook_id,
        delivery_id=delivery.id,
        message_id=delivery.message_id,
        delivered=result.delivered,
        status_code=result.status_code,
        error=result.error,
        duration_ms=result.duration_ms,
    )


@router.get("/{webhook_id}/deliveries")
def list_deliveries(
    webhook_id: int, session: SessionDep, limit: int = Query(default=100, ge=1, le=1000)
) -> dict[str, Any]:
    rows = service.deliveries(session, webhook_id, limit)
    return {"items": [DeliveryOut.of(row, attempts) for row, attempts in rows]}
