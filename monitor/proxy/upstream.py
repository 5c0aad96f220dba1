"""The one shared HTTP client to the model server.

aiohttp rather than httpx: with 100 KB logprob-heavy bodies the client library
bounds a Python proxy, and aiohttp parsed and delivered them at roughly twice
httpx's rate on this kind of machine (see docs/benchmarks.md). One session per
process, a bounded connection pool with keep-alive, explicit connect and read
timeouts. No automatic Accept-Encoding: the proxy reads the body, so it must
not be compressed. No cookie jar: the session is shared by every client, so a
cookie one answer sets must never ride along on another client's request
(clients' own Cookie headers still pass through, and Set-Cookie back to them).
"""

from __future__ import annotations

import aiohttp

from monitor.settings import ProxySettings

# Hop-by-hop headers (RFC 9110 7.6.1) plus those the proxy sets itself.
DROP_REQUEST_HEADERS = frozenset(
    {
        b"host",
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"accept-encoding",
        b"x-thermostat-task",  # re-set to the resolved task below
    }
)
DROP_RESPONSE_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "transfer-encoding",
        "content-length",
        "content-encoding",
        "upgrade",
        "trailer",
        "date",
        "server",
    }
)


def build_session(settings: ProxySettings) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(
        limit=settings.max_connections,
        limit_per_host=0,
        ttl_dns_cache=300,
        keepalive_timeout=60,
    )
    timeout = aiohttp.ClientTimeout(
        total=None, connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("Accept-Encoding", "User-Agent"),
        raise_for_status=False,
    )


def forward_headers(
    raw_headers: list[tuple[bytes, bytes]], task: str | None = None
) -> dict[str, str]:
    """Client headers to pass upstream (Authorization and the like), hop-by-hop removed.

    The resolved task goes along as `X-Thermostat-Task` (also when the client
    named it in `metadata.task`): a model server that applies per-task
    calibration to sampling, like the reference server, needs it; others ignore it.
    """
    out: dict[str, str] = {}
    for name, value in raw_headers:
        lowered = name.lower()
        if lowered not in DROP_REQUEST_HEADERS:
            out[lowered.decode("latin-1")] = value.decode("latin-1")
    out["content-type"] = "application/json"
    if task is not None:
        out["x-thermostat-task"] = task
    return out


def response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in upstream.headers.items()
        if name.lower() not in DROP_RESPONSE_HEADERS
    ]
