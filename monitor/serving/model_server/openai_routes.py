"""The OpenAI-compatible routes of the reference model server, and its health probe.

``/v1/models``, ``/v1/chat/completions`` and ``/v1/completions`` answer as vLLM
does, logprobs included (raw, as vLLM reports them by default, because that is
what the monitor fits temperatures on); streaming or not is only a question of
which response builder (``responses.py``) the generation events go to.
"""

from __future__ import annotations

import time
import uuid

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .generation import Engine, Piece, TokenInfo
from .inference import chat_prompt, collect, completion_prompt, generate, sampling_params
from .logprobs import chat_logprobs, legacy_logprobs
from .responses import chat_chunks, completion_chunks, event_stream, json_response, usage_of
from .schemas import ChatCompletionRequest, CompletionRequest

FINGERPRINT = "thermostat-reference"


def _engine(request: Request) -> Engine:
    engine: Engine | None = request.app.state.engine
    if engine is None:
        raise StarletteHTTPException(503, "model is not loaded")
    return engine


def _tokens(pieces: list[Piece]) -> list[TokenInfo]:
    return [t for p in pieces for t in p.tokens]


def install_openai_routes(app: FastAPI) -> None:
    @app.api_route("/healthz", methods=["GET", "HEAD"])  # HEAD: as load balancers probe
    async def healthz(request: Request) -> Response:
        return json_response({"status": "ok", "model_loaded": request.app.state.engine is not None})

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        engine = _engine(request)
        card = {
            "id": engine.name,
            "object": "model",
            "created": request.app.state.started,
            "owned_by": "thermostat",
            "max_model_len": engine.context_length,
        }
        return json_response({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        engine = _engine(request)
        req.check_supported()
        k = (req.top_logprobs or 0) if req.logprobs else 0
        params = sampling_params(request, req, k)
        events = generate(engine, chat_prompt(engine, req), params)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": engine.name,
            "system_fingerprint": FINGERPRINT,
        }
        if req.stream:
            return event_stream(chat_chunks(events, base, req, k))
        pieces, done = await collect(events)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(p.text for p in pieces)},
            "logprobs": chat_logprobs(_tokens(pieces), k) if req.logprobs else None,
            "finish_reason": done.finish_reason,
        }
        body = {**base, "object": "chat.completion", "choices": [choice], "usage": usage_of(done)}
        return json_response(body)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        engine = _engine(request)
        req.check_supported()
        params = sampling_params(request, req, req.logprobs or 0)
        events = generate(engine, completion_prompt(engine, req), params)
        base = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": engine.name,
            "system_fingerprint": FINGERPRINT,
        }
        if req.stream:
            return event_stream(completion_chunks(events, base, req))
        pieces, done = await collect(events)
        choice = {
            "index": 0,
            "text": "".join(p.text for p in pieces),
            "logprobs": legacy_logprobs(_tokens(pieces)) if req.logprobs is not None else None,
            "finish_reason": done.finish_reason,
        }
        return json_response({**base, "choices": [choice], "usage": usage_of(done)})
