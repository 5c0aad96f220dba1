"""The hot path: a bare ASGI handler for the OpenAI-compatible proxy routes.

No pydantic model of a response is ever built. The request (small) is parsed
with orjson and rewritten; the upstream body (large) is forwarded as bytes:
capture decodes only the numbers it needs, splice strips or trims logprobs by
byte ranges, and the `thermostat` object is inserted before the final brace
(``exchange.py``, one proxied completion). One confidence is computed;
everything else (packing, hashing, signals, database rows) belongs to the
recorder, reached by a non-blocking put. This module routes a request, owns
the per-process state and turns upstream failures into OpenAI-shaped errors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from monitor.config import TaskConfig
from monitor.db.types import uuid7
from monitor.proxy.asgi import (
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
    send_error,
)
from monitor.proxy.exchange import Exchange
from monitor.proxy.metrics import proxy_metrics
from monitor.proxy.rewrite import (
    TASK_HEADER,
    BadRequest,
    Endpoint,
    resolve_task,
    rewrite,
)
from monitor.proxy.upstream import forward_headers, response_headers
from monitor.proxy.upstream_client import UpstreamClient

log = logging.getLogger(__name__)

UPSTREAM_PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions"}
_TASK_HEADER = TASK_HEADER.encode()


class ProxyHandler:
    """Per-process proxy state: the upstream client, config cache, recorder, metrics."""

    def __init__(self, runtime: Any, client: UpstreamClient | None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.client = client
        self.max_body = self.settings.proxy.max_body_bytes
        self.read_timeout = self.settings.proxy.read_timeout_s
        self._configs: dict[str, TaskConfig] = {}
        self.metrics = proxy_metrics(runtime)
        self.server_applies_calibration = self.settings.model_admin_url is not None

    def task_config(self, task: str) -> TaskConfig:
        config = self._configs.get(task)
        if config is None:
            config = self._configs[task] = self.settings.task_config(task)
        return config

    # -- entry points -----------------------------------------------------------------

    async def models(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.client is None:
            return await self._no_upstream(send)
        try:
            headers = forward_headers(scope["headers"])
            response = await self.client.request("GET", "/models", headers)
            try:
                body = await response.read()
            finally:
                response.release()
            await send_bytes(send, response.status, body, response_headers(response))
        except Exception as exc:
            await self.upstream_failure(send, exc)

    async def completion(
        self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint
    ) -> None:
        started = time.perf_counter()
        if self.client is None:
            return await self._no_upstream(send)
        try:
            raw = await read_body(receive, self.max_body)
        except BodyTooLarge:
            return await send_error(
                send, 413, f"request body exceeds {self.max_body} bytes", "request_too_large"
            )
        try:
            body = orjson.loads(raw)
            if not isinstance(body, dict):
                raise BadRequest("request body must be a JSON object")
            header_task = _header(scope, _TASK_HEADER)
            task = resolve_task(header_task, body)
            config = self.task_config(task)
            entry = self.runtime.calibration_table.get(task)
            # A model server told about activations (THERMOSTAT_MODEL_ADMIN_URL)
            # applies T to its own sampling; scaling here as well would apply it twice.
            scale = entry.temperature if entry and not self.server_applies_calibration else 1.0
            rewritten = rewrite(body, endpoint, task, config, scale)
        except orjson.JSONDecodeError:
            return await send_error(send, 400, "request body is not valid JSON", "invalid_json")
        except BadRequest as exc:
            return await send_error(send, exc.status, exc.message, "invalid_request", exc.param)
        generation_id = uuid7()
        upstream_started = time.perf_counter()
        try:
            response = await self.client.request(
                "POST",
                UPSTREAM_PATHS[endpoint],
                forward_headers(scope["headers"], task),
                orjson.dumps(rewritten.body),
            )
        except Exception as exc:
            return await self.upstream_failure(send, exc, task, endpoint)
        context = Exchange(
            self,
            scope,
            receive,
            send,
            endpoint,
            rewritten,
            config,
            entry,
            generation_id,
            started,
            upstream_started,
            response,
        )
        try:
            if rewritten.stream and response.status == 200:
                await context.relay_stream()
            else:
                await context.relay_body()
        finally:
            response.release()

    # -- failures ---------------------------------------------------------------------

    async def _no_upstream(self, send: Send) -> None:
        await send_error(send, 503, "THERMOSTAT_UPSTREAM_URL is not set", "upstream_not_configured")

    async def upstream_failure(
        self, send: Send, exc: BaseException, task: str | None = None, endpoint: str | None = None
    ) -> None:
        if isinstance(exc, asyncio.TimeoutError):
            status, code = 504, "upstream_timeout"
            message = f"the model server did not answer within {self.read_timeout:g} s"
        else:
            status, code = 502, "upstream_unavailable"
            message = f"the model server is unreachable: {type(exc).__name__}: {exc}".strip()
        log.warning("upstream failure (%s) for task %s: %s", code, task, type(exc).__name__)
        self.count(task, endpoint, status)
        await send_error(send, status, message, code)

    def count(self, task: str | None, endpoint: str | None, status: int) -> None:
        metrics = self.metrics
        metrics.child(
            metrics.requests_total, task or "unknown", endpoint or "models", str(status)
        ).inc()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None
