"""From a validated request to generation events on the event loop.

The prompt is tokenised (chat template or raw completion prompt) and checked
against the model's context; the sampling parameters take the task's
calibration divisor from the table, read once per request; and generation runs
in a worker thread (`Engine.generate` is blocking), its events handed to the
event loop through a queue, so /healthz and the admin routes answer during a
long generation and a client that goes away stops the decoding.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request

from .calibration import DEFAULT_TASK, TASK_HEADER, DivideLogits, sampling_divisor
from .generation import Engine, Finished, Piece, SamplingParams
from .schemas import ChatCompletionRequest, CompletionRequest, RequestError

_END = object()


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


def chat_prompt(engine: Engine, req: ChatCompletionRequest) -> list[int]:
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


def completion_prompt(engine: Engine, req: CompletionRequest) -> list[int]:
    prompt = req.single_prompt()
    if isinstance(prompt, str):
        return _check_context(engine, list(engine.tokenizer(prompt)["input_ids"]))
    vocab = len(engine.tokenizer)
    if any(not 0 <= t < vocab for t in prompt):
        raise RequestError(f"prompt token ids must be in [0, {vocab})", "prompt")
    return _check_context(engine, prompt)


def sampling_params(request: Request, req: Any, top_logprobs: int) -> SamplingParams:
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


async def generate(
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


async def collect(events: AsyncIterator[Piece | Finished]) -> tuple[list[Piece], Finished]:
    pieces: list[Piece] = []
    async for event in events:
        if isinstance(event, Finished):
            return pieces, event
        pieces.append(event)
    raise RuntimeError("generation ended without finishing")
