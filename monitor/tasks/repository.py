"""The only SQL about task rows."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from monitor.db.dialect import insert_ignoring_conflicts, upsert
from monitor.db.models import Task
from monitor.db.types import utcnow


def ensure_tasks(session: Session, names: Iterable[str]) -> None:
    """Create rows for tasks first seen in traffic (defaults apply); keep existing ones."""
    now = utcnow()
    rows = [
        {"name": name, "config": {}, "configured": False, "created_at": now, "updated_at": now}
        for name in sorted(set(names))
    ]
    insert_ignoring_conflicts(session, Task, rows)


def sync_configured(session: Session, configs: dict[str, dict[str, object]]) -> None:
    """Store each configured task's effective config so every process shows the same."""
    now = utcnow()
    rows = [
        {"name": name, "config": config, "configured": True, "created_at": now, "updated_at": now}
        for name, config in configs.items()
    ]
    upsert(
        session,
        Task,
        rows,
        key=["name"],
        update_columns=["config", "configured", "updated_at"],
    )


def list_tasks(session: Session) -> list[Task]:
    return list(session.scalars(select(Task).order_by(Task.name)))


def get_task(session: Session, name: str) -> Task | None:
    return session.get(Task, name)
