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
through an aiohttp session, streams chunk by chunk; what the sidecar adds
above it is its own work.

    python bench/naive_proxy.py --upstream http://127.0.0.1:UP/v1 [--port 0]
        [--client httpx|aiohttp|bare]

Prints ``PORT <n>`` on stdout once listening; uvicorn picks uvloop/httptools.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import httpx
import orjson
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, ORJSONResponse, Response, StreamingResponse

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


def build_bare_app(upstream: str) -> Any:
    """Bytes in, bytes out: no parsing, no added key; SSE relayed chunk by chunk."""
    state: dict[str, aiohttp.ClientSession] = {}
    json_headers = {"Content-Type": "application/json"}

    async def lifespan(receive: Any, send: Any) -> None:
        await receive()  # lifespan.startup
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256),
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        await send({"type": "lifespan.startup.complete"})
        await receive()  # lifespan.shutdown
        await state["session"].close()
        await send({"type": "lifespan.shutdown.complete"})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await lifespan(receive, send)
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        url = upstream + scope["path"].removeprefix("/v1")
        async with state["session"].request(
            scope["method"], url, data=body or None, headers=json_headers
        ) as resp:
            stream = resp.content_type == "text/event-stream"
            headers = [(b"content-type", resp.content_type.encode())]
            await send({"type": "http.response.start", "status": resp.status, "headers": headers})
            if stream:
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
            else:
                await send({"type": "http.response.body", "body": await resp.read()})

    return app


BUILDERS = {"httpx": build_app, "aiohttp": build_aiohttp_app, "bare": build_bare_app}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000/v1")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--client", choices=tuple(BUILDERS), default="httpx")
    a = p.parse_args()
    builder = BUILDERS[a.client]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(builder(a.upstream.rstrip("/")), access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    server.run(sockets=[sock])  # run(): uvicorn sets up uvloop/httptools as it picks


if __name__ == "__main__":
    main()
