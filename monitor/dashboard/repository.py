"""The dashboard's own SQL: aggregates for charts, paginated listings, sign-outs.

Pages must stay fast with a million generations, so nothing here loads
generation rows beyond one page: histories are averaged per time bucket in
SQL (a portable CASE over bucket edges, since SQLite and Postgres share no
date-truncation function), reliability bins and histograms are GROUP BYs
over the evaluation window (served by the (task, created_at) indexes), and
the generations list is keyset-paginated on (created_at, id), newest first.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Float, and_, case, cast, delete, func, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from monitor.db.dialect import insert_ignoring_conflicts
from monitor.db.models import (
    Alert,
    Feedback,
    Generation,
    MetricSnapshot,
    RecalibrationJob,
    RevokedDashboardSession,
)
from monitor.db.models.enums import OPEN_ALERT_STATES
from monitor.db.types import UTCDateTime


@dataclass(frozen=True)
class HistoryPoint:
    at: datetime
    ece: float | None
    accuracy: float | None
    n: int


@dataclass(frozen=True)
class BinSums:
    count: int
    confidence_sum: float
    label_sum: float


@dataclass(frozen=True)
class GenerationRow:
    id: uuid.UUID
    created_at: datetime
    confidence: float | None
    raw_confidence: float | None
    calibration_version: int | None
    token_count: int
    finish_reason: str | None
    label: float | None
    feedback_count: int


def bucket_edges(start: datetime, end: datetime, buckets: int) -> list[datetime]:
    step = (end - start) / buckets
    return [start + step * i for i in range(buckets + 1)]


def time_bucket(column: Any, edges: Sequence[datetime]) -> ColumnElement[Any]:
    """Index of the bucket (edges[i], edges[i+1]] holding `column`, in portable SQL."""
    whens = [(column <= literal(edge, UTCDateTime), i) for i, edge in enumerate(edges[1:-1])]
    return case(*whens, else_=len(edges) - 2)


def metric_history(
    session: Session, tasks: Sequence[str], start: datetime, end: datetime, buckets: int
) -> dict[str, list[HistoryPoint | None]]:
    """Per task, mean ECE and accuracy of its snapshots per time bucket (None: no snapshot)."""
    edges = bucket_edges(start, end, buckets)
    s = MetricSnapshot
    b = time_bucket(s.evaluated_at, edges).label("b")
    stmt = (
        select(s.task, b, func.avg(s.ece), func.avg(s.accuracy), func.max(s.n))
        .where(s.task.in_(list(tasks)), s.evaluated_at > start, s.evaluated_at <= end)
        .group_by(s.task, b)
    )
    out: dict[str, list[HistoryPoint | None]] = {t: [None] * buckets for t in tasks}
    for task, index, ece, accuracy, n in session.execute(stmt):
        i = int(index)
        mid = edges[i] + (edges[i + 1] - edges[i]) / 2
        out[task][i] = HistoryPoint(
            mid,
            None if ece is None else float(ece),
            None if accuracy is None else float(accuracy),
            int(n or 0),
        )
    return out


def open_alerts_by_task(session: Session) -> dict[str, list[Alert]]:
    stmt = select(Alert).where(Alert.state.in_(OPEN_ALERT_STATES)).order_by(Alert.started_at)
    out: dict[str, list[Alert]] = {}
    for alert in session.scalars(stmt):
        out.setdefault(alert.task, []).append(alert)
    return out


def latest_job_per_task(session: Session) -> dict[str, RecalibrationJob]:
    newest = (
        select(func.max(RecalibrationJob.id).label("id")).group_by(RecalibrationJob.task).subquery()
    )
    stmt = select(RecalibrationJob).join(newest, RecalibrationJob.id == newest.c.id)
    return {job.task: job for job in session.scalars(stmt)}


def bin_index(conf: ColumnElement[Any], n_bins: int) -> ColumnElement[Any]:
    """Bin b holds (b/M, (b+1)/M], 0.0 in the first: ceil(c*M)-1 corrected at the edges.

    The correction compares c with the edge doubles (k-1)/M and k/M, because
    c*M is not exact in floating point (0.3 * 10 is 3.0000000000000004).
    """
    m = literal(float(n_bins), Float)
    k = func.ceil(conf * m)
    raw = k - 1 - case((conf <= (k - 1) / m, 1), else_=0) + case((conf > k / m, 1), else_=0)
    return case((raw < 0, 0), (raw > n_bins - 1, n_bins - 1), else_=raw)


@dataclass(frozen=True)
class WindowDistribution:
    """The raw model's reliability bins (labelled rows) and confidence histograms (all rows)."""

    raw_bins: list[BinSums]
    served_counts: list[int]
    raw_counts: list[int]


def _bucket(column: Any, buckets: int) -> ColumnElement[Any]:
    c = cast(column, Float)
    return case(
        (c.is_(None), -1),
        (c >= 1.0, buckets - 1),
        (c <= 0.0, 0),
        else_=func.floor(c * float(buckets)),
    )


