"""A fast fake model server for proxy benchmarks: precomputed bodies, raw asyncio.

Serves the ~100 KB, 200-token, top-5 vLLM-shaped bodies of ``responses.py``
for ``POST /v1/chat/completions`` and ``POST /v1/completions`` (SSE with ~200
chunks when the request has ``"stream": true``; its head names the delay drawn
for it in ``X-Upstream-Delay-Us``), and ``GET /v1/models``. A bare
``asyncio.Protocol`` with a minimal HTTP/1.1 parser and keep-alive (uvloop when
installed) so the upstream is never the bottleneck of a proxy benchmark: tens
of thousands of req/s on loopback.

    python bench/upstream_server.py --port 0 [--delay-ms-min 20 --delay-ms-max 80]
        [--stream-chunk-delay-ms 0] [--tokens 200 --top-k 5]

Prints ``PORT <n>`` on stdout once listening; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import responses

_HEAD_END = b"\r\n\r\n"


def _http(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 "
        + status.encode()
        + b"\r\nContent-Type: "
        + ctype
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: keep-alive\r\n\r\n"
        + body
    )


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


class Catalogue:
    """Every response, fully framed once at start, so serving is one write."""

    def __init__(self, tokens: int, k: int) -> None:
        self.full = {
            b"/v1/chat/completions": _http("200 OK", responses.chat_body(tokens, k)),
            b"/v1/completions": _http("200 OK", responses.completions_body(tokens, k)),
        }
        self.stream = {
            b"/v1/chat/completions": [_chunk(e) for e in responses.chat_stream(tokens, k)],
            b"/v1/completions": [_chunk(e) for e in responses.completions_stream(tokens, k)],
        }
        self.stream_head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n"
        )
        models = b'{"object":"list","data":[{"id":"' + responses.MODEL.encode() + b'"}]}'
        self.models = _http("200 OK", models)
        self.not_found = _http("404 Not Found", b'{"error":{"message":"not found"}}')


class Upstream(asyncio.Protocol):
    def __init__(self, cat: Catalogue, args: argparse.Namespace) -> None:
        self.cat, self.args = cat, args
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy = False  # one response at a time keeps pipelined replies in order

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._next()

    def _next(self) -> None:
        while not self.busy and self.transport is not None:
            end = self.buf.find(_HEAD_END)
            if end < 0:
                return
            head = self.buf[:end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            body, self.buf = self.buf[end + 4 : total], self.buf[total:]
            method, path = head.split(b" ", 2)[:2]
            self._answer(method, path.split(b"?")[0], body)

    def _answer(self, method: bytes, path: bytes, body: bytes) -> None:
        assert self.transport is not None
        if method == b"GET" and path == b"/v1/models":
            self.transport.write(self.cat.models)
            return
        if method != b"POST" or path not in self.cat.full:
            self.transport.write(self.cat.not_found)
            return
        stream = b'"stream":true' in body.replace(b" ", b"")
        lo, hi = self.args.delay_ms_min, self.args.delay_ms_max
        delay = random.uniform(lo, hi) / 1000 if hi > 0 else 0.0
        self.busy = True
        loop = asyncio.get_running_loop()
        if stream:
            loop.call_later(delay, self._stream, list(self.cat.stream[path]), delay)
        elif delay:
            loop.call_later(delay, self._send, self.cat.full[path])
        else:
            self._send(self.cat.full[path])

    def _send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)
        self.busy = False
        self._next()

    def _stream(self, chunks: list[bytes], delay: float) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        # The delay drawn for this answer, so a client can subtract it exactly.
        head = self.cat.stream_head[:-2] + b"X-Upstream-Delay-Us: %d\r\n\r\n" % (delay * 1e6)
        gap = self.args.stream_chunk_delay_ms / 1000
        if not gap:
            self._send(head + b"".join(chunks) + b"0\r\n\r\n")
            return
        self.transport.write(head)
        loop = asyncio.get_running_loop()

        def step(i: int) -> None:
            if self.transport is None or self.transport.is_closing():
                return
            if i == len(chunks):
                self._send(b"0\r\n\r\n")
                return
            self.transport.write(chunks[i])
            loop.call_later(gap, step, i + 1)

        step(0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def main(args: argparse.Namespace) -> None:
    cat = Catalogue(args.tokens, args.top_k)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Upstream(cat, args), args.host, args.port, reuse_port=args.reuse_port, backlog=4096
    )
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: a free port (printed)")
    p.add_argument("--delay-ms-min", type=float, default=0.0)
    p.add_argument("--delay-ms-max", type=float, default=0.0)
    p.add_argument("--stream-chunk-delay-ms", type=float, default=0.0)
    p.add_argument("--tokens", type=int, default=200)
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--reuse-port", action="store_true", help="run several on one port")
    args = p.parse_args(argv)
    args.delay_ms_max = max(args.delay_ms_max, args.delay_ms_min)
    return args


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(parse_args()))
