"""Webhook endpoints: admin operations, config-file sync and the shared HTTP client.

Endpoints come from two places: the config file (synced into the table when
the scheduler starts, `source='config'`, matched by URL so delivery history
survives restarts) and the admin API (`source='api'`). Services flush; the
request or job that called them commits.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx
from sqlalchemy.orm import Session

from monitor.alerting import repository
from monitor.alerting.delivery import AttemptResult, deliver_one, make_client, new_secret
from monitor.alerting.events import event_body
from monitor.config import WebhookConfig
from monitor.db.models import Webhook, WebhookAttempt, WebhookDelivery
from monitor.db.models.enums import DeliveryStatus
from monitor.db.types import utcnow, uuid7
from monitor.errors import NotFoundError
from monitor.runtime import Runtime
from monitor.settings import Settings

CLIENT_KEY = "alerting.http_client"
TEST_EVENT = "webhook.test"
_client_lock = threading.Lock()


def shared_client(runtime: Runtime) -> httpx.Client:
    """The process's one webhook HTTP client, created on first use."""
    with _client_lock:
        client = runtime.extras.get(CLIENT_KEY)
        if not isinstance(client, httpx.Client):
            client = make_client(runtime.settings)
            runtime.extras[CLIENT_KEY] = client
        return client


def close_shared_client(runtime: Runtime) -> None:
    with _client_lock:
        client = runtime.extras.pop(CLIENT_KEY, None)
    if isinstance(client, httpx.Client):
        client.close()


def list_webhooks(session: Session) -> list[Webhook]:
    return repository.list_webhooks(session)


def require_webhook(session: Session, webhook_id: int) -> Webhook:
    hook = repository.get_webhook(session, webhook_id)
    if hook is None:
        raise NotFoundError(f"webhook {webhook_id} not found")
    return hook


def create_webhook(
    session: Session,
    url: str,
    events: list[str],
    secret: str | None = None,
    description: str | None = None,
    source: str = "api",
) -> Webhook:
    hook = Webhook(
        url=url,
        secret=secret or new_secret(),
        events=list(events),
        source=source,
        description=description,
        enabled=True,
        consecutive_failures=0,
        created_at=utcnow(),
    )
    return repository.add_webhook(session, hook)


def delete_webhook(session: Session, webhook_id: int) -> None:
    repository.delete_webhook(session, require_webhook(session, webhook_id))


def enable_webhook(session: Session, webhook_id: int) -> Webhook:
    """Re-enable an endpoint; its pending deliveries resume on the next run."""
    hook = require_webhook(session, webhook_id)
    hook.enabled = True
    hook.consecutive_failures = 0
    hook.disabled_at = None
    hook.disabled_reason = None
    session.flush()
    return hook


def deliveries(
    session: Session, webhook_id: int, limit: int = 100
) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
    require_webhook(session, webhook_id)
    rows = repository.deliveries_for(session, webhook_id, limit)
    attempts = repository.attempts_for(session, [row.id for row in rows])
    return [(row, attempts[row.id]) for row in rows]


def send_test(
    session: Session, client: httpx.Client, settings: Settings, webhook_id: int
) -> tuple[WebhookDelivery, AttemptResult]:
    """Send a signed test event now, even to a disabled endpoint; one attempt, recorded."""
    hook = require_webhook(session, webhook_id)
    now = utcnow()
    data = {"webhook_id": hook.id, "message": "test event from thermostat"}
    delivery = repository.add_delivery(
        session,
        WebhookDelivery(
            webhook_id=hook.id,
            event_type=TEST_EVENT,
            message_id=f"msg_{uuid7().hex}",
            payload=event_body(TEST_EVENT, data),
            status=DeliveryStatus.pending.value,
            attempts=0,
            next_attempt_at=now,
            created_at=now,
        ),
    )
    result = deliver_one(session, client, settings, delivery.id, now=now, retry=False)
    assert result is not None  # just created, pending
    return delivery, result


@dataclass(frozen=True)
class SyncResult:
    added: int
    updated: int
    removed: int


def sync_config_webhooks(session: Session, configs: list[WebhookConfig]) -> SyncResult:
    """Make `source='config'` rows match the config file (by URL).

    An endpoint dropped from the file is disabled, not deleted, so its
    delivery history stays visible; a re-added one is re-enabled.
    """
    existing = {hook.url: hook for hook in repository.webhooks_by_source(session, "config")}
    added = updated = removed = 0
    wanted = {config.url: config for config in configs}
    for url, config in wanted.items():
        hook = existing.get(url)
        secret = config.secret.get_secret_value()  # stored plain: delivery signs with it
        if hook is None:
            create_webhook(session, url, config.events, secret, source="config")
            added += 1
            continue
        changed = hook.secret != secret or list(hook.events) != list(config.events)
        if changed or hook.disabled_reason == "removed from the config file":
            hook.secret = secret
            hook.events = list(config.events)
            if hook.disabled_reason == "removed from the config file":
                hook.enabled, hook.disabled_at, hook.disabled_reason = True, None, None
            updated += 1
    for url, hook in existing.items():
        if url not in wanted and hook.enabled:
            hook.enabled = False
            hook.disabled_at = utcnow()
            hook.disabled_reason = "removed from the config file"
            removed += 1
    session.flush()
    return SyncResult(added, updated, removed)
