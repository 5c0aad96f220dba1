"""The recalibration job on both databases: fit, gate, store, activate, re-score."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration.fitting import fit_sequence_temperature
from monitor.calibration.packing import TokenBatch, pack_token_logprobs, unpack_token_logprobs
from monitor.calibration.validation import holdout_split
from monitor.calibrations import repository
from monitor.db.models import Alert, Generation, RecalibrationJob, Task
from monitor.db.models.enums import JobStatus, JobTrigger
from monitor.db.session import session_scope
from monitor.db.types import utcnow
from monitor.evaluation.service import evaluate_all
from monitor.jobs.claim import ClaimedJob, claim_job
from monitor.jobs.queue import enqueue_recalibration
from monitor.jobs.recalibration import run_job
from monitor.settings import Settings
from tests.alerting.support import add_generations, overconfident
from tests.jobs.support import (
    TASK,
    TRUE_T,
    active_versions,
    add_calibration,
    calibrations,
    confidences,
    events,
    seed_generations,
    subscribe_all,
)

pytestmark = pytest.mark.timeout(60)


def enqueue_and_claim(
    sessions: sessionmaker[Session], owner: str = "w1", max_attempts: int = 3
) -> ClaimedJob:
    with session_scope(sessions) as session:
        enqueue_recalibration(session, TASK, JobTrigger.manual, max_attempts=max_attempts)
    with session_scope(sessions) as session:
        claimed = claim_job(session, owner, lease_s=60)
    assert claimed is not None
    return claimed


def job_row(sessions: sessionmaker[Session], job_id: int) -> RecalibrationJob:
    with session_scope(sessions) as session:
        row = session.get(RecalibrationJob, job_id)
        assert row is not None
        return row


def test_overconfident_task_is_fitted_activated_and_rescored(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    ids = seed_generations(sessions, 1500)
    subscribe_all(sessions)
    claimed = enqueue_and_claim(sessions)

    outcome = run_job(sessions, make_settings(), claimed, device="cpu")

    assert outcome.status == JobStatus.succeeded, outcome.reason
    assert outcome.temperature is not None
    assert abs(outcome.temperature - TRUE_T) / TRUE_T < 0.15
    (calibration,) = calibrations(sessions)
    assert calibration.status == "active" and calibration.version == 1
    assert calibration.device == "cpu" and calibration.job_id == claimed.id
    assert calibration.n_train + calibration.n_holdout == 1500
    assert calibration.n_holdout == 300
    assert calibration.metrics_after is not None and calibration.metrics_before is not None
    assert calibration.metrics_after["ece"] < calibration.metrics_before["ece"]
    assert calibration.metrics_before["temperature"] == 1.0
    assert calibration.fit_seconds is not None and calibration.fit_seconds > 0
    assert calibration.window_start is not None and calibration.window_end is not None
    assert calibration.activated_at is not None and calibration.rescored_at is not None

    job = job_row(sessions, claimed.id)
    assert (job.status, job.device, job.attempts) == ("succeeded", "cpu", 1)
    assert job.calibration_id == calibration.id and job.finished_at is not None
    assert job.lease_owner is None
    assert job.result is not None and job.result["fit_s"] > 0
    assert events(sessions) == ["calibration.activated", "recalibration.succeeded"]

    # History served before the version is re-scored under it: T > 1 lowers confidence.
    rows = confidences(sessions, ids).values()
    assert all(r.rescored_version == 1 for r in rows)
    assert sum(r.rescored_confidence or 0 for r in rows) < sum(r.confidence or 0 for r in rows)


def test_fit_that_cannot_improve_held_out_metrics_is_rejected(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    """The active T is the held-out optimum itself: no other T can lower held-out NLL."""
    seed_generations(sessions, 800, seed=3)
    settings = make_settings()
    with session_scope(sessions) as session:
        now = utcnow()
        rows = repository.labelled_window(session, TASK, now - timedelta(days=1), now)
    batch = TokenBatch.from_blobs(rows.blobs, rows.spans)
    _, hold = holdout_split(len(rows), settings.worker.holdout_fraction, settings.worker.seed)
    best = fit_sequence_temperature(batch.subset(hold), [rows.labels[i] for i in hold]).temperature
    add_calibration(sessions, version=1, temperature=best, status="active")
    subscribe_all(sessions)
    claimed = enqueue_and_claim(sessions)

    outcome = run_job(sessions, settings, claimed, device="cpu")

    assert outcome.status == JobStatus.rejected
    assert "did not improve" in outcome.reason
    active, rejected = calibrations(sessions)
    assert (active.status, active.temperature) == ("active", best)  # serving unchanged
    assert rejected.status == "rejected" and rejected.version == 2
    assert rejected.reason and "NLL" in rejected.reason
    job = job_row(sessions, claimed.id)
    assert (job.status, job.calibration_id) == ("rejected", rejected.id)
    assert events(sessions) == ["recalibration.rejected"]
    with session_scope(sessions) as session:
        task = session.get(Task, TASK)
        assert task is not None and task.recalibrate_not_before is not None
        cooldown = settings.scheduler.recalibration_cooldown_s
        assert task.recalibrate_not_before > utcnow() + timedelta(seconds=cooldown - 60)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_refit_on_unchanged_data_is_rejected_as_no_meaningful_change(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings], seed: int
) -> None:
    """Two identical jobs back to back: the second lands on the same T to ~1e-8.

    Its held-out NLL and ECE differ from the active version's by float noise
    (~1e-10), whose sign used to decide, seed by seed, whether an identical T
    was activated (retiring the first, re-scoring, `calibration.activated`).
    """
    seed_generations(sessions, 1500, seed=seed)
    settings = make_settings()
    first = run_job(sessions, settings, enqueue_and_claim(sessions), device="cpu")
    assert first.status == JobStatus.succeeded, first.reason
    subscribe_all(sessions)

    second = run_job(sessions, settings, enqueue_and_claim(sessions), device="cpu")

    assert second.status == JobStatus.rejected, second.reason
    assert second.temperature == pytest.approx(first.temperature, rel=1e-6)
    assert "no meaningful change in NLL and ECE" in second.reason
    assert active_versions(sessions) == [1]  # serving unchanged
    assert [c.status for c in calibrations(sessions)] == ["active", "rejected"]
    assert events(sessions) == ["recalibration.rejected"]


def test_generations_with_a_nan_logprob_are_left_out_of_the_fit_not_fail_it(
    sessions: sessionmaker[Session],
    make_settings: Callable[..., Settings],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A null logprob is stored as NaN; the generation holding it cannot be fitted."""
    ids = seed_generations(sessions, 1500)
    with session_scope(sessions) as session:
        for generation_id in ids[::50]:
            row = session.get(Generation, generation_id)
            assert row is not None and row.logprobs is not None
            chosen, top, rank = unpack_token_logprobs(row.logprobs)
            chosen = chosen.copy()
            chosen[1] = np.nan
            row.logprobs = pack_token_logprobs(chosen, top, rank)
    claimed = enqueue_and_claim(sessions)

    outcome = run_job(sessions, make_settings(), claimed, device="cpu")

    assert outcome.status == JobStatus.succeeded, outcome.reason
    (calibration,) = calibrations(sessions)
    assert calibration.n_train + calibration.n_holdout == 1500 - 30
    assert "30 generations with a NaN or +inf logprob left out" in caplog.text


