"""The backup and restore commands of docs/operations.md ("Backup"), run as written.

The commands are read from the page and run by bash, so the shell expands
them as it would for an operator (`$(date +%F)`, `$DATABASE_URL`, `~`). Only
the placeholders are filled in: the `...` of `--dbname=...` with the empty
database restored into, `thermostat-YYYY-MM-DD.dump` with the file pg_dump
wrote, `/backups/` with a folder of the test's. Every table is compared, row
by row, between the database backed up and the one restored; then
`thermostat db current` and `thermostat db check` must be happy with it.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from monitor.db import migrate
from monitor.db.base import Base
from monitor.db.engine import build_engine
from monitor.db.models import (
    Calibration,
    Feedback,
    Generation,
    RecalibrationJob,
    Task,
    Webhook,
)
from tests.deploy.manifests import OPERATIONS
from tests.support.cli import run_thermostat
from tests.support.databases import create_postgres_database, drop_postgres_database, postgres_url

COMMAND_STARTS = ("pg_dump ", "pg_restore ", "psql ", "sqlite3 ", "cp ")


def backup_section() -> str:
    text = OPERATIONS.read_text()
    match = re.search(r"^## Backup\n(.*?)^## ", text, re.S | re.M)
    assert match, "docs/operations.md lost its Backup section"
    return match.group(1)


def documented(kind: str) -> list[str]:
    """The commands of the section's bullet for `kind` (Postgres or SQLite), in order."""
    bullets = re.split(r"^- ", backup_section(), flags=re.M)
    (bullet,) = [b for b in bullets if b.startswith(f"**{kind}")]
    # Inline code spans; a command may be wrapped across lines in the Markdown source.
    spans = [" ".join(s.split()) for s in re.findall(r"`([^`]+)`", bullet)]
    return [s for s in spans if s.startswith(COMMAND_STARTS)]


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done


def clean_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("THERMOSTAT_")}
    env.update(values)
    return env


def add_rows(engine: Engine) -> None:
    """A task's worth of rows in the tables that matter, binary and JSON columns included."""
    now = dt.datetime.now(dt.UTC)
    with Session(engine) as session, session.begin():
        session.add(Task(name="backed-up", config={"ece_threshold": 0.1}, configured=True))
        session.flush()
        generations = [
            Generation(
                task="backed-up",
                prompt=[{"role": "user", "content": f"question {i} \u00e9\u00e8"}],
                response_text=f"answer {i}",
                token_count=3,
                top_k=5,
                logprobs=bytes(range(i, i + 45)),
                raw_confidence=0.5 + i / 100,
                confidence=0.4 + i / 100,
                label=float(i % 2),
                labelled_at=now,
            )
            for i in range(20)
        ]
        session.add_all(generations)
        session.flush()
        session.add_all(
            Feedback(generation_id=g.id, label=g.label or 0.0, source="grader") for g in generations
        )
        calibration = Calibration(
            task="backed-up",
            version=1,
            temperature=2.5,
            status="active",
            metrics_before={"ece": 0.2},
            metrics_after={"ece": 0.03},
            n_train=14,
            n_holdout=6,
            activated_at=now,
        )
        session.add(calibration)
        session.flush()
        session.add(
            RecalibrationJob(
                task="backed-up",
                trigger="manual",
                status="succeeded",
                calibration_id=calibration.id,
            )
        )
        session.add(Webhook(url="https://hooks.example.com/t", secret="whsec_x", events=["a"]))


