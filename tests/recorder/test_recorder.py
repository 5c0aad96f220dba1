"""The recorder against real SQLite and Postgres: batching, overflow, spool and replay."""

from __future__ import annotations

import asyncio
import gc
import shutil
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.calibration.packing import unpack_token_logprobs
from monitor.db.models import Feedback, Generation, Task
from monitor.generations import repository as generations
from monitor.proxy.metrics import ProxyMetrics
from monitor.proxy.recorder import Recorder
from monitor.proxy.records import FeedbackRecord
from monitor.settings import RecorderSettings
from tests.recorder.helpers import make_record, unreachable_sessions, wait_for


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def _count(sessions: sessionmaker[Session], model: Any = Generation) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_records_are_written_in_batches_with_packed_arrays(
    make_recorder: Any,
    sessions: sessionmaker[Session],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sizes: list[int] = []
    insert = generations.insert_generations

    def spy(session: Session, rows: Any) -> int:
        sizes.append(len(rows))
        return insert(session, rows)

    monkeypatch.setattr(generations, "insert_generations", spy)
    recorder = make_recorder(batch_size=10, flush_interval_s=0.3)
    records = [make_record(task="qa" if i % 2 else "math", n=3 + i % 4) for i in range(25)]
    assert all(recorder.submit(r) for r in records)
    assert recorder.wait_idle()

    assert sizes == [10, 10, 5]
    assert _count(sessions) == 25
    assert _value(registry, "thermostat_recorder_written_total", kind="generation") == 25
    with sessions() as session:
        assert {t.name for t in session.scalars(select(Task))} == {"qa", "math"}
        row = session.get(Generation, records[3].id)
        assert row is not None
        chosen, top, rank = unpack_token_logprobs(row.logprobs or b"")
        np.testing.assert_allclose(chosen, records[3].chosen)
        np.testing.assert_allclose(top, records[3].top, atol=1e-2)
        assert rank.tolist() == [0] * records[3].token_count
        assert row.top_margin is not None and row.top_margin > 0
        assert row.repetition == 0.0
        assert row.temperature == pytest.approx(1.3)
        assert row.calibration_version == 2
    assert all(recorder.is_pending(r.id) for r in records)
    assert not recorder.is_pending(uuid.uuid4())
    # Remembered as plain ints: tens of thousands of GC-tracked UUIDs here made
    # every full collection of the serving process walk them.
    assert not any(gc.is_tracked(key) for key in recorder._recent)


def test_overflow_is_dropped_and_counted(
    make_recorder: Any, sessions: sessionmaker[Session], registry: CollectorRegistry
) -> None:
    recorder = make_recorder(queue_size=10, batch_size=1)
    release = threading.Event()
    real_flush = recorder._flush

    def blocked_flush(batch: Any) -> None:
        release.wait(10)
        real_flush(batch)

    recorder._flush = blocked_flush
    assert recorder.submit(make_record())
    wait_for(lambda: recorder._queue.qsize() == 0)  # the writer holds it, blocked
    accepted = [recorder.submit(make_record()) for _ in range(15)]
    assert accepted == [True] * 10 + [False] * 5
    assert _value(registry, "thermostat_recorder_dropped_total", reason="queue_full") == 5
    assert _value(registry, "thermostat_recorder_queue_depth") == 10
    release.set()
    assert recorder.wait_idle()
    assert _count(sessions) == 11


def test_stop_flushes_what_is_queued(
    sessions: sessionmaker[Session], tmp_path: Path, registry: CollectorRegistry
) -> None:
    settings = RecorderSettings(batch_size=500, flush_interval_s=5.0)
    recorder = Recorder(settings, sessions, tmp_path / "spool", ProxyMetrics(registry))
    asyncio.run(recorder.start())
    for _ in range(7):
        assert recorder.submit(make_record())
    asyncio.run(recorder.stop())
    assert _count(sessions) == 7


def test_unpackable_record_is_dropped_and_the_rest_written(
    make_recorder: Any, sessions: sessionmaker[Session], registry: CollectorRegistry
) -> None:
    recorder = make_recorder(flush_interval_s=0.2)
    bad = make_record(chosen_rank=np.zeros(99, dtype=np.int8))  # length mismatch
    assert recorder.submit(make_record())
    assert recorder.submit(bad)
    assert recorder.submit(make_record())
    assert recorder.wait_idle()
    assert _count(sessions) == 2
    assert _value(registry, "thermostat_recorder_dropped_total", reason="invalid") == 1


def test_a_batch_that_can_be_neither_written_nor_spooled_is_counted_and_the_writer_goes_on(
    make_recorder: Any, sessions: sessionmaker[Session], registry: CollectorRegistry
) -> None:
    recorder = make_recorder(batch_size=2, flush_interval_s=0.2)
    real_flush, real_append = recorder._flush, recorder.spool.append

    def broken_flush(batch: Any) -> None:
        raise RuntimeError("a bug in the writer")

    def disk_full(entries: Any) -> int:
        raise OSError(28, "No space left on device")

    recorder._flush, recorder.spool.append = broken_flush, disk_full
    assert recorder.submit(make_record()) and recorder.submit(make_record())
    assert recorder.wait_idle()
    assert _value(registry, "thermostat_recorder_dropped_total", reason="spool_error") == 2
    recorder._flush, recorder.spool.append = real_flush, real_append
    assert recorder.submit(make_record())
    assert recorder.wait_idle()
    assert _count(sessions) == 1  # the writer thread outlived both failures


def test_a_record_submitted_after_stop_that_cannot_be_spooled_is_counted_not_raised(
    make_recorder: Any, registry: CollectorRegistry
) -> None:
    recorder = make_recorder()
    asyncio.run(recorder.stop())

    def disk_full(entries: Any) -> int:
        raise OSError(28, "No space left on device")

    recorder.spool.append = disk_full
    assert recorder.submit(make_record()) is False  # a request finishing during shutdown
    assert _value(registry, "thermostat_recorder_dropped_total", reason="spool_error") == 1


def test_database_down_spools_then_replays_once_in_order(
    make_recorder: Any,
    sessions: sessionmaker[Session],
    registry: CollectorRegistry,
    backend: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[uuid.UUID] = []
    insert = generations.insert_generations

    def spy(session: Session, rows: Any) -> int:
        order.extend(row["id"] for row in rows)
        return insert(session, rows)

    monkeypatch.setattr(generations, "insert_generations", spy)
    recorder = make_recorder(batch_size=7, replay_interval_s=0.2)
    recorder.sessions = unreachable_sessions(backend)
    records = [make_record() for _ in range(30)]
    for record in records[:20]:
        assert recorder.submit(record)
    assert recorder.wait_idle()
    early = FeedbackRecord(generation_id=records[0].id, label=1.0, source="grader")
    assert recorder.spool_feedback(early)
    for record in records[20:]:
        assert recorder.submit(record)
    assert recorder.wait_idle()

    assert _count(sessions) == 0
    assert _value(registry, "thermostat_recorder_spooled_total", kind="generation") == 30
    assert _value(registry, "thermostat_recorder_spool_bytes") > 0
    assert all(recorder.is_pending(r.id) for r in records)
    segments = sorted((tmp_path / "spool").glob("segment-*.spool"))
    assert segments
    backup = tmp_path / "backup"
    backup.mkdir()
    for segment in segments:
        shutil.copy(segment, backup / segment.name)

    recorder.sessions = sessions  # the database is back
    wait_for(lambda: not recorder.spool.has_data())
    assert order == [r.id for r in records]
    assert _count(sessions) == 30
    assert _count(sessions, Feedback) == 1
    assert _value(registry, "thermostat_recorder_replayed_total", kind="generation") == 30
    assert _value(registry, "thermostat_recorder_replayed_total", kind="feedback") == 1
    with sessions() as session:
        assert session.get(Generation, records[0].id).label == 1.0  # type: ignore[union-attr]

    # A crash between commit and delete replays the same segments again: no duplicates.
    for segment in backup.iterdir():
        shutil.copy(segment, tmp_path / "spool" / segment.name)
    replayer = Recorder(
        RecorderSettings(), sessions, tmp_path / "spool", ProxyMetrics(CollectorRegistry())
    )
    assert replayer.spool.holds_generation(records[5].id)
    assert replayer.replay() == 31
    assert _count(sessions) == 30
    assert _count(sessions, Feedback) == 1
    assert not list((tmp_path / "spool").glob("segment-*.spool"))
    asyncio.run(replayer.stop())  # and lets go of the spool
