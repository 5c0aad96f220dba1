"""One settings tree for every role, from `THERMOSTAT_*` variables and the config file.

Precedence: explicit keyword arguments, then environment variables, then the
`settings:` section of the config file (`THERMOSTAT_CONFIG`), then defaults.
Nested sections take environment variables with a double underscore, for
example `THERMOSTAT_WORKER__DEVICE=cpu`.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from monitor.config import ConfigFile, TaskConfig, describe_validation_error, load_config_file
from monitor.errors import ConfigError, redact_url

ENV_PREFIX = "THERMOSTAT_"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class ProxySettings(_Section):
    """The sidecar's upstream client and request limits."""

    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    # How long an idle client connection stays open. Longer than what sits in
    # front (a load balancer's idle timeout, 60 s on AWS ALB; httpx's and the
    # openai SDK's 5 s): a server that closes first races the client's next
    # request on that connection, which fails (a 502 through a load balancer).
    keep_alive_s: int = Field(default=75, ge=1)


class RecorderSettings(_Section):
    """The bounded queue between the request path and the database, and its spool."""

    queue_size: int = Field(default=20_000, ge=10)
    batch_size: int = Field(default=500, ge=1)
    flush_interval_s: float = Field(default=0.25, gt=0)
    spool_max_bytes: int = Field(default=1024**3, ge=1024)
    replay_interval_s: float = Field(default=2.0, gt=0)
    # Pack and insert batches in a child process, off the request path's GIL
    # (monitor/proxy/writer_process.py); false: in the writer thread.
    writer_process: bool = True
    # How much lower the writer process's CPU priority is than the request
    # path's (a nice increment, 0 to 19): on a busy host the scheduler then runs
    # the event loop first, and the writer catches up when a core is free.
    writer_nice: int = Field(default=10, ge=0, le=19)
    # How long a starting api process waits for another process's lock on the
    # same spool folder (an old process still flushing during a restart) before
    # it refuses to start.
    spool_claim_wait_s: float = Field(default=10.0, ge=0)


class SchedulerSettings(_Section):
    """Periodic jobs; each `<feature>.<action>` job has an on/off switch here."""

    evaluate_enabled: bool = True
    retention_enabled: bool = True
    retention_interval_s: float = Field(default=3600.0, gt=0)
    webhook_delivery_enabled: bool = True
    webhook_delivery_interval_s: float = Field(default=2.0, gt=0)
    cron_recalibration_enabled: bool = True
    recalibration_cooldown_s: float = Field(default=6 * 3600.0, ge=0)
    # 0: an episode notifies once on firing and once on resolving (CONTRACT.md).
    alert_renotify_s: float = Field(default=0.0, ge=0)
    bootstrap_resamples: int = Field(default=200, ge=0)


class WorkerSettings(_Section):
    """Recalibration job execution."""

    device: Literal["auto", "cuda", "cpu"] = "auto"
    poll_interval_s: float = Field(default=1.0, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    heartbeat_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 0


class WebhookDeliverySettings(_Section):
    timeout_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=8, ge=1)
    backoff_base_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=600.0, gt=0)
    disable_after_failures: int = Field(default=20, ge=1)


class HotSwapSettings(_Section):
    poll_interval_s: float = Field(default=1.0, gt=0)
    resync_interval_s: float = Field(default=30.0, gt=0)


