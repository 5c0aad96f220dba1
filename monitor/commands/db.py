"""`thermostat db upgrade|downgrade|current|check`: the schema as a deploy step."""

from __future__ import annotations

import argparse

from sqlalchemy import Engine

from monitor.db import migrate
from monitor.db.engine import build_engine
from monitor.errors import DatabaseError, first_line
from monitor.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("upgrade", help="migrate to a revision (default: head)")
    up.add_argument("revision", nargs="?", default="head")
    down = actions.add_parser("downgrade", help="migrate down (default: one step)")
    down.add_argument("revision", nargs="?", default="-1")
    actions.add_parser("current", help="print the revision the database is at")
    actions.add_parser("check", help="fail if the models and migrations disagree")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    engine = build_engine(settings.resolved_database_url, application_name="thermostat-db")
    try:
        return _run(engine, args)
    except DatabaseError:
        raise
    except Exception as exc:
        raise DatabaseError(f"{args.action} failed: {first_line(exc)}") from None
    finally:
        engine.dispose()


def _run(engine: Engine, args: argparse.Namespace) -> int:
    if args.action == "upgrade":
        migrate.upgrade(engine, args.revision)
        print(
            f"database at {migrate.current_revision(engine)} (head {migrate.head_revision(engine)})"
        )
    elif args.action == "downgrade":
        migrate.downgrade(engine, args.revision)
        print(f"database at {migrate.current_revision(engine) or 'base'}")
    elif args.action == "current":
        current = migrate.current_revision(engine)
        head = migrate.head_revision(engine)
        state = "head" if current == head else f"behind head {head}"
        print(f"{current or 'base (not migrated)'} ({state})")
    else:
        drift = migrate.check(engine)
        if drift:
            raise DatabaseError(f"models and migrations disagree: {drift}")
        print("no drift between models and migrations")
    return 0
