"""Shared helpers for the worker, calibration and hot-swap tests.

Generations are inserted directly with packed logprobs from the calibration
core's synthetic generator: labels are drawn from the confidence at a planted
temperature (2.5 by default), so the raw model (T = 1) is overconfident and
the best temperature in expectation is the planted one.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration import pack_token_logprobs, sequence_confidences
from monitor.calibration.synthetic import synthetic_token_batch
from monitor.db.models import (
    Calibration,
    Generation,
    RecalibrationJob,
    Webhook,
    WebhookDelivery,
)
from monitor.db.models.enums import JobTrigger
from monitor.db.session import session_scope
from monitor.db.types import utcnow, uuid7
from monitor.jobs.queue import enqueue_recalibration
from monitor.tasks.repository import ensure_tasks

TRUE_T = 2.5
TASK = "qa"


def seed_generations(
    sessions: sessionmaker[Session],
    n: int,
    *,
    task: str = TASK,
    true_temperature: float = TRUE_T,
    seed: int = 0,
    n_tokens: int = 8,
    served_version: int | None = None,
    served_temperature: float = 1.0,
    labelled: bool = True,
) -> list[Any]:
    """Insert `n` generations of `task`; returns their ids (oldest first)."""
    batch, labels = synthetic_token_batch(
        n, n_tokens, k=5, true_temperature=true_temperature, seed=seed
    )
    raw = sequence_confidences(batch, 1.0)
    served = sequence_confidences(batch, served_temperature)
    now = utcnow()
    rows = []
    for g in range(n):
        lo, hi = int(batch.offsets[g]), int(batch.offsets[g + 1])
        blob = pack_token_logprobs(batch.chosen[lo:hi], batch.top[lo:hi], batch.chosen_rank[lo:hi])
        rows.append(
            {
                "id": uuid7(),
                "task": task,
                "created_at": now - timedelta(seconds=n - g),
                "endpoint": "chat",
                "token_count": hi - lo,
                "top_k": 5,
                "logprobs": blob,
                "raw_confidence": float(raw[g]),
                "confidence": float(served[g]),
                "temperature": served_temperature,
                "calibration_version": served_version,
                "label": float(labels[g]) if labelled else None,
                "labelled_at": now if labelled else None,
            }
        )
    with session_scope(sessions) as session:
        ensure_tasks(session, [task])
        session.execute(insert(Generation), rows)
    return [row["id"] for row in rows]


def enqueue(
    sessions: sessionmaker[Session],
    task: str = TASK,
    *,
    max_attempts: int = 3,
    due_in_s: float = 0,
) -> int:
    """A manual recalibration job for `task`, due now or in `due_in_s`; its id."""
    with session_scope(sessions) as session:
        job, _ = enqueue_recalibration(session, task, JobTrigger.manual, max_attempts=max_attempts)
        if due_in_s:
            session.execute(
                update(RecalibrationJob)
                .where(RecalibrationJob.id == job.id)
                .values(not_before=utcnow() + timedelta(seconds=due_in_s))
            )
        return job.id


def add_calibration(
    sessions: sessionmaker[Session],
    *,
    task: str = TASK,
    version: int,
    temperature: float,
    status: str = "retired",
) -> int:
    with session_scope(sessions) as session:
        ensure_tasks(session, [task])
        row = Calibration(
            task=task,
            version=version,
            method="temperature",
            temperature=temperature,
            status=status,
            source="test",
            created_at=utcnow() + timedelta(milliseconds=version),
            activated_at=utcnow() if status == "active" else None,
            rescored_at=utcnow() if status == "active" else None,
        )
        session.add(row)
        session.flush()
        return row.id


def subscribe_all(sessions: sessionmaker[Session]) -> None:
    """A webhook subscribed to every event, so emitted events become delivery rows."""
    from monitor.config import EVENT_TYPES

    with session_scope(sessions) as session:
        session.add(Webhook(url="http://127.0.0.1:9/hook", secret="s", events=list(EVENT_TYPES)))


def events(sessions: sessionmaker[Session]) -> list[str]:
    with session_scope(sessions) as session:
        stmt = select(WebhookDelivery.event_type).order_by(WebhookDelivery.created_at)
        return list(session.scalars(stmt))


def calibrations(sessions: sessionmaker[Session], task: str = TASK) -> list[Calibration]:
    with session_scope(sessions) as session:
        stmt = select(Calibration).where(Calibration.task == task).order_by(Calibration.version)
        return list(session.scalars(stmt))


def active_versions(sessions: sessionmaker[Session], task: str = TASK) -> list[int]:
    return [c.version for c in calibrations(sessions, task) if c.status == "active"]


def confidences(sessions: sessionmaker[Session], ids: list[Any]) -> dict[Any, Generation]:
    with session_scope(sessions) as session:
        rows = session.scalars(select(Generation).where(Generation.id.in_(ids)))
        return {row.id: row for row in rows}


def mean(values: list[float]) -> float:
    return float(np.mean(values))
