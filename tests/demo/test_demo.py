"""`thermostat demo --exit` as a newcomer runs it: the whole loop, asserted on its own numbers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_demo_closes_the_loop(tmp_path: Path, tiny_model_path: Path) -> None:
    home = tmp_path / "home"
    # The demo reuses a model it finds built under THERMOSTAT_HOME/demo/model.
    shutil.copytree(tiny_model_path, home / "demo" / "model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(THERMOSTAT_HOME=str(home), COLUMNS="120")
    result = subprocess.run(
        [sys.executable, "-m", "monitor", "demo", "--exit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "reused" in out and "Summary" in out
    summary = json.loads((home / "demo" / "last-run.json").read_text())
    before, after = summary["ece_before"], summary["ece_after"]
    assert before["autocomplete"] > 0.15, summary
    assert after["autocomplete"] < 0.10, summary
    assert summary["served_ece_after"] < 0.10, summary
    assert before["quiz"] < 0.15 and summary["firing_tasks"] == ["autocomplete"], summary
    assert after["quiz"] < 0.15, summary  # read back from quiz's own latest snapshot
    assert abs(summary["fitted_temperature"] - 4.0) / 4.0 < 0.35, summary  # true T is 4
    assert summary["webhooks"]["alert.firing"] == 1 and summary["webhooks"]["alert.resolved"] == 1
    assert summary["signatures_valid"] is True
    assert summary["device"] in ("cpu", "cuda")
    # The printed summary carries the same numbers.
    assert f"{before['autocomplete']:.3f}" in out and f"{after['autocomplete']:.3f}" in out
    assert summary["dashboard_url"] in out
