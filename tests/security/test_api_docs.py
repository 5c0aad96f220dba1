"""`/api/openapi.json` and `/api/docs` are admin-only, like the rest of `/api/*`.

Opened by the admin bearer token or by a signed-in dashboard session (a
browser signed in to the dashboard opens the Swagger page, which fetches the
schema with the cookie); anything else gets the API's usual 401.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from monitor.app import create_app
from monitor.dashboard.session import SESSION_COOKIE
from monitor.settings import Settings
from tests.security.conftest import ADMIN, ADMIN_TOKEN, FEEDBACK, FEEDBACK_TOKEN, QUIET_SCHEDULER

DOCS = ("/api/openapi.json", "/api/docs")
REFUSED = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    FEEDBACK,
]


@pytest.fixture
def backend() -> str:
    return "sqlite"  # auth is decided before any query; one backend is enough


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        admin_token=ADMIN_TOKEN, feedback_token=FEEDBACK_TOKEN, scheduler=QUIET_SCHEDULER
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """Not on loopback (TestClient's host is "testclient")."""
    with TestClient(create_app(settings, role="api")) as test_client:
        yield test_client


def _sign_in(client: TestClient) -> None:
    response = client.post("/dashboard/login", data={"token": ADMIN_TOKEN}, follow_redirects=False)
    assert response.status_code == 303
    assert SESSION_COOKIE in client.cookies


@pytest.mark.parametrize("path", DOCS)
def test_without_the_admin_they_answer_the_apis_401(client: TestClient, path: str) -> None:
    usual = client.get("/api/tasks")
    assert usual.status_code == 401
    for headers in REFUSED:
        response = client.get(path, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers.get("www-authenticate") == "Bearer"
        body = response.json()
        assert body.keys() == usual.json().keys() == {"error"}
        assert body["error"]["type"] == "authentication_error"
        assert body["error"]["code"] == usual.json()["error"]["code"]
    client.cookies.set(SESSION_COOKIE, "v1.9999999999.forged.signature")
    assert client.get(path).status_code == 401


def test_the_bearer_token_opens_the_schema_and_the_docs(client: TestClient) -> None:
    schema = client.get("/api/openapi.json", headers=ADMIN)
    assert schema.status_code == 200
    assert schema.headers["content-type"].startswith("application/json")
    document = schema.json()
    assert document["openapi"].startswith("3.")
    assert document["info"]["title"] == "Thermostat"
    assert "/api/tasks" in document["paths"] and "/v1/feedback" in document["paths"]
    assert not set(DOCS) & set(document["paths"])  # the docs routes are not operations
    docs = client.get("/api/docs", headers=ADMIN)
    assert docs.status_code == 200
    assert docs.headers["content-type"].startswith("text/html")
    assert "swagger-ui" in docs.text.lower()
    assert "'/api/openapi.json'" in docs.text or '"/api/openapi.json"' in docs.text


def test_a_dashboard_session_opens_them_in_the_browser(client: TestClient) -> None:
    _sign_in(client)
    docs = client.get("/api/docs")  # the cookie alone, as a browser sends it
    assert docs.status_code == 200
    assert "/api/openapi.json" in docs.text
    schema = client.get("/api/openapi.json")
    assert schema.status_code == 200
    assert "/api/tasks" in schema.json()["paths"]
    # Signing out ends it.
    assert client.post("/dashboard/logout", follow_redirects=False).status_code == 303
    assert client.get("/api/openapi.json").status_code == 401


def test_the_old_unguarded_paths_are_gone(client: TestClient) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        assert client.get(path, headers=ADMIN).status_code == 404, path


def test_without_tokens_only_loopback_clients_see_them(
    make_settings: Callable[..., Settings],
) -> None:
    tokenless = make_settings(scheduler=QUIET_SCHEDULER)
    with TestClient(create_app(tokenless, role="api"), client=("127.0.0.1", 50123)) as local:
        for path in DOCS:
            assert local.get(path).status_code == 200, path
    with TestClient(create_app(tokenless, role="api")) as remote:
        for path in DOCS:
            assert remote.get(path).status_code == 401, path
