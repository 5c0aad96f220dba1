"""The hand-written HTTP/1.1 client to the model server (`monitor/proxy/upstream_client.py`).

Every test talks to a real server on 127.0.0.1, written here on top of
`asyncio.start_server`, that answers with exactly the bytes the test chooses
and counts what it sees (connections accepted, open at once, requests per
connection). Nothing of the client is mocked: what is under test is its
handling of real sockets (framing, keep-alive, EOFs and resets, back-pressure,
timers), which a fake transport would only imitate. Tests that need the
client's internals (the pool's slot count, the socket's reading state) read
them, but never replace them.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec

import pytest

from monitor.proxy import upstream_client
from monitor.proxy.upstream_client import UpstreamClient, UpstreamClosed
from tests.support.servers import free_port

pytestmark = pytest.mark.timeout(20)

P = ParamSpec("P")

# A bound on every wait a bug could turn into a hang, well below the pytest timeout.
HANG = 5.0


def run(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """Run an `async def` test in its own event loop (`asyncio.run`, as the repo's tests do)."""

    @functools.wraps(test)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        asyncio.run(test(*args, **kwargs))

    return wrapper


# -- the raw server ---------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server read it off the socket."""

    method: str
    target: str
    headers: list[tuple[str, str]]  # names lower-cased, in order
    body: bytes

    def header(self, name: str) -> str | None:
        return next((value for key, value in self.headers if key == name), None)


class Peer:
    """One accepted connection, seen from the server's side."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index  # 0 for the first connection accepted, 1 for the next...
        self.reader = reader
        self.writer = writer
        self.requests: list[Request] = []

    async def request(self) -> Request | None:
        """The next request on this connection; None when the client closed it."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        start, *lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, _ = start.split(" ")
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        length = next((int(v) for k, v in headers if k == "content-length"), 0)
        body = await self.reader.readexactly(length) if length else b""
        request = Request(method, target, headers, body)
        self.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def respond(self, body: bytes = b"ok", *, extra: bytes = b"") -> None:
        """A complete keep-alive answer framed by Content-Length."""
        await self.send(
            b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)
        )

    async def serve_forever(self, body: bytes = b"ok") -> None:
        """Answer every request on this connection until the client closes it."""
        while await self.request() is not None:
            await self.respond(body)

    def close(self) -> None:
        """Close the socket (a FIN, no bytes)."""
        self.writer.close()

    async def client_closed(self) -> None:
        """Until the client closes its end (what it sends meanwhile is discarded)."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass


Handler = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A loopback server that runs `handler` for each connection and counts them."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.open = 0
        self.peak = 0  # the most connections open at once
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def accepted(self) -> int:
        return len(self.peers)

    def url(self, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(len(self.peers), reader, writer)
        self.peers.append(peer)
        self.open += 1
        self.peak = max(self.peak, self.open)
        try:
            await self.handler(peer)
        except ConnectionError:
            pass  # the client went away first: what these tests look at is the client
        except asyncio.CancelledError:
            pass  # the test is over (ended quietly: asyncio.streams logs a cancelled handler)
        finally:
            self.open -= 1
            writer.close()
            self._tasks.discard(task)


@asynccontextmanager
async def serve(handler: Handler, tls: ssl.SSLContext | None = None) -> AsyncIterator[RawServer]:
    raw = RawServer(handler)
    server = await asyncio.start_server(raw._on_connection, "127.0.0.1", 0, ssl=tls)
    raw.port = server.sockets[0].getsockname()[1]
    try:
        yield raw
    finally:
        server.close()
        for task in list(raw._tasks):
            task.cancel()
        await asyncio.gather(*raw._tasks, return_exceptions=True)
        await server.wait_closed()


def make_client(
    url: str,
    *,
    read_timeout: float = HANG,
    connect_timeout: float = HANG,
    max_connections: int = 4,
) -> UpstreamClient:
    return UpstreamClient(
        url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_connections=max_connections,
    )


async def get(client: UpstreamClient, path: str = "/") -> tuple[int, bytes]:
    """A whole GET: status and body, the connection released."""
    response = await asyncio.wait_for(client.request("GET", path, []), HANG)
    try:
        return response.status, await asyncio.wait_for(response.read(), HANG)
    finally:
        response.release()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
LAST_CHUNK = b"0\r\n\r\n"


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + HANG
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        await asyncio.sleep(0.005)


async def cancel_at_each_early_step(client: UpstreamClient, steps: int) -> list[str]:
    """Start a request and cancel it after 0, 1, ... loop iterations; how each one ended.

    Between them, these cancels land at every point of connecting (on loopback
    the connect itself takes no time, so the same steps hit the same points).
    """
    outcomes = []
    for step in range(steps):
        task = asyncio.ensure_future(client.request("GET", "/", []))
        for _ in range(step):
            await asyncio.sleep(0)
        task.cancel()
        try:
            await asyncio.wait_for(task, HANG)
            outcomes.append("answered")
        except asyncio.CancelledError:
            outcomes.append("cancelled")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
    return outcomes


def hold_every_request(go: asyncio.Event) -> Handler:
    """A handler that reads each request and answers it once `go` is set."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await go.wait()
            await peer.respond()

    return handler


