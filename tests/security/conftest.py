"""A sidecar with both tokens configured, served for real (uvicorn on loopback)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from monitor.app import create_app
from monitor.settings import Settings
from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import serve_app

ADMIN_TOKEN = "adm-9f2c41d7e8b35a60"
FEEDBACK_TOKEN = "fb-51ac0e93d2b7f648"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
FEEDBACK = {"Authorization": f"Bearer {FEEDBACK_TOKEN}"}
QUIET_SCHEDULER = {
    "evaluate_enabled": False,
    "retention_enabled": False,
    "webhook_delivery_enabled": False,
    "cron_recalibration_enabled": False,
}


@dataclass
class Sidecar:
    base: str
    app: Any
    upstream: FakeUpstream

    @property
    def runtime(self) -> Any:
        return self.app.state.runtime


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def secured_settings(make_settings: Callable[..., Settings], upstream: FakeUpstream) -> Settings:
    return make_settings(
        upstream_url=upstream.base_url,
        admin_token=ADMIN_TOKEN,
        feedback_token=FEEDBACK_TOKEN,
        proxy={"read_timeout_s": 2.0, "connect_timeout_s": 1.0, "max_body_bytes": 64 * 1024},
        recorder={"flush_interval_s": 0.05},
        scheduler=QUIET_SCHEDULER,
    )


@pytest.fixture
def sidecar(secured_settings: Settings, upstream: FakeUpstream) -> Iterator[Sidecar]:
    app = create_app(secured_settings, "api")
    with serve_app(app) as base:
        yield Sidecar(base, app, upstream)
