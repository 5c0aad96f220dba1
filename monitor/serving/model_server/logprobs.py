"""OpenAI logprobs objects built from generated tokens.

Two wire formats exist and clients (including Thermostat's own proxy) parse both:
chat's ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`` and
the legacy completions ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``
whose ``top_logprobs`` is a list of ``{token: logprob}`` dicts.
"""

from __future__ import annotations

from typing import Any

from .generation import TokenInfo


def _entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(tokens: list[TokenInfo], top_logprobs: int) -> dict[str, Any]:
    """Chat format: exactly ``top_logprobs`` alternatives per position, best first."""
    content = []
    for info in tokens:
        item = _entry(info.token, info.logprob)
        item["top_logprobs"] = [_entry(tok, lp) for tok, lp in info.top[:top_logprobs]]
        content.append(item)
    return {"content": content, "refusal": None}


def legacy_logprobs(tokens: list[TokenInfo]) -> dict[str, Any]:
    """Legacy completions format.

    Like vLLM, each position's dict holds the top-k alternatives plus the sampled
    token when it is not among them (so up to k+1 entries). Offsets are positions
    in the completion text, continuing across stream chunks.
    """
    tops: list[dict[str, float]] = []
    for info in tokens:
        top = dict(info.top)
        top.setdefault(info.token, info.logprob)
        tops.append(top)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": tops,
        "text_offset": [t.offset for t in tokens],
    }
