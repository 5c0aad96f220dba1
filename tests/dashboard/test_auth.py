"""Sign-in, session cookie and CSRF rules of the dashboard (both database backends)."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from monitor.app import create_app
from monitor.dashboard import actions
from monitor.dashboard import router as pages
from monitor.dashboard import session as dash_session
from monitor.db.models import RecalibrationJob, RevokedDashboardSession
from monitor.settings import Settings
from tests.dashboard.conftest import ADMIN_TOKEN, CSRF_RE, QUIET_SCHEDULER, sign_in
from tests.dashboard.seed import DRIFTING

PUBLIC = {"/dashboard/login", "/dashboard/static/dashboard.css"}
SAMPLE_PARAMS = {"task": DRIFTING, "calibration_id": "1", "webhook_id": "1"}


def dashboard_routes() -> list[tuple[str, str]]:
    """Every route the dashboard declares (pages and actions), path parameters filled in."""
    declared = [(r, "") for r in pages.router.routes] + [
        (r, "/dashboard") for r in actions.router.routes
    ]
    out = []
    for route, prefix in declared:
        if not isinstance(route, APIRoute) or prefix + route.path in PUBLIC:
            continue
        path = re.sub(r"\{(\w+)\}", lambda m: SAMPLE_PARAMS[m.group(1)], prefix + route.path)
        out += [(method, path) for method in sorted(route.methods or ())]
    return out


def test_every_dashboard_route_redirects_to_login_without_a_session(
    client: TestClient, seeded: None
) -> None:
    routes = dashboard_routes()
    assert len(routes) >= 12, routes
    client.cookies.set(dash_session.SESSION_COOKIE, "v1.9999999999.forged.signature")
    for method, path in routes:
        response = client.request(method, path, follow_redirects=False)
        assert response.status_code == 303, (method, path, response.status_code)
        assert response.headers["location"].startswith("/dashboard/login"), (method, path)


def test_admin_api_refuses_without_the_token(client: TestClient) -> None:
    assert client.get("/api/tasks").status_code == 401


def test_login_sets_a_hardened_session_cookie(client: TestClient) -> None:
    form = client.get("/dashboard/login")
    assert form.status_code == 200
    assert re.findall(r'<input[^>]+name="(\w+)"[^>]*type="password"', form.text) == ["token"]
    response = client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("thermostat_session=")
    )
    attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
    assert {"httponly", "path", "max-age", "samesite"} <= attributes
    assert "samesite=strict" in cookie.lower() and "path=/;" in cookie.lower() + ";"
    assert client.get("/dashboard", follow_redirects=False).status_code == 200


def test_a_wrong_token_is_refused(client: TestClient) -> None:
    response = client.post("/dashboard/login", data={"token": "guess"}, follow_redirects=False)
    assert response.status_code == 401
    assert "not the admin token" in response.text
    assert dash_session.SESSION_COOKIE not in response.cookies
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_login_never_redirects_off_site(client: TestClient) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/api/tasks"):
        response = client.post(
            "/dashboard/login",
            data={"token": ADMIN_TOKEN, "next": target},
            follow_redirects=False,
        )
        assert response.headers["location"] == "/dashboard"
    response = client.post(
        "/dashboard/login",
        data={"token": ADMIN_TOKEN, "next": "/dashboard/jobs"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/dashboard/jobs"


def test_forged_expired_and_foreign_sessions_are_rejected() -> None:
    key, other = b"k" * 32, b"o" * 32
    cookie, issued = dash_session.issue_session(key, now=1_000)
    assert dash_session.read_session(key, cookie, now=1_001) == issued
    expired_at = 1_000 + dash_session.SESSION_TTL_S
    assert dash_session.read_session(key, cookie, now=expired_at) is None
    assert dash_session.read_session(other, cookie, now=1_001) is None  # token rotated
    version, expires, sid, mac = cookie.split(".")
    longer = f"{version}.{int(expires) + 10**6}.{sid}.{mac}"  # extend the expiry: MAC breaks
    assert dash_session.read_session(key, longer, now=1_001) is None
    assert dash_session.read_session(key, "garbage", now=1_001) is None
    assert issued.csrf_token != dash_session.csrf_for(key, "another-session")


def _job_count(sessions: sessionmaker[Session]) -> int:
    with sessions() as session:
        return int(session.scalar(select(func.count()).select_from(RecalibrationJob)) or 0)


def test_a_form_without_a_valid_csrf_token_is_refused(
    client: TestClient, seeded: None, sessions: sessionmaker[Session]
) -> None:
    csrf = sign_in(client)
    before = _job_count(sessions)
    url = f"/dashboard/tasks/{DRIFTING}/recalibrate"
    other = dash_session.csrf_for(b"x" * 32, "someone-else")
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "nope"}, {"csrf_token": other}):
        response = client.post(url, data=data, follow_redirects=False)
        assert response.status_code == 403, data
        assert "expired or did not come from the dashboard" in response.text
    assert _job_count(sessions) == before
    response = client.post(url, data={"csrf_token": csrf}, follow_redirects=False)
    assert response.status_code == 303
    assert _job_count(sessions) == before + 1


def _revoked(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(session.scalars(select(RevokedDashboardSession.session_id)).all())


def test_logout_needs_only_the_session_cookie_and_ends_it(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    """Contract: `POST /dashboard/logout` ends the session; no CSRF token is needed
    (the cookie is SameSite=Strict, and a forged sign-out harms nothing)."""
    sign_in(client)
    cookie = client.cookies[dash_session.SESSION_COOKIE]
    # Still only a POST: GET does not sign out.
    assert client.get("/dashboard/logout", follow_redirects=False).status_code == 405
    assert client.get("/dashboard", follow_redirects=False).status_code == 200
    response = client.post("/dashboard/logout", follow_redirects=False)  # no form at all
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    cleared = next(
        c for c in response.headers.get_list("set-cookie") if c.startswith("thermostat_session=")
    )
    assert "max-age=0" in cleared.lower()
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    # Ended on the server too: the old cookie, sent again, is no session.
    assert _revoked(sessions) == [cookie.split(".")[2]]
    client.cookies.set(dash_session.SESSION_COOKIE, cookie)
    page = client.get("/dashboard", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/dashboard/login")


def test_logout_from_the_dashboard_form_still_works(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    """The dashboard's own Sign out form sends its CSRF token; that is accepted too."""
    sign_in(client)
    page = client.get("/dashboard").text
    form = re.search(r'<form method="post" action="/dashboard/logout".*?</form>', page, re.S)
    assert form is not None
    match = CSRF_RE.search(form.group(0))
    assert match is not None
    data = {"csrf_token": match.group(1)}
    response = client.post("/dashboard/logout", data=data, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    assert len(_revoked(sessions)) == 1


def test_logout_without_a_session_goes_to_the_login_page(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    response = client.post("/dashboard/logout", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"].startswith("/dashboard/login")
    assert _revoked(sessions) == []


def test_signing_out_ends_every_copy_of_the_session(
    client: TestClient, dashboard_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """A copied cookie (another browser, another api process) ends with the sign-out."""
    csrf = sign_in(client)
    copied = client.cookies[dash_session.SESSION_COOKIE]
    with (
        TestClient(create_app(dashboard_settings, role="api")) as other_process,
        TestClient(create_app(dashboard_settings, role="api")) as still_signed_in,
    ):
        other_process.cookies.set(dash_session.SESSION_COOKIE, copied)
        assert other_process.get("/dashboard", follow_redirects=False).status_code == 200
        sign_in(still_signed_in)
        out = client.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
        assert out.status_code == 303
        page = other_process.get("/dashboard", follow_redirects=False)
        assert page.status_code == 303
        assert page.headers["location"].startswith("/dashboard/login")
        # The login form is shown, not a redirect back to the ended session.
        assert other_process.get("/dashboard/login", follow_redirects=False).status_code == 200
        assert still_signed_in.get("/dashboard", follow_redirects=False).status_code == 200
    with sessions() as session:
        assert session.scalars(select(RevokedDashboardSession.session_id)).all() == [
            copied.split(".")[2]
        ]


def test_expired_sign_outs_are_forgotten(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    with sessions() as session:
        session.add(
            RevokedDashboardSession(
                session_id="long-gone", expires_at=datetime.now(UTC) - timedelta(days=1)
            )
        )
        session.commit()
    csrf = sign_in(client)
    client.post("/dashboard/logout", data={"csrf_token": csrf}, follow_redirects=False)
    with sessions() as session:
        ids = session.scalars(select(RevokedDashboardSession.session_id)).all()
    assert "long-gone" not in ids and len(ids) == 1


@pytest.fixture
def tokenless(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(scheduler=QUIET_SCHEDULER)


def test_without_a_token_loopback_clients_need_no_login(tokenless: Settings) -> None:
    app = create_app(tokenless, role="api")
    with TestClient(app, client=("127.0.0.1", 50123)) as local:
        page = local.get("/dashboard", follow_redirects=False)
        assert page.status_code == 200
        assert "No admin token configured" in page.text
        assert "Sign out" not in page.text
        assert local.post("/dashboard/evaluate", follow_redirects=False).status_code == 403
        match = CSRF_RE.search(page.text)
        assert match is not None
        response = local.post(
            "/dashboard/evaluate", data={"csrf_token": match.group(1)}, follow_redirects=False
        )
        assert response.status_code == 303
    with TestClient(create_app(tokenless, role="api")) as remote:  # host "testclient"
        assert remote.get("/dashboard", follow_redirects=False).status_code == 303
        login = remote.post("/dashboard/login", data={"token": "anything"})
        assert login.status_code == 403
        assert "only local (loopback) clients" in login.text
