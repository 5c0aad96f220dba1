"""Settings precedence and config-file validation: bad files fail at start, in one line."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from monitor.config import is_valid_task_name, parse_duration
from monitor.errors import ConfigError, ValidationFailed
from monitor.settings import load_settings
from monitor.tasks.service import validate_task_name


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
    secret: whsec_c2VjcmV0c2VjcmV0c2VjcmV0
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
        (
            "webhooks:\n  - {url: 'http://x', secret: czE=, events: [alert.nope]}\n",
            r"unknown event",
        ),
        (  # not base64: refused at start, as the admin API refuses it
            "webhooks:\n  - {url: 'http://x', secret: czE=}\n"
            "  - {url: 'http://y', secret: whsec_abcde}\n",
            r"webhooks\.1\.secret: secret must be base64",
        ),
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
    assert str(path) in message


def test_bad_settings_section_names_the_config_file(tmp_path: Path) -> None:
    path = _config(tmp_path, "settings:\n  worker: {devise: cuda}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config=path)
    assert info.value.message == (
        "invalid settings: worker.devise: unknown key "
        f"(env THERMOSTAT_WORKER__DEVISE or settings.worker.devise in {path})"
    )


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


@pytest.mark.parametrize("field", ["upstream_url", "model_admin_url"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://", "has no host"),
        ("http://host:abc/v1", "not a valid URL"),
        ("http://host:70000/v1", "not a valid URL"),
        ("http://host:0/v1", "port must be 1 to 65535"),
        ("http://[::1/v1", "not a valid URL"),
        ("http://a..b/v1", "not a valid host name"),
        ("http://host name/v1", "spaces"),
        ("ftp://host/v1", "must start with http:// or https://"),
        ("http://host/v1?x=1", "query"),
    ],
)
def test_bad_http_urls_fail_at_settings_load(
    monkeypatch: pytest.MonkeyPatch, field: str, url: str, expected: str
) -> None:
    """Parsed here, as the upstream client would at app start (where it was a traceback)."""
    monkeypatch.setenv(f"THERMOSTAT_{field.upper()}", url)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert message.startswith(f"invalid settings: {field}: ") and expected in message
    assert "\n" not in message


def test_url_credentials_are_not_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THERMOSTAT_UPSTREAM_URL", "http://user:s3cret@host:abc/v1")
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "s3cret" not in info.value.message and "***@host:abc" in info.value.message


@pytest.mark.parametrize("field", ["upstream_url", "model_admin_url"])
@pytest.mark.parametrize("value", ["", "   "])
def test_blank_urls_mean_not_set(monkeypatch: pytest.MonkeyPatch, field: str, value: str) -> None:
    monkeypatch.setenv(f"THERMOSTAT_{field.upper()}", value)
    assert getattr(load_settings(), field) is None


@pytest.mark.parametrize(
    "url", ["http://vllm:8000/v1", "https://user:pw@models.example.com/v1", "http://[::1]:8000/v1"]
)
def test_good_http_urls_are_kept(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("THERMOSTAT_UPSTREAM_URL", url + "/")
    monkeypatch.setenv("THERMOSTAT_MODEL_ADMIN_URL", url)
    settings = load_settings()
    assert settings.upstream_url == url and settings.model_admin_url == url


@pytest.mark.parametrize(("value", "level"), [("debug", "DEBUG"), (" Warning ", "WARNING")])
def test_log_level_is_case_insensitive(
    monkeypatch: pytest.MonkeyPatch, value: str, level: str
) -> None:
    monkeypatch.setenv("THERMOSTAT_LOG_LEVEL", value)
    assert load_settings().log_level == level


@pytest.mark.parametrize("value", ["bogus", "TRACE", "10", ""])
def test_unknown_log_level_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("THERMOSTAT_LOG_LEVEL", value)
    with pytest.raises(ConfigError, match=r"^invalid settings: log_level: ") as info:
        load_settings()
    assert "THERMOSTAT_LOG_LEVEL" in info.value.message and "\n" not in info.value.message


@pytest.mark.parametrize("name", ["quiz\n", "q" * 64 + "\n", "quiz\n\n", "\nquiz"])
def test_task_names_with_a_newline_are_refused(tmp_path: Path, name: str) -> None:
    """`re.match` lets `$` match before a final newline; the contract's regex does not."""
    assert not is_valid_task_name(name)
    with pytest.raises(ValidationFailed, match="must match"):
        validate_task_name(name)
    path = _config(tmp_path, f"tasks:\n  {name!r}:\n    ece_threshold: 0.2\n".replace("'", '"'))
    with pytest.raises(ConfigError, match="must match"):
        load_settings(config=path)


@pytest.mark.parametrize("name", ["quiz", "q" * 64, "math_reasoning.v2-b"])
def test_good_task_names(name: str) -> None:
    assert is_valid_task_name(name) and validate_task_name(name) == name
