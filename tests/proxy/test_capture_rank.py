"""The chosen token's rank: logprob equality where it settles it, token strings otherwise."""

from __future__ import annotations

import random

import pytest

from monitor.proxy.capture import capture_response
from tests.proxy.bodies import Row, chat_body, completions_body

CASES: list[tuple[str, Row, int]] = [
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


def reference_row(row: Row, k: int) -> tuple[list[float], int]:
    """One row the obvious way: sentinels to -inf, stable sort, cut to k, rank by string."""
    tok, _, alts = row
    values = [float("-inf") if v <= -9999.0 else v for _, v in alts]
    order = sorted(range(len(alts)), key=lambda j: -values[j])[:k]
    top = [values[j] for j in order] + [float("-inf")] * (k - len(order))
    rank = next((p for p, j in enumerate(order) if alts[j][0] == tok), -1)
    return top, rank


def random_row(rng: random.Random, k: int) -> Row:
    """A top-k row as upstreams send it: K-1 or K distinct alternatives, ties and
    sentinels among them, maybe unsorted; the chosen token listed with its own
    logprob, or outside the list at or below its lowest, maybe appended as K+1-th."""
    values = [-9999.0, -0.5, -1.0, -2.0, round(-5 * rng.random(), 3)]
    alts = [(name, rng.choice(values)) for name in rng.sample("abcdefghij", rng.choice([k - 1, k]))]
    if rng.random() < 0.5:
        alts.sort(key=lambda a: -a[1])
    if alts and rng.random() < 0.7:
        tok, lp = rng.choice(alts)
        return tok, lp, alts
    lowest = min((v for _, v in alts), default=-1.0)
    lp = rng.choice([lowest, lowest - 1.5]) if lowest > -9999.0 else -9999.0
    if rng.random() < 0.5:
        alts = [*alts, ("z", lp)]
    return "z", lp, alts


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_random_rows_match_a_per_row_reference(endpoint: str) -> None:
    # Exercises the vectorised path on ragged, unsorted, tied and sentinel rows;
    # distinct strings per row (the one case where logprob and string may
    # disagree is covered above).
    rng = random.Random(7)
    build = chat_body if endpoint == "chat" else completions_body
    for _ in range(300):
        k = rng.choice([1, 2, 3, 5])
        rows = [random_row(rng, k) for _ in range(rng.randint(1, 30))]
        got = capture_response(build(rows), endpoint, k)
        want = [reference_row(r, k) for r in rows]
        assert got.top.tolist() == [pytest.approx(t) for t, _ in want]
        assert got.chosen_rank.tolist() == [r for _, r in want]
