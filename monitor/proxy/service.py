"""The proxy as a service of the api role, and its routes as bare ASGI endpoints.

The routes are mounted on the FastAPI app as raw ASGI callables, so a proxied
request skips FastAPI's request parsing, validation and response models; the
client and handler are built when the role starts, never at import.
"""

from __future__ import annotations

import gc
from typing import Any

from starlette.routing import Route

from monitor.proxy.asgi import Receive, Scope, Send
from monitor.proxy.handler import ProxyHandler
from monitor.proxy.rewrite import Endpoint
from monitor.proxy.upstream import build_client


class ProxyService:
    name = "proxy"

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime
        self.handler: ProxyHandler | None = None

    async def start(self) -> None:
        settings = self.runtime.settings
        url = settings.upstream_url
        client = build_client(url, settings.proxy) if url else None
        self.handler = ProxyHandler(self.runtime, client)
        self.runtime.extras["proxy"] = self.handler
        # Everything built so far (modules, app, settings) lives as long as the
        # process: move it out of the cyclic GC's reach, so the collections
        # triggered by the hot path's allocations never walk it.
        gc.freeze()

    async def stop(self) -> None:
        if self.handler is not None:
            if self.handler.client is not None:
                await self.handler.client.close()
            self.runtime.extras.pop("proxy", None)


def create_proxy(runtime: Any) -> ProxyService:
    return ProxyService(runtime)


class _Endpoint:
    """A raw ASGI endpoint that finds the running process's proxy handler."""

    def __init__(self, endpoint: Endpoint | None) -> None:
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler: ProxyHandler = scope["app"].state.runtime.extras["proxy"]
        if self.endpoint is None:
            await handler.models(scope, receive, send)
        else:
            await handler.completion(scope, receive, send, self.endpoint)


PROXY_PATHS: dict[tuple[str, str], _Endpoint] = {
    ("POST", "/v1/chat/completions"): _Endpoint("chat"),
    ("POST", "/v1/completions"): _Endpoint("completions"),
    ("GET", "/v1/models"): _Endpoint(None),
}


def proxy_routes() -> list[Route]:
    """The proxy paths as routes: listed in the route table, served by `dispatch_proxy`."""
    return [
        Route(path, endpoint, methods=[method], include_in_schema=False)
        for (method, path), endpoint in PROXY_PATHS.items()
    ]
