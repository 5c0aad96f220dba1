"""The hot path: a bare ASGI handler for the OpenAI-compatible proxy routes.

No pydantic model of a response is ever built. The request (small) is parsed
with orjson and rewritten; the upstream body (large) is forwarded as bytes:
capture decodes only the numbers it needs, splice strips or trims logprobs by
byte ranges, and the `thermostat` object is inserted before the final brace.
One confidence is computed; everything else (packing, hashing, signals,
database rows) belongs to the recorder, reached by a non-blocking put.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson

from monitor.config import TaskConfig
from monitor.db.types import uuid7
from monitor.proxy.capture import Captured, CaptureError, capture_response
from monitor.proxy.confidence import answer_span, confidence
from monitor.proxy.metrics import proxy_metrics
from monitor.proxy.recording import build_record
from monitor.proxy.rewrite import (
    TASK_HEADER,
    BadRequest,
    Endpoint,
    Rewritten,
    resolve_task,
    rewrite,
)
from monitor.proxy.splice import append_thermostat, strip_logprobs, trim_top_logprobs
from monitor.proxy.sse import SSEParser, encode_event, ended
from monitor.proxy.stream_capture import ChunkInfo, StreamCapture
from monitor.proxy.upstream import forward_headers, response_headers
from monitor.proxy.upstream_client import UpstreamClient, UpstreamResponse
from monitor.serving.calibration_table import CalibrationEntry

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Any
Send = Any
UPSTREAM_PATHS: dict[Endpoint, str] = {"chat": "/chat/completions", "completions": "/completions"}
_TASK_HEADER = TASK_HEADER.encode()
JSON = b"application/json"


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionResetError("client went away while sending the request")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def error_json(status: int, message: str, code: str, param: str | None = None) -> bytes:
    kinds = {
        401: "authentication_error",
        413: "invalid_request_error",
        502: "upstream_error",
        503: "upstream_error",
        504: "upstream_error",
    }
    kind = kinds.get(status, "invalid_request_error" if status < 500 else "server_error")
    return orjson.dumps({"error": {"message": message, "type": kind, "code": code, "param": param}})


async def send_bytes(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    all_headers = [(b"content-length", str(len(body)).encode())]
    if headers is None:
        all_headers.append((b"content-type", JSON))
    else:
        all_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


async def send_error(
    send: Send, status: int, message: str, code: str, param: str | None = None
) -> None:
    await send_bytes(send, status, error_json(status, message, code, param))


def shape_for_client(body: bytes, spanned: Captured | ChunkInfo, rewritten: Rewritten) -> bytes:
    """Give the client exactly the logprobs it asked for (none, or its top-k)."""
    if not rewritten.ask.logprobs:
        return strip_logprobs(body, spanned)
    if rewritten.ask.top < rewritten.upstream_top:
        return trim_top_logprobs(body, spanned, rewritten.ask.top)
    return body


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
        context = _Exchange(
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


class _Exchange:
    """One proxied completion: relays the answer and hands the result to the recorder."""

    def __init__(
        self,
        proxy: ProxyHandler,
        scope: Scope,
        receive: Receive,
        send: Send,
        endpoint: Endpoint,
        rewritten: Rewritten,
        config: TaskConfig,
        entry: CalibrationEntry | None,
        generation_id: Any,
        started: float,
        upstream_started: float,
        response: UpstreamResponse,
    ) -> None:
        self.proxy = proxy
        self.scope = scope
        self.receive = receive
        self.send = send
        self.endpoint = endpoint
        self.rewritten = rewritten
        self.config = config
        self.entry = entry
        self.generation_id = generation_id
        self.started = started
        self.upstream_started = upstream_started
        self.response = response
        self.upstream_seconds = 0.0

    @property
    def temperature(self) -> float:
        return self.entry.temperature if self.entry else 1.0

    def thermostat_object(
        self, captured: Captured
    ) -> tuple[dict[str, Any], tuple[int, int] | None]:
        span = answer_span(captured, self.config)
        raw = confidence(captured, self.config.confidence, 1.0, span)
        temperature = self.temperature
        calibrated = (  # T == 1 (no calibration yet, or fitted to 1): the same number
            raw
            if temperature == 1.0
            else confidence(captured, self.config.confidence, temperature, span)
        )
        return {
            "generation_id": str(self.generation_id),
            "task": self.rewritten.task,
            "confidence": calibrated,
            "raw_confidence": raw,
            "temperature": temperature,
            "calibration_version": self.entry.version if self.entry else None,
        }, span

    async def relay_body(self) -> None:
        proxy, response = self.proxy, self.response
        try:
            data = await response.read()
        except Exception as exc:
            return await proxy.upstream_failure(self.send, exc, self.rewritten.task, self.endpoint)
        self.upstream_seconds = time.perf_counter() - self.upstream_started
        headers = response_headers(response)
        if response.status != 200:
            proxy.count(self.rewritten.task, self.endpoint, response.status)
            return await send_bytes(self.send, response.status, data, headers)
        try:
            captured = capture_response(data, self.endpoint, self.rewritten.upstream_top)
        except CaptureError:
            log.warning(
                "upstream answer for task %s is not a completion; passed through",
                self.rewritten.task,
            )
            return await send_bytes(self.send, response.status, data, headers)
        thermostat, span = self.thermostat_object(captured)
        out = shape_for_client(data, captured, self.rewritten) if captured.has_logprobs else data
        out = append_thermostat(out, orjson.dumps(thermostat))
        overhead_ms = (time.perf_counter() - self.started - self.upstream_seconds) * 1000
        headers.extend(self._thermostat_headers(thermostat, overhead_ms))
        await send_bytes(self.send, 200, out, headers)
        self._finish(captured, thermostat, span, overhead_ms)

    def _thermostat_headers(
        self, thermostat: dict[str, Any], overhead_ms: float | None
    ) -> list[tuple[bytes, bytes]]:
        # Every header on every answer; one without a value (no logprobs, no
        # calibration yet) is sent empty, as the body's null.
        confidence, version = thermostat["confidence"], thermostat["calibration_version"]
        headers = [
            (b"x-thermostat-generation-id", thermostat["generation_id"].encode()),
            (b"x-thermostat-confidence", b"%.6f" % confidence if confidence is not None else b""),
            (b"x-thermostat-calibration-version", b"%d" % version if version is not None else b""),
        ]
        if overhead_ms is not None:
            headers.append((b"x-thermostat-overhead-ms", f"{overhead_ms:.3f}".encode()))
        return headers

    async def relay_stream(self) -> None:
        """Forward events as they arrive; the thermostat chunk goes just before [DONE]."""
        headers = response_headers(self.response)
        headers.extend(
            [
                (b"x-thermostat-generation-id", str(self.generation_id).encode()),
                (b"x-thermostat-task", self.rewritten.task.encode()),
            ]
        )
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        await self.send({"type": "http.response.start", "status": 200, "headers": headers})
        parser = SSEParser()
        capture = StreamCapture(self.endpoint, k=self.rewritten.upstream_top)
        disconnected = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch_disconnect(disconnected))
        try:
            async for chunk in self.response.iter_chunks():
                out = [self._relay_event(event, capture) for event in parser.feed(chunk)]
                payload = b"".join(out)
                if payload:
                    await self.send(
                        {"type": "http.response.body", "body": payload, "more_body": True}
                    )
                if disconnected.is_set():
                    break
        except Exception as exc:
            log.warning(
                "stream for task %s ended early: %s", self.rewritten.task, type(exc).__name__
            )
        finally:
            watcher.cancel()
        if not disconnected.is_set():
            await self._relay_last_event(parser, capture)
        self.upstream_seconds = time.perf_counter() - self.upstream_started
        captured = capture.result(partial=disconnected.is_set() or not capture.done)
        thermostat, span = self.thermostat_object(captured)
        if not disconnected.is_set():
            await self._send_closing_chunks(capture, thermostat)
        self._finish(captured, thermostat, span, None)

    async def _relay_last_event(self, parser: SSEParser, capture: StreamCapture) -> None:
        """The upstream's last event when the stream ended without its blank line.

        A complete one (its lines ended) is relayed and recorded like any
        other, with the blank line that dispatches it added; a cut one (the
        stream stopped mid-line) is dropped, as a client reading the upstream
        directly would drop it, rather than run into the thermostat chunk.
        """
        for event in parser.close():
            if not event.raw.endswith((b"\n", b"\r")):
                log.warning("stream for task %s ended mid-line", self.rewritten.task)
                continue
            out = ended(self._relay_event(event, capture))
            if out:
                with contextlib.suppress(OSError):
                    await self.send({"type": "http.response.body", "body": out, "more_body": True})

    def _relay_event(self, event: Any, capture: StreamCapture) -> bytes:
        if event.data is None:
            return bytes(event.raw)
        if event.is_done:
            return b""  # re-sent after the thermostat chunk
        info = capture.feed(event.data)
        if not info.ok or not info.logprobs_spans:
            return bytes(event.raw)
        shaped = shape_for_client(event.data, info, self.rewritten)
        return bytes(event.raw) if shaped is event.data else encode_event(shaped)

    async def _send_closing_chunks(
        self, capture: StreamCapture, thermostat: dict[str, Any]
    ) -> None:
        kind = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        chunk = {
            "id": f"thermostat-{thermostat['generation_id']}",
            "object": kind,
            "created": int(time.time()),
            "model": capture.model,
            "choices": [],
            "thermostat": thermostat,
        }
        body = encode_event(orjson.dumps(chunk)) + encode_event(b"[DONE]")
        with contextlib.suppress(OSError):
            await self.send({"type": "http.response.body", "body": body, "more_body": False})

    async def _watch_disconnect(self, disconnected: asyncio.Event) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                disconnected.set()
                self.response.close()  # stops the upstream read at once
                return

    def _finish(
        self,
        captured: Captured,
        thermostat: dict[str, Any],
        span: tuple[int, int] | None,
        overhead_ms: float | None,
    ) -> None:
        proxy = self.proxy
        proxy.count(self.rewritten.task, self.endpoint, 200)
        metrics = proxy.metrics
        upstream = metrics.child(metrics.upstream_latency_seconds, self.endpoint)
        upstream.observe(self.upstream_seconds)
        if overhead_ms is not None:
            metrics.child(metrics.overhead_seconds, self.endpoint).observe(overhead_ms / 1000)
        recorder = self.proxy.runtime.extras.get("recorder")
        if recorder is not None:
            recorder.submit(build_record(self, captured, thermostat, span, overhead_ms))
