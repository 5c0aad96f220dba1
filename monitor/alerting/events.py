"""Emitting webhook events through an outbox: one delivery row per subscribed endpoint.

Events are written in the caller's transaction, so an event exists exactly
when the change it describes was committed; the scheduler's delivery job
sends them later (signed, retried, every attempt recorded).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy.orm import Session

from monitor.alerting import repository
from monitor.config import EVENT_TYPES
from monitor.db.models import WebhookDelivery
from monitor.db.models.enums import DeliveryStatus
from monitor.db.types import as_json, utcnow, uuid7


def event_body(event_type: str, data: dict[str, Any]) -> str:
    """The exact JSON body that is signed and sent (Standard Webhooks payload)."""
    body = {"type": event_type, "timestamp": utcnow().isoformat(), "data": as_json(data)}
    return orjson.dumps(body, default=str).decode()


def emit_event(session: Session, event_type: str, data: dict[str, Any]) -> list[WebhookDelivery]:
    """Queue `event_type` for every enabled webhook subscribed to it."""
    if event_type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type!r}")
    hooks = repository.enabled_webhooks(session)
    payload = event_body(event_type, data)
    now = utcnow()
    deliveries = [
        WebhookDelivery(
            webhook_id=hook.id,
            event_type=event_type,
            message_id=f"msg_{uuid7().hex}",
            payload=payload,
            status=DeliveryStatus.pending.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        )
        for hook in hooks
        if event_type in (hook.events or [])
    ]
    return repository.add_deliveries(session, deliveries)