def test_too_few_labelled_samples_is_rejected_with_a_reason(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    seed_generations(sessions, 40)
    seed_generations(sessions, 400, seed=1, labelled=False)  # unlabelled rows do not count
    subscribe_all(sessions)
    claimed = enqueue_and_claim(sessions)

    outcome = run_job(sessions, make_settings(), claimed, device="cpu")

    assert outcome.status == JobStatus.rejected
    assert "too few labelled generations" in outcome.reason and "40 < 300" in outcome.reason
    assert calibrations(sessions) == []
    job = job_row(sessions, claimed.id)
    assert job.status == "rejected" and job.error == outcome.reason
    assert events(sessions) == ["recalibration.rejected"]


def test_cooldown_after_a_rejection_holds_back_the_threshold_trigger(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    """An ECE alert firing during the cooldown opens no job; once it expires, one."""
    settings = make_settings()
    seed_generations(sessions, 40)
    rejected = run_job(sessions, settings, enqueue_and_claim(sessions), device="cpu")
    assert rejected.status == JobStatus.rejected
    now = utcnow()
    with session_scope(sessions) as session:
        add_generations(session, TASK, *overconfident(400), now=now)

    def threshold_jobs(at: datetime) -> int:
        with session_scope(sessions) as session:
            evaluate_all(session, settings, now=at)
            stmt = select(RecalibrationJob).where(RecalibrationJob.trigger == "threshold")
            return len(list(session.scalars(stmt)))

    assert [threshold_jobs(now + timedelta(minutes=m)) for m in (1, 2, 3)] == [0, 0, 0]
    with session_scope(sessions) as session:
        alert = session.scalars(select(Alert).where(Alert.rule == "ece_above_threshold")).one()
        assert alert.state == "firing"  # it fired (2nd evaluation) inside the cooldown
    after = now + timedelta(seconds=settings.scheduler.recalibration_cooldown_s, minutes=1)
    assert threshold_jobs(after) == 1


def test_generations_outside_the_window_are_not_used(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    ids = seed_generations(sessions, 400)
    with session_scope(sessions) as session:
        for gen in confidences(sessions, ids[:200]).values():
            gen.created_at = utcnow() - timedelta(days=3)
            session.merge(gen)
    claimed = enqueue_and_claim(sessions)

    outcome = run_job(sessions, make_settings(), claimed, device="cpu")

    assert outcome.status == JobStatus.rejected and "200 < 300" in outcome.reason


def test_cuda_requested_without_a_gpu_is_an_error_not_a_silent_cpu_fit(
    sessions: sessionmaker[Session], make_settings: Callable[..., Settings]
) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    seed_generations(sessions, 400)
    claimed = enqueue_and_claim(sessions)
    with pytest.raises(ValueError, match="CUDA is not available"):
        run_job(sessions, make_settings(), claimed, device="cuda")
    # auto resolves to the CPU here and records it
    outcome = run_job(sessions, make_settings(worker={"device": "auto"}), claimed)
    assert outcome.device == "cpu"
    assert job_row(sessions, claimed.id).device == "cpu"
    assert active_versions(sessions) == [1]
