"""A real Postgres outage mid-traffic: nothing acknowledged may be lost or duplicated.

The test runs its own throwaway cluster (initdb into a temp dir, a free port,
as the `postgres` OS user when run as root), records generations and posts
feedback through the app, stops the cluster with `pg_ctl stop -m fast` while
traffic continues (everything must be acknowledged: spooled), starts it again
and checks that every generation and feedback row is there exactly once.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from monitor.app import create_app
from monitor.db.engine import build_engine
from monitor.db.models import Feedback, Generation
from monitor.db.session import make_session_factory
from monitor.proxy.recorder import Recorder
from monitor.settings import load_settings
from tests.recorder.helpers import make_record, wait_for
from tests.support.databases import migrate_url
from tests.support.pg_cluster import Cluster, running_cluster

TOKEN = {"Authorization": "Bearer fb"}


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    with running_cluster() as started:
        yield started


@pytest.mark.timeout(90)
def test_outage_loses_and_duplicates_nothing(cluster: Cluster, tmp_path: Path) -> None:
    started = time.monotonic()
    migrate_url(cluster.url)
    settings = load_settings(
        home=tmp_path / "home",
        database_url=cluster.url,
        feedback_token="fb",
        admin_token="admin",
        recorder={"flush_interval_s": 0.05, "replay_interval_s": 0.2, "batch_size": 8},
    )
    generation_ids: list[uuid.UUID] = []
    feedback_ids: set[str] = set()

    def traffic(client: TestClient, recorder: Recorder, rounds: int) -> None:
        for i in range(rounds):
            record = make_record(task="outage")
            assert recorder.submit(record)
            generation_ids.append(record.id)
            # Feedback on this generation and on an older one (written, or spooled).
            for gid, label in ((record.id, i % 2 == 0), (generation_ids[0], True)):
                body = {"generation_id": str(gid), "label": label, "source": f"s{i % 3}"}
                response = client.post("/v1/feedback", json=body, headers=TOKEN)
                assert response.status_code == 201, response.text
                feedback_ids.add(response.json()["id"])

    with TestClient(create_app(settings)) as client:
        recorder = client.app.state.runtime.extras["recorder"]  # type: ignore[attr-defined]
        traffic(client, recorder, 15)
        assert recorder.wait_idle()

        cluster.stop()
        traffic(client, recorder, 15)
        assert recorder.wait_idle()
        assert recorder.spool.has_data()
        batch = [{"generation_id": str(generation_ids[-1]), "score": 0.5, "source": "batch"}]
        response = client.post("/v1/feedback/batch", json={"items": batch}, headers=TOKEN)
        assert response.status_code == 207
        assert response.json()["items"][0]["status"] == 201
        feedback_ids.add(response.json()["items"][0]["id"])

        cluster.start()
        wait_for(lambda: not recorder.spool.has_data(), timeout=20)
        traffic(client, recorder, 3)  # and traffic flows directly again
        assert recorder.wait_idle()

    engine = build_engine(cluster.url)
    try:
        with make_session_factory(engine)() as session:
            stored = list(session.scalars(select(Generation.id)))
            assert sorted(stored) == sorted(generation_ids)
            assert len(stored) == 33
            stored_feedback = [str(f) for f in session.scalars(select(Feedback.id))]
            assert sorted(stored_feedback) == sorted(feedback_ids)
            assert len(stored_feedback) == 2 * 33 + 1
            unlabelled = session.scalar(
                select(func.count()).select_from(Generation).where(Generation.label.is_(None))
            )
            assert unlabelled == 0
            first = session.get(Generation, generation_ids[0])
            assert first is not None and first.label is not None
    finally:
        engine.dispose()
    assert time.monotonic() - started < 60
