"""The one HTTP/1.1 client to the model server: asyncio protocols, httptools, keep-alive pool.

Hand-written on purpose. The proxy's latency budget is 1 ms (issue 4), and
the client library was the largest single part of it: in one run of
`bench/proxy_overhead.py` (`docs/proxy-benchmark-history.md`, run 9) a byte
relay under uvicorn added 0.77 ms at the median (concurrency 16, 25-75 ms
upstream) with an aiohttp session and 0.24 ms with this client, 1.03 against
0.66 ms to a stream's first byte, and spent 0.21 against 0.12 ms of CPU per
request; httpx is slower than aiohttp. What it takes is small, because the
proxy needs little of HTTP: one origin, requests with a body of known length,
answers framed by Content-Length, chunked encoding or the connection's end.
The parsing is httptools (llhttp, the parser uvicorn uses), so only the
connection handling is ours.

Behaviour, matching what the aiohttp session it replaces was configured to do:
- a bounded pool (`max_connections`) of keep-alive connections; a request
  waits for a free one; idle connections older than `KEEPALIVE_S` are closed;
- `connect_timeout_s` for connecting, `read_timeout_s` between two reads of
  the answer (a stalled model server raises `TimeoutError`: the proxy's 504);
- a reused connection the server closed while idle is retried once on a new
  one, but only when not one byte of the answer came back on it;
- no cookies, redirects, proxies from the environment or decompression (the
  proxy asks for an uncompressed body; `Accept-Encoding` is not forwarded);
- a streamed answer the client does not read fast enough pauses the upstream
  socket beyond `STREAM_HIGH_WATER` buffered bytes.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]

KEEPALIVE_S = 60.0
STREAM_HIGH_WATER = 1 << 20


class UpstreamClosed(ConnectionError):
    """The model server closed the connection, or sent what is not HTTP, mid-answer."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; the state of the answer being read on it."""

    def __init__(self, client: UpstreamClient) -> None:
        self.client = client
        self.loop = client.loop
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.counted = False  # holds one of the pool's slots (set once connected)
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._last_read = 0.0
        self.reset()

    def reset(self) -> None:
        self.status = 0
        self.headers: Headers = []
        self.headers_done = False
        self.complete = False
        self.keep_alive = False
        self.received = False
        self.error: BaseException | None = None
        self.body: list[bytes] = []
        self.buffered = 0
        self.streaming = False
        self.paused = False

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        self._last_read = self.loop.time()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self.fail(UpstreamClosed(f"the model server's answer is not valid HTTP: {exc}"))
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self._ends_with_connection():
            self.complete = True  # no Content-Length, not chunked: the close ends the body
            self._wake()
        elif not self.complete:
            self.fail(UpstreamClosed("the model server closed the connection mid-answer"))
        if self.counted:
            self.client._forget(self)

    # -- httptools callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:  # an interim answer (103 Early Hints): the real one follows
            self.headers = []
            return
        self.headers_done = True
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)
        if self.streaming:
            if self.buffered > STREAM_HIGH_WATER and not self.paused and self.transport:
                self.paused = True
                self.transport.pause_reading()
            self._wake()

    def on_message_complete(self) -> None:
        if self.status >= 200:
            self.complete = True
            self._wake()

    # -- waiting, with the read timeout -------------------------------------------------

    async def wait(self) -> None:
        """Until the parser has something new (headers, body, the end) or the answer fails."""
        if self.error is not None:
            raise self.error
        self._waiter = self.loop.create_future()
        self._last_read = self.loop.time()
        if self._timer is None:
            self._timer = self.loop.call_at(
                self._last_read + self.client.read_timeout, self._check_timeout
            )
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _check_timeout(self) -> None:
        # One timer per wait, moved on lazily: cheaper than re-arming on every read.
        self._timer = None
        if self._waiter is None:
            return
        left = self._last_read + self.client.read_timeout - self.loop.time()
        if left > 0:
            self._timer = self.loop.call_later(left, self._check_timeout)
            return
        timeout = self.client.read_timeout
        self.fail(TimeoutError(f"the model server sent nothing for {timeout:g} s"))
        self.abort()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)

    def _ends_with_connection(self) -> bool:
        names = {name for name, _ in self.headers}
        return b"content-length" not in names and b"transfer-encoding" not in names

    # -- lifecycle ----------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self.transport.write(request)

    def take_body(self) -> bytes:
        out = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        self.body.clear()
        self.buffered = 0
        if self.paused and self.transport:
            self.paused = False
            self.transport.resume_reading()
        return out

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and self.error is None

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.paused and self.transport is not None:  # never pooled with reading paused
            self.paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        self.finish()
        if self.transport is not None and not self.closed:
            self.transport.close()


