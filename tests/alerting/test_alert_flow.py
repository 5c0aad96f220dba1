"""The whole loop on both databases: overconfident traffic -> alert -> signed webhook -> job.

A real HTTP receiver on loopback verifies every signature with the
`standardwebhooks` library, as a customer's endpoint would.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook as Verifier

from monitor.alerting.delivery import new_secret
from monitor.alerting.service import close_shared_client, create_webhook
from monitor.db.models import Alert, Calibration, RecalibrationJob, WebhookDelivery
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.runtime import Runtime, open_runtime
from monitor.scheduler.jobs import deliver_due, run_evaluation
from monitor.settings import Settings
from tests.alerting.support import add_generations, calibrated, overconfident, webhook_receiver


@pytest.fixture
def runtime(make_settings: Callable[..., Settings]) -> Iterator[Runtime]:
    rt = open_runtime(make_settings(), "scheduler")
    yield rt
    close_shared_client(rt)
    rt.engine.dispose()


def count(rt: Runtime, model: type) -> int:
    with session_scope(rt.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_overconfident_task_fires_once_then_resolves(runtime: Runtime) -> None:
    secret = new_secret()
    now = utcnow()
    with webhook_receiver() as receiver:
        with session_scope(runtime.sessions) as session:
            create_webhook(session, receiver.url, ["alert.firing", "alert.resolved"], secret)
            add_generations(session, "qa", *overconfident(400), now=now)

        (first,) = run_evaluation(runtime, now=now)
        assert first.status == "breach" and first.metrics["ece"] == pytest.approx(0.3)
        assert count(runtime, WebhookDelivery) == 0 and count(runtime, RecalibrationJob) == 0

        for minute in (1, 2, 3):  # fires at the 2nd evaluation, then stays quiet
            run_evaluation(runtime, now=now + timedelta(minutes=minute))
            deliver_due(runtime, now=now + timedelta(minutes=minute))
        with session_scope(runtime.sessions) as session:
            alerts = list(session.scalars(select(Alert)))
            jobs = list(session.scalars(select(RecalibrationJob)))
        ece_alerts = [a for a in alerts if a.rule == "ece_above_threshold"]
        assert [a.state for a in ece_alerts] == ["firing"]
        assert [(j.task, j.trigger, j.status) for j in jobs] == [("qa", "threshold", "queued")]
        assert len(receiver.requests) == 1
        headers, body = receiver.requests[0]
        event = Verifier(secret).verify(body, headers)
        assert event["type"] == "alert.firing"
        data = event["data"]
        assert data["rule"] == "ece_above_threshold" and data["task"] == "qa"
        assert data["value"] == pytest.approx(0.3) and data["threshold"] == 0.15
        assert (
            data["samples"] == 400 and data["started_at"] and data["alert_id"] == ece_alerts[0].id
        )
        with pytest.raises(Exception, match="signature"):
            Verifier(new_secret()).verify(body, headers)

        # The fix: a new calibration is activated and traffic under it is calibrated.
        with session_scope(runtime.sessions) as session:
            session.add(Calibration(task="qa", version=1, status="active", temperature=2.0))
            add_generations(
                session, "qa", *calibrated(2000), now=now + timedelta(minutes=4), version=1
            )
        later = now + timedelta(minutes=5)
        (fixed,) = run_evaluation(runtime, now=later)
        assert fixed.status == "ok" and fixed.calibration_version == 1
        deliver_due(runtime, now=later)
        run_evaluation(runtime, now=later + timedelta(minutes=1))
        deliver_due(runtime, now=later + timedelta(minutes=1))

    types = [json.loads(body)["type"] for _, body in receiver.requests]
    assert types == ["alert.firing", "alert.resolved"]
    resolved = Verifier(secret).verify(receiver.requests[1][1], receiver.requests[1][0])
    assert resolved["data"]["alert_id"] == ece_alerts[0].id
    with session_scope(runtime.sessions) as session:
        states = [
            a.state
            for a in session.scalars(select(Alert).where(Alert.rule == "ece_above_threshold"))
        ]
    assert states == ["resolved"]
    assert count(runtime, RecalibrationJob) == 1


def test_ece_rule_uses_the_tasks_own_lower_min_samples(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """A task with `min_samples: 100` is judged on 150 labels, not held to the default 300."""
    config = tmp_path / "thermostat.yaml"
    config.write_text(yaml.safe_dump({"tasks": {"qa": {"min_samples": 100}}}))
    rt = open_runtime(make_settings(config=config), "scheduler")
    now = utcnow()
    try:
        with session_scope(rt.sessions) as session:
            add_generations(session, "qa", *overconfident(150), now=now)
        (first,) = run_evaluation(rt, now=now)
        assert first.status == "breach" and first.metrics["ece"] == pytest.approx(0.3)
        with session_scope(rt.sessions) as session:
            assert list(session.scalars(select(Alert.state))) == ["pending"]
        run_evaluation(rt, now=now + timedelta(minutes=1))  # the rule's `for: 2`
        with session_scope(rt.sessions) as session:
            alert = session.scalars(select(Alert)).one()
            job = session.scalars(select(RecalibrationJob)).one()
        assert (alert.rule, alert.state, alert.samples) == ("ece_above_threshold", "firing", 150)
        assert (job.task, job.trigger) == ("qa", "threshold")
    finally:
        rt.engine.dispose()


def test_renotify_while_firing(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(scheduler={"alert_renotify_s": 600})
    rt = open_runtime(settings, "scheduler")
    now = utcnow()
    try:
        with session_scope(rt.sessions) as session:
            create_webhook(session, "http://127.0.0.1:9/none", ["alert.firing"], new_secret())
            add_generations(session, "qa", *overconfident(400), now=now)
        for minutes in (0, 1, 5, 12, 13):
            run_evaluation(rt, now=now + timedelta(minutes=minutes))
        with session_scope(rt.sessions) as session:
            sent = list(session.scalars(select(WebhookDelivery.payload)))
        renotified = [json.loads(p)["data"].get("renotification", False) for p in sent]
        assert renotified == [False, True]  # fired at minute 1, re-sent at 12 (>= 10 min)
    finally:
        rt.engine.dispose()


def test_no_renotification_by_default(runtime: Runtime) -> None:
    """CONTRACT.md: one episode is notified once on firing, however long it fires."""
    now = utcnow()
    with session_scope(runtime.sessions) as session:
        create_webhook(session, "http://127.0.0.1:9/none", ["alert.firing"], new_secret())
        add_generations(session, "qa", *overconfident(400), now=now)
    for minutes in (0, 1, 7 * 60, 13 * 60, 20 * 60):
        run_evaluation(runtime, now=now + timedelta(minutes=minutes))
    with session_scope(runtime.sessions) as session:
        states = list(session.scalars(select(Alert.state)))
        sent = list(session.scalars(select(WebhookDelivery.payload)))
    assert states == ["firing"]
    assert [json.loads(p)["type"] for p in sent] == ["alert.firing"]


def test_insufficient_data_drops_pending_and_keeps_firing(runtime: Runtime) -> None:
    now = utcnow()
    with session_scope(runtime.sessions) as session:
        add_generations(session, "qa", *overconfident(400), now=now, spread=timedelta(minutes=30))
    run_evaluation(runtime, now=now)
    with session_scope(runtime.sessions) as session:
        assert [a.state for a in session.scalars(select(Alert))] == ["pending"]
    # Window moves past the data: nothing to judge, so the pending episode is dropped.
    run_evaluation(runtime, now=now + timedelta(days=3))
    assert count(runtime, Alert) == 0
    run_evaluation(runtime, now=now + timedelta(seconds=1))
    run_evaluation(runtime, now=now + timedelta(seconds=2))
    run_evaluation(runtime, now=now + timedelta(days=3))
    with session_scope(runtime.sessions) as session:
        assert [a.state for a in session.scalars(select(Alert))] == ["firing"]
