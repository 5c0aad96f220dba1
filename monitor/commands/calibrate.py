"""`thermostat calibrate`: fit a task's calibration offline from a labelled JSONL set.

Teams that already keep a labelled evaluation set should not have to wait for
production feedback to calibrate: this runs the set through the same local
transformers model that serves the task, fits a temperature (or vector
scaling for multiple-choice sets), judges it with the same held-out gate the
recalibration worker uses, and stores the result as a calibration version
(source ``offline``) that can be activated here (``--activate``) or later
through the API.

What is fitted, by the kinds of lines in the set:

* only multiple-choice lines: `validate_multiclass` on the choice scores
  (``--method vector`` adds per-choice biases, falling back to temperature
  when a choice position has too few examples);
* only target lines: `validate_sequence_temperature` on per-token top-K
  logprobs aggregated with the task's configured confidence method, exactly
  what the proxy applies at serving time;
* both: one temperature for both kinds, minimising the count-weighted sum of
  the two NLLs, gated on the pooled held-out confidences (top-label for
  multiple choice, sequence confidence for targets). One task gets one
  temperature, so a mixed set must agree on one. ``--method vector`` uses
  only the multiple-choice lines and says so.

Before/after metrics are measured at T = 1 (the raw model) and at the fitted
parameters on the held-out split. Progress and skipped-line messages go to
stderr; the report goes to stdout.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.commands.serve import positive_int
from monitor.config import TASK_NAME_PATTERN
from monitor.errors import ConfigError, ThermostatError

METHODS = ("temperature", "vector")
DEVICES = ("auto", "cpu", "cuda")


def _fraction(low_inclusive: bool) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        ok = (0.0 <= value < 1.0) if low_inclusive else (0.0 < value < 1.0)
        if not ok:
            bounds = "[0, 1)" if low_inclusive else "(0, 1)"
            raise argparse.ArgumentTypeError(f"must be in {bounds}, got {text}")
        return value

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", required=True, help="task the calibration is for")
    parser.add_argument("--model", required=True, help="folder of a transformers causal LM")
    parser.add_argument(
        "--data",
        required=True,
        help='JSONL: {"prompt", "target"} or {"prompt", "choices", "answer"} per line',
    )
    parser.add_argument("--method", choices=METHODS, default="temperature")
    parser.add_argument(
        "--activate", action="store_true", help="activate the new version if the gate accepts it"
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="examples per batch")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="where the model runs")
    parser.add_argument(
        "--holdout",
        type=_fraction(low_inclusive=False),
        default=0.2,
        help="fraction held out for the validation gate (default 0.2)",
    )
    parser.add_argument(
        "--max-bad-fraction",
        type=_fraction(low_inclusive=True),
        default=0.1,
        help="stop if more than this fraction of lines is invalid (default 0.1)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out split")


# ------------------------------------------------------------------ inputs
def check_task_name(name: str) -> str:
    if not re.fullmatch(TASK_NAME_PATTERN, name):
        raise ConfigError(f"task name {name!r} must match {TASK_NAME_PATTERN}")
    return name


def load_examples(path: Path, max_bad_fraction: float) -> list[Any]:
    """The valid examples; each skipped line is reported on stderr with its number."""
    from monitor.calibration.offline import load_calibration_jsonl

    if not path.exists():
        raise ConfigError(f"calibration data not found: {path}")
    if not path.is_file():
        raise ConfigError(f"calibration data is not a file: {path}")
    try:
        examples, problems = load_calibration_jsonl(path, max_bad_fraction)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for number, problem in problems:
        print(f"{path}:{number}: skipped: {problem}", file=sys.stderr)
    return examples


def collect(model: Any, tokenizer: Any, examples: list[Any], batch_size: int, device: str) -> Any:
    """Run the set through the model with a progress bar (stderr) over batches."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from monitor.calibration.offline import collect_logits

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as progress:
        bar = progress.add_task("running the model", total=len(examples))

        def advance(done: int, total: int) -> None:
            progress.update(bar, completed=done, total=total)

        return collect_logits(
            model, tokenizer, examples, batch_size=batch_size, device=device, progress=advance
        )


# ------------------------------------------------------------------ fitting
@dataclass(frozen=True)
class FitPlan:
    """Which of the collected data the fit uses, and what the user should know."""

    kind: str  # "multiple_choice", "target" or "mixed"
    notes: list[str]


def plan_fit(method: str, n_choice: int, n_target: int) -> FitPlan:
    if method == "vector":
        if n_choice == 0:
            raise ConfigError(
                "--method vector needs multiple-choice lines "
                '({"prompt", "choices", "answer"}); this set has none'
            )
        notes = [f"--method vector: {n_target} target lines not used"] if n_target else []
        return FitPlan("multiple_choice", notes)
    if n_choice and n_target:
        return FitPlan("mixed", [])
    return FitPlan("multiple_choice" if n_choice else "target", [])


def fit(
    data: Any,
    plan: FitPlan,
    method: str,
    aggregator: str,
    holdout_fraction: float,
    seed: int,
    n_bins: int,
) -> Any:
    from monitor.calibration.validation import (
        validate_mixed,
        validate_multiclass,
        validate_sequence_temperature,
    )

    if plan.kind == "multiple_choice":
        return validate_multiclass(
            data.choice_logits,
            data.choice_labels,
            method=method,
            holdout_fraction=holdout_fraction,
            seed=seed,
            n_bins=n_bins,
        )
    if plan.kind == "target":
        return validate_sequence_temperature(
            data.sequences,
            data.sequence_labels,
            aggregator=aggregator,
            holdout_fraction=holdout_fraction,
            seed=seed,
            n_bins=n_bins,
        )
    return validate_mixed(
        data.choice_logits,
        data.choice_labels,
        data.sequences,
        data.sequence_labels,
        aggregator=aggregator,
        holdout_fraction=holdout_fraction,
        seed=seed,
        n_bins=n_bins,
    )


