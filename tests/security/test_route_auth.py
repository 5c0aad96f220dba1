"""Every admin, dashboard and feedback route refuses a missing or wrong token.

Routes are enumerated from the app's own route table, so a route added later
is covered without touching this file; a route that is neither guarded nor in
the reviewed PUBLIC list fails the test until someone decides which it is.
"""

from __future__ import annotations

import ast
import inspect
import re
import uuid
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from monitor import auth
from tests.security.conftest import ADMIN, ADMIN_TOKEN, FEEDBACK, FEEDBACK_TOKEN, Sidecar

# Reviewed: served without the sidecar's tokens on purpose.
PUBLIC = {
    "/healthz",  # liveness probe
    "/readyz",  # readiness probe
    "/metrics",  # Prometheus scrape (no prompts, no tokens)
    "/dashboard/login",  # the sign-in form itself
    "/dashboard/static/dashboard.css",
    # The proxy: the client's Authorization goes to the model server, which owns it.
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/models",
}
SAMPLE = {
    "task": "qa",
    "generation_id": str(uuid.uuid4()),
    "calibration_id": "1",
    "job_id": "1",
    "webhook_id": "1",
}


@pytest.fixture
def backend() -> str:
    return "sqlite"  # the checks run before any query; one backend is enough


def app_routes(app: FastAPI) -> Iterator[tuple[str, str]]:
    """(method, path template) for every HTTP route, included routers flattened."""
    try:  # FastAPI >= 0.160 keeps included routers as nodes of the table
        from fastapi.routing import iter_route_contexts

        contexts = list(iter_route_contexts(app.router.routes))
    except ImportError:  # older FastAPI: a flat list of routes
        contexts = list(app.router.routes)
    for route in contexts:
        for method in sorted(getattr(route, "methods", None) or ()):
            if method != "HEAD":
                yield method, route.path


def fill(path: str) -> str:
    return re.sub(r"\{(\w+)(?::\w+)?\}", lambda m: SAMPLE[m.group(1)], path)


WRONG = [
    {},
    {"Authorization": "Bearer wrong-token"},
    {"Authorization": f"Bearer {ADMIN_TOKEN}x"},
    {"Authorization": f"Bearer {ADMIN_TOKEN[:-1]}"},
    {"Authorization": f"Basic {ADMIN_TOKEN}"},
    {"Authorization": ADMIN_TOKEN},
    {"Authorization": "Bearer"},
]


def test_every_guarded_route_refuses_missing_and_wrong_tokens(sidecar: Sidecar) -> None:
    routes = list(app_routes(sidecar.app))
    guarded = [(m, p) for m, p in routes if p not in PUBLIC]
    unclassified = [
        (m, p) for m, p in guarded if not p.startswith(("/api/", "/dashboard", "/v1/feedback"))
    ]
    assert not unclassified, f"routes neither guarded nor reviewed as public: {unclassified}"
    assert len([p for _, p in guarded if p.startswith("/api/")]) >= 19
    assert len([p for _, p in guarded if p.startswith("/v1/feedback")]) == 2
    assert len([p for _, p in guarded if p.startswith("/dashboard")]) >= 12
    checked = 0
    with httpx.Client(base_url=sidecar.base, follow_redirects=False) as client:
        for method, template in guarded:
            path = fill(template)
            if template.startswith("/dashboard"):
                # Pages and actions redirect to the sign-in form; the feedback token
                # is a wrong token here too.
                for headers in [*WRONG, FEEDBACK]:
                    response = client.request(method, path, headers=headers)
                    assert response.status_code == 303, (method, path, headers)
                    assert response.headers["location"].startswith("/dashboard/login")
                    checked += 1
                # The admin token is the dashboard's bearer token too (contract).
                response = client.request(method, path, headers=ADMIN)
                opened = not response.headers.get("location", "").startswith("/dashboard/login")
                assert opened or template == "/dashboard/logout", (method, path)
                assert response.status_code in (200, 303, 404), (method, path, response.text)
                continue
            # The other service's token is a wrong token too.
            other = FEEDBACK if template.startswith("/api/") else ADMIN
            for headers in [*WRONG, other]:
                response = client.request(method, path, headers=headers, json={})
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers.get("www-authenticate") == "Bearer"
                assert response.json()["error"]["type"] == "authentication_error"
                checked += 1
        # The right tokens open the doors (so a 401 above is not a broken route).
        assert client.get("/api/tasks", headers=ADMIN).status_code == 200
        bad_item = client.post("/v1/feedback", headers=FEEDBACK, json={})
        assert bad_item.status_code == 422
    assert checked > 200


def _calls_compare_digest(function: object) -> bool:
    tree = ast.parse(inspect.getsource(function))  # type: ignore[arg-type]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (
                node.func.attr == "compare_digest"
                and isinstance(owner, ast.Name)
                and owner.id in ("hmac", "secrets")
            ):
                return True
    return False


def test_token_comparison_is_constant_time_in_code() -> None:
    assert _calls_compare_digest(auth.tokens_match)
    assert "tokens_match" in inspect.getsource(auth.check_token)
    # And nowhere in the package is a secret compared with == or !=.
    import monitor

    package = inspect.getfile(monitor).rsplit("/", 1)[0]
    import pathlib

    offenders = []
    for path in pathlib.Path(package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare) and any(
                isinstance(op, ast.Eq | ast.NotEq) for op in node.ops
            ):
                text = ast.unparse(node)
                if "get_secret_value" in text or re.search(r"\btoken\b.*==|==.*\btoken\b", text):
                    offenders.append(f"{path}:{node.lineno}: {text}")
    assert not offenders, offenders


def test_token_checks_call_compare_digest_at_runtime(
    sidecar: Sidecar, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    with httpx.Client(base_url=sidecar.base, follow_redirects=False) as client:
        assert client.get("/api/tasks", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/api/tasks", headers=ADMIN).status_code == 200
        wrong_fb = client.post("/v1/feedback", headers={"Authorization": "Bearer x"}, json={})
        assert wrong_fb.status_code == 401
        client.post("/dashboard/login", data={"token": "guess"})
    given = [a for a, _ in seen]
    assert b"nope" in given and ADMIN_TOKEN.encode() in given
    assert b"x" in given and b"guess" in given
    assert {b for _, b in seen} >= {ADMIN_TOKEN.encode(), FEEDBACK_TOKEN.encode()}