def contents(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every table of the schema, every row, in primary-key order."""
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row)
                for row in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for table in Base.metadata.sorted_tables
        }


def assert_holds_the_rows(restored: dict[str, Any], original: dict[str, Any]) -> None:
    for table in ("tasks", "generations", "feedback", "calibrations", "recalibration_jobs"):
        assert original[table], f"the test wrote no {table}"
    assert len(original["generations"]) == 20
    for table, rows in original.items():
        assert restored[table] == rows, table


def assert_schema_happy(env: dict[str, str], revision: str) -> None:
    assert run_thermostat(env, "db", "current").split() == [revision, "(head)"]
    assert "no drift" in run_thermostat(env, "db", "check")


@pytest.fixture
def postgres_pair() -> Iterator[tuple[str, str]]:
    """A migrated database to back up and an empty one to restore into, both dropped after."""
    names = [create_postgres_database(), create_postgres_database()]
    try:
        yield postgres_url(names[0]), postgres_url(names[1])
    finally:
        for name in names:
            drop_postgres_database(name)


@pytest.mark.postgres
def migrated_with_rows(engine: Engine) -> tuple[str, dict[str, list[tuple[Any, ...]]]]:
    """Migrate to head and add the rows: the head revision and every table's contents."""
    migrate.upgrade(engine)
    revision = migrate.current_revision(engine)
    assert revision is not None
    add_rows(engine)
    return revision, contents(engine)


def test_postgres_backup_and_restore_as_documented(
    postgres_pair: tuple[str, str], tmp_path: Path
) -> None:
    source_url, target_url = postgres_pair
    dump_command, restore_command = documented("Postgres")
    assert dump_command.startswith("pg_dump ") and restore_command.startswith("pg_restore ")
    assert "--dbname=..." in restore_command and "thermostat-YYYY-MM-DD.dump" in restore_command

    source = build_engine(source_url)
    try:
        revision, original = migrated_with_rows(source)
    finally:
        source.dispose()

    # "DATABASE_URL is THERMOSTAT_DATABASE_URL without +psycopg"
    assert "+psycopg" in source_url
    libpq_url = source_url.replace("+psycopg", "")
    shell(dump_command, tmp_path, clean_env(DATABASE_URL=libpq_url))
    dumps = list(tmp_path.glob("*.dump"))
    assert [d.name for d in dumps] == [f"thermostat-{dt.date.today():%Y-%m-%d}.dump"]

    # The target is empty: restore into it, as the docs say, with its libpq URL.
    target_libpq = make_url(target_url).set(drivername="postgresql")
    restore = restore_command.replace(
        "--dbname=...", f"--dbname={target_libpq.render_as_string(hide_password=False)}"
    ).replace("thermostat-YYYY-MM-DD.dump", dumps[0].name)
    shell(restore, tmp_path, clean_env())

    target = build_engine(target_url)
    try:
        assert_holds_the_rows(contents(target), original)
    finally:
        target.dispose()
    assert_schema_happy(clean_env(THERMOSTAT_DATABASE_URL=target_url), revision)


def test_sqlite_backup_and_restore_as_documented(tmp_path: Path) -> None:
    backup_command, restore_command = documented("SQLite")
    assert "/backups/thermostat.db" in backup_command
    assert "/backups/thermostat.db" in restore_command
    user_home = tmp_path / "user"  # `~` of the commands; ~/.thermostat is the default home
    backups = tmp_path / "backups"
    backups.mkdir()
    env = clean_env(HOME=str(user_home))
    live = user_home / ".thermostat" / "thermostat.db"

    def fill_in(command: str) -> str:
        return command.replace("/backups/", f"{backups}/")

    engine = build_engine(f"sqlite:///{live}")
    try:
        revision, original = migrated_with_rows(engine)
        # The server is running: its connection is open and the rows are still in the
        # write-ahead log, which is what a plain `cp` of the file would miss.
        with engine.connect():
            assert live.with_name("thermostat.db-wal").stat().st_size > 0
            shell(fill_in(backup_command), tmp_path, env)
        backed_up = build_engine(f"sqlite:///{backups / 'thermostat.db'}")
        try:
            assert_holds_the_rows(contents(backed_up), original)
        finally:
            backed_up.dispose()

        # Rows lost after the backup (an operator's mistake), then restored with the
        # server stopped, as the docs say.
        with Session(engine) as session, session.begin():
            session.execute(delete(Feedback))
            session.execute(delete(Task))
        assert not contents(engine)["generations"]
    finally:
        engine.dispose()

    shell(fill_in(restore_command), tmp_path, env)
    restored = build_engine(f"sqlite:///{live}")
    try:
        assert_holds_the_rows(contents(restored), original)
    finally:
        restored.dispose()
    # `thermostat db ...` on the default home (~/.thermostat), as after a restore.
    assert_schema_happy(env, revision)


def test_documented_backup_commands_are_all_run_here() -> None:
    """A command added to the section must be added to these tests too."""
    assert len(documented("Postgres")) == 2 and len(documented("SQLite")) == 2
    listed = [
        s
        for s in re.findall(r"`([^`]+)`", backup_section())
        if " ".join(s.split()).startswith(COMMAND_STARTS)
    ]
    assert len(listed) == 4, listed
