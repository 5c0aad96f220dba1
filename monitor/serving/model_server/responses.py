"""The wire format of the reference model server's answers: JSON bodies, SSE, errors.

Kept apart from the routes so that the OpenAI shapes (an error object, usage,
chat and completions stream chunks, the in-band error of a stream whose
headers are gone) are written once and read in one place; the routes decide
what to answer, this module how it looks on the wire.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi.responses import Response, StreamingResponse

from .generation import Finished, Piece
from .logprobs import chat_logprobs, legacy_logprobs
from .schemas import ChatCompletionRequest, CompletionRequest


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return json_response(body, status)


def validation_message(errors: list[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first['msg']}" if param else str(first["msg"])), param


def json_response(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def sse_event(body: Any) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage_of(done: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def event_stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


async def chat_chunks(
    events: AsyncIterator[Piece | Finished],
    base: dict[str, Any],
    req: ChatCompletionRequest,
    k: int,
) -> AsyncIterator[bytes]:
    base = {**base, "object": "chat.completion.chunk"}
    if req.include_usage():
        base["usage"] = None  # OpenAI sends usage: null on every chunk but the last

    def chunk(delta: dict[str, Any], logprobs: Any = None, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return sse_event({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for event in events:
            if isinstance(event, Piece):
                lp = chat_logprobs(event.tokens, k) if req.logprobs else None
                yield chunk({"content": event.text}, lp)
            else:
                yield chunk({}, None, event.finish_reason)
                if req.include_usage():
                    yield sse_event({**base, "choices": [], "usage": usage_of(event)})
    except Exception as exc:  # headers are gone: report in-band, as OpenAI does
        yield sse_event({"error": {"message": str(exc), "type": "server_error", "code": None}})
    yield b"data: [DONE]\n\n"


async def completion_chunks(
    events: AsyncIterator[Piece | Finished], base: dict[str, Any], req: CompletionRequest
) -> AsyncIterator[bytes]:
    if req.include_usage():
        base = {**base, "usage": None}

    def chunk(text: str, logprobs: Any = None, finish: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return sse_event({**base, "choices": [choice]})

    try:
        async for event in events:
            if isinstance(event, Piece):
                lp = legacy_logprobs(event.tokens) if req.logprobs is not None else None
                yield chunk(event.text, lp)
            else:
                yield chunk("", None, event.finish_reason)
                if req.include_usage():
                    yield sse_event({**base, "choices": [], "usage": usage_of(event)})
    except Exception as exc:
        yield sse_event({"error": {"message": str(exc), "type": "server_error", "code": None}})
    yield b"data: [DONE]\n\n"
