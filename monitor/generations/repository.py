"""The only SQL about generation rows: batched inserts and the cached effective label.

`generations.label` caches "the mean over sources of each source's latest
feedback" so that evaluation scans one table. It is recomputed from the
feedback rows whenever feedback is written and whenever a generation row
arrives that already has feedback (feedback may come first). On Postgres the
generation rows are locked first so that concurrent writers for the same
generation serialise and the last one sees every committed feedback row.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from monitor.db.dialect import as_table, insert_ignoring_conflicts
from monitor.db.models import Feedback, Generation

_ID_CHUNK = 500  # stay well under SQLite's bound-parameter limit


def insert_generations(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Insert rows, skipping ids that already exist (spool replay is idempotent)."""
    return insert_ignoring_conflicts(session, Generation, rows)


def existing_ids(
    session: Session, ids: Iterable[uuid.UUID], *, lock: bool = False
) -> set[uuid.UUID]:
    """The subset of `ids` that has a generation row (locked for update when asked)."""
    found: set[uuid.UUID] = set()
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), _ID_CHUNK):
        stmt = select(Generation.id).where(Generation.id.in_(ordered[start : start + _ID_CHUNK]))
        if lock:
            stmt = stmt.order_by(Generation.id).with_for_update()
        found.update(session.scalars(stmt))
    return found


def ids_with_feedback(session: Session, ids: Iterable[uuid.UUID]) -> set[uuid.UUID]:
    found: set[uuid.UUID] = set()
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), _ID_CHUNK):
        chunk = ordered[start : start + _ID_CHUNK]
        stmt = select(Feedback.generation_id).where(Feedback.generation_id.in_(chunk)).distinct()
        found.update(session.scalars(stmt))
    return found


def effective_labels(
    session: Session, ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, tuple[float, datetime]]:
    """Per generation: mean of each source's latest feedback, and when that feedback came."""
    latest: dict[tuple[uuid.UUID, str], tuple[datetime, uuid.UUID, float]] = {}
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), _ID_CHUNK):
        chunk = ordered[start : start + _ID_CHUNK]
        stmt = select(
            Feedback.generation_id,
            Feedback.source,
            Feedback.created_at,
            Feedback.id,
            Feedback.label,
        ).where(Feedback.generation_id.in_(chunk))
        for gid, source, created_at, fid, label in session.execute(stmt):
            key = (gid, source)
            current = latest.get(key)
            # uuid7 ids are time-ordered: they break ties between equal timestamps.
            if current is None or (created_at, fid) > (current[0], current[1]):
                latest[key] = (created_at, fid, label)
    grouped: dict[uuid.UUID, list[tuple[datetime, float]]] = {}
    for (gid, _source), (created_at, _fid, label) in latest.items():
        grouped.setdefault(gid, []).append((created_at, label))
    return {
        gid: (sum(label for _, label in items) / len(items), max(at for at, _ in items))
        for gid, items in grouped.items()
    }


def relabel(session: Session, ids: Iterable[uuid.UUID]) -> int:
    """Recompute `label`/`labelled_at` of the given generations that exist; return how many."""
    present = existing_ids(session, ids, lock=True)
    if not present:
        return 0
    labels = effective_labels(session, present)
    if not labels:
        return 0
    table = as_table(Generation)
    stmt = (
        update(table)
        .where(table.c.id == bindparam("gid"))
        .values(label=bindparam("new_label"), labelled_at=bindparam("new_labelled_at"))
    )
    params = [
        {"gid": gid, "new_label": label, "new_labelled_at": at}
        for gid, (label, at) in sorted(labels.items())
    ]
    session.execute(stmt, params)
    return len(params)


def get_generation(session: Session, generation_id: uuid.UUID) -> Generation | None:
    return session.get(Generation, generation_id)


def feedback_for(session: Session, generation_id: uuid.UUID) -> list[Feedback]:
    stmt = (
        select(Feedback)
        .where(Feedback.generation_id == generation_id)
        .order_by(Feedback.created_at.desc(), Feedback.id.desc())
    )
    return list(session.scalars(stmt))
