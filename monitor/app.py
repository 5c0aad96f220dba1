"""The ASGI application: `create_app(settings, role)` builds everything in lifespan.

Feature routers are listed in ROUTERS and included for the roles that serve
HTTP. Nothing (engine, clients, scheduler) is built at import time.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from monitor import __version__
from monitor.body_limit import BodySizeLimit
from monitor.health import router as health_router
from monitor.http_errors import install_error_handlers
from monitor.refused_tokens import refused_tokens
from monitor.runtime import Role, open_runtime
from monitor.settings import Settings, load_settings

# Feature routers as "module:attribute", imported when the app is built.
ROUTERS: list[str] = [
    "monitor.feedback.router:router",
    "monitor.generations.router:router",
    "monitor.api.tasks:router",
    "monitor.calibrations.router:router",
    "monitor.api.alerts:router",
    "monitor.api.evaluate:router",
    "monitor.alerting.router:router",
    "monitor.dashboard.router:router",
    "monitor.api.docs:router",  # /api/openapi.json and /api/docs, admin only
]


class ThermostatApp(FastAPI):
    """FastAPI, except that proxied requests go straight to the bare ASGI handler.

    They skip the middleware stack and the router (a few percent of the proxy's
    CPU per request); the handler applies its own body limit and error bodies.
    """

    proxy_paths: dict[tuple[str, str], Any] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and self.proxy_paths:
            endpoint = self.proxy_paths.get((scope["method"], scope["path"]))
            if endpoint is not None:
                scope["app"] = self
                return await endpoint(scope, receive, send)
        elif scope["type"] == "lifespan":
            receive = _shutdown_when_cancelled(receive)
        await super().__call__(scope, receive, send)


def _shutdown_when_cancelled(receive: Any) -> Any:
    """The lifespan's receive, with cancellation read as a request to shut down.

    uvicorn's forced exit (a second Ctrl-C) cancels the lifespan task instead
    of asking it to shut down: Starlette then logs a CancelledError traceback
    and the runtime's stop runs inside a cancelled task. Read as "shut down",
    the runtime stops as on the first Ctrl-C (the recorder flushes what it
    holds) and the exit prints no traceback.
    """

    async def receive_or_shutdown() -> Any:
        try:
            return await receive()
        except asyncio.CancelledError:
            return {"type": "lifespan.shutdown"}

    return receive_or_shutdown


def create_app(settings: Settings | None = None, role: Role = "all") -> FastAPI:
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = open_runtime(settings, role)
        app.state.runtime = runtime
        refused = refused_tokens(runtime)  # its counter in /metrics before the first refusal
        try:
            await runtime.start()
            yield
        finally:
            await runtime.stop()
            refused.close()

    app = ThermostatApp(
        title="Thermostat",
        version=__version__,
        lifespan=lifespan,
        # FastAPI would serve these without auth; monitor.api.docs serves
        # /api/docs and /api/openapi.json behind the admin token instead.
        docs_url=None,
        openapi_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.add_middleware(BodySizeLimit, max_bytes=settings.proxy.max_body_bytes)
    install_error_handlers(app)
    app.include_router(health_router)
    if role in ("all", "api"):
        from monitor.proxy.service import PROXY_PATHS, proxy_routes

        app.router.routes.extend(proxy_routes())
        app.proxy_paths = PROXY_PATHS
    for path in ROUTERS:
        module_name, _, attr = path.partition(":")
        app.include_router(getattr(importlib.import_module(module_name), attr))
    return app
