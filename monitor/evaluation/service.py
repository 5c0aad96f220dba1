"""One evaluation: per task, metrics over its window, signals, a snapshot, rules, alerts.

The scheduler's `evaluation.evaluate` job, `POST /api/evaluate` and
`thermostat evaluate` all call `evaluate_all`, so the three can never
disagree. Services flush; the caller's session scope commits, which makes a
snapshot, its alert transitions, their webhook events and a threshold
recalibration job one atomic step.

Which confidences count: each generation's confidence under the task's
ACTIVE calibration (served under it, or re-scored for it after activation);
generations of other versions are left out, so a hot-swap shows at once and
samples of the old calibration do not re-trigger the alert that replaced it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from monitor.alerting.rules import Rule, load_rules
from monitor.alerting.state import Transition, apply_outcomes
from monitor.config import TaskConfig
from monitor.db.models import Calibration
from monitor.db.models.enums import AlertState, JobTrigger, SnapshotStatus
from monitor.db.types import utcnow
from monitor.evaluation import repository
from monitor.evaluation.repository import WindowStats
from monitor.evaluation.rules import judge, samples_by_basis
from monitor.evaluation.signals import (
    BinnedMetrics,
    binned_ece_bootstrap,
    binned_metrics,
    difference,
    ks_statistic,
    merge_buckets,
    population_stability_index,
    ratio,
)
from monitor.jobs.queue import enqueue_recalibration, in_cooldown
from monitor.settings import Settings
from monitor.tasks.repository import list_tasks
from monitor.tasks.service import sync_configured_tasks

log = logging.getLogger(__name__)

METRIC_FIELDS = ("accuracy", "mean_confidence", "ece", "mce", "brier", "nll")


@dataclass
class TaskEvaluation:
    """What one evaluation found for one task (the CLI table and API items)."""

    task: str
    status: str
    n: int
    n_generations: int
    min_samples: int
    ece_threshold: float
    calibration_version: int | None
    snapshot_id: int
    evaluated_at: datetime
    metrics: dict[str, float | None]
    signals: dict[str, float | int | None]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    recalibration_job_id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def compute_signals(ref: WindowStats, cur: WindowStats) -> dict[str, float | int | None]:
    """Label-free drift signals of the current window against the reference window."""
    mean_len = ratio(cur.token_sum, cur.generations)
    ref_len = ratio(ref.token_sum, ref.generations)
    accuracy = ratio(cur.label_sum, cur.labelled)
    ref_accuracy = ratio(ref.label_sum, ref.labelled)
    return {
        "generations": cur.generations,
        "reference_generations": ref.generations,
        "labelled": cur.labelled,
        "reference_labelled": ref.labelled,
        "confidence_psi": population_stability_index(
            merge_buckets(ref.histogram), merge_buckets(cur.histogram)
        ),
        "confidence_ks": ks_statistic(ref.histogram, cur.histogram),
        "mean_response_length": mean_len,
        "reference_mean_response_length": ref_len,
        "mean_response_length_change": (
            mean_len / ref_len - 1.0 if mean_len is not None and ref_len else None
        ),
        "truncation_rate": ratio(cur.truncated, cur.generations),
        "reference_truncation_rate": ratio(ref.truncated, ref.generations),
        "repetition_rate": ratio(cur.repetition_sum, cur.repetition_n),
        "top_margin": ratio(cur.margin_sum, cur.margin_n),
        "feedback_rate": ratio(cur.labelled, cur.generations),
        "feedback_accuracy": accuracy,
        "reference_feedback_accuracy": ref_accuracy,
        "feedback_accuracy_drop": difference(ref_accuracy, accuracy),
    }


def status_of(metrics: BinnedMetrics | None, config: TaskConfig) -> SnapshotStatus:
    if metrics is None or metrics.n < config.min_samples:
        return SnapshotStatus.insufficient_data
    return SnapshotStatus.breach if metrics.ece > config.ece_threshold else SnapshotStatus.ok


def evaluate_task(
    session: Session,
    settings: Settings,
    task: str,
    now: datetime,
    rules: list[Rule],
    active: Calibration | None,
) -> TaskEvaluation:
    config = settings.task_config(task)
    start = now - config.window
    version = active.version if active is not None else None
    stats = repository.calibration_bin_stats(session, task, version, start, now, config.n_bins)
    metrics = binned_metrics(stats)
    interval = binned_ece_bootstrap(stats, settings.scheduler.bootstrap_resamples)
    status = status_of(metrics, config)
    ref, cur = repository.window_stats(session, task, start - config.window, start, now)
    signals = compute_signals(ref, cur)
    values: dict[str, float | None] = {
        name: (getattr(metrics, name) if metrics else None) for name in METRIC_FIELDS
    }
    values["ece_low"], values["ece_high"] = interval if interval else (None, None)
    n = metrics.n if metrics else 0
    snapshot = repository.add_snapshot(
        session,
        task=task,
        evaluated_at=now,
        window_start=start,
        window_end=now,
        status=status.value,
        n=n,
        n_generations=cur.generations,
        calibration_version=version,
        bins=metrics.bins if metrics else [],
        signals=signals,
        **values,
    )
    judged: dict[str, float | None] = {
        k: None if v is None else float(v) for k, v in signals.items()
    }
    outcomes = judge(
        rules,
        task,
        config,
        {**judged, **values, "n": float(n)},
        samples_by_basis(n, cur.generations, ref.generations, cur.labelled, ref.labelled),
    )
    transitions = apply_outcomes(session, outcomes, now, settings.scheduler.alert_renotify_s)
    job_id = _maybe_recalibrate(session, settings, task, config, status, rules, transitions, now)
    repository.mark_task_evaluated(session, task, status.value, now)
    return TaskEvaluation(
        task=task,
        status=status.value,
        n=n,
        n_generations=cur.generations,
        min_samples=config.min_samples,
        ece_threshold=config.ece_threshold,
        calibration_version=version,
        snapshot_id=snapshot.id,
        evaluated_at=now,
        metrics=values,
        signals=signals,
        alerts=[asdict(t) for t in transitions if t.change != "unchanged" or t.state],
        recalibration_job_id=job_id,
    )


def _maybe_recalibrate(
    session: Session,
    settings: Settings,
    task: str,
    config: TaskConfig,
    status: SnapshotStatus,
    rules: list[Rule],
    transitions: list[Transition],
    now: datetime,
) -> int | None:
    """Open one threshold job per firing ECE episode (the queue dedupes open jobs).

    Not on every breached evaluation: a fit that succeeded but did not bring
    ECE down would otherwise loop; a later episode (or cron) tries again.
    """
    if not config.auto_recalibrate or status != SnapshotStatus.breach:
        return None
    ece_rules = {rule.name for rule in rules if rule.metric == "ece"}
    for transition in transitions:
        if transition.rule not in ece_rules or transition.state != AlertState.firing.value:
            continue
        alert = repository.get_alert(session, transition.alert_id)
        if alert is None or repository.threshold_job_since(session, task, alert.started_at):
            continue
        if in_cooldown(session, task, now):
            log.info("ECE breach on %s: recalibration in cooldown, not enqueued", task)
            return None
        job, created = enqueue_recalibration(
            session, task, JobTrigger.threshold, max_attempts=settings.worker.max_attempts
        )
        if created:
            log.info("ECE breach on %s: recalibration job %s queued", task, job.id)
        return job.id
    return None


def evaluate_all(
    session: Session,
    settings: Settings,
    now: datetime | None = None,
    rules: list[Rule] | None = None,
) -> list[TaskEvaluation]:
    """Evaluate every known task once (configured ones and those seen in traffic)."""
    now = now or utcnow()
    rules = rules if rules is not None else load_rules(settings.alert_rules)
    sync_configured_tasks(session, settings)
    actives = repository.active_calibrations(session)
    results = []
    for task in list_tasks(session):
        results.append(
            evaluate_task(session, settings, task.name, now, rules, actives.get(task.name))
        )
    return results