# ------------------------------------------------------------------ storing
def activate_calibration(session: Any, calibration_id: int) -> None:
    """Retire the task's active version and activate this one (the caller commits)."""
    from monitor.calibrations.service import activate

    activate(session, calibration_id)


def store(
    sessions: Any,
    task: str,
    result: Any,
    *,
    device: str,
    fit_seconds: float,
    params: dict[str, Any],
    activate: bool,
) -> tuple[int, int, str]:
    """One transaction: the task row, the new version and (if asked) its activation."""
    from monitor.calibrations import repository
    from monitor.db.models import Calibration
    from monitor.db.models.enums import CalibrationStatus
    from monitor.db.session import session_scope
    from monitor.db.types import as_json, utcnow
    from monitor.tasks.repository import ensure_tasks

    status = CalibrationStatus.candidate if result.accepted else CalibrationStatus.rejected
    with session_scope(sessions) as session:
        ensure_tasks(session, [task])
        calibration = Calibration(
            task=task,
            version=repository.next_version(session, task),
            method=result.method,
            temperature=float(result.temperature),
            bias=[float(b) for b in result.bias] if result.method == "vector" else None,
            params=as_json(params),
            status=status.value,
            source="offline",
            metrics_before={**as_json(result.before), "temperature": result.current_temperature},
            metrics_after={**as_json(result.after), "temperature": float(result.temperature)},
            n_train=int(result.n_train),
            n_holdout=int(result.n_holdout),
            device=device,
            fit_seconds=float(fit_seconds),
            reason=result.reason,
            created_at=utcnow(),
        )
        session.add(calibration)
        session.flush()
        if activate and result.accepted:
            activate_calibration(session, calibration.id)
        return calibration.id, calibration.version, calibration.status


# ------------------------------------------------------------------ the command
def run(args: argparse.Namespace) -> int:
    from monitor.calibration.fitting import resolve_device
    from monitor.calibration.offline_report import format_metrics, format_reliability
    from monitor.commands.model_server import check_model_dir, load_checked
    from monitor.runtime import open_runtime
    from monitor.settings import load_settings

    task = check_task_name(args.task)
    settings = load_settings()
    config = settings.task_config(task)
    examples = load_examples(Path(args.data).expanduser(), args.max_bad_fraction)
    model_dir = check_model_dir(args.model)
    n_choice = sum(1 for e in examples if hasattr(e, "choices"))
    plan = plan_fit(args.method, n_choice, len(examples) - n_choice)
    try:
        device = resolve_device(args.device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    # Open (and on embedded SQLite, migrate) the database before the slow part,
    # so a stale schema or a bad URL fails in one line, not after the model run.
    runtime = open_runtime(settings, "worker")
    try:
        # The model server's loader, so both commands name a broken folder alike.
        engine = load_checked(model_dir, device, args.model)
        data = collect(engine.model, engine.tokenizer, examples, args.batch_size, device)
        for note in plan.notes:
            print(f"note: {note}", file=sys.stderr)
        aggregator = config.confidence.value
        started = time.perf_counter()
        try:
            result = fit(
                data, plan, args.method, aggregator, args.holdout, args.seed, config.n_bins
            )
        except ValueError as exc:
            raise ConfigError(f"cannot fit: {exc}") from None
        fit_seconds = time.perf_counter() - started
        params = {
            "data": str(Path(args.data).expanduser().resolve()),
            "model": str(model_dir.resolve()),
            "requested_method": args.method,
            "fit_on": plan.kind,
            "aggregator": aggregator,
            "holdout_fraction": args.holdout,
            "seed": args.seed,
            "n_examples": len(examples),
            "n_multiple_choice": n_choice,
            "n_target": len(examples) - n_choice,
        }
        cal_id, version, status = store(
            runtime.sessions,
            task,
            result,
            device=device,
            fit_seconds=fit_seconds,
            params=params,
            activate=args.activate,
        )
    finally:
        runtime.engine.dispose()

    print(
        f"task {task}: {len(examples)} examples ({n_choice} multiple choice, "
        f"{len(examples) - n_choice} target), fit on {plan.kind}, model on {device}"
    )
    print(
        f"method {result.method}, temperature {result.temperature:.4f}"
        + (f", bias {[round(b, 4) for b in result.bias]}" if result.method == "vector" else "")
        + f", n_train {result.n_train}, n_holdout {result.n_holdout}, fit {fit_seconds:.2f}s"
    )
    print()
    print("held-out metrics")
    print(format_metrics(result.before, result.after))
    for label, metrics in (("before", result.before), ("after", result.after)):
        print()
        print(f"reliability on the held-out split, {label} (T = {metrics_t(result, label):.4f})")
        print(format_reliability(metrics["bins"]))
    print()
    verdict = "accepted" if result.accepted else "rejected"
    print(f"gate: {verdict}: {result.reason}")
    print(f"stored calibration {cal_id}: task {task} version {version}, status {status}")
    if args.activate and not result.accepted:
        raise ThermostatError(
            f"version {version} was rejected by the validation gate ({result.reason}); "
            "not activated"
        )
    return 0


def metrics_t(result: Any, label: str) -> float:
    return float(result.current_temperature if label == "before" else result.temperature)
