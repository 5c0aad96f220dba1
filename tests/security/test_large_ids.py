"""Integer ids beyond the database's INTEGER range must be a 404/422, never a 500.

On Postgres the id columns are INTEGER (int4): FastAPI accepts any Python int
for `{webhook_id}`, `{job_id}`, `{calibration_id}` and the query fails with
NumericValueOutOfRange (found by the schemathesis run); the error handler turns
that DataError into a 422. SQLite's integers are 64-bit: there it is a 404.
"""

from __future__ import annotations

import httpx

from tests.security.conftest import ADMIN, Sidecar

TOO_BIG = str(2**31)  # one past int4's maximum
ROUTES = [
    ("GET", "/api/jobs/{id}"),
    ("GET", "/api/calibrations/{id}"),
    ("POST", "/api/calibrations/{id}/activate"),
    ("DELETE", "/api/webhooks/{id}"),
    ("POST", "/api/webhooks/{id}/enable"),
    ("POST", "/api/webhooks/{id}/test"),
    ("GET", "/api/webhooks/{id}/deliveries"),
]


def test_out_of_range_integer_ids_are_not_server_errors(sidecar: Sidecar) -> None:
    statuses = {}
    with httpx.Client(base_url=sidecar.base, headers=ADMIN, timeout=10) as client:
        for method, template in ROUTES:
            statuses[(method, template)] = client.request(
                method, template.format(id=TOO_BIG)
            ).status_code
    assert all(status in (404, 422) for status in statuses.values()), statuses


def test_a_nul_in_admin_text_is_a_422_that_says_why(sidecar: Sidecar, backend: str) -> None:
    """Postgres text cannot hold NUL (SQLite can: there the webhook is created)."""
    body = {"url": "http://127.0.0.1:9/hook", "description": "a\x00b"}
    with httpx.Client(base_url=sidecar.base, headers=ADMIN, timeout=10) as client:
        response = client.post("/api/webhooks", json=body)
    assert response.status_code == (422 if backend == "postgres" else 201), response.text
    if backend == "postgres":
        assert "NUL" in response.json()["error"]["message"]
