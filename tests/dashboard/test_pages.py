"""Dashboard pages and actions on seeded data (both database backends)."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pytest
from fastapi import FastAPI, Request, Response
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration import reliability_bins
from monitor.dashboard import repository
from monitor.db.models import Calibration, Generation, MetricSnapshot, RecalibrationJob, Webhook
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from tests.dashboard.conftest import sign_in
from tests.dashboard.seed import DRIFTING, HEALTHY
from tests.support.servers import serve_app


def test_overview_lists_tasks_worst_first(client: TestClient, seeded: None) -> None:
    sign_in(client)
    html = client.get("/dashboard").text
    assert re.findall(r'data-task="([^"]+)"', html) == [DRIFTING, HEALTHY]
    assert "ece_above_threshold" in html and "status-firing" in html
    assert html.count('class="sparkline"') == 2
    assert "v2 · T = 1.20" in html


def test_empty_state_explains_how_to_send_traffic(client: TestClient) -> None:
    sign_in(client)
    html = client.get("/dashboard").text
    assert "No traffic yet" in html
    assert 'base_url="http://testserver/v1"' in html
    assert "X-Thermostat-Task" in html and "/v1/feedback" in html
    # Double quotes, so a shell pasting the example expands the variable.
    assert '"Authorization: Bearer $THERMOSTAT_FEEDBACK_TOKEN"' in html


def test_task_page_shows_charts_versions_jobs_and_signals(client: TestClient, seeded: None) -> None:
    sign_in(client)
    html = client.get(f"/dashboard/tasks/{DRIFTING}").text
    assert html.count('class="chart reliability"') == 2
    assert len(re.findall(r'<rect class="bar"', html)) >= 20
    assert 'class="chart timeseries"' in html and "threshold 0.15" in html
    assert ">v1</text>" in html and ">v2</text>" in html  # activation markers
    assert 'class="chart histogram"' in html
    assert "Confidence shift (PSI)" in html
    assert re.findall(r'data-version="(\d+)"', html) == ["3", "2", "1"]
    assert "Roll back" in html and "rejected by the gate" in html
    assert client.get("/dashboard/tasks/nope").status_code == 404


def test_reliability_bins_match_the_metrics_library(
    sessions: sessionmaker[Session], seeded: None
) -> None:
    now = utcnow()
    start = now - timedelta(hours=24)
    with sessions() as session:
        sums = repository.window_distribution(session, DRIFTING, start, now, 15, 20).raw_bins
        rows = session.execute(
            select(Generation.raw_confidence, Generation.label).where(
                Generation.task == DRIFTING, Generation.label.is_not(None)
            )
        ).all()
    conf = np.array([r[0] for r in rows])
    labels = np.array([r[1] for r in rows])
    expected = reliability_bins(conf, labels, n_bins=15)
    assert [b.count for b in sums] == [b.count for b in expected]
    for got, want in zip(sums, expected, strict=True):
        if want.count:
            assert abs(got.label_sum / got.count - want.accuracy) < 1e-9


def test_generations_paginate_newest_first_without_overlap(
    client: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    sign_in(client)
    first = client.get(f"/dashboard/tasks/{HEALTHY}").text
    older = re.search(r'\?before=([^"#]+)#generations', first)
    assert older is not None
    second = client.get(f"/dashboard/tasks/{HEALTHY}?before={older.group(1)}").text
    times = re.compile(r"<code title=\"([0-9a-f-]+)\"")
    page1, page2 = times.findall(first), times.findall(second)
    assert len(page1) == len(page2) == 25
    assert not set(page1) & set(page2)
    with sessions() as session:
        stmt = select(Generation.id, Generation.created_at).where(Generation.task == HEALTHY)
        created = {str(gid): at for gid, at in session.execute(stmt)}
    order = [created[g] for g in page1 + page2]
    assert order == sorted(order, reverse=True)
    assert order[0] == max(created.values())


def test_recalibrate_queues_a_manual_job_and_shows_it(
    client: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    csrf = sign_in(client)
    response = client.post(f"/dashboard/tasks/{HEALTHY}/recalibrate", data={"csrf_token": csrf})
    assert response.status_code == 200
    assert "queued for math_reasoning" in response.text  # the flash, after the redirect
    with sessions() as session:
        job = session.scalars(
            select(RecalibrationJob).where(RecalibrationJob.trigger == "manual")
        ).one()
    assert job.task == HEALTHY and job.status == "queued"
    assert f'data-job="{job.id}"' in response.text
    again = client.post(f"/dashboard/tasks/{HEALTHY}/recalibrate", data={"csrf_token": csrf})
    assert "not queued again" in again.text


def _active_version(sessions: sessionmaker[Session], task: str) -> int:
    with sessions() as session:
        stmt = select(Calibration.version).where(
            Calibration.task == task, Calibration.status == "active"
        )
        return int(session.scalars(stmt).one())


def _calibration_id(sessions: sessionmaker[Session], task: str, version: int) -> int:
    with sessions() as session:
        stmt = select(Calibration.id).where(
            Calibration.task == task, Calibration.version == version
        )
        return int(session.scalars(stmt).one())


def test_rollback_needs_confirmation_then_switches_versions(
    client: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    csrf = sign_in(client)
    v1 = _calibration_id(sessions, DRIFTING, 1)
    confirm = client.get(f"/dashboard/calibrations/{v1}/activate")
    assert "Roll back support_qa to version 1?" in confirm.text
    unconfirmed = client.post(
        f"/dashboard/calibrations/{v1}/activate", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert unconfirmed.headers["location"] == f"/dashboard/calibrations/{v1}/activate"
    assert _active_version(sessions, DRIFTING) == 2
    done = client.post(
        f"/dashboard/calibrations/{v1}/activate", data={"csrf_token": csrf, "confirm": "yes"}
    )
    assert "Version 1 (T = 1.620) is now active" in done.text
    assert _active_version(sessions, DRIFTING) == 1
    rejected = _calibration_id(sessions, DRIFTING, 3)
    refused = client.post(
        f"/dashboard/calibrations/{rejected}/activate",
        data={"csrf_token": csrf, "confirm": "yes"},
    )
    assert refused.status_code == 409 and "rejected" in refused.text
    assert _active_version(sessions, DRIFTING) == 1


def test_evaluate_now_writes_snapshots_and_reports(
    client: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    csrf = sign_in(client)
    with sessions() as session:
        before = len(session.scalars(select(MetricSnapshot.id)).all())
    response = client.post("/dashboard/evaluate", data={"csrf_token": csrf})
    assert response.status_code == 200
    assert "Evaluated" in response.text and f"{DRIFTING}: breach" in response.text
    with sessions() as session:
        assert len(session.scalars(select(MetricSnapshot.id)).all()) == before + 2


def test_webhook_test_button_and_re_enable(
    client: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    received: list[str] = []
    receiver = FastAPI()

    @receiver.post("/hook")
    async def hook(request: Request) -> Response:
        received.append(request.headers.get("webhook-signature", ""))
        return Response(status_code=204)

    csrf = sign_in(client)
    with serve_app(receiver) as base:
        with session_scope(sessions) as session:
            dead = session.scalars(select(Webhook).where(Webhook.enabled.is_(False))).one()
            dead.url = f"{base}/hook"
            dead_id = dead.id
        page = client.post(f"/dashboard/webhooks/{dead_id}/test", data={"csrf_token": csrf})
    assert f"delivered to webhook #{dead_id} (HTTP 204" in page.text
    assert received and received[0].startswith("v1,")
    enabled = client.post(f"/dashboard/webhooks/{dead_id}/enable", data={"csrf_token": csrf})
    assert f"Webhook #{dead_id} re-enabled" in enabled.text
    with sessions() as session:
        assert session.get(Webhook, dead_id).enabled  # type: ignore[union-attr]


def test_alerts_and_jobs_pages_filter_and_paginate(client: TestClient, seeded: None) -> None:
    sign_in(client)
    alerts = client.get("/dashboard/alerts").text
    assert "Open now" in alerts and "2 alerts" in alerts
    resolved = client.get("/dashboard/alerts?state=resolved").text
    assert "1 alert<" in resolved and HEALTHY in resolved
    jobs = client.get("/dashboard/jobs?status=rejected").text
    assert "1 job<" in jobs and "held-out ECE got worse" in jobs
    assert "4 jobs" not in jobs


@pytest.mark.parametrize("path", ["/dashboard/alerts", "/dashboard/jobs"])
def test_a_page_number_past_any_page_is_refused_not_a_500(client: TestClient, path: str) -> None:
    """SQLite cannot bind an integer past 2**63: the bound answers 422 on both backends."""
    sign_in(client)
    for page in ("99999999999999999999", str(2**62)):
        assert client.get(path, params={"p": page}).status_code == 422
    assert client.get(path, params={"p": "1000000"}).status_code == 200
