"""The only SQL of the scheduler: retention deletes, in bounded batches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from monitor.db.models import Feedback, Generation, MetricSnapshot


def purge_generations_batch(session: Session, task: str, before: datetime, batch: int) -> int:
    """Delete up to `batch` of the task's generations created before `before`,
    and the feedback on them (its free-text comments must not outlive them).

    Batches keep each transaction (and the locks and WAL it holds) small
    while the proxy keeps writing. The batch's ids are read once, so both
    deletes hit the same rows (a LIMIT subquery run twice need not) and each
    is a primary-key / `ix_feedback_generation_id_source` lookup.
    """
    ids = list(
        session.scalars(
            select(Generation.id)
            .where(Generation.task == task, Generation.created_at < before)
            .limit(batch)
        )
    )
    if not ids:
        return 0
    session.execute(delete(Feedback).where(Feedback.generation_id.in_(ids)))
    result = session.execute(delete(Generation).where(Generation.id.in_(ids)))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_snapshots(session: Session, task: str, before: datetime) -> int:
    stmt = delete(MetricSnapshot).where(
        MetricSnapshot.task == task, MetricSnapshot.evaluated_at < before
    )
    return int(getattr(session.execute(stmt), "rowcount", 0) or 0)
