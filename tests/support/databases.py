"""Test databases on both dialects: migrated once into a template, cloned per test.

Postgres: `CREATE DATABASE ... TEMPLATE` is fast and gives each test a clean,
migrated database that is dropped afterwards. SQLite: the migrated file is
copied. Set THERMOSTAT_TEST_POSTGRES_URL to use another server.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from monitor.db import migrate
from monitor.db.engine import build_engine

ADMIN_URL = os.environ.get(
    "THERMOSTAT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgres")


def _admin_dsn() -> str:
    url = make_url(ADMIN_URL)
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_url(database: str) -> str:
    return make_url(ADMIN_URL).set(database=database).render_as_string(hide_password=False)


def create_postgres_database(template: str | None = None) -> str:
    name = f"thermostat_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        suffix = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{suffix}")
    return name


def drop_postgres_database(name: str) -> None:
    with psycopg.connect(_admin_dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def migrate_url(url: str) -> None:
    engine = build_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


@contextmanager
def migrated_template(backend: str, tmp_dir: Path) -> Iterator[str]:
    """Yield a template: a Postgres database name, or a SQLite file path."""
    if backend == "postgres":
        name = create_postgres_database()
        try:
            migrate_url(postgres_url(name))
            yield name
        finally:
            drop_postgres_database(name)
    else:
        path = tmp_dir / "template.db"
        migrate_url(f"sqlite:///{path}")
        yield str(path)


@contextmanager
def database_from(backend: str, template: str | None, tmp_dir: Path) -> Iterator[str]:
    """Yield the URL of a new database (a clone of `template`, or empty), dropped after."""
    if backend == "postgres":
        name = create_postgres_database(template)
        try:
            yield postgres_url(name)
        finally:
            drop_postgres_database(name)
    else:
        path = tmp_dir / f"db-{uuid.uuid4().hex[:8]}.db"
        if template:
            shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
