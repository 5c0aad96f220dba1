"""Settings precedence and config-file validation: bad files fail at start, in one line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import parse_duration
from monitor.errors import ConfigError
from monitor.settings import load_settings


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thermostat.yaml"
    path.write_text(text)
    return path


def test_defaults_without_any_configuration(tmp_path: Path) -> None:
    settings = load_settings()
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'home' / 'thermostat.db'}"
    assert settings.evaluate_interval_s == 60
    task = settings.task_config("anything")
    assert (task.ece_threshold, task.min_samples, task.n_bins, task.top_logprobs) == (
        0.15,
        300,
        15,
        5,
    )
    assert task.window == timedelta(hours=24) and task.confidence == "geometric_mean"


def test_file_settings_sit_below_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _config(tmp_path, "settings:\n  evaluate_interval_s: 5\n  worker: {device: cpu}\n")
    monkeypatch.setenv("THERMOSTAT_CONFIG", str(path))
    assert load_settings().evaluate_interval_s == 5
    monkeypatch.setenv("THERMOSTAT_EVALUATE_INTERVAL_S", "7")
    monkeypatch.setenv("THERMOSTAT_WORKER__DEVICE", "auto")
    settings = load_settings()
    assert settings.evaluate_interval_s == 7 and settings.worker.device == "auto"


def test_task_overrides_merge_over_defaults(tmp_path: Path) -> None:
    path = _config(
        tmp_path,
        """
defaults:
  ece_threshold: 0.2
  window: 12h
tasks:
  math_reasoning:
    confidence: answer_span
    answer_pattern: '\\\\boxed\\{(.+?)\\}'
    sampling: policy
    policy: {temperature: 0.55, top_p: 0.95, max_tokens: 1024}
    recalibrate_cron: "0 3 * * *"
webhooks:
  - url: https://hooks.example.com/thermostat
    secret: whsec_abc
    events: [alert.firing, alert.resolved]
""",
    )
    settings = load_settings(config=path)
    math = settings.task_config("math_reasoning")
    assert math.ece_threshold == 0.2 and math.window == timedelta(hours=12)
    assert math.policy.temperature == 0.55 and math.recalibrate_cron == "0 3 * * *"
    assert settings.task_config("other").confidence == "geometric_mean"
    assert settings.config_file.webhooks[0].events == ["alert.firing", "alert.resolved"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tasks:\n  t:\n    bogus: 1\n", r"tasks\.t\.bogus: unknown key"),
        (
            "tasks:\n  t:\n    recalibrate_cron: '61 * * * *'\n",
            r"tasks\.t\.recalibrate_cron: bad cron",
        ),
        ("tasks:\n  t:\n    ece_threshold: 1.5\n", r"tasks\.t\.ece_threshold: .*less than 1"),
        ("defaults:\n  ece_threshold: 0\n", r"defaults\.ece_threshold: .*greater than 0"),
        ("tasks:\n  Bad-Name:\n    {}\n", r"must match"),
        ("settings:\n  nope: 1\n", r"nope: unknown key"),
        ("webhooks:\n  - {url: 'ftp://x', secret: s}\n", r"webhooks\.0\.url"),
        ("webhooks:\n  - {url: 'http://x', secret: s, events: [alert.nope]}\n", r"unknown event"),
        ("tasks:\n  t:\n    confidence: answer_span\n", r"needs answer_pattern"),
        ("tasks: [1, 2\n", r"cannot be read"),
    ],
)
def test_bad_config_is_refused_naming_file_and_key(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_settings(config=path)
    message = info.value.message
    assert "\n" not in message
    assert str(path) in message or "settings" in message


def test_missing_config_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(config=tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("value", "seconds"), [(90, 90), ("45s", 45), ("30m", 1800), ("24h", 86400), ("30d", 2592000)]
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value).total_seconds() == seconds


@pytest.mark.parametrize("value", ["", "abc", "-5s", "0"])
def test_bad_durations(value: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)
