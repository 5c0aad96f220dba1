"""Logging setup shared by every role: one line per event, no request bodies at INFO."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def setup_logging(level: str = "INFO") -> None:
    root = logging.getLogger()
    if not any(getattr(h, "_thermostat", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._thermostat = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request line at INFO; that is noise next to a proxy.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # APScheduler logs every run of every job (each 2 s) at INFO: noise, not news.
    logging.getLogger("apscheduler.executors").setLevel(logging.WARNING)
