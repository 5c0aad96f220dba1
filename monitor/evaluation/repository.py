"""The only SQL of evaluation: per-bin and per-window aggregates, snapshots.

A window can hold a million labelled generations, so nothing here loads rows:
the reliability bins come from one GROUP BY on a bin index computed in SQL,
and every label-free signal from one GROUP BY over (window, histogram bucket).

Bin index in SQL, exactly as `monitor.calibration.metrics` bins: bin b holds
(b/M, (b+1)/M]. `ceil(c * M) - 1` alone is wrong at edges (0.3 * 10 is
3.0000000000000004 in floating point), so k = ceil(c * M) is corrected by
comparing c with the edge doubles (k-1)/M and k/M, which both dialects compute
as correctly rounded IEEE divisions, the same doubles numpy's edges are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Float, and_, case, cast, func, literal, or_, select
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from monitor.calibration.metrics import NLL_EPS
from monitor.db.models import (
    Alert,
    Calibration,
    Generation,
    MetricSnapshot,
    RecalibrationJob,
    Task,
)
from monitor.db.models.enums import CalibrationStatus
from monitor.evaluation.signals import HIST_BUCKETS, BinStats, FloatArray


def active_calibration(session: Session, task: str) -> Calibration | None:
    stmt = select(Calibration).where(
        Calibration.task == task, Calibration.status == CalibrationStatus.active.value
    )
    return session.scalars(stmt).first()


def active_calibrations(session: Session) -> dict[str, Calibration]:
    stmt = select(Calibration).where(Calibration.status == CalibrationStatus.active.value)
    return {row.task: row for row in session.scalars(stmt)}


def confidence_under(version: int | None) -> ColumnElement[Any]:
    """A generation's confidence under `version`; NULL when it has none (excluded).

    Served under the version: the served confidence. Re-scored for it after
    activation: the re-scored one. No active version: raw traffic (NULL version).
    """
    g = Generation
    if version is None:
        return case((g.calibration_version.is_(None), g.confidence), else_=None)
    return case(
        (g.calibration_version == version, g.confidence),
        (g.rescored_version == version, g.rescored_confidence),
        else_=None,
    )


def calibration_bin_stats(
    session: Session,
    task: str,
    version: int | None,
    start: datetime,
    end: datetime,
    n_bins: int,
) -> list[BinStats]:
    """Per-bin sums of labelled generations in (start, end] under `version`."""
    g = Generation
    where = [g.task == task, g.label.is_not(None), g.created_at > start, g.created_at <= end]
    if version is None:
        where.append(g.calibration_version.is_(None))
    else:
        where.append(or_(g.calibration_version == version, g.rescored_version == version))
    # Without an active version the WHERE clause already keeps raw rows only,
    # so the plain column is used (a CASE per row costs at a million rows).
    conf = g.confidence if version is None else confidence_under(version)
    m = literal(float(n_bins), Float)
    rows = select(
        cast(conf, Float).label("c"), g.label.label("y"), func.ceil(conf * m).label("k")
    ).where(*where, conf.is_not(None))
    sub = rows.subquery()
    c, y, k = sub.c.c, sub.c.y, sub.c.k
    # Group by k and the two edge corrections; the bin index is finished in Python.
    below = c <= (k - 1) / m
    above = c > k / m
    clipped = case((c < NLL_EPS, NLL_EPS), (c > 1.0 - NLL_EPS, 1.0 - NLL_EPS), else_=c)
    nll = -(y * func.ln(clipped) + (1.0 - y) * func.ln(1.0 - clipped))
    stmt = select(
        k,
        below,
        above,
        func.count(),
        func.sum(c),
        func.sum(c * c),
        func.sum(y),
        func.sum((c - y) * (c - y)),
        func.sum(nll),
    ).group_by(k, below, above)
    sums = np.zeros((n_bins, 6))
    for kk, low, high, *values in session.execute(stmt):
        b = min(max(int(kk) - 1 - int(bool(low)) + int(bool(high)), 0), n_bins - 1)
        sums[b] += np.array([float(v) for v in values])
    return [BinStats(int(row[0]), *(float(v) for v in row[1:])) for row in sums]


@dataclass
class WindowStats:
    """Label-free aggregates of one window (all generations, labelled or not)."""

    generations: int = 0
    labelled: int = 0
    label_sum: float = 0.0
    token_sum: float = 0.0
    truncated: int = 0
    repetition_sum: float = 0.0
    repetition_n: int = 0
    margin_sum: float = 0.0
    margin_n: int = 0
    histogram: FloatArray = field(default_factory=lambda: np.zeros(HIST_BUCKETS))


def window_stats(
    session: Session, task: str, reference_start: datetime, start: datetime, end: datetime
) -> tuple[WindowStats, WindowStats]:
    """(reference, current) aggregates over (reference_start, start] and (start, end].

    One scan grouped by (window, bucket of the model's raw confidence). Raw,
    not calibrated: a hot-swap must not look like a distribution shift.
    """
    g = Generation
    current = case((g.created_at > start, 1), else_=0)
    conf = func.coalesce(g.raw_confidence, g.confidence)
    # NULL (an answer without logprobs) gets no bucket. The CASE matters on SQLite,
    # where SQLAlchemy's floor() is Python's math.floor and raises on NULL.
    bucket = case(
        (conf.is_(None), None), else_=func.floor(conf * float(HIST_BUCKETS))
    )  # 1.0 lands one past the end; clamped to the last bucket in Python
    truncated = case((g.finish_reason == "length", 1), else_=0)
    stmt = (
        select(
            current.label("w"),
            bucket.label("k"),
            func.count(),
            func.count(g.label),
            func.sum(g.label),
            func.sum(g.token_count),
            func.sum(truncated),
            func.sum(g.repetition),
            func.count(g.repetition),
            func.sum(g.top_margin),
            func.count(g.top_margin),
        )
        .where(g.task == task, g.created_at > reference_start, g.created_at <= end)
        .group_by(current, bucket)
    )
    ref, cur = WindowStats(), WindowStats()
    for w, k, n, nl, ls, toks, trunc, rep, rep_n, mar, mar_n in session.execute(stmt):
        target = cur if int(w) == 1 else ref
        target.generations += int(n)
        target.labelled += int(nl)
        target.label_sum += float(ls or 0.0)
        target.token_sum += float(toks or 0.0)
        target.truncated += int(trunc or 0)
        target.repetition_sum += float(rep or 0.0)
        target.repetition_n += int(rep_n)
        target.margin_sum += float(mar or 0.0)
        target.margin_n += int(mar_n)
        if k is not None:
            target.histogram[min(max(int(k), 0), HIST_BUCKETS - 1)] += int(n)
    return ref, cur


def add_snapshot(session: Session, **values: Any) -> MetricSnapshot:
    snapshot = MetricSnapshot(**values)
    session.add(snapshot)
    session.flush()
    return snapshot


def mark_task_evaluated(session: Session, task: str, status: str, when: datetime) -> None:
    row = session.get(Task, task)
    if row is not None:
        row.status = status
        row.last_evaluated_at = when


def latest_snapshot(session: Session, task: str) -> MetricSnapshot | None:
    stmt = (
        select(MetricSnapshot)
        .where(MetricSnapshot.task == task)
        .order_by(MetricSnapshot.evaluated_at.desc(), MetricSnapshot.id.desc())
        .limit(1)
    )
    return session.scalars(stmt).first()


def latest_snapshots(session: Session) -> dict[str, MetricSnapshot]:
    newest = (
        select(MetricSnapshot.task, func.max(MetricSnapshot.id).label("id"))
        .group_by(MetricSnapshot.task)
        .subquery()
    )
    stmt = select(MetricSnapshot).join(newest, MetricSnapshot.id == newest.c.id)
    return {row.task: row for row in session.scalars(stmt)}


def snapshots(
    session: Session, task: str, since: datetime | None = None, limit: int = 1000
) -> list[MetricSnapshot]:
    stmt = select(MetricSnapshot).where(MetricSnapshot.task == task)
    if since is not None:
        stmt = stmt.where(MetricSnapshot.evaluated_at >= since)
    stmt = stmt.order_by(MetricSnapshot.evaluated_at.desc(), MetricSnapshot.id.desc()).limit(limit)
    return list(session.scalars(stmt))


def threshold_job_since(session: Session, task: str, since: datetime) -> bool:
    """Whether any recalibration job was opened for `task` at or after `since`."""
    stmt = select(RecalibrationJob.id).where(
        and_(RecalibrationJob.task == task, RecalibrationJob.created_at >= since)
    )
    return session.execute(stmt.limit(1)).first() is not None


def get_alert(session: Session, alert_id: int | None) -> Alert | None:
    return session.get(Alert, alert_id)
