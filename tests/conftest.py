"""Shared fixtures: the same tests run on SQLite and on Postgres.

`db_url` is parametrised over both backends; each test gets its own migrated
database (cloned from a template built once per session by `alembic upgrade
head`, never `create_all`) and it is dropped afterwards.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.engine import build_engine
from monitor.db.session import make_session_factory
from monitor.settings import Settings, load_settings
from tests.support.databases import BACKENDS, database_from, migrated_template

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's THERMOSTAT_* variables or ~/.thermostat."""
    for name in list(os.environ):
        if name.startswith("THERMOSTAT_") and name != "THERMOSTAT_TEST_POSTGRES_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("THERMOSTAT_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="session")
def _templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    from contextlib import ExitStack

    with ExitStack() as stack:
        directory = tmp_path_factory.mktemp("templates")
        yield {
            backend: stack.enter_context(migrated_template(backend, directory))
            for backend in BACKENDS
        }


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, _templates: dict[str, str], tmp_path: Path) -> Iterator[str]:
    """A migrated database of the parametrised backend, private to this test."""
    with database_from(backend, _templates[backend], tmp_path) as url:
        yield url


@pytest.fixture
def empty_db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of the parametrised backend that has never been migrated."""
    with database_from(backend, None, tmp_path) as url:
        yield url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = build_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def make_settings(tmp_path: Path, db_url: str) -> Callable[..., Settings]:
    """Settings on this test's database and home; keyword arguments override."""

    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"home": tmp_path / "home", "database_url": db_url}
        values.update(overrides)
        return load_settings(**values)

    return factory


TINY_MODEL_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "tiny-model"


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """One tiny model for the whole run, reused across runs (its recipe hash guards it).

    Training takes 15 s on a quiet 2-core machine and minutes on a busy one, so
    the serving, calibrate and demo tests share this build.
    """
    from monitor.serving.tiny_model import build_tiny_model

    return build_tiny_model(TINY_MODEL_CACHE)
