"""HTTP shapes of the webhooks admin API. Secrets are write-only: listings mask them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from monitor.alerting.delivery import mask_secret
from monitor.alerting.webhook_secret import StoredWebhookSecret
from monitor.config import EVENT_TYPES
from monitor.db.models import Webhook, WebhookAttempt, WebhookDelivery


class WebhookCreate(BaseModel):
    # SecretStr and no inputs in errors: the body's secret stays out of repr() and logs.
    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    url: str = Field(pattern=r"^https?://", max_length=2048)
    secret: StoredWebhookSecret | None = None
    events: list[str] = Field(default_factory=lambda: list(EVENT_TYPES), min_length=1)
    description: str | None = Field(default=None, max_length=255)

    @field_validator("events")
    @classmethod
    def _known(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event(s) {unknown}; known: {list(EVENT_TYPES)}")
        return events

    def plain_secret(self) -> str | None:
        """The secret to store (delivery signs with it); None: generate one."""
        return None if self.secret is None else self.secret.get_secret_value()


class WebhookOut(BaseModel):
    id: int
    url: str
    secret: str
    events: list[str]
    source: str
    description: str | None
    enabled: bool
    consecutive_failures: int
    disabled_at: datetime | None
    disabled_reason: str | None
    created_at: datetime

    @classmethod
    def of(cls, hook: Webhook, reveal: bool = False) -> WebhookOut:
        return cls(
            id=hook.id,
            url=hook.url,
            secret=hook.secret if reveal else mask_secret(hook.secret),
            events=list(hook.events or []),
            source=hook.source,
            description=hook.description,
            enabled=hook.enabled,
            consecutive_failures=hook.consecutive_failures,
            disabled_at=hook.disabled_at,
            disabled_reason=hook.disabled_reason,
            created_at=hook.created_at,
        )


class AttemptOut(BaseModel):
    attempt: int
    attempted_at: datetime
    status_code: int | None
    error: str | None
    duration_ms: float | None

    @classmethod
    def of(cls, row: WebhookAttempt) -> AttemptOut:
        return cls(
            attempt=row.attempt,
            attempted_at=row.attempted_at,
            status_code=row.status_code,
            error=row.error,
            duration_ms=row.duration_ms,
        )


class DeliveryOut(BaseModel):
    id: int
    webhook_id: int
    event_type: str
    message_id: str
    status: str
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptOut]

    @classmethod
    def of(cls, row: WebhookDelivery, attempts: list[WebhookAttempt]) -> DeliveryOut:
        return cls(
            id=row.id,
            webhook_id=row.webhook_id,
            event_type=row.event_type,
            message_id=row.message_id,
            status=row.status,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_status_code=row.last_status_code,
            last_error=row.last_error,
            created_at=row.created_at,
            delivered_at=row.delivered_at,
            attempt_log=[AttemptOut.of(a) for a in attempts],
        )


class TestResult(BaseModel):
    webhook_id: int
    delivery_id: int
    message_id: str
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: float


class Items(BaseModel):
    items: list[Any]