# -- reading the answer -----------------------------------------------------------------


@run
async def test_content_length_body_status_and_lowercased_headers() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            b'X-Request-ID: abc\r\nContent-Length: 11\r\n\r\n{"a": true}'
        )
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("POST", "/x", [], b"{}")
        assert response.status == 201
        assert response.headers == [
            (b"content-type", b"application/json"),
            (b"x-request-id", b"abc"),
            (b"content-length", b"11"),
        ]
        assert await response.read() == b'{"a": true}'
        response.release()
        await client.close()


@run
async def test_header_lookup_is_by_lowercase_name_first_value_or_none() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.respond(extra=b"Set-Cookie: a=1\r\nSet-Cookie: b=2\r\n")
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert response.header(b"set-cookie") == b"a=1"
        assert response.header(b"content-length") == b"2"
        assert response.header(b"x-missing") is None
        assert response.header(b"Set-Cookie") is None  # names are matched lower-cased
        assert await response.read() == b"ok"
        response.release()


@run
async def test_chunked_body_is_read_whole() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"hello, ") + chunk(b"chunked ") + chunk(b"world"))
        await asyncio.sleep(0.05)
        await peer.send(chunk(b"!") + LAST_CHUNK)
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        status, body = await get(client)
        assert (status, body) == (200, b"hello, chunked world!")


@run
async def test_chunked_stream_yields_each_chunk_before_the_next_is_sent() -> None:
    parts = [b"data: one\n\n", b"data: two\n\n", b"data: three\n\n"]
    received = [asyncio.Event() for _ in parts]

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for part, seen in zip(parts, received, strict=True):
            await peer.send(chunk(part))
            await seen.wait()  # the next chunk only once the client has this one
        await peer.send(LAST_CHUNK)
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("POST", "/stream", [], b"{}")
        got: list[bytes] = []

        async def consume() -> None:
            async for piece in response.iter_chunks():
                got.append(piece)
                received[len(got) - 1].set()

        await asyncio.wait_for(consume(), HANG)  # a chunk held back would deadlock here
        assert got == parts
        response.release()


@run
async def test_body_ended_by_connection_close_is_read_whole_and_not_reused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:  # neither Content-Length nor chunked: the close ends the body
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nfirst part, ")
            await asyncio.sleep(0.05)
            await peer.send(b"second part")
            peer.close()
        else:
            await peer.respond()
            await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (200, b"first part, second part")
        assert await get(client) == (200, b"ok")
        assert server.accepted == 2


@run
async def test_body_ended_by_connection_close_can_be_streamed() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n\r\nabc")
        await asyncio.sleep(0.05)
        await peer.send(b"def")
        peer.close()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        pieces = [piece async for piece in response.iter_chunks()]
        assert b"".join(pieces) == b"abcdef"
        response.release()


@run
async def test_no_content_answer_has_an_empty_body_and_keeps_the_connection() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 204 No Content\r\n\r\n")

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (204, b"")
        assert await get(client) == (204, b"")
        assert server.accepted == 1


@run
async def test_early_hints_before_the_answer_are_skipped() -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n")
            await asyncio.sleep(0.02)
            await peer.send(b"HTTP/1.1 200 OK\r\nX-Real: yes\r\nContent-Length: 4\r\n\r\nbody")

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert response.status == 200
        assert response.headers == [(b"x-real", b"yes"), (b"content-length", b"4")]
        assert response.header(b"link") is None
        assert await response.read() == b"body"
        response.release()
        assert await get(client) == (200, b"body")  # the connection is still usable
        assert server.accepted == 1


@run
async def test_early_hints_in_the_same_packet_as_the_answer() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert (response.status, response.headers) == (200, [(b"content-length", b"2")])
        assert await response.read() == b"ok"
        response.release()


