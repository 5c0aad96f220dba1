"""The naive baseline for proxy benchmarks: FastAPI + httpx (or aiohttp), parse and re-serialise.

What a first Python LLM proxy usually looks like, run in the same benchmark as
the sidecar so the comparison is made on the same machine under the same load:
the request is parsed (``await request.json()``), forwarded with httpx, the
~100 KB response body is parsed into Python objects, one key is added, and the
whole body is serialised again with ``JSONResponse``. Streams are passed
through with ``StreamingResponse`` over ``aiter_raw`` (no parsing).
``--client aiohttp`` is the stronger naive proxy: aiohttp as the client and
orjson both ways (``ORJSONResponse``). Issue 4 quotes both kinds (about 350
and 650 req/s on its reference machine), so running both here tells how this
machine compares with that one. ``--client bare`` is no proxy logic at all,
the floor of the sidecar's stack: a raw ASGI app under uvicorn relaying bytes
through the sidecar's own upstream client (`monitor.proxy.upstream_client`),
streams chunk by chunk; what the sidecar adds above it is its own work.
``--client bare-aiohttp`` is the same relay through an aiohttp session, the
client the sidecar used before: the two side by side measure what the client
library costs. ``--client bare --work-us N`` is the bare relay doing N
microseconds of busy CPU work per answer (holding the GIL, as the sidecar's
own work does): a relay whose only cost above the floor is known, so that the
benchmark can show what a given CPU time per request adds on this machine.

    python bench/naive_proxy.py --upstream http://127.0.0.1:UP/v1 [--port 0]
        [--client httpx|aiohttp|bare|bare-aiohttp] [--work-us N]

Prints ``PORT <n>`` on stdout once listening; uvicorn picks uvloop/httptools.
"""

from __future__ import annotations

import argparse
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, ORJSONResponse, Response, StreamingResponse

from monitor.proxy.upstream_client import UpstreamClient

Forward = Callable[[Request, str], Awaitable[Response]]


def _with_routes(app: FastAPI, forward: Forward) -> FastAPI:
    """The two completion routes, both handled by `forward(request, upstream path)`."""

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await forward(request, "/chat/completions")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await forward(request, "/completions")

    return app


def build_app(upstream: str) -> FastAPI:
    state: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        timeout = httpx.Timeout(120.0, connect=5.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            state["client"] = client
            yield

    app = FastAPI(lifespan=lifespan)

    async def forward(request: Request, path: str) -> Response:
        client = state["client"]
        body: dict[str, Any] = await request.json()
        url = upstream + path
        if body.get("stream"):
            req = client.build_request("POST", url, json=body)
            resp = await client.send(req, stream=True)

            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(relay(), media_type="text/event-stream")
        resp = await client.post(url, json=body)
        data = resp.json()
        if isinstance(data, dict):
            data["thermostat"] = {"confidence": None}
        return JSONResponse(data, status_code=resp.status_code)

    return _with_routes(app, forward)


def build_aiohttp_app(upstream: str) -> FastAPI:
    """The same passthrough with aiohttp and orjson (non-streaming only)."""
    state: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=120.0, connect=5.0)
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            state["session"] = session
            yield

    app = FastAPI(lifespan=lifespan)

    async def forward(request: Request, path: str) -> Response:
        body: dict[str, Any] = orjson.loads(await request.body())
        headers = {"Content-Type": "application/json"}
        async with state["session"].post(
            upstream + path, data=orjson.dumps(body), headers=headers
        ) as resp:
            data = orjson.loads(await resp.read())
            status = resp.status
        if isinstance(data, dict):
            data["thermostat"] = {"confidence": None}
        return ORJSONResponse(data, status_code=status)

    return _with_routes(app, forward)


Relay = Callable[[dict[str, Any], bytes, Any], Awaitable[None]]


