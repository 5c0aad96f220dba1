"""The demo from start to end: build, start, replay, watch the loop close, summarise."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from monitor.calibration import expected_calibration_error
from monitor.config import EVENT_TYPES
from monitor.demo import processes
from monitor.demo.receiver import WebhookReceiver, new_secret
from monitor.demo.runner import DemoRun, DemoSummary, metrics_table, write_summary
from monitor.demo.workload import AUTOCOMPLETE, QUIZ, TASKS

REQUESTS_PER_TASK = 300
FRESH_REQUESTS = 300
THRESHOLD = 0.15
MIN_SAMPLES = 200


def demo_config(receiver: WebhookReceiver) -> dict[str, Any]:
    return {
        "defaults": {"ece_threshold": THRESHOLD, "min_samples": MIN_SAMPLES, "window": "1h"},
        "tasks": {
            QUIZ.name: {"confidence": QUIZ.aggregator},
            # The sidecar enforces greedy sampling for autocomplete, whatever the
            # client sends: answers are the model's top choices, said with confidence.
            AUTOCOMPLETE.name: {
                "confidence": AUTOCOMPLETE.aggregator,
                "sampling": "policy",
                "policy": {"temperature": 0.0},
            },
        },
        "webhooks": [{"url": receiver.url, "secret": receiver.secret, "events": list(EVENT_TYPES)}],
        "settings": {
            "evaluate_interval_s": 2,
            "scheduler": {"webhook_delivery_interval_s": 0.5},
            "worker": {"poll_interval_s": 0.5},
            "hot_swap": {"poll_interval_s": 0.5},
        },
    }


# The demo caps answers at a few tokens, which the shipped truncation rule would
# rightly flag; it watches calibration only, with the task's own min_samples.
DEMO_RULES = {
    "rules": [
        {
            "name": "ece_above_threshold",
            "metric": "ece",
            "comparison": ">",
            "threshold": "task.ece_threshold",
            "for": 2,
            "min_samples": "task.min_samples",
            "severity": "critical",
            "description": "ECE of the active calibration is above the task's threshold.",
        }
    ]
}


def reset_state(demo_dir: Path, database_url: str | None) -> str:
    """A clean slate each run: the embedded database and spool are recreated."""
    for stale in ("demo.db", "demo.db-wal", "demo.db-shm"):
        (demo_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(demo_dir / "spool", ignore_errors=True)
    if database_url is None:
        return f"sqlite:///{demo_dir / 'demo.db'}"
    from monitor.demo.postgres import reset_postgres

    reset_postgres(database_url, [task.name for task in TASKS])
    return database_url


def run_demo(
    console: Console, home: Path, postgres_url: str | None, keep_serving: bool
) -> DemoSummary:
    started = time.monotonic()
    demo_dir = home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]Thermostat demo")
    console.print(
        "Two tasks through the sidecar: [bold]quiz[/] (the model is calibrated) and "
        f"[bold]autocomplete[/] (the model is overconfident: true temperature "
        f"{AUTOCOMPLETE.true_temperature:g})."
    )

    console.rule("1. A tiny local model")
    from monitor.serving.tiny_model import build_tiny_model, is_built, recipe_hash

    model_dir = demo_dir / "model"
    reused = is_built(model_dir, recipe_hash(0))
    with console.status("training a tokenizer and a 2-layer Qwen2 model on the shipped corpus"):
        t0 = time.monotonic()
        build_tiny_model(model_dir)
    verb = "reused" if reused else "built"
    console.print(f"  {verb} {model_dir} in {time.monotonic() - t0:.1f} s")

    console.rule("2. Model server, sidecar and a webhook receiver on loopback")
    database_url = reset_state(demo_dir, postgres_url)
    receiver = WebhookReceiver(new_secret()).start()
    config_path = demo_dir / "config.yaml"
    config_path.write_text(yaml.safe_dump(demo_config(receiver), sort_keys=False))
    rules_path = demo_dir / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(DEMO_RULES, sort_keys=False))
    model_port, sidecar_port = processes.free_port(), processes.free_port()
    env = processes.child_environment(
        THERMOSTAT_HOME=str(demo_dir),
        THERMOSTAT_DATABASE_URL=database_url,
        THERMOSTAT_CONFIG=str(config_path),
        THERMOSTAT_ALERT_RULES=str(rules_path),
        THERMOSTAT_UPSTREAM_URL=f"http://127.0.0.1:{model_port}/v1",
    )
    logs = demo_dir / "logs"
    if postgres_url:
        _run_checked(["db", "upgrade"], env)
    model = processes.start(
        "model-server",
        # One thread: the tiny model's steps are too small to split (see --threads).
        ["model-server", "--model", str(model_dir), "--port", str(model_port), "--threads", "1"],
        env,
        logs,
        model_port,
    )
    sidecar = processes.start(
        "sidecar", ["serve", "--port", str(sidecar_port)], env, logs, sidecar_port
    )
    try:
        model.wait_ready("/healthz", 120)
        sidecar.wait_ready("/readyz", 60)
        console.print(f"  model server  {model.base_url}/v1   (logs: {model.log_path})")
        console.print(
            f"  sidecar       {sidecar.base_url}/v1   (all roles, {_db_label(database_url)})"
        )
        console.print(f"  webhooks  ->  {receiver.url}   (Standard Webhooks, verified on receipt)")
        run = DemoRun(console, sidecar.base_url, receiver)
        _scenario(console, run)
        run.summary.seconds = time.monotonic() - started
        _summarise(console, run.summary)
        write_summary(demo_dir / "last-run.json", run.summary)
        if keep_serving:
            console.print(
                f"\nServing: dashboard {run.summary.dashboard_url}, proxy {sidecar.base_url}/v1"
            )
            console.print("Press Ctrl-C to stop.")
            try:
                while sidecar.process.poll() is None:
                    time.sleep(1)
            except KeyboardInterrupt:  # the way this step is meant to end: exit 0
                console.print("Stopped.")
        return run.summary
    finally:
        for process in (sidecar, model):
            process.stop()
        receiver.stop()


def _run_checked(args: list[str], env: dict[str, str]) -> None:
    import subprocess
    import sys

    from monitor.errors import ThermostatError

    result = subprocess.run(
        [sys.executable, "-m", "monitor", *args], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise ThermostatError(result.stderr.strip().splitlines()[-1] if result.stderr else "failed")


def _db_label(url: str) -> str:
    return "SQLite" if url.startswith("sqlite") else "Postgres"


def _scenario(console: Console, run: DemoRun) -> None:
    summary = run.summary
    console.rule("3. Traffic through the sidecar, with feedback")
    sent = run.traffic([(QUIZ, REQUESTS_PER_TASK), (AUTOCOMPLETE, REQUESTS_PER_TASK)], "requests")

    console.rule("4. Calibration error before recalibration")
    snapshots = {
        task.name: run.wait_for(
            f"the scheduler evaluating {task.name}",
            _snapshot_check(run, task.name, len(sent[task.name])),
        )
        for task in TASKS
    }
    summary.ece_before = {name: float(m["ece"]) for name, m in snapshots.items()}
    console.print(metrics_table(list(snapshots.items()), THRESHOLD))

    console.rule("5. Alerts")
    firing = run.wait_for(
        "the ECE alert on autocomplete (it fires after 2 evaluations in breach)",
        lambda: [a for a in run.alerts("firing") if a["task"] == AUTOCOMPLETE.name],
    )
    summary.firing_tasks = sorted({a["task"] for a in run.alerts("firing")})
    console.print(
        f"  firing: {firing[0]['rule']} on {firing[0]['task']} "
        f"(ECE {firing[0]['value']:.3f} > {firing[0]['threshold']:.2f}, "
        f"{firing[0]['samples']} samples)"
    )
    quiet = QUIZ.name not in summary.firing_tasks
    console.print(f"  quiz: {'no alert (calibrated)' if quiet else 'ALSO FIRING'}")
    event = run.wait_for(
        "the signed alert.firing webhook", lambda: run.receiver.of_type("alert.firing")
    )[0]
    console.print(
        f"  webhook received: alert.firing for {event.data.get('task')}, "
        f"signature {'valid' if event.signature_valid else 'INVALID'}"
    )

    console.rule("6. Recalibration job")
    job = _wait_job(run)
    calibrations = run.get("/api/calibrations", task=AUTOCOMPLETE.name)["items"]
    active = next(c for c in calibrations if c["status"] == "active")
    summary.fitted_temperature = float(active["temperature"])
    summary.device = job.get("device")
    console.print(
        f"  job {job['id']} ({job['trigger']}) {job['status']} on {job['device']}: "
        f"T = {active['temperature']:.3f} (true {AUTOCOMPLETE.true_temperature:g}), "
        f"version {active['version']} active"
    )

    console.rule("7. Fresh traffic, served with the new temperature")
    run.wait_for(
        f"the sidecar to serve version {active['version']} (hot-swap)",
        lambda: run.probe(AUTOCOMPLETE) == active["version"],
    )
    fresh = run.traffic([(AUTOCOMPLETE, FRESH_REQUESTS)], "requests")[AUTOCOMPLETE.name]
    served = [s for s in fresh if s.calibration_version == active["version"]]
    summary.served_ece_after = expected_calibration_error(
        [s.confidence for s in served], [s.label for s in served]
    )
    covered = len(sent[AUTOCOMPLETE.name]) + len(served)
    after = run.wait_for(
        "the scheduler evaluating autocomplete with the fresh feedback",
        lambda: _evaluated_after(run, active["version"], covered),
    )
    # Quiz had no new traffic and kept T = 1: its "after" is its latest snapshot,
    # read back like autocomplete's, not a copy of "before".
    quiz_after = run.snapshot(QUIZ.name, 1)
    summary.ece_after = {AUTOCOMPLETE.name: float(after["ece"])}
    if quiz_after is not None:
        summary.ece_after[QUIZ.name] = float(quiz_after["ece"])
    console.print(metrics_table([(AUTOCOMPLETE.name, after)], THRESHOLD))
    console.print(
        f"  ECE of the {len(served)} fresh answers as served: {summary.served_ece_after:.3f}"
    )

    console.rule("8. The alert resolves")
    run.wait_for("alert.resolved", lambda: run.receiver.of_type("alert.resolved"))
    console.print(
        "  webhook received: alert.resolved, signature "
        + ("valid" if run.receiver.of_type("alert.resolved")[0].signature_valid else "INVALID")
    )
    for kind in (
        "alert.firing",
        "alert.resolved",
        "recalibration.succeeded",
        "calibration.activated",
    ):
        summary.webhooks[kind] = len(run.receiver.of_type(kind))
    summary.signatures_valid = all(e.signature_valid for e in run.receiver.events)


def _snapshot_check(run: DemoRun, task: str, n: int) -> Callable[[], dict[str, Any] | None]:
    """Wait for an evaluation that includes all `n` labelled answers just sent."""
    return lambda: run.snapshot(task, n)


def _wait_job(run: DemoRun) -> dict[str, Any]:
    last_status: list[str] = []

    def finished() -> dict[str, Any] | None:
        jobs = run.get("/api/jobs", task=AUTOCOMPLETE.name)["items"]
        if not jobs:
            return None
        job = jobs[0]
        if not last_status or last_status[-1] != job["status"]:
            last_status.append(job["status"])
            run.console.print(
                f"  job {job['id']}: {job['status']}"
                + (f" on {job['device']}" if job.get("device") else "")
            )
        return job if job["status"] in ("succeeded", "rejected", "failed") else None

    job = run.wait_for("the recalibration job", finished)
    if job["status"] != "succeeded":
        from monitor.errors import ThermostatError

        raise ThermostatError(f"recalibration {job['status']}: {job.get('error')}")
    return job


def _evaluated_after(run: DemoRun, version: int, n: int) -> dict[str, Any] | None:
    """A snapshot under the new version that counts old (re-scored) and fresh answers."""
    metrics = run.snapshot(AUTOCOMPLETE.name, n)
    if metrics and metrics.get("calibration_version") == version:
        return metrics
    return None


def _summarise(console: Console, summary: DemoSummary) -> None:
    console.rule("Summary")
    table = Table(show_edge=False, header_style="bold")
    for column in ("task", "ECE before", "ECE after", "temperature", "alert"):
        table.add_column(column, justify="left" if column in ("task", "alert") else "right")
    for task in TASKS:
        before = summary.ece_before.get(task.name)
        after = summary.ece_after.get(task.name)
        temp = f"{summary.fitted_temperature:.3f}" if task is AUTOCOMPLETE else "1.000"
        alert = "fired, resolved" if task.name in summary.firing_tasks else "none"
        shown_after = "-" if after is None else f"{after:.3f}"
        table.add_row(task.name, f"{before:.3f}", shown_after, temp, alert)
    console.print(table)
    hooks = ", ".join(f"{k} x{v}" for k, v in summary.webhooks.items())
    validity = "all valid" if summary.signatures_valid else "NOT all valid"
    console.print(f"webhooks: {hooks}; signatures {validity}")
    console.print(f"recalibrated on {summary.device}; done in {summary.seconds:.0f} s")
    console.print(f"dashboard: {summary.dashboard_url}")