@run
async def test_released_response_cannot_be_read() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert await response.read() == b"ok"
        response.release()
        response.release()  # twice is harmless
        response.close()  # and so is closing a released response
        with pytest.raises(RuntimeError):
            await response.read()


# -- the request ------------------------------------------------------------------------


@run
async def test_request_head_has_prefixed_path_host_headers_and_content_length() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url("/v1"))
        body = b'{"model": "m", "messages": []}'
        headers = [(b"authorization", b"Bearer k"), (b"content-type", b"application/json")]
        assert (await client.request("POST", "/chat/completions", headers, body)).status == 200
        (request,) = server.peers[0].requests
        assert (request.method, request.target) == ("POST", "/v1/chat/completions")
        assert request.headers == [
            ("host", f"127.0.0.1:{server.port}"),
            ("authorization", "Bearer k"),
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
        ]
        assert request.body == body


@run
async def test_get_without_body_has_no_content_length_and_empty_body_has_zero() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url("/v1/"))  # a trailing slash is dropped
        await get(client, "/models")
        response = await client.request("POST", "/empty", [], b"")
        await response.read()
        response.release()
        models, empty = server.peers[0].requests
        assert (models.method, models.target) == ("GET", "/v1/models")
        assert models.header("content-length") is None
        assert models.headers == [("host", f"127.0.0.1:{server.port}")]
        assert (empty.target, empty.header("content-length")) == ("/v1/empty", "0")


@run
async def test_base_url_without_a_path_sends_the_path_as_is() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url())
        await get(client, "/v1/models?x=1")
        assert server.peers[0].requests[0].target == "/v1/models?x=1"


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/v1", "unix:///tmp/sock", "http:///v1", "127.0.0.1:8000/v1"]
)
@run
async def test_a_url_that_is_not_http_host_is_rejected(url: str) -> None:
    with pytest.raises(ValueError, match="not an http"):
        make_client(url)


# -- keep-alive -------------------------------------------------------------------------


@run
async def test_sequential_requests_reuse_one_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url())
        for _ in range(3):
            assert await get(client) == (200, b"ok")
        assert server.accepted == 1
        assert len(server.peers[0].requests) == 3


@run
async def test_connection_close_from_the_server_means_a_new_connection_next_time() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.respond(extra=b"Connection: close\r\n")
        await peer.client_closed()  # the client, not the server, closes it

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (200, b"ok")
        assert await get(client) == (200, b"ok")
        assert server.accepted == 2
        assert [len(peer.requests) for peer in server.peers] == [1, 1]


@run
async def test_http10_answer_without_keep_alive_is_not_reused() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (200, b"ok")
        assert await get(client) == (200, b"ok")
        assert server.accepted == 2


@run
async def test_release_after_a_full_read_pools_the_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever(b"x" * 1000)

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert await response.read() == b"x" * 1000
        response.release()
        response = await client.request("GET", "/", [])
        assert [piece async for piece in response.iter_chunks()] == [b"x" * 1000]
        response.release()
        assert await get(client) == (200, b"x" * 1000)
        assert server.accepted == 1


@run
async def test_release_before_the_body_is_read_discards_the_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
            await peer.client_closed()
        else:
            await peer.respond()
            await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        response.release()  # the rest of the body is still due on that connection
        assert await get(client) == (200, b"ok")
        assert server.accepted == 2


@run
async def test_client_close_closes_its_idle_connections() -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url())
        await get(client)
        assert server.open == 1  # kept alive
        await client.close()
        await wait_until(lambda: server.open == 0, "the server saw the connection closed")


# -- the pool ---------------------------------------------------------------------------


@run
async def test_pool_opens_at_most_max_connections_and_queues_the_rest() -> None:
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await go.wait()
            await peer.respond(request.target.encode())

    async with serve(handler) as server:
        client = make_client(server.url(), max_connections=2)
        tasks = [asyncio.ensure_future(get(client, f"/{i}")) for i in range(4)]
        deadline = time.monotonic() + HANG
        while sum(len(peer.requests) for peer in server.peers) < 2:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # time for a third connection, were one to be opened
        assert server.accepted == 2
        assert sum(len(peer.requests) for peer in server.peers) == 2
        go.set()
        results = await asyncio.wait_for(asyncio.gather(*tasks), HANG)
        assert results == [(200, f"/{i}".encode()) for i in range(4)]
        assert server.accepted == 2
        assert server.peak == 2


