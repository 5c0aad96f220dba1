"""The YAML config file: per-task calibration policy, webhooks and settings.

`defaults` apply to every task unless a task overrides them; a task seen in
traffic but not configured gets the defaults. Every model forbids unknown keys
so a typo fails at start instead of silently doing nothing.
"""

from __future__ import annotations

import re
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from monitor.alerting.webhook_secret import WebhookSecret
from monitor.errors import ConfigError

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
_TASK_NAME = re.compile(TASK_NAME_PATTERN)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}


def is_valid_task_name(name: str) -> bool:
    # fullmatch: with match, `$` also matches before a final newline ("quiz\n").
    return bool(_TASK_NAME.fullmatch(name))


def parse_duration(value: Any) -> timedelta:
    """Accept `90`, `"45s"`, `"30m"`, `"24h"`, `"30d"` (numbers are seconds)."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"not a duration: {value!r} (use e.g. 90s, 30m, 24h, 30d)")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[
    timedelta, BeforeValidator(parse_duration), PlainSerializer(format_duration, return_type=str)
]


def validate_cron(expression: str) -> str:
    """Reject a bad crontab string at start, with APScheduler's own parser."""
    from apscheduler.triggers.cron import CronTrigger

    try:
        CronTrigger.from_crontab(expression, timezone="UTC")
    except ValueError as exc:
        raise ValueError(f"bad cron expression {expression!r}: {exc}") from None
    return expression


class ConfidenceMethod(StrEnum):
    geometric_mean = "geometric_mean"
    mean = "mean"
    min = "min"
    last_token = "last_token"
    answer_span = "answer_span"


class StoreText(StrEnum):
    full = "full"
    hash = "hash"
    none = "none"


class SamplingMode(StrEnum):
    client = "client"
    policy = "policy"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplingPolicy(_Strict):
    """Sampling parameters a task enforces when `sampling: policy`."""

    temperature: float | None = Field(default=None, ge=0, le=5)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    seed: int | None = None


class TaskConfig(_Strict):
    """Everything that steers how one task is measured, alerted on and recalibrated."""

    ece_threshold: float = Field(default=0.15, gt=0, lt=1)
    min_samples: int = Field(default=300, ge=1)
    window: Duration = timedelta(hours=24)
    n_bins: int = Field(default=15, ge=2, le=100)
    top_logprobs: int = Field(default=5, ge=1, le=20)
    confidence: ConfidenceMethod = ConfidenceMethod.geometric_mean
    answer_pattern: str | None = None
    store_text: StoreText = StoreText.full
    retention: Duration = timedelta(days=30)
    sampling: SamplingMode = SamplingMode.client
    policy: SamplingPolicy = SamplingPolicy()
    apply_calibration_to_sampling: bool = False
    recalibrate_cron: str | None = None
    auto_recalibrate: bool = True

    @field_validator("answer_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"answer_pattern is not a valid regex: {exc}") from None
        return value

    @field_validator("recalibrate_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else validate_cron(value)

    def model_post_init(self, _context: Any) -> None:
        if self.confidence == ConfidenceMethod.answer_span and not self.answer_pattern:
            raise ValueError("confidence answer_span needs answer_pattern")


EVENT_TYPES = (
    "alert.firing",
    "alert.resolved",
    "recalibration.succeeded",
    "recalibration.rejected",
    "recalibration.failed",
    "calibration.activated",
)


class WebhookConfig(_Strict):
    # The secret is written as a plain string in the file; SecretStr keeps it
    # out of repr(), logs and dumps. Unwrap it only to store or sign with it.
    # Inputs are left out of validation errors, which would echo the secret.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = Field(pattern=r"^https?://")
    # Refused here, at start, as the admin API refuses it: a secret that
    # cannot sign would otherwise fail every delivery to this endpoint.
    secret: WebhookSecret
    events: list[str] = Field(default_factory=lambda: list(EVENT_TYPES))

    @field_validator("events")
    @classmethod
    def _known_events(cls, events: list[str]) -> list[str]:
        unknown = sorted(set(events) - set(EVENT_TYPES))
        if unknown:
            raise ValueError(f"unknown event(s) {unknown}; known: {list(EVENT_TYPES)}")
        return events


class ConfigFile(BaseModel):
    """The parsed config file. `settings` is validated by `Settings` itself."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)

    defaults: dict[str, Any] = Field(default_factory=dict)
    tasks: dict[str, dict[str, Any] | None] = Field(default_factory=dict)
    webhooks: list[WebhookConfig] = Field(default_factory=list)
    # Raw until `Settings` validates it, so it may hold the database URL or a
    # token in the clear: kept out of repr().
    settings: dict[str, Any] = Field(default_factory=dict, repr=False)

    @field_validator("tasks")
    @classmethod
    def _task_names(cls, tasks: dict[str, Any]) -> dict[str, Any]:
        for name in tasks:
            if not is_valid_task_name(name):
                raise ValueError(f"task name {name!r} must match {TASK_NAME_PATTERN}")
        return tasks

    def task_defaults(self) -> TaskConfig:
        return TaskConfig.model_validate(self.defaults)

    def task(self, name: str) -> TaskConfig:
        """The task's effective config: its overrides on top of the defaults."""
        overrides = self.tasks.get(name) or {}
        return TaskConfig.model_validate({**self.defaults, **overrides})

    def configured_tasks(self) -> dict[str, TaskConfig]:
        return {name: self.task(name) for name in self.tasks}


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line: the first problem, with its dotted key; how many others follow."""
    errors = exc.errors()
    first = errors[0]
    key = _location((*((prefix,) if prefix else ()), *first["loc"]))
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{key}: {message}{more}"


def load_config_file(path: Path) -> ConfigFile:
    """Parse and fully validate the config file, or raise a one-line ConfigError."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        detail = str(exc).replace("\n", " ")
        raise ConfigError(f"config file {path} cannot be read: {detail}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    try:
        parsed = ConfigFile.model_validate(raw)
        parsed.task_defaults()
    except ValidationError as exc:
        where = "defaults" if "defaults" in raw and not _fails_outside_defaults(exc) else ""
        raise ConfigError(f"config file {path}: {describe_validation_error(exc, where)}") from None
    for name in parsed.tasks:
        try:
            parsed.task(name)
        except ValidationError as exc:
            detail = describe_validation_error(exc, f"tasks.{name}")
            raise ConfigError(f"config file {path}: {detail}") from None
    return parsed


def _fails_outside_defaults(exc: ValidationError) -> bool:
    """True when the error came from ConfigFile itself (its locs name the top-level key)."""
    return any(err["loc"] and err["loc"][0] in ConfigFile.model_fields for err in exc.errors())
