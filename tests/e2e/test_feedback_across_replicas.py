"""Feedback posted to another api process than the one that served the answer.

Two real `python -m monitor serve --role api` processes share one database, as
replicas behind a load balancer do. The official openai client asks one of
them; the feedback for each answer goes to the other one at once, while the
serving process's recorder still holds the generation (its writer waits up to
1 s to fill a batch). Every feedback must be accepted and end up on its
generation, exactly once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.support import api_replicas, wait_for
from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.timeout(120)

ANSWERS = 4
FLUSH_EVERY_1S = {"THERMOSTAT_RECORDER__FLUSH_INTERVAL_S": "1.0"}


def test_feedback_reaching_the_other_replica_is_accepted(db_url: str, tmp_path: Path) -> None:
    with (
        FakeUpstream() as upstream,
        api_replicas(2, db_url, upstream.base_url, tmp_path, FLUSH_EVERY_1S) as (served, other),
    ):
        client = openai.OpenAI(base_url=served.base_url + "/v1", api_key="k", max_retries=0)
        posted: dict[str, tuple[bool, str]] = {}
        with httpx.Client(base_url=other.base_url, timeout=30) as http:
            for n in range(ANSWERS):
                raw = client.chat.completions.with_raw_response.create(
                    model="m",
                    messages=[{"role": "user", "content": f"question {n}"}],
                    max_tokens=8,
                    extra_headers={"X-Thermostat-Task": "replicas"},
                )
                gid = raw.headers["x-thermostat-generation-id"]
                # Not written yet, and the other process never saw it.
                assert http.get(f"/api/generations/{gid}").status_code == 404
                label = n % 2 == 0
                body = {"generation_id": gid, "label": label}
                response = http.post("/v1/feedback", json=body)
                assert response.status_code == 201, (response.text, other.log())
                posted[gid] = (label, response.json()["id"])

            def recorded() -> dict[str, Any] | None:
                details = {gid: http.get(f"/api/generations/{gid}") for gid in posted}
                if any(r.status_code != 200 for r in details.values()):
                    return None
                return {gid: r.json() for gid, r in details.items()}

            details = wait_for(recorded, 30, "every generation to be written")
    for gid, (label, feedback_id) in posted.items():
        assert details[gid]["task"] == "replicas"
        assert details[gid]["label"] == (1.0 if label else 0.0)
        assert [f["id"] for f in details[gid]["feedback"]] == [feedback_id]