class UpstreamResponse:
    """The model server's answer: status and headers at once, the body read or streamed."""

    def __init__(self, conn: _Connection) -> None:
        self._conn: _Connection | None = conn
        self.status = conn.status
        self.headers = conn.headers

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    async def read(self) -> bytes:
        conn = self._live()
        while not conn.complete:
            await conn.wait()
        return conn.take_body()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything received since the last step, joined."""
        conn = self._live()
        conn.streaming = True
        while True:
            if conn.body:
                yield conn.take_body()
            elif conn.complete:
                return
            else:
                await conn.wait()

    def release(self) -> None:
        """Give the connection back: to the pool when the answer was read to its end."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.client._release(conn)

    def close(self) -> None:
        """Stop reading now (the client went away): the connection is closed, not pooled."""
        if self._conn is not None:
            self._conn.fail(UpstreamClosed("the proxy stopped reading the answer"))
            self._conn.abort()

    def _live(self) -> _Connection:
        if self._conn is None:
            raise RuntimeError("the response was released")
        return self._conn


class UpstreamClient:
    """Requests to one origin (`base_url`, e.g. ``http://vllm:8000/v1``) over pooled connections."""

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        max_connections: int,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s)://host[:port]/... URL: {base_url}")
        self.loop = asyncio.get_running_loop()
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/").encode()
        self._host_header = parts.netloc.rpartition("@")[2].encode("idna")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self._idle: list[_Connection] = []
        self._open = 0
        self._slot_waiters: deque[asyncio.Future[None]] = deque()

    async def request(
        self, method: str, path: str, headers: Headers, body: bytes | None = None
    ) -> UpstreamResponse:
        """Send the request; return once the answer's status and headers have arrived."""
        head = self._head(method, path, headers, body)
        for attempt in (1, 2):
            conn, reused = await self._acquire()
            conn.reset()
            try:
                conn.send(head if body is None else head + body)
                while not conn.headers_done:
                    await conn.wait()
            except BaseException as exc:
                self._release(conn)  # unfinished: closed, never pooled
                closed_idle = isinstance(exc, UpstreamClosed) and not conn.received
                if closed_idle and reused and attempt == 1:
                    continue  # closed by the server while idle: once more, on a new connection
                raise
            return UpstreamResponse(conn)
        raise AssertionError("unreachable")

    def _head(self, method: str, path: str, headers: Headers, body: bytes | None) -> bytes:
        lines = [method.encode(), b" ", self.prefix, path.encode(), b" HTTP/1.1\r\nhost: "]
        lines.append(self._host_header)
        for name, value in headers:
            lines += (b"\r\n", name, b": ", value)
        if body is not None:
            lines += (b"\r\ncontent-length: ", str(len(body)).encode())
        lines.append(b"\r\n\r\n")
        return b"".join(lines)

    # -- the pool -----------------------------------------------------------------------

    async def _acquire(self) -> tuple[_Connection, bool]:
        while True:
            now = self.loop.time()
            while self._idle:
                conn = self._idle.pop()
                fresh = now - conn.idle_since < KEEPALIVE_S
                if fresh and not conn.closed and conn.error is None:
                    return conn, True
                conn.abort()
            if self._open < self.max_connections:
                break
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()  # the slot it was given goes to the next in line
                raise
        self._open += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancel that
            # lands as the connection completes (CPython gh-86296), sending it anyway.
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self), self.host, self.port, ssl=self.ssl
                )
        except BaseException:
            self._open -= 1
            self._wake_one()
            raise
        conn.counted = True
        return conn, False

    def _release(self, conn: _Connection) -> None:
        conn.finish()
        if conn.reusable():
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
            self._wake_one()
        else:
            conn.abort()  # its connection_lost frees the slot

    def _forget(self, conn: _Connection) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def close(self) -> None:
        for conn in self._idle:
            conn.abort()
        self._idle.clear()