@run
async def test_refused_connection_raises_and_frees_its_pool_slot() -> None:
    client = make_client(f"http://127.0.0.1:{free_port()}", max_connections=1)
    for _ in range(3):  # a leaked slot would make the second attempt wait forever
        with pytest.raises(ConnectionRefusedError):
            await asyncio.wait_for(client.request("GET", "/", []), HANG)
    assert client._open == 0


@pytest.mark.skipif(sys.platform != "linux", reason="relies on Linux dropping SYNs to a full queue")
@run
async def test_connect_timeout_when_the_server_never_accepts() -> None:
    # A listening socket whose accept queue is full: Linux drops further SYNs, so
    # connecting hangs (retransmitting) until the client's connect timeout.
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.settimeout(HANG)
        filler.connect(listener.getsockname())  # takes the one place in the queue
        port = listener.getsockname()[1]
        client = make_client(f"http://127.0.0.1:{port}", connect_timeout=0.2, max_connections=1)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await client.request("GET", "/", [])
            assert 0.15 < time.monotonic() - started < 1.0
        assert client._open == 0


# -- a connection closed by the server --------------------------------------------------


@run
async def test_idle_connection_closed_by_the_server_is_replaced() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.respond()
        if peer.index == 0:
            peer.close()  # keep-alive was promised, but the server drops it while idle
        else:
            await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url(), max_connections=1)
        assert await get(client) == (200, b"ok")
        await asyncio.sleep(0.1)  # the close reaches the client while the connection is idle
        assert await get(client) == (200, b"ok")
        assert server.accepted == 2


@run
async def test_request_on_a_connection_the_server_closes_unanswered_is_retried() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.respond(b"first")
        if peer.index == 0:
            await peer.request()
            peer.close()  # the second request is read, and the connection closed, no byte sent
        else:
            await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url(), max_connections=1)
        assert await get(client) == (200, b"first")
        assert await get(client) == (200, b"first")  # answered on the new connection
        assert [len(peer.requests) for peer in server.peers] == [2, 1]


@run
async def test_an_unanswered_request_is_retried_only_once() -> None:
    async def handler(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.respond()
        await peer.request()
        peer.close()  # every later request: closed unanswered

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (200, b"ok")
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(client.request("GET", "/", []), HANG)
        assert server.accepted == 2  # the retry is on a new connection, and it is not retried


@run
async def test_a_partial_head_then_close_raises_on_a_new_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")
        peer.close()

    async with serve(handler) as server:
        client = make_client(server.url())
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(client.request("GET", "/", []), HANG)
        assert server.accepted == 1


@run
async def test_a_partial_answer_on_a_reused_connection_is_not_retried() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.respond()
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")  # one byte is enough: no retry
        peer.close()

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (200, b"ok")
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(client.request("GET", "/", []), HANG)
        assert server.accepted == 1


@run
async def test_a_partial_body_then_close_raises_during_read() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        await asyncio.sleep(0.05)
        peer.close()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert response.status == 200
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(response.read(), HANG)
        response.release()


@run
async def test_a_partial_body_already_closed_before_read_raises() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        peer.close()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        await asyncio.sleep(0.1)  # the close has arrived before read() starts
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(response.read(), HANG)
        response.release()


@run
async def test_a_chunked_stream_cut_off_raises_during_iteration() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"one"))
        await asyncio.sleep(0.05)
        await peer.send(b"10\r\npart")  # a chunk of 16 bytes, cut at 4
        peer.close()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        got: list[bytes] = []
        with pytest.raises(UpstreamClosed):
            async for piece in response.iter_chunks():
                got.append(piece)
        assert b"".join(got) in (b"one", b"onepart")
        response.release()


@pytest.mark.parametrize(
    "answer",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["not-http", "bad-content-length", "bad-chunk-size"],
)
@run
async def test_invalid_http_raises_upstream_closed(answer: bytes) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(answer)
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        with pytest.raises(UpstreamClosed, match="not valid HTTP"):
            response = await asyncio.wait_for(client.request("GET", "/", []), HANG)
            try:
                await asyncio.wait_for(response.read(), HANG)
            finally:
                response.release()
        assert client._open == 0  # the connection was closed


# -- the read timeout -------------------------------------------------------------------


@run
async def test_a_body_that_stalls_times_out_on_read() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n012")
            await peer.client_closed()
        else:
            await peer.respond()
            await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url(), read_timeout=0.2)
        response = await client.request("GET", "/", [])
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(response.read(), HANG)
        assert 0.15 < time.monotonic() - started < 1.0
        response.release()
        assert await get(client) == (200, b"ok")
        assert server.accepted == 2  # the timed-out connection is not reused


