"""`thermostat_recorder_dropped_total` shows every reason at 0 from the start."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

import monitor.proxy.recorder
from monitor.app import create_app
from monitor.proxy.metrics import DROP_REASONS
from monitor.settings import Settings


def test_every_drop_reason_the_recorder_uses_is_listed() -> None:
    source = Path(monitor.proxy.recorder.__file__).read_text()
    used = set(re.findall(r"""_drop\(\s*["']([a-z_]+)["']""", source))
    assert used and used <= set(DROP_REASONS)


def test_fresh_app_shows_every_drop_reason_at_zero(
    make_settings: Callable[..., Settings],
) -> None:
    with TestClient(create_app(make_settings(), role="api")) as client:
        text = client.get("/metrics").text
    dropped = {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "thermostat_recorder_dropped_total"
    }
    assert dropped == dict.fromkeys(DROP_REASONS, 0.0)
