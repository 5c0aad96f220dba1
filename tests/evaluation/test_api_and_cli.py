"""Admin API (tasks, metrics, reliability, alerts, evaluate) and `thermostat evaluate`."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from monitor.api.alerts import router as alerts_router
from monitor.api.evaluate import router as evaluate_router
from monitor.api.tasks import router as tasks_router
from monitor.cli import main
from monitor.db.models import Calibration
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.http_errors import install_error_handlers
from monitor.runtime import open_runtime
from monitor.settings import Settings
from tests.alerting.support import add_generations, calibrated, overconfident


def test_admin_api(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(admin_token="adm")
    runtime = open_runtime(settings, "api")
    app = FastAPI()
    app.state.runtime, app.state.settings = runtime, settings
    install_error_handlers(app)
    for router in (tasks_router, alerts_router, evaluate_router):
        app.include_router(router)
    now = utcnow()
    with session_scope(runtime.sessions) as session:
        add_generations(session, "bad", *overconfident(400), now=now)
        add_generations(session, "good", *calibrated(400), now=now)
        session.add(Calibration(task="good", version=3, status="active", temperature=1.2))
        session.add(Calibration(task="good", version=2, status="retired", temperature=1.1))
    try:
        with TestClient(app, headers={"authorization": "Bearer adm"}) as client:
            assert (
                client.get("/api/tasks", headers={"authorization": "Bearer no"}).status_code == 401
            )
            first = client.post("/api/evaluate").json()["items"]
            assert {r["task"]: r["status"] for r in first} == {
                "bad": "breach",
                "good": "insufficient_data",
            }
            # "good" has an active v3 but its traffic is raw: nothing counts under v3.
            good = next(r for r in first if r["task"] == "good")
            assert good["n"] == 0 and good["calibration_version"] == 3
            client.post("/api/evaluate")
            tasks = client.get("/api/tasks").json()["items"]
            assert {t["name"] for t in tasks} == {"bad", "good"}
            bad = client.get("/api/tasks/bad").json()
            assert bad["metrics"]["status"] == "breach" and bad["active_calibration"] is None
            assert (
                bad["metrics"]["ece"] == pytest.approx(0.3)
                and bad["config"]["ece_threshold"] == 0.15
            )
            good_view = client.get("/api/tasks/good").json()
            assert good_view["active_calibration"]["version"] == 3
            assert good_view["metrics"]["status"] == "insufficient_data"
            history = client.get("/api/tasks/bad/metrics").json()["items"]
            assert len(history) == 2 and history[0]["evaluated_at"] >= history[1]["evaluated_at"]
            since = (utcnow() + timedelta(hours=1)).isoformat()
            assert (
                client.get("/api/tasks/bad/metrics", params={"since": since}).json()["items"] == []
            )
            bins = client.get("/api/tasks/bad/reliability").json()["bins"]
            assert len(bins) == 15 and sum(b["count"] for b in bins) == 400
            full = next(b for b in bins if b["count"])
            assert set(full) >= {"lower", "upper", "count", "mean_confidence", "accuracy"}
            firing = client.get("/api/alerts", params={"state": "firing"}).json()["items"]
            assert [(a["rule"], a["task"]) for a in firing] == [("ece_above_threshold", "bad")]
            assert firing[0]["samples"] == 400 and firing[0]["threshold"] == 0.15
            assert client.get("/api/alerts", params={"state": "resolved"}).json()["items"] == []
            assert client.get("/api/alerts", params={"state": "bogus"}).status_code == 422
            assert client.get("/api/tasks/nope").status_code == 404
    finally:
        runtime.engine.dispose()


def test_cli_evaluate_prints_a_table(
    make_settings: Callable[..., Settings],
    db_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runtime = open_runtime(make_settings(), "api")
    with session_scope(runtime.sessions) as session:
        add_generations(session, "qa", *overconfident(400), now=utcnow())
    runtime.engine.dispose()
    monkeypatch.setenv("THERMOSTAT_DATABASE_URL", db_url)
    assert main(["evaluate"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["task", "status", "n"]
    assert row.split()[:4] == ["qa", "breach", "400/300", "0.300"]
