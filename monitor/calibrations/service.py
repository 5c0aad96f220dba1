"""Activating calibration versions (forward or rollback) and re-scoring history.

Activation is one transaction: the previous active version is retired and
flushed first (the partial unique index allows one active row per task at any
instant), then the new one becomes active, a Postgres NOTIFY is queued (it is
delivered at commit, so no listener reloads before the change is visible), and
`calibration.activated` is written to the webhook outbox. Rolling back is just
activating an older version. The caller (request or job) commits.

Re-scoring: generations served under another version carry confidences from
that version's temperature. After an activation the worker recomputes them
under the new temperature from their stored logprobs, in keyset pages of
`RESCORE_BATCH` rows, one short transaction each, and finally stamps the
calibration's `rescored_at`. Until that stamp is set, evaluation must only
count generations whose confidence is known under the active version V:
`confidence` where `calibration_version == V`, `rescored_confidence` where
`rescored_version == V`, and nothing else. Activation clears `rescored_at`, so
rolling back to an older version re-scores again.
"""

from __future__ import annotations

import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from monitor.alerting.events import emit_event
from monitor.calibrations import repository
from monitor.config import TaskConfig
from monitor.db.models import Calibration
from monitor.db.models.enums import CalibrationStatus
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.errors import ConflictError, NotFoundError

log = logging.getLogger(__name__)

RESCORE_SETTLE = timedelta(seconds=30)

RESCORE_BATCH = 5_000


@dataclass(frozen=True)
class Activation:
    calibration: Calibration
    previous_ids: list[int]
    changed: bool


def require_calibration(session: Session, calibration_id: int) -> Calibration:
    calibration = repository.get_calibration(session, calibration_id)
    if calibration is None:
        raise NotFoundError(f"calibration {calibration_id} not found")
    return calibration


def activate(session: Session, calibration_id: int, *, now: datetime | None = None) -> Activation:
    """Make `calibration_id` the task's active version; the caller commits.

    Activating the version that is already active changes nothing and emits
    nothing. A version the validation gate rejected cannot be activated.
    """
    calibration = require_calibration(session, calibration_id)
    if calibration.status == CalibrationStatus.active.value:
        return Activation(calibration, [], changed=False)
    if calibration.status == CalibrationStatus.rejected.value:
        raise ConflictError(
            f"calibration {calibration_id} was rejected by the validation gate "
            f"({calibration.reason or 'no reason recorded'}) and cannot be activated"
        )
    now = now or utcnow()
    retired = repository.retire_active(session, calibration.task, calibration.id, now)
    session.flush()
    calibration.status = CalibrationStatus.active.value
    calibration.activated_at = now
    calibration.retired_at = None
    calibration.rescored_at = None
    session.flush()
    repository.notify_activation(session, calibration.task)
    emit_event(
        session,
        "calibration.activated",
        {
            "task": calibration.task,
            "calibration_id": calibration.id,
            "version": calibration.version,
            "method": calibration.method,
            "temperature": calibration.temperature,
            "previous_calibration_ids": retired,
            "activated_at": now.isoformat(),
        },
    )
    log.info(
        "activated calibration %s (task %s, version %s, T=%.4f)",
        calibration.id,
        calibration.task,
        calibration.version,
        calibration.temperature,
    )
    return Activation(calibration, retired, changed=True)


def rescore_confidences(
    blobs: list[bytes],
    spans: list[tuple[int, int] | None],
    temperature: float,
    aggregator: str,
) -> np.ndarray:
    """Vectorised confidences of many generations at `temperature` (NaN: no tokens)."""
    from monitor.calibration import TokenBatch, sequence_confidences

    batch = TokenBatch.from_blobs(blobs, spans)
    return np.asarray(sequence_confidences(batch, temperature, aggregator), dtype=np.float64)


def _rescore_page(
    rows: list[tuple[uuid.UUID, bytes, int | None, int | None]],
    temperature: float,
    version: int,
    aggregator: str,
) -> list[dict[str, Any]]:
    from monitor.calibration import unpack_token_logprobs

    spans = [(s, e) if s is not None and e is not None else None for _, _, s, e in rows]
    by_k: dict[int, list[int]] = {}
    out: list[dict[str, Any]] = []
    for i, (gen_id, blob, _, _) in enumerate(rows):
        try:
            k = int(unpack_token_logprobs(blob)[1].shape[1])
        except ValueError:  # a corrupt blob must not stall re-scoring forever
            out.append({"id": gen_id, "rescored_confidence": None, "rescored_version": version})
            continue
        by_k.setdefault(k, []).append(i)
    for members in by_k.values():  # K can differ across a config change
        conf = rescore_confidences(
            [rows[i][1] for i in members], [spans[i] for i in members], temperature, aggregator
        )
        for i, value in zip(members, conf, strict=True):
            finite = bool(np.isfinite(value))
            out.append(
                {
                    "id": rows[i][0],
                    "rescored_confidence": float(value) if finite else None,
                    "rescored_version": version,
                }
            )
    return out


def rescore(
    sessions: sessionmaker[Session],
    calibration_id: int,
    config: TaskConfig,
    *,
    batch_size: int = RESCORE_BATCH,
    now: datetime | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Re-score the task's window under `calibration_id`; returns the rows written.

    Stops early (without stamping `rescored_at`) if the version stops being
    active meanwhile: the newer activation re-scores for itself. Also between
    pages once `stop` is set (the worker is shutting down): `pending_rescores`
    finds the version again, and pages already written are not redone.
    """
    with session_scope(sessions) as session:
        calibration = require_calibration(session, calibration_id)
        if calibration.status != CalibrationStatus.active.value:
            return 0
        task, version, temperature = calibration.task, calibration.version, calibration.temperature
    since = (now or utcnow()) - config.window
    written = 0
    after: uuid.UUID | None = None
    while True:
        if stop is not None and stop.is_set():
            return written
        # One short transaction per page, committed here: a page is the unit of
        # progress, and a long transaction would hold SQLite's write lock.
        with session_scope(sessions) as session:
            current = repository.active_calibration(session, task)
            if current is None or current.id != calibration_id:
                log.info("calibration %s superseded while re-scoring; stopping", calibration_id)
                return written
            rows = repository.generations_to_rescore(
                session, task, version, since, after, batch_size
            )
            if not rows:
                repository.mark_rescored(session, calibration_id, now or utcnow())
                break
            updates = _rescore_page(rows, temperature, version, config.confidence.value)
            repository.write_rescored(session, updates)
            written += len(updates)
            after = rows[-1][0]
    log.info("re-scored %d generations of task %s under version %s", written, task, version)
    return written


def pending_rescores(session: Session, now: datetime | None = None) -> list[tuple[int, str]]:
    """Active versions whose history needs (re-)scoring.

    First, versions never re-scored (just activated, or after an API rollback).
    Then one more pass once RESCORE_SETTLE has passed since the activation:
    answers served under the previous version while the swap propagated (in
    flight, or before a process's table swapped) are written after the first
    pass; `rescore` only touches rows not yet scored, so the pass is cheap.
    """
    now = now or utcnow()
    due = []
    for calibration in repository.active_calibrations(session):
        settled = (calibration.activated_at or now) + RESCORE_SETTLE
        if calibration.rescored_at is None or (calibration.rescored_at < settled <= now):
            due.append((calibration.id, calibration.task))
    return due
