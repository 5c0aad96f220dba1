"""Page models: what each dashboard page shows, assembled from repositories and services.

The router stays thin (auth, forms, redirects); this module decides what a
task's status is, how rows sort, and which numbers feed which chart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from markupsafe import Markup
from sqlalchemy.orm import Session

from monitor.calibrations import repository as calibrations_repo
from monitor.dashboard import charts, repository
from monitor.db.models import Alert, Calibration, MetricSnapshot, RecalibrationJob
from monitor.db.models.enums import AlertState, SnapshotStatus
from monitor.evaluation import repository as evaluation_repo
from monitor.settings import Settings
from monitor.tasks.repository import list_tasks

SPARK_DAYS = 7
SPARK_BUCKETS = 28
HISTORY_BUCKETS = 60
HIST_BUCKETS = 20
DASH = "\u2013"  # shown for missing values

# Worst first: an alert that already fires, then a breach, then unknowns, then fine.
STATUS_RANK = {"firing": 0, "drifting": 1, "insufficient": 2, "ok": 3}
STATUS_LABEL = {
    "firing": "firing",
    "drifting": "drifting",
    "insufficient": "insufficient data",
    "ok": "ok",
}


@dataclass
class TaskRow:
    name: str
    status: str
    threshold: float
    min_samples: int
    snapshot: MetricSnapshot | None
    active: Calibration | None
    last_job: RecalibrationJob | None
    alerts: list[Alert]
    sparkline: Markup

    @property
    def status_label(self) -> str:
        return STATUS_LABEL[self.status]

    @property
    def ece(self) -> float | None:
        return self.snapshot.ece if self.snapshot else None

    @property
    def feedback_rate(self) -> float | None:
        signals = (self.snapshot.signals if self.snapshot else None) or {}
        value = signals.get("feedback_rate")
        return float(value) if value is not None else None

    @property
    def firing(self) -> list[Alert]:
        return [a for a in self.alerts if a.state == AlertState.firing.value]

    def sort_key(self) -> tuple[int, float, str]:
        severity = (self.ece or 0.0) / self.threshold
        return (STATUS_RANK[self.status], -severity, self.name)


def task_status(snapshot: MetricSnapshot | None, alerts: list[Alert]) -> str:
    if any(a.state == AlertState.firing.value for a in alerts):
        return "firing"
    if alerts or (snapshot is not None and snapshot.status == SnapshotStatus.breach.value):
        return "drifting"
    if snapshot is None or snapshot.status == SnapshotStatus.insufficient_data.value:
        return "insufficient"
    return "ok"


def overview(session: Session, settings: Settings, now: datetime) -> list[TaskRow]:
    tasks = [t.name for t in list_tasks(session)]
    if not tasks:
        return []
    snapshots = evaluation_repo.latest_snapshots(session)
    actives = evaluation_repo.active_calibrations(session)
    jobs = repository.latest_job_per_task(session)
    alerts = repository.open_alerts_by_task(session)
    history = repository.metric_history(
        session, tasks, now - timedelta(days=SPARK_DAYS), now, SPARK_BUCKETS
    )
    rows = []
    for name in tasks:
        config = settings.task_config(name)
        snap, task_alerts = snapshots.get(name), alerts.get(name, [])
        ece = [p.ece if p else None for p in history[name]]
        rows.append(
            TaskRow(
                name=name,
                status=task_status(snap, task_alerts),
                threshold=config.ece_threshold,
                min_samples=config.min_samples,
                snapshot=snap,
                active=actives.get(name),
                last_job=jobs.get(name),
                alerts=task_alerts,
                sparkline=charts.sparkline(ece, config.ece_threshold),
            )
        )
    return sorted(rows, key=TaskRow.sort_key)


@dataclass(frozen=True)
class Signal:
    label: str
    value: str
    reference: str
    hint: str


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return DASH
    number = float(value)
    if kind == "pct":
        return f"{number * 100:.1f}%"
    if kind == "int":
        return f"{int(number):,}"
    if kind == "signed_pct":
        return f"{number * 100:+.1f}%"
    return f"{number:.3f}"


SIGNALS = [
    ("confidence_psi", None, "num", "Confidence shift (PSI)", "above 0.2 is a large shift"),
    ("confidence_ks", None, "num", "Confidence shift (KS)", "max CDF distance, 0 to 1"),
    (
        "mean_response_length",
        "reference_mean_response_length",
        "num",
        "Mean response length (tokens)",
        "longer or shorter answers than before",
    ),
    (
        "truncation_rate",
        "reference_truncation_rate",
        "pct",
        "Truncation rate",
        "finish_reason = length",
    ),
    ("repetition_rate", None, "pct", "Repetition rate", "repeated n-grams in answers"),
    ("top_margin", None, "num", "Top-1 / top-2 margin", "smaller: the model hesitates"),
    ("feedback_rate", None, "pct", "Feedback rate", "labelled share of traffic"),
    (
        "feedback_accuracy",
        "reference_feedback_accuracy",
        "pct",
        "Feedback accuracy",
        "share of answers judged correct",
    ),
    ("generations", "reference_generations", "int", "Generations in window", "traffic volume"),
]


def signal_rows(signals: dict[str, Any] | None) -> list[Signal]:
    if not signals:
        return []
    return [
        Signal(
            label, _fmt(signals.get(key), kind), _fmt(signals.get(ref), kind) if ref else "", hint
        )
        for key, ref, kind, label, hint in SIGNALS
    ]


def to_bins(sums: list[tuple[int, float, float]], n_bins: int) -> list[charts.Bin]:
    out = []
    for i, (count, conf_sum, label_sum) in enumerate(sums):
        out.append(
            charts.Bin(
                lower=i / n_bins,
                upper=(i + 1) / n_bins,
                count=count,
                accuracy=label_sum / count if count else None,
                mean_confidence=conf_sum / count if count else None,
            )
        )
    return out


@dataclass
class TaskPage:
    name: str
    config: Any
    status: str
    snapshot: MetricSnapshot | None
    active: Calibration | None
    alerts: list[Alert]
    history_chart: Markup
    reliability_active: Markup
    reliability_raw: Markup
    histogram: Markup
    signals: list[Signal]
    calibrations: list[Calibration]
    jobs: list[RecalibrationJob]
    window_start: datetime
    window_end: datetime
    reliability_note: str = ""
    generations: list[repository.GenerationRow] = field(default_factory=list)

    @property
    def status_label(self) -> str:
        return STATUS_LABEL[self.status]


def task_page(session: Session, settings: Settings, name: str, now: datetime) -> TaskPage:
    config = settings.task_config(name)
    snapshot = evaluation_repo.latest_snapshot(session, name)
    active = evaluation_repo.active_calibration(session, name)
    alerts = repository.open_alerts_by_task(session).get(name, [])
    calibrations = calibrations_repo.list_calibrations(session, name, limit=50)
    start = now - timedelta(days=SPARK_DAYS)
    history = [
        p
        for p in repository.metric_history(session, [name], start, now, HISTORY_BUCKETS)[name]
        if p
    ]
    series = [
        charts.Series(
            "ECE", charts.ECE_COLOUR, [(p.at, p.ece) for p in history if p.ece is not None]
        ),
        charts.Series(
            "accuracy",
            charts.ACCURACY_COLOUR,
            [(p.at, p.accuracy) for p in history if p.accuracy is not None],
        ),
    ]
    markers = [
        charts.Marker(c.activated_at, f"v{c.version}")
        for c in calibrations
        if c.activated_at is not None
    ]
    history_chart = charts.time_series_chart(
        series,
        start=start,
        end=now,
        threshold=config.ece_threshold,
        markers=markers,
        title=f"ECE and accuracy, last {SPARK_DAYS} days",
        y_title="ECE / accuracy",
        y_max=1.0,
    )
    w_start = now - config.window
    version = active.version if active else None
    cal_bins, cal_note = _active_bins(session, name, snapshot, version, w_start, now, config.n_bins)
    dist = repository.window_distribution(session, name, w_start, now, config.n_bins, HIST_BUCKETS)
    raw_bins = to_bins(
        [(b.count, b.confidence_sum, b.label_sum) for b in dist.raw_bins], config.n_bins
    )
    active_title = (
        f"Active calibration v{active.version} (T = {active.temperature:.2f})"
        if active
        else "Served (no calibration active)"
    )
    return TaskPage(
        name=name,
        config=config,
        status=task_status(snapshot, alerts),
        snapshot=snapshot,
        active=active,
        alerts=alerts,
        history_chart=history_chart,
        reliability_active=charts.reliability_diagram(cal_bins, active_title),
        reliability_raw=charts.reliability_diagram(
            raw_bins, "Raw model (T = 1)", colour=charts.RAW_COLOUR
        ),
        histogram=charts.histogram(
            dist.served_counts, dist.raw_counts, title="Confidence of all traffic in the window"
        ),
        reliability_note=cal_note,
        signals=signal_rows(snapshot.signals if snapshot else None),
        calibrations=calibrations,
        jobs=calibrations_repo.list_jobs(session, name, limit=10),
        window_start=w_start,
        window_end=now,
    )


def _active_bins(
    session: Session,
    task: str,
    snapshot: MetricSnapshot | None,
    version: int | None,
    start: datetime,
    end: datetime,
    n_bins: int,
) -> tuple[list[charts.Bin], str]:
    """The active calibration's bins: the latest evaluation's, when it judged this version.

    The snapshot's bins are what its ECE was computed from, and reading them
    saves a scan of the window; after an activation (or before any
    evaluation) they would describe another version, so the bins are then
    computed live with the evaluation's own query.
    """
    if snapshot is not None and snapshot.bins and snapshot.calibration_version == version:
        bins = [
            charts.Bin(
                lower=float(b["lower"]),
                upper=float(b["upper"]),
                count=int(b.get("count") or 0),
                accuracy=b.get("accuracy"),
                mean_confidence=b.get("mean_confidence"),
            )
            for b in snapshot.bins
        ]
        return bins, f"as of the last evaluation ({snapshot.evaluated_at:%Y-%m-%d %H:%M} UTC)"
    stats = evaluation_repo.calibration_bin_stats(session, task, version, start, end, n_bins)
    return to_bins([(b.count, b.conf_sum, b.label_sum) for b in stats], n_bins), "live"


def duration(job: RecalibrationJob) -> str:
    if job.started_at is None:
        return DASH
    end = job.finished_at
    if end is None:
        return "running"
    seconds = (end - job.started_at).total_seconds()
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"
