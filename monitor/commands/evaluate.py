"""`thermostat evaluate`: one evaluation of metrics and rules now, printed as a table.

The same `evaluate_all` the scheduler runs, committed like a scheduled run
(snapshots, alert transitions, webhook events, threshold jobs), so an
operator can check a change without waiting for the next interval.
"""

from __future__ import annotations

import argparse
import json

from monitor.db.session import session_scope
from monitor.evaluation.service import TaskEvaluation, evaluate_all
from monitor.runtime import open_runtime
from monitor.settings import load_settings

COLUMNS = ("task", "status", "n", "ece", "95% interval", "accuracy", "conf", "psi", "alerts")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _fmt(value: float | int | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _row(result: TaskEvaluation) -> tuple[str, ...]:
    low, high = result.metrics.get("ece_low"), result.metrics.get("ece_high")
    interval = f"[{_fmt(low)}, {_fmt(high)}]" if low is not None else "-"
    psi = result.signals.get("confidence_psi")
    alerts = ", ".join(f"{a['rule']}:{a['state'] or a['change']}" for a in result.alerts) or "-"
    return (
        result.task,
        result.status,
        f"{result.n}/{result.min_samples}",
        _fmt(result.metrics.get("ece")),
        interval,
        _fmt(result.metrics.get("accuracy")),
        _fmt(result.metrics.get("mean_confidence")),
        _fmt(psi if isinstance(psi, float) else None),
        alerts,
    )


def render_table(results: list[TaskEvaluation]) -> str:
    rows = [COLUMNS, *(_row(r) for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    if not results:
        lines.append("(no tasks yet)")
    return "\n".join(line.rstrip() for line in lines)


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    runtime = open_runtime(settings, "scheduler")
    try:
        with session_scope(runtime.sessions) as session:
            results = evaluate_all(session, settings)
    finally:
        runtime.engine.dispose()
    if args.json:
        print(json.dumps([r.as_dict() for r in results], default=str, indent=2))
    else:
        print(render_table(results))
    return 0
