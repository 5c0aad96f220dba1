"""Evaluation on both databases: SQL aggregation equals the reference maths, status, versions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import numpy as np
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration import compute_metrics
from monitor.db.models import Alert, Calibration, MetricSnapshot
from monitor.db.types import utcnow
from monitor.evaluation import repository
from monitor.evaluation.service import evaluate_all
from monitor.settings import Settings
from tests.alerting.support import add_generations, calibrated


def test_sql_bins_equal_numpy_metrics_at_bin_edges(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    now = utcnow()
    rng = np.random.default_rng(1)
    # Edge values (b / M typed as decimals) must land in the lower bin, as in numpy.
    edges = np.array([0.0, 0.2, 0.3, 0.6, 0.7, 0.9, 1.0, 1 / 15, 2 / 15, 0.4, 0.8])
    conf = np.concatenate([rng.uniform(0, 1, 1500), np.repeat(edges, 20)])
    lab = (rng.random(conf.size) < conf).astype(float)
    with sessions.begin() as session:
        add_generations(session, "qa", conf, lab, now=now)
    for m in (10, 15):
        with sessions() as session:
            stats = repository.calibration_bin_stats(
                session, "qa", None, now - timedelta(days=1), now, m
            )
        expected = compute_metrics(conf, lab, m, bootstrap=False)
        assert [s.count for s in stats] == [b.count for b in expected.bins]
        ece = sum(abs(s.label_sum - s.conf_sum) for s in stats) / conf.size
        assert ece == pytest.approx(expected.ece, rel=1e-9)
        nll = sum(s.nll_sum for s in stats) / conf.size
        assert nll == pytest.approx(expected.nll, rel=1e-6)


def test_small_calibrated_task_is_insufficient_and_never_alerts(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    now = utcnow()
    with sessions.begin() as session:
        add_generations(session, "small", *calibrated(100), now=now)
    for i in range(3):
        with sessions.begin() as session:
            (result,) = evaluate_all(session, settings, now=now + timedelta(seconds=i))
        assert result.status == "insufficient_data"
        assert result.n == 100 and result.metrics["ece"] is not None
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Alert)) == 0
        assert session.scalar(select(func.count()).select_from(MetricSnapshot)) == 3


def test_large_calibrated_task_is_ok_with_signals(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    now = utcnow()
    with sessions.begin() as session:
        conf, lab = calibrated(5000)
        add_generations(session, "big", conf, lab, now=now, finish_reason="stop", repetition=0.1)
        add_generations(
            session, "big", conf[:1000], None, now=now, finish_reason="length", top_margin=0.4
        )
        # The reference window (the preceding 24 h) has a different confidence distribution.
        add_generations(session, "big", np.full(2000, 0.99), None, now=now - timedelta(hours=25))
    for i in range(3):
        with sessions.begin() as session:
            (result,) = evaluate_all(session, settings, now=now + timedelta(seconds=i))
        assert result.status == "ok"
        assert result.metrics["ece"] is not None and result.metrics["ece"] < 0.05
        low, high = result.metrics["ece_low"], result.metrics["ece_high"]
        assert low is not None and high is not None and low <= result.metrics["ece"] + 0.02
    s = result.signals
    assert s["generations"] == 6000 and s["labelled"] == 5000
    assert s["reference_generations"] == 2000
    assert s["feedback_rate"] == pytest.approx(5000 / 6000)
    assert s["truncation_rate"] == pytest.approx(1000 / 6000)
    assert s["repetition_rate"] == pytest.approx(0.1)
    assert s["top_margin"] == pytest.approx(0.4)
    assert s["mean_response_length"] == pytest.approx(20.0)
    assert s["confidence_psi"] is not None and s["confidence_psi"] > 0.25
    assert s["confidence_ks"] is not None and s["confidence_ks"] > 0.9
    with sessions() as session:
        states = {a.rule: a.state for a in session.scalars(select(Alert))}
    # The shift rule fires after `for` = 2 evaluations; the ECE rule never does.
    assert states == {"confidence_distribution_shift": "firing"}


def test_only_generations_under_the_active_calibration_count(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings()
    now = utcnow()
    with sessions.begin() as session:
        add_generations(session, "v", np.full(400, 0.9), np.zeros(400), now=now)  # raw, v None
        add_generations(session, "v", np.full(300, 0.5), np.ones(300), now=now, version=2)
        rescored = np.full(200, 0.7)
        add_generations(
            session,
            "v",
            np.full(200, 0.9),
            np.ones(200),
            now=now,
            rescored_version=2,
            rescored=rescored,
        )
    with sessions.begin() as session:
        (raw,) = evaluate_all(session, settings, now=now)
    assert raw.n == 600 and raw.calibration_version is None  # version NULL only (400 + 200)
    with sessions.begin() as session:
        session.add(Calibration(task="v", version=2, status="active", temperature=1.5))
    with sessions.begin() as session:
        (active,) = evaluate_all(session, settings, now=now)
    assert active.calibration_version == 2 and active.n == 500
    assert active.metrics["mean_confidence"] == pytest.approx((300 * 0.5 + 200 * 0.7) / 500)
    assert active.metrics["accuracy"] == pytest.approx(1.0)
