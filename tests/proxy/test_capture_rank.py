"""The chosen token's rank: logprob equality where it settles it, token strings otherwise."""

from __future__ import annotations

import orjson
import pytest

from monitor.proxy.capture import capture_response


def chat_body(rows: list[tuple[str, float, list[tuple[str, float]]]]) -> bytes:
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


def completions_body(rows: list[tuple[str, float, list[tuple[str, float]]]]) -> bytes:
    lp = {
        "tokens": [r[0] for r in rows],
        "token_logprobs": [r[1] for r in rows],
        "top_logprobs": [dict(r[2]) for r in rows],
    }
    return orjson.dumps(
        {"choices": [{"index": 0, "text": "".join(r[0] for r in rows), "logprobs": lp}]}
    )


CASES: list[tuple[str, tuple[str, float, list[tuple[str, float]]], int]] = [
    ("top-1", ("a", -0.1, [("a", -0.1), ("b", -2.0), ("c", -3.0)]), 0),
    ("middle", ("b", -2.0, [("a", -0.1), ("b", -2.0), ("c", -3.0)]), 1),
    ("last of K, the row's lowest", ("c", -3.0, [("a", -0.1), ("b", -2.0), ("c", -3.0)]), 2),
    # Not listed, but ties exactly with the lowest alternative: strings decide.
    ("outside, tied with lowest", ("z", -3.0, [("a", -0.1), ("b", -2.0), ("c", -3.0)]), -1),
    # Two alternatives with the chosen logprob: strings decide between them.
    ("tie, second", ("b", -1.0, [("a", -1.0), ("b", -1.0), ("c", -3.0)]), 1),
    ("tie, first", ("a", -1.0, [("a", -1.0), ("b", -1.0), ("c", -3.0)]), 0),
    # vLLM: the sample appended as K+1-th when outside top-K (cut: -1)...
    ("appended", ("z", -4.0, [("a", -0.1), ("b", -2.0), ("c", -3.0), ("z", -4.0)]), -1),
    # ...or listed first (V1), before the top-K, sorted into place.
    ("sampled first", ("b", -2.0, [("b", -2.0), ("a", -0.1), ("c", -3.0)]), 1),
    (
        "sampled first, outside",
        ("z", -4.0, [("z", -4.0), ("a", -0.1), ("b", -2.0), ("c", -3.0)]),
        -1,
    ),
    # Appended and tied with the K-th: strings decide, the appended copy is cut.
    ("appended, tied", ("z", -3.0, [("a", -0.1), ("b", -2.0), ("c", -3.0), ("z", -3.0)]), -1),
    # A logprob that matches nothing listed (an upstream rounding differently).
    ("no float match", ("b", -2.0000002, [("a", -0.1), ("b", -2.0), ("c", -3.0)]), 1),
    # Sentinels: compared as strings.
    ("sentinel chosen", ("c", -9999.0, [("a", -0.1), ("b", -9999.0), ("c", -9999.0)]), 2),
    ("sentinel other", ("z", -9999.0, [("a", -0.1), ("b", -2.0), ("c", -9999.0)]), -1),
]


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
@pytest.mark.parametrize(("name", "row", "rank"), CASES, ids=[c[0] for c in CASES])
def test_rank(endpoint: str, name: str, row: tuple, rank: int) -> None:
    build = chat_body if endpoint == "chat" else completions_body
    got = capture_response(build([row, ("a", -0.1, [("a", -0.1), ("b", -2.0), ("c", -3.0)])]),
                           endpoint, 3)  # fmt: skip
    assert got.chosen_rank.tolist() == [rank, 0]


def test_rank_many_rows_mixed_lengths() -> None:
    rows = [CASES[i % len(CASES)][1] for i in range(3 * len(CASES))]
    got = capture_response(chat_body(rows), "chat", 3)
    want = [CASES[i % len(CASES)][2] for i in range(3 * len(CASES))]
    assert got.chosen_rank.tolist() == want
    assert got.top.shape == (len(rows), 3)


def test_duplicate_token_strings_follow_the_logprob() -> None:
    # Two alternatives decode to the same string (byte-fallback tokens): the
    # sampled one is the one whose logprob is the chosen logprob (the first
    # equal string would say 0). At the row's lowest value strings decide.
    row = ("\ufffd", -1.0, [("\ufffd", -0.5), ("\ufffd", -1.0), ("x", -2.0)])
    got = capture_response(chat_body([row]), "chat", 3)
    assert got.chosen_rank.tolist() == [1]
