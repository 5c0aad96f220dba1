"""The demo scenario, step by step, with progress and plain numbers.

Every step talks to the product the way a user does: the official `openai`
client through the sidecar, the feedback API, the admin API, and a webhook
receiver. Each wait is bounded and fails with a one-line reason.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from monitor.demo.receiver import WebhookReceiver
from monitor.demo.workload import (
    AUTOCOMPLETE,
    DemoTask,
    grade,
    pick,
    prompts_for,
    request_for,
    true_probability,
)
from monitor.errors import ThermostatError

WAIT_S = 90.0


@dataclass
class Sample:
    generation_id: str
    confidence: float
    label: bool
    calibration_version: int | None


@dataclass
class DemoSummary:
    ece_before: dict[str, float] = field(default_factory=dict)
    ece_after: dict[str, float] = field(default_factory=dict)
    served_ece_after: float | None = None
    fitted_temperature: float | None = None
    true_temperature: float = AUTOCOMPLETE.true_temperature
    device: str | None = None
    firing_tasks: list[str] = field(default_factory=list)
    webhooks: dict[str, int] = field(default_factory=dict)
    signatures_valid: bool = False
    dashboard_url: str = ""
    seconds: float = 0.0


class DemoRun:
    def __init__(
        self, console: Console, sidecar_url: str, receiver: WebhookReceiver, seed: int = 7
    ) -> None:
        self.console = console
        self.url = sidecar_url
        self.receiver = receiver
        self.rng = random.Random(seed)
        self.api = httpx.Client(base_url=sidecar_url, timeout=30)
        self.client = openai.OpenAI(base_url=f"{sidecar_url}/v1", api_key="demo", max_retries=2)
        self.summary = DemoSummary(dashboard_url=f"{sidecar_url}/dashboard")

    # -- traffic -----------------------------------------------------------------------

    def _one(self, task: DemoTask, question: str, seed: int, rng: random.Random) -> Sample | None:
        """One request and its simulated grade; None for an answer with no tokens."""
        kwargs = request_for(task, question, seed)
        if task.endpoint == "chat":
            response: Any = self.client.chat.completions.create(**kwargs)
        else:
            response = self.client.completions.create(**kwargs)
        thermostat = (response.model_extra or {})["thermostat"]
        probability = true_probability(task, response.choices[0])
        if probability is None or thermostat["confidence"] is None:
            return None  # an empty answer (the model stopped at once): nothing to grade
        label = grade(probability, rng)
        return Sample(
            thermostat["generation_id"],
            float(thermostat["confidence"]),
            label,
            thermostat["calibration_version"],
        )

    def probe(self, task: DemoTask) -> int | None:
        """The calibration version the sidecar serves `task` with right now (ungraded)."""
        sample = self._one(task, pick(prompts_for(task), self.rng), 0, random.Random(0))
        return sample.calibration_version if sample else None

    def traffic(self, plan: list[tuple[DemoTask, int]], title: str) -> dict[str, list[Sample]]:
        """Send requests, grade them, post the feedback; returns samples per task."""
        jobs = [
            (task, pick(prompts_for(task), self.rng), self.rng.randrange(1 << 30))
            for task, count in plan
            for _ in range(count)
        ]
        self.rng.shuffle(jobs)
        samples: dict[str, list[Sample]] = {task.name: [] for task, _ in plan}
        with _progress(self.console) as progress:
            bar = progress.add_task(title, total=len(jobs))
            with ThreadPoolExecutor(max_workers=4) as pool:
                seeds = [random.Random(s) for _, _, s in jobs]
                futures = [
                    pool.submit(self._one, t, q, s, r)
                    for (t, q, s), r in zip(jobs, seeds, strict=True)
                ]
                for (task, _, _), future in zip(jobs, futures, strict=True):
                    sample = future.result()
                    if sample is not None:
                        samples[task.name].append(sample)
                    progress.advance(bar)
            all_samples = [s for group in samples.values() for s in group]
            fb = progress.add_task("posting feedback (simulated grader)", total=len(all_samples))
            for start in range(0, len(all_samples), 250):
                chunk = all_samples[start : start + 250]
                items = [
                    {"generation_id": s.generation_id, "label": s.label, "source": "grader"}
                    for s in chunk
                ]
                response = self.api.post("/v1/feedback/batch", json={"items": items})
                if response.status_code != 207:
                    raise ThermostatError(
                        f"feedback batch refused: {response.status_code} {response.text[:200]}"
                    )
                progress.advance(fb, len(chunk))
        return samples

    # -- waiting on the product --------------------------------------------------------

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        deadline = time.monotonic() + timeout
        with self.console.status(what):
            while time.monotonic() < deadline:
                result = check()
                if result:
                    return result
                time.sleep(0.5)
        raise ThermostatError(f"timed out after {timeout:.0f} s waiting for: {what}")

    def get(self, path: str, **params: Any) -> Any:
        response = self.api.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def snapshot(self, task: str, min_n: int) -> dict[str, Any] | None:
        metrics = self.get(f"/api/tasks/{task}").get("metrics")
        if metrics and metrics.get("n", 0) >= min_n and metrics["status"] != "insufficient_data":
            return dict(metrics)
        return None

    def alerts(self, state: str) -> list[dict[str, Any]]:
        return list(self.get("/api/alerts", state=state)["items"])


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("  {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def metrics_table(rows: list[tuple[str, dict[str, Any]]], threshold: float) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for column in ("task", "n", "accuracy", "mean conf.", "ECE", "95% interval", "status"):
        table.add_column(column, justify="left" if column in ("task", "status") else "right")
    for task, m in rows:
        colour = "red" if m["ece"] is not None and m["ece"] > threshold else "green"
        table.add_row(
            task,
            str(m["n"]),
            f"{m['accuracy']:.3f}",
            f"{m['mean_confidence']:.3f}",
            f"[{colour}]{m['ece']:.3f}[/]",
            f"[{m['ece_low']:.3f}, {m['ece_high']:.3f}]" if m.get("ece_low") is not None else "-",
            m["status"],
        )
    return table


def write_summary(path: Path, summary: DemoSummary) -> None:
    path.write_bytes(orjson.dumps(asdict(summary), option=orjson.OPT_INDENT_2))
