"""The recorder's writer process against real SQLite and Postgres.

Batches are packed and inserted in a spawned child (`writer_process.py`); the
parent keeps every record until the child has answered, so a child that dies
costs nothing: the batch is written in-process and a new child takes later ones.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration.packing import unpack_token_logprobs
from monitor.db.models import Generation
from monitor.proxy import row_writer, writer_process
from monitor.proxy.recorder import Recorder
from tests.recorder.helpers import make_record, unreachable_sessions, wait_for


def _count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Generation)) or 0)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _child_pid(recorder: Recorder) -> int:
    pool = recorder._process._pool if recorder._process else None
    pids = list(getattr(pool, "_processes", {}) or {})
    assert len(pids) == 1, "the writer process is not running"
    return int(pids[0])


def _no_packing_here(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing in this process fails: rows that still arrive were packed by the child."""

    def refuse(record: Any) -> Any:
        raise AssertionError("packed in the parent")

    monkeypatch.setattr(row_writer, "generation_row", refuse)


def test_batches_are_packed_and_inserted_by_the_child(
    make_recorder: Any,
    sessions: sessionmaker[Session],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _no_packing_here(monkeypatch)
    recorder = make_recorder(writer_process=True, batch_size=10)
    records = [make_record(n=3 + i % 4) for i in range(25)]
    bad = make_record(chosen_rank=np.zeros(99, dtype=np.int8))  # cannot be packed
    assert all(recorder.submit(r) for r in [*records[:12], bad, *records[12:]])
    assert recorder.wait_idle(30)

    assert _child_pid(recorder) != os.getpid()
    assert _count(sessions) == 25
    assert _value(registry, "thermostat_recorder_written_total", kind="generation") == 25
    assert _value(registry, "thermostat_recorder_dropped_total", reason="invalid") == 1
    with sessions() as session:
        row = session.get(Generation, records[3].id)
        assert row is not None
        chosen, top, _ = unpack_token_logprobs(row.logprobs or b"")
        np.testing.assert_allclose(chosen, records[3].chosen)
        np.testing.assert_allclose(top, records[3].top, rtol=1e-3)


@pytest.mark.parametrize("nice", [0, 7])
def test_the_child_runs_at_the_configured_lower_priority(make_recorder: Any, nice: int) -> None:
    recorder = make_recorder(writer_process=True, batch_size=1, writer_nice=nice)
    assert recorder.submit(make_record())
    assert recorder.wait_idle(30)

    own = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, _child_pid(recorder)) == min(own + nice, 19)


def test_a_refused_priority_change_is_logged_and_the_writer_goes_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(increment: int) -> int:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(writer_process.os, "nice", refuse)
    with caplog.at_level("WARNING", logger=writer_process.__name__):
        writer_process.lower_priority(10)
    assert "keeps its priority (nice +10 refused" in caplog.text


def test_a_killed_child_loses_and_duplicates_nothing(
    make_recorder: Any, sessions: sessionmaker[Session], registry: CollectorRegistry
) -> None:
    recorder = make_recorder(writer_process=True, batch_size=5)
    first = [make_record() for _ in range(10)]
    assert all(recorder.submit(r) for r in first)
    assert recorder.wait_idle(30)
    os.kill(_child_pid(recorder), signal.SIGKILL)

    rest = [make_record() for _ in range(20)]
    assert all(recorder.submit(r) for r in rest)
    assert recorder.wait_idle(30)
    assert _count(sessions) == 30  # the batch the dead child held was written in-process
    assert _value(registry, "thermostat_recorder_written_total", kind="generation") == 30


def test_database_down_in_the_child_spools_then_replays(
    make_recorder: Any,
    sessions: sessionmaker[Session],
    registry: CollectorRegistry,
    backend: str,
    tmp_path: Path,
) -> None:
    recorder = make_recorder(
        unreachable_sessions(backend), writer_process=True, batch_size=4, replay_interval_s=0.2
    )
    records = [make_record() for _ in range(10)]
    assert all(recorder.submit(r) for r in records)
    assert recorder.wait_idle(30)
    assert _count(sessions) == 0
    assert _value(registry, "thermostat_recorder_spooled_total", kind="generation") == 10
    assert all(recorder.is_pending(r.id) for r in records)

    recorder.sessions = sessions  # the database is back
    wait_for(lambda: not recorder.spool.has_data(), timeout=20)
    assert _count(sessions) == 10
    assert _value(registry, "thermostat_recorder_replayed_total", kind="generation") == 10


def test_no_process_can_be_started_the_thread_writes(
    make_recorder: Any,
    sessions: sessionmaker[Session],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def cannot_spawn(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no semaphores here")  # e.g. a sandbox without /dev/shm

    monkeypatch.setattr(writer_process, "ProcessPoolExecutor", cannot_spawn)
    recorder = make_recorder(writer_process=True, batch_size=5)
    records = [make_record() for _ in range(12)]
    assert all(recorder.submit(r) for r in records)
    assert recorder.wait_idle(30)
    assert _count(sessions) == 12
    assert _value(registry, "thermostat_recorder_written_total", kind="generation") == 12


@pytest.mark.parametrize("in_child", [True, False], ids=["writer-process", "writer-thread"])
@pytest.mark.parametrize("batch_size", [6, 1], ids=["in-a-batch", "alone-in-its-batch"])
def test_a_row_the_database_refuses_is_dropped_and_counted_the_rest_written(
    make_recorder: Any,
    sessions: sessionmaker[Session],
    registry: CollectorRegistry,
    backend: str,
    in_child: bool,
    batch_size: int,
) -> None:
    """Alone in its batch too (at low traffic most batches are one row): never spooled."""
    if backend != "postgres":
        pytest.skip("SQLite does not enforce column widths: nothing to refuse")
    recorder = make_recorder(writer_process=in_child, batch_size=batch_size, flush_interval_s=0.3)
    good = [make_record() for _ in range(5)]
    # The proxy validates task names, so only a row built by hand is refused like this.
    bad = make_record(task="t" * 65)  # past the 64 characters of tasks.name
    assert all(recorder.submit(r) for r in [*good[:2], bad, *good[2:]])
    assert recorder.wait_idle(30)
    assert not recorder.spool.has_data()
    assert _count(sessions) == 5
    assert _value(registry, "thermostat_recorder_dropped_total", reason="rejected") == 1
    assert _value(registry, "thermostat_recorder_written_total", kind="generation") == 5
