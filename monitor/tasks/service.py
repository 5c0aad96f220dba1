"""Task configuration as every role sees it: the config file over the defaults.

The config file is the source of truth for configured tasks; the database row
keeps a snapshot (written at start) so the API and dashboard can show it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from monitor.config import TASK_NAME_PATTERN, TaskConfig, is_valid_task_name
from monitor.errors import NotFoundError, ValidationFailed
from monitor.settings import Settings
from monitor.tasks import repository


def task_config(settings: Settings, name: str) -> TaskConfig:
    return settings.task_config(name)


def config_as_dict(config: TaskConfig) -> dict[str, Any]:
    return config.model_dump(mode="json")


def validate_task_name(name: str, field: str = "task") -> str:
    if not is_valid_task_name(name):
        message = f"{field}: task name {name!r} must match {TASK_NAME_PATTERN}"
        raise ValidationFailed(message, field=field)
    return name


def sync_configured_tasks(session: Session, settings: Settings) -> None:
    configs = {
        name: config_as_dict(config)
        for name, config in settings.config_file.configured_tasks().items()
    }
    repository.sync_configured(session, configs)


def require_task(session: Session, name: str) -> Any:
    task = repository.get_task(session, name)
    if task is None:
        raise NotFoundError(f"task {name!r} not found")
    return task