def window_distribution(
    session: Session, task: str, start: datetime, end: datetime, n_bins: int, buckets: int
) -> WindowDistribution:
    """One scan of the window (start, end]: raw reliability bins and both histograms.

    One GROUP BY instead of three: on a busy task the window holds ~100k rows
    and each scan of it costs tens of milliseconds.
    """
    g = Generation
    raw = cast(g.raw_confidence, Float)
    labelled = and_(g.label.is_not(None), g.raw_confidence.is_not(None))
    rb = case((labelled, bin_index(raw, n_bins)), else_=-1).label("rb")
    sb, hb = _bucket(g.confidence, buckets).label("sb"), _bucket(raw, buckets).label("hb")
    stmt = (
        select(
            rb,
            sb,
            hb,
            func.count(),
            func.sum(case((labelled, raw), else_=None)),
            func.sum(case((labelled, g.label), else_=None)),
        )
        .where(g.task == task, g.created_at > start, g.created_at <= end)
        .group_by(rb, sb, hb)
    )
    sums = [[0, 0.0, 0.0] for _ in range(n_bins)]
    served_counts, raw_counts = [0] * buckets, [0] * buckets
    for b, s_bucket, r_bucket, n, conf_sum, label_sum in session.execute(stmt):
        if int(b) >= 0:
            acc = sums[int(b)]
            acc[0] += int(n)
            acc[1] += float(conf_sum or 0.0)
            acc[2] += float(label_sum or 0.0)
        if int(s_bucket) >= 0:
            served_counts[min(int(s_bucket), buckets - 1)] += int(n)
        if int(r_bucket) >= 0:
            raw_counts[min(int(r_bucket), buckets - 1)] += int(n)
    raw_bins = [BinSums(int(c), float(cs), float(ls)) for c, cs, ls in sums]
    return WindowDistribution(raw_bins, served_counts, raw_counts)


def generations_page(
    session: Session,
    task: str,
    before: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[GenerationRow]:
    """One page of a task's generations, newest first, strictly older than `before`."""
    g = Generation
    stmt = select(
        g.id,
        g.created_at,
        g.confidence,
        g.raw_confidence,
        g.calibration_version,
        g.token_count,
        g.finish_reason,
        g.label,
    ).where(g.task == task)
    if before is not None:
        at, gen_id = before
        # `created_at <= at` bounds the index scan; the OR breaks ties on id.
        stmt = stmt.where(
            g.created_at <= at, or_(g.created_at < at, and_(g.created_at == at, g.id < gen_id))
        )
    stmt = stmt.order_by(g.created_at.desc(), g.id.desc()).limit(limit)
    rows = list(session.execute(stmt))
    ids = [row[0] for row in rows]
    counts: dict[uuid.UUID, int] = {}
    if ids:
        fb = (
            select(Feedback.generation_id, func.count())
            .where(Feedback.generation_id.in_(ids))
            .group_by(Feedback.generation_id)
        )
        counts = {gid: int(n) for gid, n in session.execute(fb)}
    return [
        GenerationRow(
            id=r[0],
            created_at=r[1],
            confidence=r[2],
            raw_confidence=r[3],
            calibration_version=r[4],
            token_count=int(r[5] or 0),
            finish_reason=r[6],
            label=r[7],
            feedback_count=counts.get(r[0], 0),
        )
        for r in rows
    ]


def alerts_page(
    session: Session, state: str | None, offset: int, limit: int
) -> tuple[list[Alert], int]:
    where = [Alert.state == state] if state else []
    total = int(session.scalar(select(func.count()).select_from(Alert).where(*where)) or 0)
    stmt = (
        select(Alert)
        .where(*where)
        .order_by(Alert.started_at.desc(), Alert.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(session.scalars(stmt)), total


def jobs_page(
    session: Session, status: str | None, task: str | None, offset: int, limit: int
) -> tuple[list[RecalibrationJob], int]:
    j = RecalibrationJob
    where = []
    if status:
        where.append(j.status == status)
    if task:
        where.append(j.task == task)
    total = int(session.scalar(select(func.count()).select_from(j).where(*where)) or 0)
    stmt = (
        select(j)
        .where(*where)
        .order_by(j.created_at.desc(), j.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(session.scalars(stmt)), total


# ------------------------------------------------------------------ sign-outs
def is_revoked(db: Session, session_id: str) -> bool:
    return db.get(RevokedDashboardSession, session_id) is not None


def forget_expired_revocations(db: Session, now: datetime) -> None:
    """Sign-outs whose cookies have expired anyway need not be remembered."""
    db.execute(delete(RevokedDashboardSession).where(RevokedDashboardSession.expires_at <= now))


def add_revocation(db: Session, session_id: str, expires_at: datetime) -> None:
    row = {"session_id": session_id, "expires_at": expires_at}
    insert_ignoring_conflicts(db, RevokedDashboardSession, [row])
