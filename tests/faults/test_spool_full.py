"""Database down long enough to fill the disk spool: a hard bound, counted drops, a clear log.

A throwaway Postgres cluster is stopped under proxy traffic with a tiny
`spool_max_bytes`. Clients keep getting their answers; the spool never grows
past its bound; what does not fit is counted in /metrics (reason
`spool_full`) and logged once per interval at WARNING; when the database is
back, exactly the spooled rows are replayed.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from monitor.app import create_app
from monitor.db.engine import build_engine
from monitor.db.models import Generation
from monitor.db.session import make_session_factory
from monitor.settings import load_settings
from tests.recorder.helpers import wait_for
from tests.support.databases import migrate_url
from tests.support.fake_upstream import FakeUpstream
from tests.support.pg_cluster import Cluster, running_cluster
from tests.support.servers import serve_app

SPOOL_MAX = 4096
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with running_cluster() as started:
        yield started


def _metric(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def _stored_ids(url: str) -> set[uuid.UUID]:
    engine = build_engine(url)
    try:
        with make_session_factory(engine)() as session:
            return set(session.scalars(select(Generation.id)))
    finally:
        engine.dispose()


@pytest.mark.timeout(90)
def test_full_spool_is_bounded_counted_and_logged(
    cluster: Cluster, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="monitor")
    migrate_url(cluster.url)
    sent_ok: list[uuid.UUID] = []
    with FakeUpstream() as upstream:
        settings = load_settings(
            home=tmp_path / "home",
            database_url=cluster.url,
            upstream_url=upstream.base_url,
            recorder={
                "spool_max_bytes": SPOOL_MAX,
                "flush_interval_s": 0.05,
                "replay_interval_s": 0.2,
                "batch_size": 4,
            },
        )
        app = create_app(settings, "api")
        with serve_app(app) as base, httpx.Client(base_url=base, timeout=10) as client:
            recorder = app.state.runtime.extras["recorder"]

            def call(i: int) -> None:
                body = {**CHAT, "messages": [{"role": "user", "content": f"question {i}"}]}
                response = client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200  # the client never notices
                sent_ok.append(uuid.UUID(response.headers["x-thermostat-generation-id"]))

            for i in range(5):
                call(i)
            assert recorder.wait_idle()
            cluster.stop()
            for i in range(5, 45):
                call(i)
                assert recorder.wait_idle()
                assert recorder.spool.bytes <= SPOOL_MAX
            spool_files = list(settings.spool_dir.glob("*.spool"))
            assert 0 < sum(p.stat().st_size for p in spool_files) <= SPOOL_MAX
            metrics = client.get("/metrics").text
            dropped = _metric(metrics, "thermostat_recorder_dropped_total", '{reason="spool_full"}')
            spooled = _metric(metrics, "thermostat_recorder_spooled_total", '{kind="generation"}')
            assert _metric(metrics, "thermostat_recorder_spool_bytes") <= SPOOL_MAX
            assert dropped > 0 and spooled > 0
            assert dropped + spooled == 40  # every record is accounted for, none silently
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
            assert any("recorder dropped" in m and "spool_full" in m for m in warnings), warnings

            cluster.start()
            wait_for(lambda: not recorder.spool.has_data(), timeout=20)
            replayed = _metric(
                client.get("/metrics").text,
                "thermostat_recorder_replayed_total",
                '{kind="generation"}',
            )
            assert replayed == spooled
    stored = _stored_ids(cluster.url)
    assert stored <= set(sent_ok)
    assert len(stored) == 5 + spooled  # the first five, then exactly what was spooled
    assert set(sent_ok[:5]) <= stored
