"""Rule files: shipped defaults load; a bad file is refused with one line naming file and rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitor.alerting.rules import default_rules_path, load_rules
from monitor.config import TaskConfig
from monitor.errors import ConfigError


def test_shipped_rules() -> None:
    assert default_rules_path().is_dir()
    rules = {rule.name: rule for rule in load_rules()}
    ece = rules["ece_above_threshold"]
    assert (ece.metric, ece.comparison, ece.for_) == ("ece", ">", 2)
    assert ece.threshold_for(TaskConfig(ece_threshold=0.07)) == 0.07
    # The task's own floor, lower or higher than the default 300 (CONTRACT.md).
    assert ece.min_samples_for(TaskConfig(min_samples=100)) == 100
    assert ece.min_samples_for(TaskConfig(min_samples=1000)) == 1000
    assert ece.min_samples_for(TaskConfig()) == 300
    assert rules["confidence_distribution_shift"].threshold == 0.25
    assert {"feedback_accuracy_drop", "truncation_rate_high", "repetition_rate_high"} <= set(rules)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            "rules:\n  - {name: r1, metric: eceee, comparison: '>', threshold: 0.1}\n",
            "unknown metric",
        ),
        (
            "rules:\n  - {name: r1, metric: ece, comparison: '>', threshold: task.nope}\n",
            "task.nope",
        ),
        ("rules:\n  - {name: r1, metric: ece, comparison: '=>', threshold: 0.1}\n", "comparison"),
        ("rules:\n  - {name: r1, metric: ece, comparison: '>', threshold: 0.1, for: 0}\n", "for"),
        (
            "rules:\n  - {name: r1, metric: ece, comparison: '>', threshold: 0.1, colour: red}\n",
            "colour",
        ),
    ],
)
def test_bad_rule_file_is_refused(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_rules(path)
    message = info.value.message
    assert str(path) in message and "'r1'" in message and expected in message
    assert "\n" not in message


def test_for_defaults_to_two_evaluations(tmp_path: Path) -> None:
    """DESIGN.md: a breach must persist for `for` evaluations (default 2) before firing."""
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: r, metric: ece, comparison: '>', threshold: 0.1}\n")
    (rule,) = load_rules(path)
    assert rule.for_ == 2


def test_folder_override_and_duplicate_names(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "rules:\n  - {name: only, metric: truncation_rate, comparison: '>=', threshold: 0.5}\n"
    )
    (tmp_path / "notes.txt").write_text("ignored")
    assert [rule.name for rule in load_rules(tmp_path)] == ["only"]
    (tmp_path / "b.yml").write_text(
        "- {name: only, metric: ece, comparison: '>', threshold: task.ece_threshold}\n"
    )
    with pytest.raises(ConfigError, match="already defined"):
        load_rules(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_rules(tmp_path / "missing")