class _ConfigFileSettingsSource(PydanticBaseSettingsSource):
    """Feeds the config file's `settings:` section in below the environment."""

    def __init__(self, settings_cls: type[BaseSettings], values: dict[str, Any]) -> None:
        super().__init__(settings_cls)
        self._values = values

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._values)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
        # A validation error's text would otherwise carry the rejected input,
        # the database URL's password or a token among them.
        hide_input_in_errors=True,
    )

    home: Path = Path("~/.thermostat")
    # SecretStr: the URL may carry a password, so repr() and dumps mask it;
    # `resolved_database_url` is the plain string, for the engine only.
    database_url: SecretStr | None = None
    upstream_url: str | None = None
    config: Path | None = None
    alert_rules: Path | None = None
    admin_token: SecretStr | None = None
    feedback_token: SecretStr | None = None
    evaluate_interval_s: float = Field(default=60.0, gt=0)
    model_admin_url: str | None = None
    log_level: LogLevel = "INFO"

    proxy: ProxySettings = ProxySettings()
    recorder: RecorderSettings = RecorderSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    worker: WorkerSettings = WorkerSettings()
    webhooks: WebhookDeliverySettings = WebhookDeliverySettings()
    hot_swap: HotSwapSettings = HotSwapSettings()

    @field_validator("home")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("upstream_url", "model_admin_url", mode="before")
    @classmethod
    def _blank_url_is_none(cls, value: Any) -> Any:
        # As for tokens and the database URL: an empty variable means "not set".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("upstream_url", "model_admin_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else check_http_url(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("admin_token", "feedback_token", "database_url", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        kwargs = getattr(init_settings, "init_kwargs", {})
        path = kwargs.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG") or None
        values = cached_config_file(Path(path).expanduser()).settings if path else {}
        return (init_settings, env_settings, _ConfigFileSettingsSource(settings_cls, values))

    @property
    def resolved_database_url(self) -> str:
        """The plain URL the engine connects with; never log it (see `redact_url`)."""
        if self.database_url is not None and self.database_url.get_secret_value():
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.home / 'thermostat.db'}"

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def config_file(self) -> ConfigFile:
        return cached_config_file(self.config.expanduser()) if self.config else ConfigFile()

    def task_config(self, name: str) -> TaskConfig:
        return self.config_file.task(name)


def check_http_url(value: str) -> str:
    """Parse a base URL as the clients will at start, so a bad one fails at settings load.

    The upstream client splits the URL only when the app starts, where a bad
    port or an empty host used to surface as a traceback from the lifespan.
    """
    shown = redact_url(value)
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ValueError(f"must not contain spaces or control characters, got {shown!r}")
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc}), got {shown!r}") from None
    if parts.scheme not in ("http", "https") or not value.lower().startswith(parts.scheme + "://"):
        raise ValueError(f"must start with http:// or https://, got {shown!r}")
    if not parts.hostname:
        raise ValueError(f"has no host, got {shown!r}")
    if port == 0:  # the client would read 0 as "no port" and use 80 or 443
        raise ValueError(f"port must be 1 to 65535, got {shown!r}")
    try:
        parts.netloc.rpartition("@")[2].encode("idna")  # the client's Host header
    except UnicodeError:
        raise ValueError(f"host {parts.hostname!r} is not a valid host name") from None
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ValueError(f"must not have a query or fragment, got {shown!r}")
    return value.rstrip("/")


def cached_config_file(path: Path) -> ConfigFile:
    """Parse the config file once per (path, modification time)."""
    try:
        mtime = path.stat().st_mtime_ns
    except OSError:
        mtime = -1  # load_config_file raises the readable error
    return _parse_config_file(path, mtime)


@lru_cache(maxsize=8)
def _parse_config_file(path: Path, _mtime: int) -> ConfigFile:
    return load_config_file(path)


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning every validation problem into a one-line ConfigError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # The file the `settings:` section came from, found as Settings finds it.
        path = overrides.get("config") or os.environ.get(f"{ENV_PREFIX}CONFIG") or None
        where = Path(path).expanduser() if path else None
        raise ConfigError(f"invalid settings: {_settings_error(exc, where)}") from None


def _settings_error(exc: ValidationError, config: Path | None = None) -> str:
    line = describe_validation_error(exc)
    key = line.split(":", 1)[0]
    env_name = ENV_PREFIX + key.replace(".", "__").upper()
    where = str(config) if config else "the config file"
    return f"{line} (env {env_name} or settings.{key} in {where})"
