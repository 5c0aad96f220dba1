"""The only SQL of alerting: alert episodes, webhook endpoints, deliveries, attempts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError, InvalidRequestError
from sqlalchemy.orm import Session

from monitor.db.models import Alert, Webhook, WebhookAttempt, WebhookDelivery
from monitor.db.models.enums import OPEN_ALERT_STATES, DeliveryStatus

# ---- alert episodes -------------------------------------------------------


def open_alerts(session: Session, task: str) -> dict[str, Alert]:
    """The task's open (pending or firing) episodes by rule name."""
    stmt = select(Alert).where(Alert.task == task, Alert.state.in_(OPEN_ALERT_STATES))
    return {row.rule: row for row in session.scalars(stmt)}


def insert_alert(session: Session, alert: Alert) -> Alert | None:
    """Insert a new open episode; None when another process opened one first."""
    try:
        with session.begin_nested():
            session.add(alert)
            session.flush()
    except IntegrityError:
        return None
    return alert


def delete_alert(session: Session, alert: Alert) -> None:
    session.delete(alert)
    session.flush()


def list_alerts(
    session: Session, state: str | None = None, task: str | None = None, limit: int = 500
) -> list[Alert]:
    stmt = select(Alert)
    if state is not None:
        stmt = stmt.where(Alert.state == state)
    if task is not None:
        stmt = stmt.where(Alert.task == task)
    stmt = stmt.order_by(Alert.started_at.desc(), Alert.id.desc()).limit(limit)
    return list(session.scalars(stmt))


# ---- webhook endpoints ----------------------------------------------------


def list_webhooks(session: Session) -> list[Webhook]:
    stmt = select(Webhook).order_by(Webhook.created_at.desc(), Webhook.id.desc())
    return list(session.scalars(stmt))


def get_webhook(session: Session, webhook_id: int) -> Webhook | None:
    return session.get(Webhook, webhook_id)


def add_webhook(session: Session, webhook: Webhook) -> Webhook:
    session.add(webhook)
    session.flush()
    return webhook


def delete_webhook(session: Session, webhook: Webhook) -> None:
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook.id))
    session.delete(webhook)
    session.flush()


def webhooks_by_source(session: Session, source: str) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.source == source)))


def enabled_webhooks(session: Session) -> list[Webhook]:
    return list(session.scalars(select(Webhook).where(Webhook.enabled.is_(True))))


# ---- deliveries and attempts ----------------------------------------------


def due_delivery_ids(session: Session, now: datetime, limit: int = 100) -> list[int]:
    """Pending deliveries whose time has come, on enabled endpoints, oldest first."""
    stmt = (
        select(WebhookDelivery.id)
        .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
        .where(
            WebhookDelivery.status == DeliveryStatus.pending.value,
            WebhookDelivery.next_attempt_at <= now,
            Webhook.enabled.is_(True),
        )
        .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
        .limit(limit)
    )
    return list(session.scalars(stmt))


def get_delivery(session: Session, delivery_id: int) -> WebhookDelivery | None:
    return session.get(WebhookDelivery, delivery_id)


def add_delivery(session: Session, delivery: WebhookDelivery) -> WebhookDelivery:
    session.add(delivery)
    session.flush()
    return delivery


def add_deliveries(session: Session, deliveries: list[WebhookDelivery]) -> list[WebhookDelivery]:
    session.add_all(deliveries)
    session.flush()
    return deliveries


def reload_delivery(session: Session, delivery: WebhookDelivery, hook: Webhook) -> bool:
    """Re-read both rows from the database; False when either was deleted meanwhile."""
    try:
        session.refresh(delivery)
        session.refresh(hook)
    except InvalidRequestError:
        return False
    return True


def add_attempt(session: Session, attempt: WebhookAttempt) -> None:
    session.add(attempt)
    session.flush()


def deliveries_for(session: Session, webhook_id: int, limit: int = 100) -> list[WebhookDelivery]:
    stmt = (
        select(WebhookDelivery)
        .where(WebhookDelivery.webhook_id == webhook_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .limit(limit)
    )
    return list(session.scalars(stmt))


def attempts_for(session: Session, delivery_ids: Sequence[int]) -> dict[int, list[WebhookAttempt]]:
    out: dict[int, list[WebhookAttempt]] = {i: [] for i in delivery_ids}
    if not delivery_ids:
        return out
    stmt = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(list(delivery_ids)))
        .order_by(WebhookAttempt.delivery_id, WebhookAttempt.attempt)
    )
    for row in session.scalars(stmt):
        out[row.delivery_id].append(row)
    return out
