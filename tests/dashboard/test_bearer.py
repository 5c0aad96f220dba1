"""The admin token as a bearer header opens the dashboard (contract: the admin token is
the "bearer token for `/api/*` and the dashboard"); other tokens do not."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.dashboard import session as dash_session
from monitor.db.models import RecalibrationJob, RevokedDashboardSession
from monitor.settings import Settings
from tests.dashboard.conftest import ADMIN_TOKEN, QUIET_SCHEDULER, sign_in
from tests.dashboard.seed import DRIFTING

FEEDBACK_TOKEN = "feedback-token-for-dashboard-tests-9876543210"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
WRONG = [
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": ADMIN_TOKEN},
]


@pytest.fixture
def both_tokens(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        admin_token=ADMIN_TOKEN, feedback_token=FEEDBACK_TOKEN, scheduler=QUIET_SCHEDULER
    )


@pytest.fixture
def api(both_tokens: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(both_tokens, role="api")) as test_client:
        yield test_client


def _jobs(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(RecalibrationJob)) or 0)


def _dashboard_refusals(client: TestClient) -> float:
    text = client.get("/metrics").text
    return next(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "thermostat_auth_failures_total"
        and sample.labels["surface"] == "dashboard"
    )


def test_bearer_opens_the_overview_and_a_task_page(api: TestClient, seeded: None) -> None:
    overview = api.get("/dashboard", headers=ADMIN, follow_redirects=False)
    assert overview.status_code == 200
    assert f'data-task="{DRIFTING}"' in overview.text
    task = api.get(f"/dashboard/tasks/{DRIFTING}", headers=ADMIN, follow_redirects=False)
    assert task.status_code == 200
    assert DRIFTING in task.text
    for path in ("/dashboard/alerts", "/dashboard/jobs", "/dashboard/webhooks"):
        assert api.get(path, headers=ADMIN, follow_redirects=False).status_code == 200, path
    # No session is created: the header authorises each request on its own.
    assert dash_session.SESSION_COOKIE not in api.cookies


def test_a_bearer_action_needs_no_csrf_token(
    api: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    before = _jobs(sessions)
    url = f"/dashboard/tasks/{DRIFTING}/recalibrate"
    response = api.post(url, headers=ADMIN, follow_redirects=False)  # no form, no cookie
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/dashboard/tasks/{DRIFTING}#jobs"
    assert _jobs(sessions) == before + 1
    evaluated = api.post("/dashboard/evaluate", headers=ADMIN, follow_redirects=False)
    assert evaluated.status_code == 303 and evaluated.headers["location"] == "/dashboard"


def test_a_cookie_action_still_needs_the_csrf_token_with_a_wrong_bearer(
    api: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    """Only the admin bearer token lifts the CSRF check; a wrong one next to a cookie does not."""
    sign_in(api)
    before = _jobs(sessions)
    url = f"/dashboard/tasks/{DRIFTING}/recalibrate"
    for headers in [{}, *WRONG, FEEDBACK]:
        response = api.post(url, headers=headers, follow_redirects=False)
        assert response.status_code == 403, headers
    assert _jobs(sessions) == before


@pytest.mark.parametrize("headers", [*WRONG, FEEDBACK], ids=lambda h: h["Authorization"][:12])
def test_a_wrong_or_feedback_bearer_gets_the_login_redirect(
    api: TestClient, seeded: None, sessions: sessionmaker[Session], headers: dict[str, str]
) -> None:
    before = _jobs(sessions)
    for method, path in [
        ("GET", "/dashboard"),
        ("GET", f"/dashboard/tasks/{DRIFTING}"),
        ("POST", f"/dashboard/tasks/{DRIFTING}/recalibrate"),
        ("POST", "/dashboard/evaluate"),
    ]:
        response = api.request(method, path, headers=headers, follow_redirects=False)
        assert response.status_code == 303, (method, path)
        assert response.headers["location"].startswith("/dashboard/login"), (method, path)
    assert _jobs(sessions) == before


def test_a_wrong_bearer_is_counted_as_a_refused_dashboard_token(
    api: TestClient, seeded: None
) -> None:
    assert _dashboard_refusals(api) == 0
    api.get("/dashboard", headers=ADMIN, follow_redirects=False)
    api.get("/dashboard", follow_redirects=False)  # no credentials: not a refusal
    assert _dashboard_refusals(api) == 0
    api.get("/dashboard", headers={"Authorization": "Bearer guess"}, follow_redirects=False)
    api.get("/dashboard", headers=FEEDBACK, follow_redirects=False)
    assert _dashboard_refusals(api) == 2


def test_signing_out_with_cookie_and_bearer_revokes_the_cookie(
    api: TestClient, sessions: sessionmaker[Session]
) -> None:
    sign_in(api)
    cookie = api.cookies[dash_session.SESSION_COOKIE]
    response = api.post("/dashboard/logout", headers=ADMIN, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    with sessions() as session:
        revoked = session.scalars(select(RevokedDashboardSession.session_id)).all()
    assert revoked == [cookie.split(".")[2]]
    assert api.get("/dashboard", follow_redirects=False).status_code == 303
    # The bearer header itself is not a session to end: it keeps working.
    assert api.get("/dashboard", headers=ADMIN, follow_redirects=False).status_code == 200