@run
async def test_a_stream_that_stalls_times_out_during_iteration() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"one"))
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url(), read_timeout=0.2)
        response = await client.request("GET", "/", [])
        got: list[bytes] = []
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            async for piece in response.iter_chunks():
                got.append(piece)
        assert 0.15 < time.monotonic() - started < 1.0
        assert got == [b"one"]
        response.release()


@run
async def test_a_server_that_never_answers_times_out_on_request() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url(), read_timeout=0.2, max_connections=1)
        for _ in range(2):  # and the timed-out connection's slot is given back
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.request("POST", "/", [], b"{}"), HANG)
            assert 0.15 < time.monotonic() - started < 1.0
        await asyncio.sleep(0.05)
        assert server.accepted == 2
        assert server.open == 0  # the client closed both


@pytest.mark.parametrize("how", ["read", "iter_chunks"])
@run
async def test_a_slow_but_steady_stream_does_not_time_out(how: str) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD)
        for i in range(6):  # 0.6 s in all, never more than 0.1 s apart
            await asyncio.sleep(0.1)
            await peer.send(chunk(b"%d," % i))
        await peer.send(LAST_CHUNK)
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url(), read_timeout=0.3)
        started = time.monotonic()
        response = await client.request("GET", "/", [])
        if how == "read":
            body = await response.read()
        else:
            body = b"".join([piece async for piece in response.iter_chunks()])
        assert body == b"0,1,2,3,4,5,"
        assert time.monotonic() - started > 0.5
        response.release()


@run
async def test_time_between_reads_spent_by_the_consumer_does_not_count() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"one"))
        await asyncio.sleep(0.1)
        await peer.send(chunk(b"two") + LAST_CHUNK)
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url(), read_timeout=0.2)
        response = await client.request("GET", "/", [])
        got = []
        async for piece in response.iter_chunks():
            got.append(piece)
            await asyncio.sleep(0.3)  # slower than the read timeout, but not waiting on it
        assert b"".join(got) == b"onetwo"
        response.release()


# -- stopping a stream ------------------------------------------------------------------


@run
async def test_close_while_a_stream_is_awaited_ends_it_and_discards_the_connection() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        if peer.index == 0:
            await peer.send(CHUNKED_HEAD + chunk(b"one"))
            await peer.client_closed()  # the stream stays open until the client closes it
        else:
            await peer.respond()
            await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url(), max_connections=1)
        response = await client.request("GET", "/", [])
        first = asyncio.Event()
        got: list[bytes] = []

        async def consume() -> None:
            async for piece in response.iter_chunks():
                got.append(piece)
                first.set()

        task = asyncio.ensure_future(consume())
        await asyncio.wait_for(first.wait(), HANG)
        await asyncio.sleep(0.02)  # the consumer is waiting for the next chunk
        started = time.monotonic()
        response.close()
        with pytest.raises(UpstreamClosed):
            await asyncio.wait_for(task, HANG)
        assert time.monotonic() - started < 0.5
        assert got == [b"one"]
        response.release()
        assert await get(client) == (200, b"ok")  # max_connections=1: the slot was freed
        assert server.accepted == 2
        assert [len(peer.requests) for peer in server.peers] == [1, 1]


@run
async def test_close_between_steps_of_a_stream_ends_it() -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(CHUNKED_HEAD + chunk(b"one"))
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        got = []
        with pytest.raises(UpstreamClosed):
            async for piece in response.iter_chunks():
                got.append(piece)
                response.close()
        assert got == [b"one"]
        response.release()
        await asyncio.sleep(0.05)
        assert server.open == 0  # the upstream socket is closed, not left open


# -- back-pressure ----------------------------------------------------------------------


@run
async def test_an_unread_stream_pauses_the_socket_and_resumes_when_iterated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_client, "STREAM_HIGH_WATER", 1024)
    size = 16 << 20  # far beyond what the sockets' buffers hold (about 4 MiB here)
    body = bytes(range(256)) * (size // 256)
    sent_all = asyncio.Event()
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size + body[:100])
        await go.wait()
        await peer.send(body[100:])  # drain() blocks while the client does not read
        sent_all.set()
        await peer.client_closed()

    async with serve(handler) as server:
        client = make_client(server.url())
        response = await client.request("GET", "/", [])
        assert response._conn is not None
        transport = response._conn.transport
        assert transport is not None
        stream = response.iter_chunks()
        got = [await anext(stream)]  # streaming has begun; now the consumer stops
        assert got == [body[:100]]
        go.set()
        await wait_until(lambda: not transport.is_reading(), "reading paused")
        await asyncio.sleep(0.1)
        assert not transport.is_reading()
        assert not sent_all.is_set()  # the pause reached the server
        async for piece in stream:
            got.append(piece)
        joined = b"".join(got)
        assert len(joined) == size
        assert joined == body
        assert sent_all.is_set()
        response.release()


