"""FastAPI app of the reference OpenAI-compatible model server.

It exists so that Thermostat can be demonstrated and tested end to end without
vLLM: any local transformers causal LM behind the same wire format (chat and
legacy completions, streaming or not, logprobs with top alternatives). Logprobs
are raw, as vLLM reports them by default, because that is what the monitor fits
temperatures on.

The model loads in the lifespan, not at import or construction, unless the caller
hands over a loaded engine (the command line does, so that a model that cannot
load is a one-line error, not a traceback from uvicorn's start-up). Generation
runs in a worker thread so /healthz and the admin routes answer during a long
generation.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .calibration import (
    DEFAULT_TASK,
    TASK_HEADER,
    CalibrationStore,
    CalibrationTable,
    DivideLogits,
    TaskCalibrationUpdate,
    sampling_divisor,
)
from .generation import Engine, Finished, Piece, SamplingParams, TokenInfo, load_engine
from .logprobs import chat_logprobs, legacy_logprobs
from .schemas import ChatCompletionRequest, CompletionRequest, RequestError

FINGERPRINT = "thermostat-reference"
_END = object()


def check_model_path(model_path: str) -> Path:
    """Fail fast, in one line, on a path that cannot be a transformers model."""
    path = Path(model_path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"model path does not exist: {path}")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a transformers model directory")
    return path


def create_model_server_app(
    model_path: str,
    device: str = "auto",
    *,
    served_model_name: str | None = None,
    engine: Engine | None = None,
) -> FastAPI:
    """Build the app; the model loads when it starts, unless `engine` is already loaded."""
    path = check_model_path(model_path)
    if device not in ("auto", "cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {device!r}")
    name = served_model_name or str(model_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            app.state.engine = await asyncio.to_thread(load_engine, str(path), device, name)
        else:
            app.state.engine = engine
        try:
            yield
        finally:
            app.state.engine = None

    app = FastAPI(title="Thermostat reference model server", lifespan=lifespan)
    app.state.engine = None
    app.state.calibration = CalibrationStore()
    app.state.started = int(time.time())
    _install_error_handlers(app)
    _install_routes(app)
    return app


def run_model_server(
    model_path: str,
    host: str = "127.0.0.1",
    port: int = 8001,
    device: str = "auto",
    *,
    engine: Engine | None = None,
) -> None:
    """Serve until interrupted. Raises FileNotFoundError for a missing model path."""
    import uvicorn

    app = create_model_server_app(model_path, device, engine=engine)
    uvicorn.run(app, host=host, port=port, log_level="info")


# ---------------------------------------------------------------- errors


def error_response(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return _json(body, status)


def _validation_message(errors: list[Any]) -> tuple[str, str | None]:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    return (f"{param}: {first['msg']}" if param else str(first["msg"])), param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(_: Request, exc: RequestError) -> Response:
        return error_response(400, exc.message, param=exc.param, code=exc.code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # OpenAI answers malformed parameters with 400, not FastAPI's 422.
        message, param = _validation_message(list(exc.errors()))
        return error_response(400, message, param=param, code="invalid_value")

    @app.exception_handler(Exception)
    async def _crash(_: Request, exc: Exception) -> Response:
        return error_response(500, f"internal error: {exc}", type_="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return error_response(exc.status_code, str(exc.detail), type_=kind)


# ---------------------------------------------------------------- helpers


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def _sse(body: Any) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def _engine(request: Request) -> Engine:
    engine: Engine | None = request.app.state.engine
    if engine is None:
        raise StarletteHTTPException(503, "model is not loaded")
    return engine


def _check_context(engine: Engine, ids: list[int]) -> list[int]:
    if not ids:
        raise RequestError("the prompt is empty", "prompt")
    if engine.context_length is not None and len(ids) >= engine.context_length:
        raise RequestError(
            f"the prompt has {len(ids)} tokens; the model's context is {engine.context_length}",
            "messages",
            code="context_length_exceeded",
        )
    return ids


def _chat_prompt(engine: Engine, req: ChatCompletionRequest) -> list[int]:
    tok = engine.tokenizer
    if not getattr(tok, "chat_template", None):
        raise RequestError("the model has no chat template; use /v1/completions", "messages")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    try:
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # jinja errors, e.g. a template that rejects role order
        raise RequestError(f"chat template failed: {exc}", "messages") from exc
    # The template already wrote any BOS it wants; adding special tokens would double it.
    return _check_context(engine, list(tok(text, add_special_tokens=False)["input_ids"]))


def _completion_prompt(engine: Engine, req: CompletionRequest) -> list[int]:
    prompt = req.single_prompt()
    if isinstance(prompt, str):
        return _check_context(engine, list(engine.tokenizer(prompt)["input_ids"]))
    vocab = len(engine.tokenizer)
    if any(not 0 <= t < vocab for t in prompt):
        raise RequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
    return _check_context(engine, prompt)


def _sampling(request: Request, req: Any, top_logprobs: int) -> SamplingParams:
    # The table is read once: a swap during this request does not affect it.
    table = request.app.state.calibration.snapshot()
    divisor = sampling_divisor(table, request.headers.get(TASK_HEADER) or DEFAULT_TASK)
    return SamplingParams(
        max_tokens=req.token_limit(),
        temperature=1.0 if req.temperature is None else req.temperature,
        top_p=1.0 if req.top_p is None else req.top_p,
        stop=req.stop_strings(),
        seed=req.seed,
        top_logprobs=top_logprobs,
        processors=(DivideLogits(divisor),) if divisor is not None else (),
    )


async def _generate(
    engine: Engine, prompt_ids: list[int], params: SamplingParams
) -> AsyncIterator[Piece | Finished]:
    """Run Engine.generate in a thread and hand its events to the event loop."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()
    cancel = threading.Event()

    def put(item: Any) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # loop closed: nobody is listening any more
            cancel.set()

    def work() -> None:
        try:
            with engine.lock:
                for event in engine.generate(prompt_ids, params, cancel):
                    put(event)
        except Exception as exc:
            put(exc)
        finally:
            put(_END)

    threading.Thread(target=work, name="generation", daemon=True).start()
    try:
        while (item := await queue.get()) is not _END:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        cancel.set()  # client gone or done: stop decoding tokens nobody will read


