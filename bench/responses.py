"""Precomputed, realistic logprob-heavy upstream bodies for benchmarks.

The proxy's hot path is dominated by response size: 200 generated tokens at
top-5, with the ``bytes`` arrays vLLM emits, is about 100 KB of JSON. These
builders produce bodies shaped like vLLM's (key order, ``stop_reason``,
``prompt_logprobs``, float32 logprobs printed as float64, the sampled token
appended as a K+1-th alternative when it is outside the top-K, occasional
``-9999.0`` sentinels) so that benchmarks and speed checks measure what
production sees. Deterministic for a given seed; no third-party imports beyond
numpy and orjson.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

# A small vocabulary with the awkward cases a splicer must survive: quotes,
# backslashes, braces, non-ASCII, and a token literally named "logprobs".
VOCAB: list[str] = [
    " the", " a", " of", " to", " and", " is", " in", " that", " it", " for",
    " answer", " number", " therefore", " so", " we", " get", " =", " +", " 4", " 2",
    ".", ",", "\n", " \\boxed{", "}", " {", '"', ' "', "\\", " logprobs", "logprobs",
    " café", " 東京", " 🙂", " naïve", " x", " y", " z", " 17", " 42",
    " calibration", " probability", " temperature", " confidence", " distribution",
    " expected", " because", " solution", " following", " equation",
]  # fmt: skip

MODEL = "meta-llama/Llama-3.1-8B-Instruct"


def _position_logprobs(
    rng: np.random.Generator, k: int
) -> tuple[int, float, list[tuple[int, float]]]:
    """One generated position: (chosen id, chosen logprob, top-K [(id, logprob)] desc)."""
    logits = rng.normal(0.0, 2.5, size=len(VOCAB)).astype(np.float64)
    logits[rng.integers(len(VOCAB))] += rng.uniform(2.0, 8.0)
    logp = (logits - np.logaddexp.reduce(logits)).astype(np.float32)
    order = np.argsort(-logp, kind="stable")
    top = [(int(i), float(logp[i])) for i in order[:k]]
    # Mostly greedy-ish; sometimes a token from outside the top-K, as sampling does.
    u = rng.random()
    if u < 0.8:
        chosen = int(order[0])
    elif u < 0.92 and k > 1:
        chosen = int(order[1])
    else:
        chosen = int(order[min(len(order) - 1, k + int(rng.integers(0, 5)))])
    return chosen, float(logp[chosen]), top


def _chat_entry(tok_id: int, lp: float, with_bytes: bool) -> dict[str, Any]:
    token = VOCAB[tok_id]
    entry: dict[str, Any] = {"token": token, "logprob": max(lp, -9999.0)}
    if with_bytes:
        entry["bytes"] = list(token.encode())
    return entry


def chat_logprobs(
    n_tokens: int, k: int, seed: int, with_bytes: bool = True
) -> tuple[str, list[dict[str, Any]]]:
    """Answer text and the chat ``logprobs.content`` list for it."""
    rng = np.random.default_rng(seed)
    content: list[dict[str, Any]] = []
    text: list[str] = []
    for pos in range(n_tokens):
        chosen, chosen_lp, top = _position_logprobs(rng, k)
        if pos % 97 == 13:  # vLLM clamps -inf (masked tokens) to this sentinel
            top[-1] = (top[-1][0], -9999.0)
        entry = _chat_entry(chosen, chosen_lp, with_bytes)
        alts = [_chat_entry(i, lp, with_bytes) for i, lp in top]
        if chosen not in [i for i, _ in top]:
            alts.append(_chat_entry(chosen, chosen_lp, with_bytes))
        entry["top_logprobs"] = alts
        content.append(entry)
        text.append(VOCAB[chosen])
    return "".join(text), content


def completions_logprobs(n_tokens: int, k: int, seed: int) -> tuple[str, dict[str, Any]]:
    """Answer text and the legacy completions ``logprobs`` object for it."""
    rng = np.random.default_rng(seed)
    tokens: list[str] = []
    token_lps: list[float] = []
    tops: list[dict[str, float]] = []
    offsets: list[int] = []
    off = 0
    for _ in range(n_tokens):
        chosen, chosen_lp, top = _position_logprobs(rng, k)
        # vLLM's completions dict lists the sampled token first, then the top-K.
        d = {VOCAB[chosen]: chosen_lp}
        for i, lp in top:
            d[VOCAB[i]] = lp
        tokens.append(VOCAB[chosen])
        token_lps.append(chosen_lp)
        tops.append(d)
        offsets.append(off)
        off += len(VOCAB[chosen])
    lp_obj = {
        "text_offset": offsets,
        "token_logprobs": token_lps,
        "tokens": tokens,
        "top_logprobs": tops,
    }
    return "".join(tokens), lp_obj


def _usage(n: int) -> dict[str, int]:
    return {"prompt_tokens": 57, "total_tokens": 57 + n, "completion_tokens": n}


def chat_body(n_tokens: int = 200, k: int = 5, seed: int = 0, with_bytes: bool = True) -> bytes:
    """A vLLM-shaped non-streaming chat completion body."""
    text, content = chat_logprobs(n_tokens, k, seed, with_bytes)
    obj = {
        "id": "chatcmpl-5f0c6a8e1b7d4c39a2f1e0d9c8b7a6f5",
        "object": "chat.completion",
        "created": 1732185600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "reasoning_content": None,
                    "content": text,
                    "tool_calls": [],
                },
                "logprobs": {"content": content},
                "finish_reason": "length",
                "stop_reason": None,
            }
        ],
        "usage": _usage(n_tokens),
        "prompt_logprobs": None,
        "kv_transfer_params": None,
    }
    return orjson.dumps(obj)


def completions_body(n_tokens: int = 200, k: int = 5, seed: int = 0) -> bytes:
    """A vLLM-shaped non-streaming legacy completions body."""
    text, lp = completions_logprobs(n_tokens, k, seed)
    obj = {
        "id": "cmpl-8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
        "object": "text_completion",
        "created": 1732185600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "text": text,
                "logprobs": lp,
                "finish_reason": "length",
                "stop_reason": None,
                "prompt_logprobs": None,
            }
        ],
        "usage": _usage(n_tokens),
        "kv_transfer_params": None,
    }
    return orjson.dumps(obj)


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chat_stream(n_tokens: int = 200, k: int = 5, seed: int = 0) -> list[bytes]:
    """SSE events (each ``data: ...\\n\\n``) of a vLLM chat stream, ending in [DONE]."""
    _, content = chat_logprobs(n_tokens, k, seed, with_bytes=True)
    head = {
        "id": "chatcmpl-5f0c6a8e1b7d4c39a2f1e0d9c8b7a6f5",
        "object": "chat.completion.chunk",
        "created": 1732185600,
        "model": MODEL,
    }
    events = [
        _sse(
            {
                **head,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                ],
            }
        )
    ]
    for i, entry in enumerate(content):
        last = i == len(content) - 1
        choice = {
            "index": 0,
            "delta": {"content": entry["token"]},
            "logprobs": {"content": [entry]},
            "finish_reason": "length" if last else None,
        }
        if last:
            choice["stop_reason"] = None
        events.append(_sse({**head, "choices": [choice]}))
    events.append(_sse({**head, "choices": [], "usage": _usage(n_tokens)}))
    events.append(b"data: [DONE]\n\n")
    return events


def completions_stream(n_tokens: int = 200, k: int = 5, seed: int = 0) -> list[bytes]:
    """SSE events of a vLLM legacy completions stream, ending in [DONE]."""
    _, lp = completions_logprobs(n_tokens, k, seed)
    head = {
        "id": "cmpl-8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d",
        "object": "text_completion",
        "created": 1732185600,
        "model": MODEL,
    }
    events = []
    for i, tok in enumerate(lp["tokens"]):
        last = i == n_tokens - 1
        choice = {
            "index": 0,
            "text": tok,
            "logprobs": {
                "text_offset": [lp["text_offset"][i]],
                "token_logprobs": [lp["token_logprobs"][i]],
                "tokens": [tok],
                "top_logprobs": [lp["top_logprobs"][i]],
            },
            "finish_reason": "length" if last else None,
            "stop_reason": None,
        }
        events.append(_sse({**head, "choices": [choice]}))
    events.append(_sse({**head, "choices": [], "usage": _usage(n_tokens)}))
    events.append(b"data: [DONE]\n\n")
    return events


if __name__ == "__main__":
    for name, body in (("chat", chat_body()), ("completions", completions_body())):
        print(f"{name}: {len(body)} bytes")
    print(f"chat stream: {sum(map(len, chat_stream()))} bytes in {len(chat_stream())} events")
