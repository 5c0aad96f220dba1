"""`thermostat demo`: the whole loop on the embedded default (see README)."""

from __future__ import annotations

import argparse

from monitor.errors import ThermostatError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exit", action="store_true", help="stop at the end instead of serving")
    parser.add_argument("--postgres", metavar="URL", help="run on this Postgres database")


def run(args: argparse.Namespace) -> int:
    raise ThermostatError("the demo is not ready yet in this version (see the project's issues)")
