"""The only SQL about calibration versions, the job listings and the rows a fit reads.

Queries select the few columns each caller needs: a fit reads packed logprob
blobs for thousands of generations and must not hydrate full ORM rows.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from monitor.db import notify
from monitor.db.models import Calibration, Generation, RecalibrationJob
from monitor.db.models.enums import CalibrationStatus

NOTIFY_CHANNEL = "thermostat_calibration"
LIST_LIMIT = 200


@dataclass(frozen=True, slots=True)
class LabelledRows:
    """Column arrays of a task's labelled generations in a window (oldest first)."""

    blobs: list[bytes]
    spans: list[tuple[int, int] | None]
    labels: list[float]
    window_start: datetime | None
    window_end: datetime | None

    def __len__(self) -> int:
        return len(self.labels)


# ------------------------------------------------------------------ calibrations
def get_calibration(session: Session, calibration_id: int) -> Calibration | None:
    return session.get(Calibration, calibration_id)


def active_calibration(session: Session, task: str) -> Calibration | None:
    stmt = select(Calibration).where(
        Calibration.task == task, Calibration.status == CalibrationStatus.active.value
    )
    return session.scalars(stmt).first()


def list_calibrations(
    session: Session, task: str | None = None, limit: int = LIST_LIMIT
) -> list[Calibration]:
    stmt = select(Calibration).order_by(Calibration.created_at.desc(), Calibration.id.desc())
    if task is not None:
        stmt = stmt.where(Calibration.task == task)
    return list(session.scalars(stmt.limit(limit)))


def add_calibration(session: Session, calibration: Calibration) -> None:
    """Insert a new version now (flush), so its id can be referenced in the same unit."""
    session.add(calibration)
    session.flush()


def next_version(session: Session, task: str) -> int:
    current = session.scalar(select(func.max(Calibration.version)).where(Calibration.task == task))
    return int(current or 0) + 1


def retire_active(session: Session, task: str, keep_id: int, now: datetime) -> list[int]:
    """Retire the task's active version (other than `keep_id`); returns the retired ids."""
    stmt = (
        update(Calibration)
        .where(
            Calibration.task == task,
            Calibration.status == CalibrationStatus.active.value,
            Calibration.id != keep_id,
        )
        .values(status=CalibrationStatus.retired.value, retired_at=now)
        .returning(Calibration.id)
        .execution_options(synchronize_session="fetch")
    )
    return [int(row) for row in session.scalars(stmt)]


def notify_activation(session: Session, task: str) -> None:
    """Postgres delivers NOTIFY at commit, so listeners never see an uncommitted swap."""
    notify.notify(session, NOTIFY_CHANNEL, task)


def activation_signature(session: Session) -> tuple[Any, ...]:
    """A cheap fingerprint of the active set, for polling (SQLite has no LISTEN)."""
    stmt = select(
        func.count(Calibration.id), func.max(Calibration.activated_at), func.sum(Calibration.id)
    ).where(Calibration.status == CalibrationStatus.active.value)
    row = session.execute(stmt).one()
    return tuple(row)


def active_calibrations(session: Session) -> list[Calibration]:
    """At most one per task (a partial unique index): a short list."""
    stmt = select(Calibration).where(Calibration.status == CalibrationStatus.active.value)
    return list(session.scalars(stmt))


# ------------------------------------------------------------------ generations
def labelled_window(session: Session, task: str, since: datetime, until: datetime) -> LabelledRows:
    stmt = (
        select(
            Generation.logprobs,
            Generation.answer_start,
            Generation.answer_end,
            Generation.label,
            Generation.created_at,
        )
        .where(
            Generation.task == task,
            Generation.label.is_not(None),
            Generation.logprobs.is_not(None),
            Generation.created_at >= since,
            Generation.created_at <= until,
        )
        .order_by(Generation.created_at, Generation.id)
    )
    blobs: list[bytes] = []
    spans: list[tuple[int, int] | None] = []
    labels: list[float] = []
    first: datetime | None = None
    last: datetime | None = None
    for blob, start, end, label, created in session.execute(stmt):
        # both columns are filtered NOT NULL above
        blobs.append(bytes(cast(bytes, blob)))
        spans.append((int(start), int(end)) if start is not None and end is not None else None)
        labels.append(float(cast(float, label)))
        first = first or created
        last = created
    return LabelledRows(blobs, spans, labels, first, last)


def generations_to_rescore(
    session: Session,
    task: str,
    version: int,
    since: datetime,
    after: uuid.UUID | None,
    limit: int,
) -> list[tuple[uuid.UUID, bytes, int | None, int | None]]:
    """One keyset page of generations whose confidence is not yet known under `version`."""
    stmt = (
        select(Generation.id, Generation.logprobs, Generation.answer_start, Generation.answer_end)
        .where(
            Generation.task == task,
            Generation.created_at >= since,
            Generation.logprobs.is_not(None),
            (Generation.calibration_version.is_(None))
            | (Generation.calibration_version != version),
            (Generation.rescored_version.is_(None)) | (Generation.rescored_version != version),
        )
        .order_by(Generation.id)
        .limit(limit)
    )
    if after is not None:
        stmt = stmt.where(Generation.id > after)
    return [(r[0], bytes(cast(bytes, r[1])), r[2], r[3]) for r in session.execute(stmt)]


def write_rescored(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    """Bulk UPDATE by primary key: rows of {id, rescored_confidence, rescored_version}."""
    if rows:
        session.execute(update(Generation), list(rows))


def mark_rescored(session: Session, calibration_id: int, now: datetime) -> None:
    session.execute(
        update(Calibration)
        .where(
            Calibration.id == calibration_id, Calibration.status == CalibrationStatus.active.value
        )
        .values(rescored_at=now)
        .execution_options(synchronize_session=False)
    )


# ------------------------------------------------------------------ job listings
def get_job(session: Session, job_id: int) -> RecalibrationJob | None:
    return session.get(RecalibrationJob, job_id)


def list_jobs(
    session: Session, task: str | None = None, status: str | None = None, limit: int = LIST_LIMIT
) -> list[RecalibrationJob]:
    stmt = select(RecalibrationJob).order_by(
        RecalibrationJob.created_at.desc(), RecalibrationJob.id.desc()
    )
    if task is not None:
        stmt = stmt.where(RecalibrationJob.task == task)
    if status is not None:
        stmt = stmt.where(RecalibrationJob.status == status)
    return list(session.scalars(stmt.limit(limit)))
