"""The only SQL about feedback rows (the label cache lives with the generations)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.db.dialect import insert_ignoring_conflicts
from monitor.db.models import Feedback
from monitor.proxy.records import FeedbackRecord


def by_idempotency_key(session: Session, key: str) -> Feedback | None:
    return session.scalars(select(Feedback).where(Feedback.idempotency_key == key)).first()


def insert(session: Session, record: FeedbackRecord) -> bool:
    """Insert one row; False when its idempotency key already exists.

    Checked by reading the id back: drivers disagree on the row count of an
    ON CONFLICT DO NOTHING that skipped.
    """
    insert_ignoring_conflicts(session, Feedback, [record.to_row()])
    found = session.scalar(select(Feedback.id).where(Feedback.id == record.id))
    return found is not None
