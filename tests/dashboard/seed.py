"""Realistic dashboard data: a drifting task with a firing alert, a healthy one, history.

`support_qa` is overconfident (labels drawn at a planted T* = 8 while it
serves T = 1.2), so its live ECE (about 0.24) is far above 0.15, its snapshots climb past
the threshold over the week and its ECE alert fires. `math_reasoning` is
calibrated (T* = 1, served T = 1). Generations carry packed logprobs, so a
recalibration job started from the dashboard really fits.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration import pack_token_logprobs, sequence_confidences
from monitor.calibration.synthetic import synthetic_token_batch
from monitor.db.models import (
    Alert,
    Calibration,
    Generation,
    MetricSnapshot,
    RecalibrationJob,
    Webhook,
    WebhookDelivery,
)
from monitor.db.session import session_scope
from monitor.db.types import utcnow, uuid7
from monitor.tasks.repository import ensure_tasks

DRIFTING = "support_qa"
HEALTHY = "math_reasoning"


def generation_rows(
    task: str,
    n: int,
    *,
    true_t: float,
    served_t: float,
    version: int | None,
    now: datetime,
    seed: int,
    labelled_every: int = 2,
    span: timedelta = timedelta(hours=20),
) -> list[dict[str, Any]]:
    batch, labels = synthetic_token_batch(n, 8, k=5, true_temperature=true_t, seed=seed)
    raw = sequence_confidences(batch, 1.0)
    served = sequence_confidences(batch, served_t)
    rows = []
    for g in range(n):
        lo, hi = int(batch.offsets[g]), int(batch.offsets[g + 1])
        labelled = g % labelled_every == 0
        rows.append(
            {
                "id": uuid7(),
                "task": task,
                "created_at": now - span * (1 - g / n),
                "endpoint": "chat",
                "token_count": hi - lo,
                "finish_reason": "length" if g % 40 == 0 else "stop",
                "top_k": 5,
                "logprobs": pack_token_logprobs(
                    batch.chosen[lo:hi], batch.top[lo:hi], batch.chosen_rank[lo:hi]
                ),
                "answer_start": int(batch.span_start[g]),
                "answer_end": int(batch.span_end[g]),
                "raw_confidence": float(raw[g]),
                "confidence": float(served[g]),
                "temperature": served_t,
                "calibration_version": version,
                "label": float(labels[g]) if labelled else None,
                "labelled_at": now if labelled else None,
            }
        )
    return rows


def _signals(n: int, labelled: int, accuracy: float, psi: float) -> dict[str, Any]:
    return {
        "generations": n,
        "reference_generations": int(n * 0.95),
        "labelled": labelled,
        "reference_labelled": int(labelled * 0.9),
        "confidence_psi": psi,
        "confidence_ks": psi / 2,
        "mean_response_length": 8.0,
        "reference_mean_response_length": 7.6,
        "mean_response_length_change": 0.05,
        "truncation_rate": 0.025,
        "reference_truncation_rate": 0.02,
        "repetition_rate": 0.01,
        "top_margin": 0.41,
        "feedback_rate": labelled / n,
        "feedback_accuracy": accuracy,
        "reference_feedback_accuracy": accuracy + 0.03,
        "feedback_accuracy_drop": 0.03,
    }


def snapshots(task: str, now: datetime, drifting: bool) -> list[MetricSnapshot]:
    out = []
    steps = 7 * 12  # every two hours for a week
    for i in range(steps + 1):
        at = now - timedelta(hours=2 * (steps - i))
        progress = i / steps
        ece = 0.05 + 0.17 * progress**2 if drifting else 0.035 + 0.01 * ((i % 5) / 5)
        accuracy = 0.78 - 0.12 * progress if drifting else 0.71
        breach = drifting and ece > 0.15
        out.append(
            MetricSnapshot(
                task=task,
                evaluated_at=at,
                window_start=at - timedelta(hours=24),
                window_end=at,
                status="breach" if breach else "ok",
                n=500,
                n_generations=1000,
                accuracy=accuracy,
                mean_confidence=accuracy + (ece if drifting else 0.01),
                ece=ece,
                ece_low=ece - 0.02,
                ece_high=ece + 0.025,
                mce=ece * 2,
                brier=0.2,
                nll=0.6,
                calibration_version=2 if drifting else 1,
                bins=[],
                signals=_signals(1000, 500, accuracy, 0.25 * progress if drifting else 0.02),
            )
        )
    return out


def seed_dashboard(sessions: sessionmaker[Session], now: datetime | None = None) -> None:
    now = now or utcnow()
    gens = generation_rows(DRIFTING, 1000, true_t=8.0, served_t=1.2, version=2, now=now, seed=1)
    gens += generation_rows(HEALTHY, 1000, true_t=1.0, served_t=1.0, version=1, now=now, seed=2)
    day = timedelta(days=1)
    with session_scope(sessions) as session:
        ensure_tasks(session, [DRIFTING, HEALTHY])
        session.execute(insert(Generation), gens)
        for task, drifting in ((DRIFTING, True), (HEALTHY, False)):
            session.add_all(snapshots(task, now, drifting))
        metrics = {"ece": 0.09, "nll": 0.58, "brier": 0.2}
        session.add_all(
            [
                _calibration(DRIFTING, 1, 1.62, "retired", now - 6 * day, metrics),
                _calibration(DRIFTING, 2, 1.2, "active", now - 3 * day, metrics),
                _calibration(
                    DRIFTING,
                    3,
                    0.9,
                    "rejected",
                    None,
                    metrics,
                    reason="held-out NLL got worse (0.61 -> 0.64)",
                ),
                _calibration(HEALTHY, 1, 1.02, "active", now - 5 * day, metrics),
            ]
        )
        session.add_all(
            [
                _job(DRIFTING, "threshold", "succeeded", now - 3 * day, 4.2),
                _job(DRIFTING, "cron", "rejected", now - 1 * day, 3.1),
                _job(HEALTHY, "cron", "succeeded", now - 5 * day, 2.7),
            ]
        )
        session.add_all(
            [
                Alert(
                    rule="ece_above_threshold",
                    task=DRIFTING,
                    state="firing",
                    value=0.21,
                    threshold=0.15,
                    samples=500,
                    consecutive=3,
                    started_at=now - timedelta(hours=5),
                    fired_at=now - timedelta(hours=3),
                ),
                Alert(
                    rule="ece_above_threshold",
                    task=HEALTHY,
                    state="resolved",
                    value=0.16,
                    threshold=0.15,
                    samples=420,
                    consecutive=0,
                    started_at=now - 4 * day,
                    fired_at=now - 4 * day,
                    resolved_at=now - 4 * day + timedelta(hours=6),
                ),
            ]
        )
        _webhooks(session, now)


def _calibration(
    task: str,
    version: int,
    t: float,
    status: str,
    activated: datetime | None,
    metrics: dict[str, float],
    reason: str | None = None,
) -> Calibration:
    before = {**metrics, "ece": metrics["ece"] + 0.1, "temperature": 1.0}
    return Calibration(
        task=task,
        version=version,
        method="temperature",
        temperature=t,
        status=status,
        source="worker",
        metrics_before=before,
        metrics_after={**metrics, "temperature": t},
        n_train=480,
        n_holdout=120,
        device="cpu",
        fit_seconds=0.4,
        reason=reason,
        created_at=(activated or utcnow()) - timedelta(minutes=5),
        activated_at=activated,
    )


def _job(task: str, trigger: str, status: str, at: datetime, seconds: float) -> RecalibrationJob:
    return RecalibrationJob(
        task=task,
        trigger=trigger,
        status=status,
        attempts=1,
        device="cpu",
        created_at=at - timedelta(seconds=30),
        started_at=at,
        finished_at=at + timedelta(seconds=seconds),
        result={
            "reason": "held-out NLL and ECE improved"
            if status == "succeeded"
            else "held-out ECE got worse"
        },
    )


def _webhooks(session: Session, now: datetime) -> None:
    live = Webhook(
        url="https://hooks.example.com/thermostat",
        secret="whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        events=["alert.firing", "alert.resolved"],
        source="api",
        enabled=True,
        consecutive_failures=0,
        created_at=now - timedelta(days=7),
    )
    dead = Webhook(
        url="https://pager.example.net/broken",
        secret="whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
        events=["alert.firing"],
        source="api",
        enabled=False,
        consecutive_failures=20,
        disabled_at=now - timedelta(hours=2),
        disabled_reason="20 consecutive failed deliveries",
        created_at=now - 2 * timedelta(days=1),
    )
    session.add_all([live, dead])
    session.flush()
    session.add_all(
        [
            WebhookDelivery(
                webhook_id=live.id,
                event_type="alert.firing",
                message_id=f"msg_{uuid7().hex}",
                payload="{}",
                status="delivered",
                attempts=1,
                last_status_code=200,
                created_at=now - timedelta(hours=3),
                delivered_at=now - timedelta(hours=3),
            ),
            WebhookDelivery(
                webhook_id=dead.id,
                event_type="alert.firing",
                message_id=f"msg_{uuid7().hex}",
                payload="{}",
                status="failed",
                attempts=8,
                last_status_code=500,
                last_error="HTTP 500 Internal Server Error",
                created_at=now - timedelta(hours=3),
                next_attempt_at=None,
            ),
        ]
    )