def _bare_asgi(start: Callable[[], Awaitable[Relay]], stop: Callable[[], Awaitable[None]]) -> Any:
    """A raw ASGI app: the whole request body, then `relay(scope, body, send)`."""
    state: dict[str, Relay] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await receive()  # lifespan.startup
            state["relay"] = await start()
            await send({"type": "lifespan.startup.complete"})
            await receive()  # lifespan.shutdown
            await stop()
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await state["relay"](scope, body, send)

    return app


async def _send_start(send: Any, status: int, content_type: bytes, delay: bytes | None) -> None:
    headers = [(b"content-type", content_type)]
    if delay is not None:  # the benchmark upstream's delay, passed on as the sidecar does
        headers.append((b"x-upstream-delay-us", delay))
    await send({"type": "http.response.start", "status": status, "headers": headers})


def _busy(seconds: float) -> None:
    """Spin for `seconds` of wall time; on an idle core that is as much CPU time."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def build_bare_app(upstream: str, work_us: float = 0.0) -> Any:
    """Bytes in, bytes out through the sidecar's client: no parsing; SSE chunk by chunk.

    `work_us`: busy work before each (non-streaming) answer is sent.
    """
    clients: list[UpstreamClient] = []
    json_header = [(b"content-type", b"application/json")]

    async def start() -> Relay:
        clients.append(
            UpstreamClient(upstream, connect_timeout=5, read_timeout=120, max_connections=256)
        )
        return relay

    async def relay(scope: dict[str, Any], body: bytes, send: Any) -> None:
        path = scope["path"].removeprefix("/v1")
        resp = await clients[0].request(scope["method"], path, json_header, body or None)
        try:
            ctype = resp.header(b"content-type") or b"application/json"
            await _send_start(send, resp.status, ctype, resp.header(b"x-upstream-delay-us"))
            if ctype.startswith(b"text/event-stream"):
                async for chunk in resp.iter_chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                body = await resp.read()
                if work_us:
                    _busy(work_us / 1e6)
                await send({"type": "http.response.body", "body": body})
        finally:
            resp.release()

    async def stop() -> None:
        await clients[0].close()

    return _bare_asgi(start, stop)


def build_bare_aiohttp_app(upstream: str) -> Any:
    """The same relay through an aiohttp session (the sidecar's client until session 5)."""
    sessions: list[aiohttp.ClientSession] = []
    json_headers = {"Content-Type": "application/json"}

    async def start() -> Relay:
        sessions.append(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256),
                auto_decompress=False,
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        )
        return relay

    async def relay(scope: dict[str, Any], body: bytes, send: Any) -> None:
        url = upstream + scope["path"].removeprefix("/v1")
        async with sessions[0].request(
            scope["method"], url, data=body or None, headers=json_headers
        ) as resp:
            delay = resp.headers.get("x-upstream-delay-us")
            await _send_start(
                send, resp.status, resp.content_type.encode(), delay.encode() if delay else None
            )
            if resp.content_type == "text/event-stream":
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})

    async def stop() -> None:
        await sessions[0].close()

    return _bare_asgi(start, stop)


BUILDERS = {
    "httpx": build_app,
    "aiohttp": build_aiohttp_app,
    "bare": build_bare_app,
    "bare-aiohttp": build_bare_aiohttp_app,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000/v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--client", choices=tuple(BUILDERS), default="httpx")
    p.add_argument(
        "--work-us", type=float, default=0.0, help="bare only: busy CPU work per answer (us)"
    )
    a = p.parse_args()
    if a.work_us and a.client != "bare":
        p.error("--work-us needs --client bare")
    if a.work_us < 0:
        p.error("--work-us must be >= 0")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    upstream = a.upstream.rstrip("/")
    if a.client == "bare":
        app = build_bare_app(upstream, a.work_us)
    else:
        app = BUILDERS[a.client](upstream)
    config = uvicorn.Config(app, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])  # run(): uvicorn sets up uvloop/httptools as it picks


if __name__ == "__main__":
    main()
