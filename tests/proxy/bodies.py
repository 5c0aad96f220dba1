"""Small OpenAI-shaped bodies built from (token, logprob, [(alternative, logprob)]) rows."""

from __future__ import annotations

import orjson

Row = tuple[str, float, list[tuple[str, float]]]


def chat_body(rows: list[Row]) -> bytes:
    content = [
        {
            "token": tok,
            "logprob": lp,
            "top_logprobs": [{"token": t, "logprob": v} for t, v in alts],
        }
        for tok, lp, alts in rows
    ]
    return orjson.dumps(
        {
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"content": "".join(r[0] for r in rows)},
                    "logprobs": {"content": content},
                    "finish_reason": "stop",
                }
            ],
        }
    )


def completions_body(rows: list[Row]) -> bytes:
    lp = {
        "tokens": [r[0] for r in rows],
        "token_logprobs": [r[1] for r in rows],
        "top_logprobs": [dict(r[2]) for r in rows],
    }
    return orjson.dumps(
        {"choices": [{"index": 0, "text": "".join(r[0] for r in rows), "logprobs": lp}]}
    )
