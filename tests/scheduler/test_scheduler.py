"""The scheduler: job registry vs switches, leadership, cron, retention, start and stop."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from monitor.db.models import (
    Alert,
    Feedback,
    Generation,
    MetricSnapshot,
    RecalibrationJob,
    Webhook,
)
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.errors import ConfigError
from monitor.runtime import ROLE_SERVICES, Runtime, open_runtime
from monitor.scheduler.jobs import JOBS, purge_retention
from monitor.scheduler.service import SchedulerService, create_scheduler
from monitor.settings import SchedulerSettings, Settings
from tests.alerting.support import add_generations, overconfident


def count(rt: Runtime, model: type) -> int:
    with session_scope(rt.sessions) as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_registry_matches_settings_switches(make_settings: Callable[..., Settings]) -> None:
    switches = {n for n, f in SchedulerSettings.model_fields.items() if n.endswith("_enabled")}
    assert {spec.switch for spec in JOBS.values()} == switches
    for name, spec in JOBS.items():
        assert re.fullmatch(r"[a-z]+\.[a-z]+", name) and spec.name == name
        assert SchedulerSettings.model_fields[spec.switch].annotation is bool
    assert "monitor.scheduler.service:create_scheduler" in ROLE_SERVICES["scheduler"]
    rt = open_runtime(make_settings(), "scheduler")
    try:
        built = {job.id for job in SchedulerService(rt).build().get_jobs()}
        assert built == {n for n, s in JOBS.items() if s.interval_s is not None}
        for name, spec in JOBS.items():
            off = make_settings(scheduler={spec.switch: False})
            service = SchedulerService(Runtime(off, "scheduler", rt.engine, rt.sessions))
            assert name not in service.enabled_jobs()
            assert name not in {job.id for job in service.build().get_jobs()}
            assert service.run_job(name, *(["qa"] if spec.interval_s is None else [])) is None
    finally:
        rt.engine.dispose()


def test_two_schedulers_one_leader_and_takeover(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    a = SchedulerService(open_runtime(settings, "scheduler"))
    b = SchedulerService(open_runtime(settings, "scheduler"))
    try:
        with session_scope(a.runtime.sessions) as session:
            add_generations(session, "qa", *overconfident(400), now=utcnow())
        ran = []
        for _ in range(3):
            for service in (a, b):
                ran.append(service.run_job("evaluation.evaluate") is not None)
        assert ran == [True, False] * 3
        assert count(a.runtime, MetricSnapshot) == 3
        assert count(a.runtime, Alert) == 1 and count(a.runtime, RecalibrationJob) == 1
        asyncio.run(a.stop())  # the leader goes away: its lock goes with it
        assert b.run_job("evaluation.evaluate") is not None
        assert count(b.runtime, MetricSnapshot) == 4
        assert count(b.runtime, Alert) == 1 and count(b.runtime, RecalibrationJob) == 1
    finally:
        asyncio.run(b.stop())
        a.runtime.engine.dispose()
        b.runtime.engine.dispose()


def test_cron_jobs_enqueue_with_trigger_cron(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = tmp_path / "thermostat.yaml"
    config.write_text(
        yaml.safe_dump({"tasks": {"qa": {"recalibrate_cron": "*/5 * * * *"}, "b": {}}})
    )
    rt = open_runtime(make_settings(config=config), "scheduler")
    service = SchedulerService(rt)
    try:
        service.prepare()
        jobs = {job.id: job for job in service.build().get_jobs()}
        assert "recalibration.cron:qa" in jobs and "recalibration.cron:b" not in jobs
        assert "minute='*/5'" in str(jobs["recalibration.cron:qa"].trigger)
        first = service.run_job("recalibration.cron", "qa")
        assert service.run_job("recalibration.cron", "qa") == first  # one open job per task
        with session_scope(rt.sessions) as session:
            job = session.scalars(select(RecalibrationJob)).one()
            assert (job.task, job.trigger, job.status) == ("qa", "cron", "queued")
    finally:
        asyncio.run(service.stop())
        rt.engine.dispose()


@pytest.fixture
def two_day_retention(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Runtime]:
    """A scheduler runtime whose tasks keep generations for two days."""
    config = tmp_path / "thermostat.yaml"
    config.write_text(yaml.safe_dump({"defaults": {"retention": "2d"}}))
    rt = open_runtime(make_settings(config=config), "scheduler")
    try:
        yield rt
    finally:
        rt.engine.dispose()


def test_retention_purges_old_generations_in_batches(two_day_retention: Runtime) -> None:
    rt, now = two_day_retention, utcnow()
    with session_scope(rt.sessions) as session:
        add_generations(session, "qa", [0.5] * 25, None, now=now - timedelta(days=3))
        add_generations(session, "qa", [0.5] * 10, None, now=now)
    assert purge_retention(rt, now=now, batch=7) == {"qa": 25}
    with session_scope(rt.sessions) as session:
        oldest = session.scalar(select(func.min(Generation.created_at)))
        assert oldest is not None and oldest > now - timedelta(days=2)
    assert count(rt, Generation) == 10


def test_service_runs_jobs_on_its_own_and_syncs_config_webhooks(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    config = tmp_path / "thermostat.yaml"
    hooks = [{"url": "http://127.0.0.1:9/cfg", "secret": "whsec_c2VjcmV0c2VjcmV0c2VjcmV0"}]
    config.write_text(yaml.safe_dump({"webhooks": hooks}))
    settings = make_settings(config=config, evaluate_interval_s=0.2)
    rt = open_runtime(settings, "scheduler")
    service = create_scheduler(rt)
    try:
        with session_scope(rt.sessions) as session:
            add_generations(session, "qa", [0.5] * 5, [1.0] * 5, now=utcnow())
        asyncio.run(service.start())
        deadline = time.monotonic() + 10
        while count(rt, MetricSnapshot) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert count(rt, MetricSnapshot) >= 2
        with session_scope(rt.sessions) as session:
            hook = session.scalars(select(Webhook)).one()
            assert (hook.source, hook.url, hook.enabled) == ("config", hooks[0]["url"], True)
    finally:
        asyncio.run(service.stop())
        rt.engine.dispose()


def test_bad_rules_file_refused_at_start(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {name: x, metric: nope, comparison: '>', threshold: 1}\n")
    rt = open_runtime(make_settings(alert_rules=rules), "scheduler")
    try:
        with pytest.raises(ConfigError, match=r"rules.yaml: rule 'x': metric: unknown metric"):
            asyncio.run(create_scheduler(rt).start())
    finally:
        rt.engine.dispose()


def test_retention_purges_the_feedback_of_purged_generations(two_day_retention: Runtime) -> None:
    rt, now = two_day_retention, utcnow()
    with session_scope(rt.sessions) as session:
        add_generations(session, "qa", [0.5] * 12, None, now=now - timedelta(days=3))
        add_generations(session, "qa", [0.5] * 4, None, now=now)
        session.flush()
        rows = session.execute(select(Generation.id, Generation.created_at)).all()
        old = {g for g, at in rows if at < now - timedelta(days=2)}
        kept = {g for g, _ in rows} - old
        for gen in old | kept:  # two sources each, with a comment
            for source in ("user", "grader"):
                session.add(
                    Feedback(generation_id=gen, label=1.0, source=source, comment="private")
                )
    assert len(old) == 12 and len(kept) == 4
    assert purge_retention(rt, now=now, batch=5) == {"qa": 12}
    with session_scope(rt.sessions) as session:
        left = list(session.scalars(select(Feedback.generation_id)))
    assert not old & set(left)
    assert sorted(left) == sorted(list(kept) * 2)
