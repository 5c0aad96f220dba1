"""Run an ASGI app with uvicorn on a free loopback port, in a thread, for one test."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import uvicorn

from monitor.commands.serve import server_options


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve_app(app: Any, *, port: int | None = None, timeout: float = 30) -> Iterator[str]:
    """Yield `http://127.0.0.1:PORT` once the app has started (lifespan included).

    Thermostat's app is served as `thermostat serve` serves it (its keep-alive
    above all: uvicorn's default races the openai client's idle connections).
    """
    port = port or free_port()
    settings = getattr(app.state, "settings", None)
    options = server_options(settings) if settings is not None else {"access_log": False}
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", **options
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the app did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=timeout)


@contextmanager
def serve_handler(handler: type[BaseHTTPRequestHandler], path: str = "/hook") -> Iterator[str]:
    """A plain threaded HTTP server on a free loopback port (webhook receivers); yields its URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()
