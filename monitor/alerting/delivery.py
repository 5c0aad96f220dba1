"""Signed webhook delivery (Standard Webhooks) with retries, attempts and auto-disable.

The outbox (`events.emit_event`) wrote one delivery row per endpoint; this
module sends it. The body is the stored payload string byte for byte, so the
signature a receiver checks is over exactly what was committed with the
event. A non-2xx or a transport error schedules a retry with exponential
backoff and jitter (so endpoints that failed together do not retry in
lockstep); every attempt is a `webhook_attempts` row; an endpoint that fails
`disable_after_failures` times in a row is disabled, logged as an event and
shown in the admin API, and an operator re-enables it. One `httpx.Client`
is shared by the process (connection reuse; timeouts from settings).
"""

from __future__ import annotations

import base64
import logging
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import httpx
from sqlalchemy.orm import Session
from standardwebhooks.webhooks import Webhook as Signer

from monitor.alerting import repository
from monitor.db.models import Webhook, WebhookAttempt, WebhookDelivery
from monitor.db.models.enums import DeliveryStatus
from monitor.db.types import utcnow
from monitor.errors import redact_endpoint
from monitor.settings import Settings, WebhookDeliverySettings

log = logging.getLogger(__name__)

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def mask_secret(secret: str) -> str:
    body = secret.removeprefix(SECRET_PREFIX)
    return f"{SECRET_PREFIX}{body[:4]}…" if len(body) > 8 else f"{SECRET_PREFIX}…"


def make_client(settings: Settings) -> httpx.Client:
    timeout = httpx.Timeout(settings.webhooks.timeout_s)
    return httpx.Client(
        timeout=timeout, follow_redirects=False, headers={"user-agent": "thermostat"}
    )


def signed_headers(secret: str, message_id: str, payload: str, when: datetime) -> dict[str, str]:
    signature = Signer(secret).sign(message_id, when, payload)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
        "content-type": "application/json",
    }


def backoff_s(
    attempt: int, config: WebhookDeliverySettings, rng: random.Random | None = None
) -> float:
    """Delay before retry `attempt + 1`: base * 2^(attempt-1), capped, times U[0.5, 1)."""
    ceiling = min(config.backoff_max_s, config.backoff_base_s * 2 ** max(attempt - 1, 0))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


@dataclass(frozen=True)
class AttemptResult:
    delivery_id: int
    attempt: int
    delivered: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    webhook_disabled: bool = False


def _post(
    client: httpx.Client, hook: Webhook, delivery: WebhookDelivery, timeout_s: float
) -> tuple[int | None, str | None, float]:
    """POST once; any failure, expected or not, is this attempt's error, never raised.

    Signed with the time of sending, not the batch's: receivers reject
    timestamps more than 5 minutes off, and a batch can outlast that.
    """
    started = time.perf_counter()
    try:
        headers = signed_headers(hook.secret, delivery.message_id, delivery.payload, utcnow())
        response = client.post(
            hook.url, content=delivery.payload.encode(), headers=headers, timeout=timeout_s
        )
    except Exception as exc:
        if not isinstance(exc, httpx.HTTPError):
            log.exception("webhook delivery %s to endpoint %s failed", delivery.id, hook.id)
        return None, f"{type(exc).__name__}: {exc}"[:500], (time.perf_counter() - started) * 1e3
    elapsed = (time.perf_counter() - started) * 1e3
    if 200 <= response.status_code < 300:
        return response.status_code, None, elapsed
    return response.status_code, f"HTTP {response.status_code}", elapsed


def deliver_one(
    session: Session,
    client: httpx.Client,
    settings: Settings,
    delivery_id: int,
    now: datetime | None = None,
    retry: bool = True,
) -> AttemptResult | None:
    """Send one delivery once and record the attempt; None if it is no longer due.

    `retry=False` (test sends) makes the first attempt final either way.

    Unlike other services this one commits, once, before the network call: no
    transaction may stay open across a POST of up to `timeout_s` (on SQLite it
    would hold the single write lock and stall every writer; on Postgres it
    would pin a connection and row locks). The attempt is recorded in a new
    transaction, only if the delivery is still pending.
    """
    delivery = repository.get_delivery(session, delivery_id)
    if delivery is None or delivery.status != DeliveryStatus.pending.value:
        return None
    hook = repository.get_webhook(session, delivery.webhook_id)
    if hook is None:
        return None
    now = now or utcnow()
    config = settings.webhooks
    # The one commit in a service, kept on purpose (see the docstring): it ends
    # the caller's transaction before the POST, so no transaction, write lock
    # or row lock is held for up to `timeout_s`. The edge cannot do it, as the
    # POST happens inside this call; the edge commits the attempt recorded
    # below. tests/e2e/test_webhook_delivery_concurrent_write.py fails without it.
    session.commit()
    status_code, error, elapsed = _post(client, hook, delivery, config.timeout_s)
    if not repository.reload_delivery(session, delivery, hook):
        return None  # deleted while the request was in flight
    if delivery.status != DeliveryStatus.pending.value:
        return None  # recorded by someone else meanwhile
    delivery.attempts += 1
    delivery.last_status_code = status_code
    delivery.last_error = error
    repository.add_attempt(
        session,
        WebhookAttempt(
            delivery_id=delivery.id,
            attempt=delivery.attempts,
            attempted_at=now,
            status_code=status_code,
            error=error,
            duration_ms=elapsed,
        ),
    )
    disabled = False
    if error is None:
        delivery.status = DeliveryStatus.delivered.value
        delivery.delivered_at = now
        delivery.next_attempt_at = None
        hook.consecutive_failures = 0
    else:
        hook.consecutive_failures += 1
        if not retry or delivery.attempts >= config.max_attempts:
            delivery.status = DeliveryStatus.failed.value
            delivery.next_attempt_at = None
        else:
            delay = backoff_s(delivery.attempts, config)
            delivery.next_attempt_at = now + timedelta(seconds=delay)
        if hook.enabled and hook.consecutive_failures >= config.disable_after_failures:
            disabled = True
            hook.enabled = False
            hook.disabled_at = now
            hook.disabled_reason = (
                f"{hook.consecutive_failures} consecutive failed attempts (last: {error})"
            )
            log.warning(
                "webhook.disabled: endpoint %s (%s) after %d consecutive failures; last: %s",
                hook.id,
                redact_endpoint(hook.url),
                hook.consecutive_failures,
                error,
                extra={"event": "webhook.disabled", "webhook_id": hook.id},
            )
    session.flush()
    return AttemptResult(
        delivery.id, delivery.attempts, error is None, status_code, error, elapsed, disabled
    )
