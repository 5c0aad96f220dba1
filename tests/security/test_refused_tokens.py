"""Refused tokens are counted in /metrics by surface and reported in the log, at a pace.

Through a real sidecar on loopback: wrong and missing tokens on the admin API,
the feedback API and the dashboard's sign-in each count once in
`thermostat_auth_failures_total{surface}`, accepted tokens never do, the
first refusal of each surface is logged at once with the client's address,
and what was held is reported when the server stops.
The log's pace (at most one report a minute per surface, with the count
since, and a report of what was held when the minute ends) is checked on the
class with a clock and timers the test drives.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from monitor.app import create_app
from monitor.refused_tokens import REPORT_INTERVAL_S, RefusedTokens
from monitor.settings import Settings
from tests.security.conftest import ADMIN, ADMIN_TOKEN, FEEDBACK
from tests.support.servers import serve_app

WRONG = {"Authorization": "Bearer not-the-token"}
REPORT = "monitor.refused_tokens"


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the checks run before any query; one backend is enough


def refusals(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics").text
    return {
        sample.labels["surface"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "thermostat_auth_failures"
        for sample in family.samples
        if sample.name == "thermostat_auth_failures_total"
    }


def reports(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == REPORT]


def test_refusals_are_counted_by_surface_and_reported(
    secured_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=REPORT)
    with serve_app(create_app(secured_settings, "api")) as base:
        refuse_on_every_surface(base)
        logged = reports(caplog)
        # The first refusal of each surface at once; the rest are held.
        assert len(logged) == 3, logged
        for surface, line in zip(("admin", "feedback", "dashboard"), logged, strict=True):
            assert f"refused 1 request(s) with a missing or wrong {surface} token" in line
            assert "the latest from 127.0.0.1" in line
    # Stopping the server reports what was held.
    logged = reports(caplog)
    assert len(logged) == 5, logged
    held = {line.split(" since")[0] for line in logged[3:]}
    assert held == {
        "refused 2 request(s) with a missing or wrong admin token",
        "refused 1 request(s) with a missing or wrong feedback token",
    }
    assert not any("not-the-token" in line or "guess" in line for line in logged)


def refuse_on_every_surface(base: str) -> None:
    feedback = {"generation_id": str(uuid.uuid4()), "label": True}
    with httpx.Client(base_url=base, timeout=10) as client:
        assert client.get("/api/tasks", headers=ADMIN).status_code == 200
        # In /metrics from the start, and accepted tokens count nothing.
        assert refusals(base) == {"admin": 0.0, "feedback": 0.0, "dashboard": 0.0}

        for headers in (WRONG, {}, {"Authorization": f"Bearer {ADMIN_TOKEN}x"}):
            assert client.get("/api/tasks", headers=headers).status_code == 401
        assert client.post("/v1/feedback", json=feedback, headers=WRONG).status_code == 401
        assert client.post("/v1/feedback", json=feedback, headers=ADMIN).status_code == 401
        assert client.post("/v1/feedback", json=feedback, headers=FEEDBACK).status_code == 404
        signed_out = client.post(
            "/dashboard/login", data={"token": "guess"}, follow_redirects=False
        )
        assert signed_out.status_code == 401
        signed_in = client.post(
            "/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False
        )
        assert signed_in.status_code == 303
    assert refusals(base) == {"admin": 3.0, "feedback": 2.0, "dashboard": 1.0}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Timers:
    """Stands in for the timer thread: holds the scheduled reports for the test to run."""

    def __init__(self) -> None:
        self.due: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay: float, callback: Callable[[], None]) -> None:
        self.due.append((delay, callback))

    def run(self) -> float:
        delay, callback = self.due.pop(0)
        callback()
        return delay


def test_the_log_reports_each_surface_at_most_once_an_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=REPORT)
    clock, timers, registry = Clock(), Timers(), CollectorRegistry()
    refused = RefusedTokens(registry, clock, timers)

    refused.refused("admin", "10.0.0.7")
    for _ in range(4):
        clock.now += 10
        refused.refused("admin", "10.0.0.8")
    refused.refused("feedback", "10.0.0.9")  # its own pace, not held back by admin's
    logged = reports(caplog)
    assert len(logged) == 2, logged
    assert "refused 1 request(s) with a missing or wrong admin token" in logged[0]
    assert "from 10.0.0.7" in logged[0]
    assert "refused 1 request(s) with a missing or wrong feedback token" in logged[1]
    # The held refusals are reported when the interval ends, even if no more come.
    assert len(timers.due) == 1
    clock.now += 20
    assert timers.run() == REPORT_INTERVAL_S - 10
    assert "refused 4 request(s) with a missing or wrong admin token" in reports(caplog)[2]
    assert "from 10.0.0.8" in reports(caplog)[2]

    clock.now += REPORT_INTERVAL_S  # a quiet interval: the next refusal is reported at once
    refused.refused("admin", None)
    assert "refused 1 request(s)" in reports(caplog)[3]
    assert "from an unknown client" in reports(caplog)[3]
    assert timers.due == []

    clock.now += 1  # one more soon after: held, and reported by its timer
    refused.refused("admin", "10.0.0.8")
    clock.now += REPORT_INTERVAL_S  # a refusal after the interval, before the timer ran
    refused.refused("admin", "10.0.0.8")
    assert "refused 2 request(s)" in reports(caplog)[4]
    timers.run()  # finds nothing held: no empty report
    assert len(reports(caplog)) == 5

    clock.now += 1  # held at shutdown: close() reports it, and its timer finds nothing
    refused.refused("admin", "10.0.0.8")
    refused.close()
    assert "refused 1 request(s)" in reports(caplog)[5]
    timers.run()
    refused.close()
    assert len(reports(caplog)) == 6

    counted = "thermostat_auth_failures_total"
    assert registry.get_sample_value(counted, {"surface": "admin"}) == 9
    assert registry.get_sample_value(counted, {"surface": "feedback"}) == 1
