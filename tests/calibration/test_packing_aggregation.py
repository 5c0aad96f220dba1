"""Packed storage round trips; top-K confidence against a per-token loop reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.calibration import (
    TokenBatch,
    answer_span_positions,
    from_openai_logprobs,
    generation_confidence,
    pack_token_logprobs,
    sequence_confidences,
    unpack_token_logprobs,
)
from monitor.calibration.packing import HEADER_SIZE
from monitor.calibration.synthetic import synthetic_token_batch


def test_round_trip_and_size() -> None:
    rng = np.random.default_rng(0)
    n, k = 200, 5
    top = -np.sort(rng.exponential(2.0, size=(n, k)), axis=1)[:, ::-1] * -1
    top = -np.abs(top)
    top[5, 3:] = -9999.0  # vLLM sentinels
    chosen = top[:, 0].astype(np.float32)
    rank = np.zeros(n, dtype=np.int8)
    rank[7] = -1
    blob = pack_token_logprobs(chosen, top, rank)
    assert (len(blob) - HEADER_SIZE) / n <= 16
    assert HEADER_SIZE <= 16
    c2, t2, r2 = unpack_token_logprobs(blob)
    np.testing.assert_array_equal(c2, chosen)
    np.testing.assert_array_equal(r2, rank)
    assert np.isneginf(t2[5, 3:]).all()
    ok = np.isfinite(t2)
    np.testing.assert_allclose(t2[ok], top[ok], rtol=1e-3)
    empty = unpack_token_logprobs(pack_token_logprobs([], np.zeros((0, 5)), []))
    assert empty[1].shape == (0, 5)


def test_unpack_rejects_garbage() -> None:
    blob = pack_token_logprobs([-0.1], [[-0.1, -2.0]], [0])
    with pytest.raises(ValueError, match="bytes"):
        unpack_token_logprobs(blob[:-1])
    with pytest.raises(ValueError, match="magic"):
        unpack_token_logprobs(b"XX" + blob[2:])
    with pytest.raises(ValueError, match="chosen_rank"):
        pack_token_logprobs([-0.1], [[-0.1, -2.0]], [2])


def test_from_openai_logprobs() -> None:
    content = [
        {
            "token": " Paris",
            "logprob": -0.2,
            "top_logprobs": [
                {"token": " Lyon", "logprob": -2.5},
                {"token": " Paris", "logprob": -0.2},
                {"token": " Nice", "logprob": -9999.0},
            ],
        },
        {  # sampled token outside the top-2, appended by vLLM as a 3rd entry
            "token": "!",
            "logprob": -4.0,
            "top_logprobs": [
                {"token": ".", "logprob": -0.1},
                {"token": ",", "logprob": -3.0},
                {"token": "!", "logprob": -4.0},
            ],
        },
        {"token": "x", "logprob": -0.5, "top_logprobs": []},
    ]
    chosen, top, rank = from_openai_logprobs(content, k=2)
    np.testing.assert_allclose(chosen, [-0.2, -4.0, -0.5])
    np.testing.assert_allclose(top[0], [-0.2, -2.5])
    np.testing.assert_allclose(top[1], [-0.1, -3.0])
    assert np.isneginf(top[2]).all()
    assert rank.tolist() == [0, -1, -1]


def loop_confidence(chosen, top, rank, t, agg, span=None) -> float:
    """Straightforward per-token reference of the renormalised top-K confidence."""
    lps = []
    for i in range(len(chosen)):
        members = [float(v) for j, v in enumerate(top[i]) if j != rank[i] and math.isfinite(v)]
        c = float(chosen[i])
        members.append(c)
        z = sum(math.exp(v / t) for v in members)
        lps.append(c / t - math.log(z))
    if agg == "last_token":
        lps = lps[-1:]
    if agg == "answer_span" and span is not None:
        lps = lps[span[0] : span[1]]
    if agg == "mean":
        return sum(math.exp(v) for v in lps) / len(lps)
    if agg == "min":
        return math.exp(min(lps))
    return math.exp(sum(lps) / len(lps))


AGGS = ["geometric_mean", "mean", "min", "last_token", "answer_span"]
generation = st.integers(1, 12).flatmap(
    lambda n: st.tuples(
        st.lists(
            st.lists(st.one_of(st.floats(-20.0, 0.0), st.just(-math.inf)), min_size=3, max_size=3),
            min_size=n,
            max_size=n,
        ),
        st.lists(st.integers(-1, 2), min_size=n, max_size=n),
        st.lists(st.floats(-25.0, 0.0), min_size=n, max_size=n),
    )
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(generation, min_size=1, max_size=5),
    st.floats(0.05, 20.0),
    st.sampled_from(AGGS),
    st.integers(0, 3),
)
def test_batch_and_single_paths_match_reference(gens, t, agg, span_start) -> None:
    arrays, spans = [], []
    for top_l, rank_l, chosen_l in gens:
        top = np.array(top_l, dtype=np.float16).astype(np.float32)
        rank = np.array(rank_l)
        chosen = np.array(chosen_l, dtype=np.float32)
        rank = np.where(np.isfinite(top[np.arange(len(rank)), np.maximum(rank, 0)]), rank, -1)
        inside = rank >= 0
        chosen[inside] = top[np.arange(len(rank)), rank][inside]
        arrays.append((chosen, top.astype(np.float16), rank.astype(np.int8)))
        spans.append((span_start, span_start + 2) if span_start < len(chosen) else None)
    batch = TokenBatch.from_generations(arrays, spans)
    got = sequence_confidences(batch, t, agg)
    for g, (chosen, top, rank) in enumerate(arrays):
        top32 = top.astype(np.float32)
        sp = spans[g]
        if sp is not None:
            sp = (sp[0], min(sp[1], len(chosen)))
        want = loop_confidence(chosen, top32, rank, t, agg, sp)
        assert got[g] == pytest.approx(want, rel=1e-9, abs=1e-300)
        single = generation_confidence(chosen.tolist(), top32.tolist(), rank.tolist(), t, agg, sp)
        assert single == pytest.approx(want, rel=1e-9, abs=1e-300)


def test_subset_and_blobs() -> None:
    batch, _ = synthetic_token_batch(30, 7, seed=4)
    blobs = [
        pack_token_logprobs(batch.chosen[a:b], batch.top[a:b], batch.chosen_rank[a:b])
        for a, b in zip(batch.offsets[:-1], batch.offsets[1:], strict=True)
    ]
    again = TokenBatch.from_blobs(blobs)
    np.testing.assert_array_equal(again.chosen, batch.chosen)
    np.testing.assert_array_equal(again.top, batch.top)
    sub = batch.subset([5, 2, 2])
    full = sequence_confidences(batch)
    np.testing.assert_allclose(sequence_confidences(sub), full[[5, 2, 2]])


def test_answer_span_positions() -> None:
    tokens = ["The", " answer", " is", " \\box", "ed{", "4", "2", "}", "."]
    text = "".join(tokens)
    assert answer_span_positions(tokens, text, r"\\boxed\{(.+?)\}") == (5, 7)
    assert answer_span_positions(tokens, text, r"answer") == (1, 2)
    assert answer_span_positions(tokens, text, r"nothing") is None
    two = ["A", "=", "1", ";", "A", "=", "2"]
    assert answer_span_positions(two, None, r"A=(\d)") == (6, 7)  # last match wins
    # partial token overlap includes the whole token
    assert answer_span_positions(["ab", "cd"], "abcd", "bc") == (0, 2)


def test_single_path_edges() -> None:
    assert generation_confidence([], [], []) is None
    assert generation_confidence([-math.inf], [[-0.1]], [-1]) == 0.0
    c = generation_confidence([-0.1], [[-0.1, -9999.0]], [0], temperature=3.0)
    assert c == pytest.approx(1.0)  # only member after dropping the sentinel
    with pytest.raises(ValueError, match="aggregator"):
        generation_confidence([-0.1], [[-0.1]], [0], aggregator="median")
