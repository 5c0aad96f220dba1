"""What a running process holds: settings, engine, sessions, metrics and its services.

Built in the app's lifespan (never at import). A role is a list of services;
each has `start()` and `stop()`, started in order and stopped in reverse.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass, field
from typing import Literal, Protocol

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from monitor.db.engine import build_engine, is_sqlite
from monitor.db.migrate import ensure_schema
from monitor.db.session import make_session_factory
from monitor.serving.calibration_table import CalibrationTable
from monitor.settings import Settings

log = logging.getLogger(__name__)

Role = Literal["all", "api", "scheduler", "worker"]
ROLES: tuple[Role, ...] = ("all", "api", "scheduler", "worker")


class Service(Protocol):
    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


# Service factories per role, as "module:function" taking the Runtime. Imported
# only when the role runs, so the API role never imports torch.
ROLE_SERVICES: dict[str, list[str]] = {
    "api": [
        "monitor.serving.hotswap:create_hot_swap",
        "monitor.proxy.recorder:create_recorder",
        "monitor.proxy.service:create_proxy",
    ],
    "scheduler": ["monitor.scheduler.service:create_scheduler"],
    "worker": ["monitor.jobs.worker:create_worker"],
}


@dataclass
class Runtime:
    settings: Settings
    role: Role
    engine: Engine
    sessions: sessionmaker[Session]
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # What the proxy serves from; the hot-swap service keeps it current.
    calibration_table: CalibrationTable = field(default_factory=CalibrationTable)
    services: list[Service] = field(default_factory=list)
    extras: dict[str, object] = field(default_factory=dict)

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.settings.resolved_database_url)

    def runs(self, role: str) -> bool:
        return self.role in ("all", role)

    async def start(self) -> None:
        for role in ("api", "scheduler", "worker"):
            if not self.runs(role):
                continue
            for path in ROLE_SERVICES[role]:
                module_name, _, attr = path.partition(":")
                factory = getattr(importlib.import_module(module_name), attr)
                service = factory(self)
                await service.start()
                self.services.append(service)
                log.info("started %s", service.name)

    async def stop(self) -> None:
        while self.services:
            service = self.services.pop()
            try:
                await service.stop()
            except Exception:
                log.exception("stopping %s failed", service.name)
        self.engine.dispose()


def open_runtime(settings: Settings, role: Role = "all") -> Runtime:
    """Connect, check (or, on embedded SQLite, apply) the schema, and build a Runtime."""
    url = settings.resolved_database_url
    engine = build_engine(url, application_name=f"thermostat-{role}")
    try:
        ensure_schema(engine, auto_upgrade=is_sqlite(url))
    except Exception:
        engine.dispose()
        raise
    return Runtime(
        settings=settings, role=role, engine=engine, sessions=make_session_factory(engine)
    )
