"""The proxy's per-response confidence: the C loop against the fitter's numpy maths."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.calibration.aggregation import token_logprobs
from monitor.config import ConfidenceMethod
from monitor.proxy import capture as cap
from monitor.proxy import confidence as conf
from monitor.proxy.capture import capture_response
from tests.support.fake_upstream import random_response, render_json

pytestmark = pytest.mark.skipif(cap._native is None, reason="the C scanner is not built")


def random_arrays(
    rng: np.random.Generator, n: int, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted top-K rows with -inf gaps; the chosen token in the list or outside it."""
    top = np.sort(rng.normal(-3, 2, size=(n, k)).astype(np.float32), axis=1)[:, ::-1]
    top[rng.random((n, k)) < 0.1] = -np.inf
    top = np.ascontiguousarray(-np.sort(-top, axis=1))
    rank = rng.integers(-1, k, size=n).astype(np.int8)
    chosen = np.where(
        rank >= 0, top[np.arange(n), np.maximum(rank, 0)], top[:, -1] - rng.random(n) - 0.01
    ).astype(np.float32)
    chosen[(rank >= 0) & ~np.isfinite(chosen)] = np.float32(-20.0)  # a chosen token has a value
    return chosen, top, rank


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 300),
    k=st.integers(1, 8),
    temperature=st.sampled_from([1.0, 0.25, 0.7, 1.3, 4.0, 1e-3, 50.0]),
)
def test_native_token_logprobs_equal_the_fitters(
    seed: int, n: int, k: int, temperature: float
) -> None:
    chosen, top, rank = random_arrays(np.random.default_rng(seed), n, k)
    got = conf._token_logprobs(chosen, top, rank, temperature)
    with np.errstate(invalid="ignore", divide="ignore"):  # rows with every entry -inf
        want = token_logprobs(chosen, top, rank, temperature)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    assert np.array_equal(np.isfinite(got), np.isfinite(want))


def test_every_row_minus_inf_gives_what_numpy_gives() -> None:
    chosen = np.array([-np.inf, -1.0], np.float32)
    top = np.full((2, 3), -np.inf, np.float32)
    rank = np.array([-1, -1], np.int8)
    got = conf._token_logprobs(chosen, top, rank, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        want = token_logprobs(chosen, top, rank, 1.0)
    np.testing.assert_array_equal(got, want)


def test_views_and_other_dtypes_fall_back_to_numpy() -> None:
    chosen, top, rank = random_arrays(np.random.default_rng(3), 50, 5)
    want = token_logprobs(chosen, top, rank, 0.8)
    strided = np.asfortranarray(top)  # not C-contiguous: the numpy path
    np.testing.assert_allclose(conf._token_logprobs(chosen, strided, rank, 0.8), want, rtol=1e-12)
    wide = top.astype(np.float64)  # another dtype: the numpy path
    np.testing.assert_allclose(conf._token_logprobs(chosen, wide, rank, 0.8), want, rtol=1e-12)


def test_bad_shapes_are_an_error_not_a_read_past_the_end() -> None:
    chosen, top, rank = random_arrays(np.random.default_rng(4), 10, 5)
    with pytest.raises(ValueError, match="shapes"):
        cap._native.token_logprobs(chosen, top[:5], rank, 5, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        cap._native.token_logprobs(chosen, top, rank, 5, 0.0)


@pytest.mark.parametrize("method", list(ConfidenceMethod))
@pytest.mark.parametrize("temperature", [1.0, 0.6, 2.0])
def test_served_confidence_is_the_same_with_and_without_the_c_loop(
    method: ConfidenceMethod, temperature: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(7)
    compared = 0
    for _ in range(12):
        body = render_json(random_response(rng, "chat", 5), rng)
        captured = capture_response(body, "chat", 5)
        span = (3, 17) if method == ConfidenceMethod.answer_span else None
        fast = conf.confidence(captured, method, temperature, span)
        with monkeypatch.context() as m:
            m.setattr(cap, "_native", None)
            slow = conf.confidence(captured, method, temperature, span)
        assert (fast is None) == (slow is None)
        if fast is not None:
            assert fast == pytest.approx(slow, rel=1e-12)
            compared += 1
    assert compared >= 6
