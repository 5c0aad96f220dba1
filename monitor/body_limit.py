"""Refuse request bodies over `proxy.max_body_bytes` with 413, on every route.

A pure ASGI middleware, because it must stop reading as soon as the limit is
passed (a declared Content-Length over it is refused before any byte is read;
a chunked body is counted as it arrives), which FastAPI's request parsing
cannot do. The proxy's own reader applies the same limit on its hot path.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.exceptions import HTTPException

Scope = dict[str, Any]
Message = dict[str, Any]


class BodyTooLargeError(HTTPException):
    """An HTTPException, so FastAPI's body parsing re-raises it instead of answering 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=f"request body exceeds {limit} bytes")


def _too_large_body(limit: int) -> bytes:
    message = f"request body exceeds {limit} bytes"
    error = {"message": message, "type": "invalid_request_error", "code": "request_too_large"}
    return orjson.dumps({"error": {**error, "param": None}})


class BodySizeLimit:
    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                return await self._refuse(send)
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message: Message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLargeError(self.max_bytes)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Any) -> None:
        body = _too_large_body(self.max_bytes)
        length = str(len(body)).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", length)]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
