"""What passes between the client and the model server: headers each way, and the client.

One `UpstreamClient` per process (`upstream_client.py`): a bounded pool of
keep-alive connections with explicit connect and read timeouts. It sends no
cookies of its own (the client is shared by every caller, so a cookie one
answer sets must never ride along on another caller's request; callers' own
Cookie headers still pass through, and Set-Cookie back to them) and asks for
no compression (the proxy reads the body).
"""

from __future__ import annotations

from monitor.proxy.upstream_client import Headers, UpstreamClient, UpstreamResponse
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
        b"expect",  # the proxy has the whole body already: no 100-continue upstream
        b"content-type",  # always JSON, set below
        b"x-thermostat-task",  # re-set to the resolved task below
    }
)
DROP_RESPONSE_HEADERS = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"content-length",
        b"content-encoding",
        b"upgrade",
        b"trailer",
        b"date",
        b"server",
    }
)
_JSON_HEADER = (b"content-type", b"application/json")


def build_client(upstream_url: str, settings: ProxySettings) -> UpstreamClient:
    return UpstreamClient(
        upstream_url,
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        max_connections=settings.max_connections,
    )


def forward_headers(raw_headers: Headers, task: str | None = None) -> Headers:
    """Client headers (ASGI: names lower-case) to pass upstream, hop-by-hop removed.

    The resolved task goes along as `X-Thermostat-Task` (also when the client
    named it in `metadata.task`): a model server that applies per-task
    calibration to sampling, like the reference server, needs it; others ignore it.
    """
    drop = _with_connection_options(DROP_REQUEST_HEADERS, raw_headers)
    out = [(name, value) for name, value in raw_headers if name not in drop]
    out.append(_JSON_HEADER)
    if task is not None:
        out.append((b"x-thermostat-task", task.encode()))
    return out


def response_headers(upstream: UpstreamResponse) -> Headers:
    drop = _with_connection_options(DROP_RESPONSE_HEADERS, upstream.headers)
    return [(name, value) for name, value in upstream.headers if name not in drop]


def _with_connection_options(drop: frozenset[bytes], headers: Headers) -> frozenset[bytes]:
    """`drop` plus the header names a `Connection` header lists (RFC 9110 7.6.1).

    A sender marks its own hop-by-hop headers that way (`Connection: close,
    X-Hop-Secret`); they are meant for this hop only, so they go no further.
    Names come lower-cased from uvicorn (ASGI) and from the upstream client, as
    `handler._header` and `UpstreamResponse.header` rely on too.
    """
    options = [value for name, value in headers if name == b"connection"]
    if not options:
        return drop
    listed = (option.strip().lower() for value in options for option in value.split(b","))
    return drop.union(name for name in listed if name)
