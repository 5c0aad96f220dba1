"""The whole loop in one sidecar (role `all`), on SQLite and Postgres.

Overconfident traffic (true temperature 2.5) through the official `openai`
client, with feedback; the scheduler's evaluation sees the ECE breach, the
alert fires and opens a threshold job; the worker fits T near 2.5 and
activates it; the proxy hot-swaps it, so the next answers carry a confidence
below the raw one; fresh traffic with feedback is calibrated (ECE < 0.10) and
the alert resolves. Webhooks go to a real receiver that checks signatures.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.calibration import expected_calibration_error
from monitor.config import EVENT_TYPES
from monitor.db.models import Generation
from monitor.db.session import session_scope
from monitor.settings import Settings
from tests.e2e.support import (
    Answer,
    SharpUpstream,
    ask,
    ask_many,
    dump,
    get_json,
    grade,
    post_feedback,
    wait_for,
    webhook_receiver,
)
from tests.support.servers import serve_app

pytestmark = pytest.mark.timeout(240)

TASK = "t"
TRUE_T = 2.5
N_FIT = 1000  # 600 labels leave T's estimate with a spread of ~0.2: too close to 15%
N_FRESH = 600
SECRET = "whsec_" + base64.b64encode(b"closed-loop-e2e-secret-0123456789").decode()
RULE = "ece_above_threshold"


def write_config(path: Path, hook_url: str) -> Path:
    config = {
        "tasks": {TASK: {"min_samples": 300, "window": "1h", "ece_threshold": 0.15}},
        "webhooks": [{"url": hook_url, "secret": SECRET, "events": list(EVENT_TYPES)}],
    }
    path.write_text(yaml.safe_dump(config))
    return path


def stored(sessions: sessionmaker[Session], answers: list[Answer]) -> bool:
    """Every answer's generation row is written (feedback then lands in one commit)."""
    ids = [uuid.UUID(a.generation_id) for a in answers]
    with session_scope(sessions) as session:
        stmt = select(func.count()).select_from(Generation).where(Generation.id.in_(ids))
        return int(session.scalar(stmt) or 0) == len(ids)


def feedback_items(answers: list[Answer], labels: list[bool]) -> list[dict[str, Any]]:
    return [
        {"generation_id": a.generation_id, "label": y, "source": "grader"}
        for a, y in zip(answers, labels, strict=True)
    ]


