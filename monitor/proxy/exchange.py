"""One proxied completion, from the upstream's answer to the recorder.

`ProxyHandler` (``handler.py``) validates and forwards the request; what
comes back is relayed here, whole (`relay_body`) or event by event
(`relay_stream`), with the logprobs shaped to what the client asked for
(``splice.py``), the `thermostat` object added and one confidence computed.
The result goes to the recorder by a non-blocking put (``recording.py``
builds the record); nothing here waits on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import orjson

from monitor.config import TaskConfig
from monitor.proxy.asgi import Receive, Scope, Send, send_bytes
from monitor.proxy.capture import capture_response
from monitor.proxy.captured import Captured, CaptureError
from monitor.proxy.confidence import answer_span, confidence
from monitor.proxy.recording import build_record
from monitor.proxy.rewrite import Endpoint, Rewritten
from monitor.proxy.splice import append_thermostat, strip_logprobs, trim_top_logprobs
from monitor.proxy.sse import SSEParser, encode_event, ended
from monitor.proxy.stream_capture import ChunkInfo, StreamCapture
from monitor.proxy.upstream import response_headers
from monitor.proxy.upstream_client import UpstreamResponse
from monitor.serving.calibration_table import CalibrationEntry

if TYPE_CHECKING:
    from monitor.proxy.handler import ProxyHandler

# The handler's logger, as before the exchange had a module of its own: the
# proxy's log lines keep the name operators filter on.
log = logging.getLogger("monitor.proxy.handler")


def shape_for_client(body: bytes, spanned: Captured | ChunkInfo, rewritten: Rewritten) -> bytes:
    """Give the client exactly the logprobs it asked for (none, or its top-k)."""
    if not rewritten.ask.logprobs:
        return strip_logprobs(body, spanned)
    if rewritten.ask.top < rewritten.upstream_top:
        return trim_top_logprobs(body, spanned, rewritten.ask.top)
    return body


class Exchange:
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
