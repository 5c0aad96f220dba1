"""`thermostat demo`: the whole loop on the embedded default (see README)."""

from __future__ import annotations

import argparse

from monitor.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exit", action="store_true", help="stop at the end instead of serving")
    parser.add_argument("--postgres", metavar="URL", help="run on this Postgres database")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from monitor.demo.scenario import run_demo
    from monitor.settings import load_settings

    if args.postgres and not args.postgres.startswith("postgresql"):
        raise ConfigError(f"--postgres wants a postgresql+psycopg:// URL, got {args.postgres!r}")
    settings = load_settings()
    run_demo(Console(), settings.home, args.postgres, keep_serving=not args.exit)
    return 0