def test_breach_fit_hot_swap_and_recovery(
    make_settings: Callable[..., Settings], sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    with SharpUpstream() as upstream, webhook_receiver(SECRET) as receiver:
        settings = make_settings(
            upstream_url=upstream.base_url,
            config=write_config(tmp_path / "thermostat.yaml", receiver.url),
            evaluate_interval_s=1.0,
            scheduler={"webhook_delivery_interval_s": 0.2, "bootstrap_resamples": 50},
            worker={"poll_interval_s": 0.2, "device": "cpu"},
            hot_swap={"poll_interval_s": 0.2},
            recorder={"flush_interval_s": 0.05},
        )
        with serve_app(create_app(settings, "all")) as base:
            client = OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=30)
            admin = httpx.Client(base_url=base, timeout=30)

            def get(path: str, **params: Any) -> Any:
                return get_json(admin, path, **params)

            # 1. Overconfident traffic, uncalibrated, graded at the true temperature.
            answers = ask_many(client, TASK, range(N_FIT))
            assert all(a.calibration_version is None for a in answers)
            assert all(a.confidence == a.raw_confidence for a in answers)
            labels = [grade(a, TRUE_T, seed=1) for a in answers]
            raw_ece = expected_calibration_error([a.raw_confidence for a in answers], labels)
            assert raw_ece > 0.15, f"the scenario is not overconfident enough: ECE {raw_ece}"
            wait_for(lambda: stored(sessions, answers), 60, "the recorder to write the traffic")
            post_feedback(base, feedback_items(answers, labels))  # one batch, one commit
            timings["traffic"] = time.monotonic() - t0

            # 2. The scheduler sees the breach; the alert fires and opens a threshold job.
            def finished_job() -> dict[str, Any] | None:
                jobs = get("/api/jobs", task=TASK)["items"]
                done = [j for j in jobs if j["status"] not in ("queued", "running")]
                return done[0] if done else None

            job = wait_for(finished_job, 120, "the threshold job to finish")
            timings["job"] = time.monotonic() - t0
            assert len(get("/api/jobs", task=TASK)["items"]) == 1
            assert job["trigger"] == "threshold", dump(job)
            assert job["status"] == "succeeded", dump(job)
            firing = wait_for(lambda: receiver.of_type("alert.firing"), 30, "alert.firing")
            assert firing[0]["data"]["rule"] == RULE and firing[0]["data"]["task"] == TASK
            assert firing[0]["data"]["value"] > 0.15 and firing[0]["data"]["samples"] >= 300

            # 3. The fitted temperature is near the truth and the version is active.
            calibrations = get("/api/calibrations", task=TASK)["items"]
            assert len(calibrations) == 1, dump(calibrations)
            calibration = calibrations[0]
            assert calibration["id"] == job["calibration_id"]
            assert calibration["status"] == "active"
            assert abs(calibration["temperature"] - TRUE_T) <= 0.15 * TRUE_T, dump(calibration)
            task = get(f"/api/tasks/{TASK}")
            assert task["active_calibration"]["version"] == calibration["version"]
            version = calibration["version"]

            # 4. The proxy swapped it in: the next answers are calibrated.
            probe = iter(range(10**6, 10**7))
            wait_for(
                lambda: ask(client, TASK, next(probe)).calibration_version == version,
                30,
                "the proxy to serve the new version",
            )
            timings["swap"] = time.monotonic() - t0
            fresh = ask_many(client, TASK, range(N_FIT, N_FIT + N_FRESH))
            assert {a.calibration_version for a in fresh} == {version}
            greedy = [a for a in fresh if a.greedy]
            assert len(greedy) > 0.8 * len(fresh)
            assert all(a.confidence < a.raw_confidence for a in greedy)
            assert sum(a.confidence for a in fresh) < sum(a.raw_confidence for a in fresh)

            # 5. Fresh traffic with feedback is calibrated, and the alert resolves.
            fresh_labels = [grade(a, TRUE_T, seed=2) for a in fresh]
            fresh_ece = expected_calibration_error([a.confidence for a in fresh], fresh_labels)
            fresh_raw_ece = expected_calibration_error(
                [a.raw_confidence for a in fresh], fresh_labels
            )
            assert fresh_ece < 0.10, (fresh_ece, fresh_raw_ece)
            wait_for(lambda: stored(sessions, fresh), 60, "the recorder to write fresh traffic")
            post_feedback(base, feedback_items(fresh, fresh_labels))
            response = admin.post("/api/evaluate")
            assert response.status_code == 200, response.text
            (result,) = [r for r in response.json()["items"] if r["task"] == TASK]
            assert result["calibration_version"] == version
            assert result["status"] == "ok", dump(result)
            assert result["n"] >= N_FRESH
            assert result["metrics"]["ece"] < 0.10, dump(result)

            resolved = wait_for(lambda: receiver.of_type("alert.resolved"), 60, "alert.resolved")
            timings["resolved"] = time.monotonic() - t0
            assert resolved[0]["data"]["rule"] == RULE and resolved[0]["data"]["task"] == TASK
            assert len(receiver.of_type("alert.firing")) == 1
            alerts = get("/api/alerts", state="resolved")["items"]
            assert [a["rule"] for a in alerts if a["task"] == TASK] == [RULE]
            activated = wait_for(
                lambda: receiver.of_type("calibration.activated"), 30, "calibration.activated"
            )
            assert [e["data"]["version"] for e in activated] == [version]
            succeeded = wait_for(
                lambda: receiver.of_type("recalibration.succeeded"), 30, "recalibration.succeeded"
            )
            assert [e["data"]["job_id"] for e in succeeded] == [job["id"]]
            assert receiver.rejected == []
            admin.close()
    print(f"closed loop timings (s): {timings}, fitted T {calibration['temperature']:.3f}")
