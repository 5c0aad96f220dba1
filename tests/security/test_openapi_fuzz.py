"""Schemathesis, driven from the app's own OpenAPI document: no input makes it answer 5xx.

Every operation of `/api/openapi.json` (admin and feedback API; the proxy and
dashboard are not in the schema) gets a bounded number of schema-conforming
and schema-violating examples, sent with the right token to a real served
sidecar on each backend. Failures are collected with a curl line to replay.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.security.conftest import ADMIN, FEEDBACK, Sidecar

EXAMPLES_PER_MODE = 6


@pytest.mark.timeout(120)
def test_no_operation_answers_5xx(sidecar: Sidecar, backend: str) -> None:
    with httpx.Client(base_url=sidecar.base, timeout=10) as client:
        seeded = client.post(
            "/v1/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4},
        )
        assert seeded.status_code == 200
    sidecar.runtime.extras["recorder"].wait_idle()
    # Admin-only like the rest of /api/* (tests/security/test_api_docs.py).
    schema = schemathesis.openapi.from_url(f"{sidecar.base}/api/openapi.json", headers=ADMIN)
    operations = [result.ok() for result in schema.get_all_operations()]
    paths = {op.path for op in operations}
    assert "/v1/feedback" in paths and "/api/tasks" in paths and len(operations) >= 20
    failures: list[str] = []
    calls = 0

    def fuzz(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> None:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=EXAMPLES_PER_MODE,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            nonlocal calls
            response = case.call(base_url=sidecar.base, headers=headers, timeout=10)
            calls += 1
            if response.status_code >= 500:
                failures.append(
                    f"{response.status_code} {case.as_curl_command()}\n{response.text[:300]}"
                )

        run()

    skipped: list[str] = []
    for operation in operations:
        headers = FEEDBACK if operation.path.startswith("/v1/feedback") else ADMIN
        fuzz(operation, GenerationMode.POSITIVE, headers)
        try:
            fuzz(operation, GenerationMode.NEGATIVE, headers)
        except Unsatisfiable:  # nothing to violate (an operation without inputs)
            skipped.append(operation.label)
    assert calls >= len(operations) * EXAMPLES_PER_MODE
    assert not failures, "\n\n".join(failures[:10])
