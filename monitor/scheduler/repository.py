"""The only SQL of the scheduler: retention deletes, in bounded batches."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from monitor.db.models import Generation, MetricSnapshot


def purge_generations_batch(session: Session, task: str, before: datetime, batch: int) -> int:
    """Delete up to `batch` of the task's generations created before `before`.

    Batches keep each transaction (and the locks and WAL it holds) small
    while the proxy keeps writing.
    """
    ids = (
        select(Generation.id)
        .where(Generation.task == task, Generation.created_at < before)
        .limit(batch)
        .scalar_subquery()
    )
    result = session.execute(delete(Generation).where(Generation.id.in_(ids)))
    return int(getattr(result, "rowcount", 0) or 0)


def purge_snapshots(session: Session, task: str, before: datetime) -> int:
    stmt = delete(MetricSnapshot).where(
        MetricSnapshot.task == task, MetricSnapshot.evaluated_at < before
    )
    return int(getattr(session.execute(stmt), "rowcount", 0) or 0)
