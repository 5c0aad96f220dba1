"""Dashboard fixtures: an app with an admin token, a signed-in client, seeded data."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.settings import Settings
from tests.dashboard.seed import seed_dashboard

ADMIN_TOKEN = "admin-token-for-dashboard-tests-0123456789"
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')

QUIET_SCHEDULER: dict[str, Any] = {
    "evaluate_enabled": False,
    "retention_enabled": False,
    "webhook_delivery_enabled": False,
    "cron_recalibration_enabled": False,
}


@pytest.fixture
def dashboard_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(admin_token=ADMIN_TOKEN, scheduler=QUIET_SCHEDULER)


@pytest.fixture
def client(dashboard_settings: Settings) -> Iterator[TestClient]:
    """A client that is not on loopback (TestClient's host is "testclient")."""
    with TestClient(create_app(dashboard_settings, role="api")) as test_client:
        yield test_client


def sign_in(client: TestClient, token: str = ADMIN_TOKEN) -> str:
    """Sign in and return the session's CSRF token (read from a page, as a browser would)."""
    response = client.post("/dashboard/login", data={"token": token}, follow_redirects=False)
    assert response.status_code == 303, response.text
    page = client.get("/dashboard")
    assert page.status_code == 200
    match = CSRF_RE.search(page.text)
    assert match is not None
    return match.group(1)


@pytest.fixture
def seeded(sessions: sessionmaker[Session]) -> None:
    seed_dashboard(sessions)
