"""Alembic environment for Thermostat; invoked through `monitor.db.migrate`.

The URL (or an open connection) comes from the Config that migrate.py builds.
`render_as_batch` lets the same scripts alter tables on SQLite. The ORM
metadata is loaded only to compare against (autogenerate and `check`).
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy import engine_from_config, pool

config = context.config


def _target_metadata() -> Any:
    from monitor.db.base import Base
    from monitor.db import models  # noqa: F401  (registers the tables)

    return Base.metadata


def _render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Render portable types as plain SQLAlchemy so scripts never import monitor."""
    from monitor.db.types import UTCDateTime

    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=_target_metadata(),
        render_as_batch=True,
        compare_type=True,
        render_item=_render_item,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; use `thermostat db upgrade`")
run_migrations_online()
