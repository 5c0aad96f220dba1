"""Fixtures shared by the recorder tests: a metrics registry and a started Recorder."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session, sessionmaker

from monitor.proxy.metrics import ProxyMetrics
from monitor.proxy.recorder import Recorder
from monitor.settings import RecorderSettings


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def make_recorder(
    sessions: sessionmaker[Session], tmp_path: Path, registry: CollectorRegistry
) -> Iterator[Any]:
    """Start a Recorder (stopped after the test); in-thread writer unless told otherwise."""
    made: list[Recorder] = []

    def factory(on: sessionmaker[Session] | None = None, **settings: Any) -> Recorder:
        values: dict[str, Any] = {
            "flush_interval_s": 0.05,
            "replay_interval_s": 0.1,
            "writer_process": False,
        }
        values.update(settings)
        recorder = Recorder(
            RecorderSettings(**values), on or sessions, tmp_path / "spool", ProxyMetrics(registry)
        )
        asyncio.run(recorder.start())
        made.append(recorder)
        return recorder

    yield factory
    for recorder in made:
        asyncio.run(recorder.stop())
