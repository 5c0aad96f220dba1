"""Bare ASGI plumbing of the proxy routes: read a request body, send bytes or an error.

The proxy routes skip FastAPI's request and response machinery (see
`service.py`), so these few helpers are all that stands between the handler
and the ASGI server: a bounded body read (``proxy.max_body_bytes``) and
responses written as two messages, with errors in OpenAI's JSON shape so
clients' SDKs parse them as they parse the upstream's own.
"""

from __future__ import annotations

from typing import Any

import orjson

Scope = dict[str, Any]
Receive = Any
Send = Any
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
