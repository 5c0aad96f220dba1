"""`thermostat demo --exit` as a newcomer runs it: the whole loop, asserted on its own numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest


def demo_home(tmp_path: Path, tiny_model_path: Path) -> Path:
    home = tmp_path / "home"
    # The demo reuses a model it finds built under THERMOSTAT_HOME/demo/model.
    shutil.copytree(tiny_model_path, home / "demo" / "model")
    return home


def run_demo(home: Path, *options: str) -> tuple[str, dict[str, Any]]:
    """`thermostat demo --exit [options]` on `home`: its stdout and its last-run.json."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(THERMOSTAT_HOME=str(home), COLUMNS="120")
    summary_path = home / "demo" / "last-run.json"
    summary_path.unlink(missing_ok=True)
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--exit", *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(summary_path.read_text())


def assert_loop_closed(out: str, summary: dict[str, Any]) -> None:
    """What one demo run must show, on its own numbers and in its printed summary."""
    assert "reused" in out and "Summary" in out
    before, after = summary["ece_before"], summary["ece_after"]
    assert before["autocomplete"] > 0.15, summary
    assert after["autocomplete"] < 0.10, summary
    assert summary["served_ece_after"] < 0.10, summary
    assert before["quiz"] < 0.15 and summary["firing_tasks"] == ["autocomplete"], summary
    assert after["quiz"] < 0.15, summary  # read back from quiz's own latest snapshot
    assert abs(summary["fitted_temperature"] - 4.0) / 4.0 < 0.35, summary  # true T is 4
    assert summary["webhooks"]["alert.firing"] == 1 and summary["webhooks"]["alert.resolved"] == 1
    assert summary["webhooks"]["recalibration.succeeded"] == 1, summary
    assert summary["webhooks"]["calibration.activated"] == 1, summary
    assert summary["signatures_valid"] is True
    assert summary["device"] in ("cpu", "cuda")
    assert summary["seconds"] > 0, summary
    # The printed summary carries the same numbers.
    assert f"{before['autocomplete']:.3f}" in out and f"{after['autocomplete']:.3f}" in out
    assert summary["dashboard_url"] in out


# About 30 s on a quiet 2-core machine; one worker runs the demos in turn (.ci/test).
@pytest.mark.xdist_group("demo")
@pytest.mark.timeout(600)
def test_demo_closes_the_loop(tmp_path: Path, tiny_model_path: Path) -> None:
    home = demo_home(tmp_path, tiny_model_path)
    out, summary = run_demo(home)
    assert_loop_closed(out, summary)
    assert "(all roles, SQLite)" in out
    assert (home / "demo" / "demo.db").is_file()
