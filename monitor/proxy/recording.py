"""Turn one finished exchange into the recorder's `GenerationRecord`.

Only references and a few scalars are gathered here (the request path); the
recorder's writer packs arrays and computes signals. The task's `store_text`
decides what is kept of the prompt and the answer: everything, a SHA-256, or
nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from monitor.config import StoreText
from monitor.proxy.captured import Captured
from monitor.proxy.records import GenerationRecord, repetition_rate, sha256_text

if TYPE_CHECKING:
    from monitor.proxy.exchange import Exchange


def _prompt(exchange: Exchange) -> Any:
    body = exchange.rewritten.body
    return body.get("messages") if exchange.endpoint == "chat" else body.get("prompt")


def build_record(
    exchange: Exchange,
    captured: Captured,
    thermostat: dict[str, Any],
    span: tuple[int, int] | None,
    overhead_ms: float | None,
) -> GenerationRecord:
    store = exchange.config.store_text
    prompt = _prompt(exchange)
    kept_prompt: Any = None
    prompt_hash = response_hash = None
    response_text: str | None = None
    # The writer derives repetition from the stored text; without it, do it here.
    repetition = None if store == StoreText.full else repetition_rate(captured.text)
    if store == StoreText.full:
        kept_prompt, response_text = prompt, captured.text
    elif store == StoreText.hash:
        prompt_hash = sha256_text(orjson.dumps(prompt))
        response_hash = sha256_text(captured.text)
    has_arrays = captured.has_logprobs and captured.chosen.shape[0] > 0
    return GenerationRecord(
        task=exchange.rewritten.task,
        id=exchange.generation_id,
        model=captured.model,
        endpoint=exchange.endpoint,
        stream=exchange.rewritten.stream,
        partial=captured.partial,
        prompt=kept_prompt,
        prompt_sha256=prompt_hash,
        response_text=response_text,
        response_sha256=response_hash,
        finish_reason=captured.finish_reason,
        token_count=captured.completion_tokens or int(captured.chosen.shape[0]),
        prompt_tokens=captured.prompt_tokens,
        upstream_status=200,
        latency_ms=exchange.upstream_seconds * 1000,
        overhead_ms=overhead_ms,
        sampling=exchange.rewritten.sampling,
        top_k=exchange.rewritten.upstream_top,
        chosen=captured.chosen if has_arrays else None,
        top=captured.top if has_arrays else None,
        chosen_rank=captured.chosen_rank if has_arrays else None,
        answer_start=span[0] if span else None,
        answer_end=span[1] if span else None,
        repetition=repetition,
        raw_confidence=thermostat["raw_confidence"],
        confidence=thermostat["confidence"],
        temperature=thermostat["temperature"],
        calibration_version=thermostat["calibration_version"],
    )