@run
async def test_read_buffers_a_body_larger_than_the_high_water_mark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_client, "STREAM_HIGH_WATER", 1024)
    body = b"x" * (1 << 20)

    async def handler(peer: Peer) -> None:
        await peer.serve_forever(body)

    async with serve(handler) as server:
        client = make_client(server.url())
        assert await get(client) == (200, body)
        assert await get(client) == (200, body)
        assert server.accepted == 1


# -- https -------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (cert and key in one PEM file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    pem = tmp_path / "server.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    command += ["-keyout", str(pem), "-out", str(pem)]
    subprocess.run(
        command,
        check=True,
        capture_output=True,
    )
    return pem


def _tls_server_context(pem: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pem)
    return context


@run
async def test_https_upstream_with_a_trusted_certificate(
    certificate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))  # what a private CA's users set

    async def handler(peer: Peer) -> None:
        await peer.serve_forever(b"over tls")

    async with serve(handler, _tls_server_context(certificate)) as server:
        client = make_client(server.url("/v1").replace("http://", "https://"))
        assert await get(client, "/models") == (200, b"over tls")
        assert await get(client, "/models") == (200, b"over tls")
        assert server.accepted == 1  # kept alive over TLS as well
        assert server.peers[0].requests[0].target == "/v1/models"


@run
async def test_https_upstream_with_an_untrusted_certificate_is_refused(certificate: Path) -> None:
    async def handler(peer: Peer) -> None:
        await peer.serve_forever()

    async with serve(handler, _tls_server_context(certificate)) as server:
        client = make_client(server.url().replace("http://", "https://"))
        with pytest.raises(ssl.SSLCertVerificationError):
            await client.request("GET", "/", [])
        assert client._open == 0


# -- found while writing these tests (each failed before its fix) -----------------------


@run
async def test_a_stream_paused_and_released_unread_is_pooled_reading_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(upstream_client, "STREAM_HIGH_WATER", 1024)
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 5100\r\n\r\n" + b"a" * 100)
        await go.wait()
        await peer.send(b"b" * 5000)  # the rest, and the end, in one packet
        await peer.serve_forever()

    async with serve(handler) as server:
        client = make_client(server.url(), read_timeout=0.5)
        response = await client.request("GET", "/", [])
        conn = response._conn
        assert conn is not None and conn.transport is not None
        stream = response.iter_chunks()
        assert await anext(stream) == b"a" * 100
        go.set()
        await wait_until(lambda: conn.complete, "the answer parsed to its end")
        assert not conn.transport.is_reading()  # paused, with 5000 bytes not yet iterated
        # The caller stops here (as the proxy's relay does when its loop body raises)
        # and releases: the parser saw the end, so the connection is pooled, and it
        # must read again, or the next request's answer is never read (it timed out).
        response.release()
        assert server.accepted == 1
        assert await get(client) == (200, b"ok")


@run
async def test_cancelling_requests_while_they_connect_keeps_the_pool_count() -> None:
    go = asyncio.Event()
    async with serve(hold_every_request(go)) as server:
        client = make_client(server.url(), read_timeout=0.3, max_connections=1)
        await cancel_at_each_early_step(client, 12)
        await asyncio.sleep(0.1)  # the cancelled connections are closed by now
        before = sum(len(peer.requests) for peer in server.peers)
        tasks = [asyncio.ensure_future(get(client)) for _ in range(3)]
        await asyncio.sleep(0.2)
        at_once = sum(len(peer.requests) for peer in server.peers) - before
        go.set()
        await asyncio.wait_for(asyncio.gather(*tasks), HANG)
        assert client._open >= 0, f"{client._open} connections open by the pool's count"
        assert at_once <= 1, f"{at_once} requests sent at once with max_connections=1"


@run
async def test_a_request_cancelled_while_connecting_is_never_sent() -> None:
    go = asyncio.Event()
    async with serve(hold_every_request(go)) as server:
        client = make_client(server.url(), read_timeout=0.3, max_connections=4)
        outcomes = await cancel_at_each_early_step(client, 12)
        assert outcomes == ["cancelled"] * 12
        go.set()