async def _collect(events: AsyncIterator[Piece | Finished]) -> tuple[list[Piece], Finished]:
    pieces: list[Piece] = []
    async for event in events:
        if isinstance(event, Finished):
            return pieces, event
        pieces.append(event)
    raise RuntimeError("generation ended without finishing")


def _usage(done: Finished) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
    }


def _tokens(pieces: list[Piece]) -> list[TokenInfo]:
    return [t for p in pieces for t in p.tokens]


# ---------------------------------------------------------------- routes


def _install_routes(app: FastAPI) -> None:
    @app.get("/healthz")
    async def healthz(request: Request) -> Response:
        return _json({"status": "ok", "model_loaded": request.app.state.engine is not None})

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
        return _json({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        engine = _engine(request)
        req.check_supported()
        k = (req.top_logprobs or 0) if req.logprobs else 0
        params = _sampling(request, req, k)
        events = _generate(engine, _chat_prompt(engine, req), params)
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": engine.name,
            "system_fingerprint": FINGERPRINT,
        }
        if req.stream:
            return _stream(_chat_chunks(events, base, req, k))
        pieces, done = await _collect(events)
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": "".join(p.text for p in pieces)},
            "logprobs": chat_logprobs(_tokens(pieces), k) if req.logprobs else None,
            "finish_reason": done.finish_reason,
        }
        body = {**base, "object": "chat.completion", "choices": [choice], "usage": _usage(done)}
        return _json(body)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        engine = _engine(request)
        req.check_supported()
        params = _sampling(request, req, req.logprobs or 0)
        events = _generate(engine, _completion_prompt(engine, req), params)
        base = {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": engine.name,
            "system_fingerprint": FINGERPRINT,
        }
        if req.stream:
            return _stream(_completion_chunks(events, base, req))
        pieces, done = await _collect(events)
        choice = {
            "index": 0,
            "text": "".join(p.text for p in pieces),
            "logprobs": legacy_logprobs(_tokens(pieces)) if req.logprobs is not None else None,
            "finish_reason": done.finish_reason,
        }
        return _json({**base, "choices": [choice], "usage": _usage(done)})

    @app.get("/admin/calibration")
    async def get_calibration(request: Request) -> Response:
        store: CalibrationStore = request.app.state.calibration
        return _json(store.as_json(store.snapshot()))

    @app.put("/admin/calibration")
    async def put_calibration(request: Request) -> Response:
        store: CalibrationStore = request.app.state.calibration
        try:
            body = await request.json()
        except ValueError:
            return error_response(422, "body must be a JSON object", code="invalid_json")
        try:
            table: Mapping[str, Any]
            if isinstance(body, dict) and "tasks" in body:
                table = store.replace(CalibrationTable.model_validate(body).tasks)
            else:
                update = TaskCalibrationUpdate.model_validate(body)
                table = store.set_task(update.task, update.entry())
        except ValidationError as exc:
            message, param = _validation_message(list(exc.errors()))
            return error_response(422, message, param=param, code="invalid_value")
        return _json(store.as_json(table))


def _stream(chunks: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(chunks, media_type="text/event-stream", headers=headers)


async def _chat_chunks(
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
        return _sse({**base, "choices": [choice]})

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for event in events:
            if isinstance(event, Piece):
                lp = chat_logprobs(event.tokens, k) if req.logprobs else None
                yield chunk({"content": event.text}, lp)
            else:
                yield chunk({}, None, event.finish_reason)
                if req.include_usage():
                    yield _sse({**base, "choices": [], "usage": _usage(event)})
    except Exception as exc:  # headers are gone: report in-band, as OpenAI does
        yield _sse({"error": {"message": str(exc), "type": "server_error", "code": None}})
    yield b"data: [DONE]\n\n"


async def _completion_chunks(
    events: AsyncIterator[Piece | Finished], base: dict[str, Any], req: CompletionRequest
) -> AsyncIterator[bytes]:
    if req.include_usage():
        base = {**base, "usage": None}

    def chunk(text: str, logprobs: Any = None, finish: str | None = None) -> bytes:
        choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    try:
        async for event in events:
            if isinstance(event, Piece):
                lp = legacy_logprobs(event.tokens) if req.logprobs is not None else None
                yield chunk(event.text, lp)
            else:
                yield chunk("", None, event.finish_reason)
                if req.include_usage():
                    yield _sse({**base, "choices": [], "usage": _usage(event)})
    except Exception as exc:
        yield _sse({"error": {"message": str(exc), "type": "server_error", "code": None}})
    yield b"data: [DONE]\n\n"
