"""The proxy's per-response confidence: the C loop against the fitter's numpy maths."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.calibration.aggregation import token_logprobs
from monitor.config import ConfidenceMethod, TaskConfig
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


def numpy_aggregate(
    chosen: np.ndarray, top: np.ndarray, rank: np.ndarray, temperature: float, how: int
) -> float:
    """The aggregate as the fitter's numpy maths computes it."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # rows all -inf
        lp = token_logprobs(chosen, top, rank, temperature)
        if how == conf._MEAN_P:
            return float(np.exp(lp).mean())
        return math.exp(float(lp.min() if how == conf._MIN else lp.mean()))


def same(got: float, want: float) -> None:
    assert math.isnan(got) == math.isnan(want)
    if not math.isnan(want):
        assert got == pytest.approx(want, rel=1e-12, abs=1e-300)


HOWS = [conf._MEAN_P, conf._MIN, conf._GEOMETRIC]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 300),
    k=st.integers(1, 8),
    temperature=st.sampled_from([1.0, 0.25, 0.7, 1.3, 4.0, 1e-3, 50.0]),
    how=st.sampled_from(HOWS),
)
def test_native_aggregates_equal_the_fitters(
    seed: int, n: int, k: int, temperature: float, how: int
) -> None:
    chosen, top, rank = random_arrays(np.random.default_rng(seed), n, k)
    with np.errstate(over="ignore"):  # T = 1e-3 can overflow exp to inf, as numpy does
        got = conf._aggregate(chosen, top, rank, temperature, how)
    same(got, numpy_aggregate(chosen, top, rank, temperature, how))


@pytest.mark.parametrize("how", HOWS)
def test_a_row_of_only_minus_inf_gives_nan_as_numpy_does(how: int) -> None:
    chosen = np.array([-1.0, -np.inf, -2.0], np.float32)
    top = np.array([[-1.0, -3.0], [-np.inf, -np.inf], [-2.0, -2.5]], np.float32)
    rank = np.array([0, -1, 0], np.int8)
    want = numpy_aggregate(chosen, top, rank, 1.0, how)
    assert math.isnan(want)
    same(conf._aggregate(chosen, top, rank, 1.0, how), want)


@pytest.mark.parametrize("how", HOWS)
def test_views_and_other_dtypes_fall_back_to_numpy(how: int) -> None:
    chosen, top, rank = random_arrays(np.random.default_rng(3), 50, 5)
    want = numpy_aggregate(chosen, top, rank, 0.8, how)
    strided = np.asfortranarray(top)  # not C-contiguous: the numpy path
    same(conf._aggregate(chosen, strided, rank, 0.8, how), want)
    wide = top.astype(np.float64)  # another dtype: the numpy path
    same(conf._aggregate(chosen, wide, rank, 0.8, how), want)


def test_bad_arguments_are_an_error_not_a_read_past_the_end() -> None:
    chosen, top, rank = random_arrays(np.random.default_rng(4), 10, 5)
    with pytest.raises(ValueError, match="shapes"):
        cap._native.window_confidence(chosen, top[:5], rank, 5, 1.0, 0)
    with pytest.raises(ValueError, match="temperature"):
        cap._native.window_confidence(chosen, top, rank, 5, 0.0, 0)
    with pytest.raises(ValueError, match="how"):
        cap._native.window_confidence(chosen, top, rank, 5, 1.0, 3)


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


def test_answer_span_reads_the_scanners_lazy_tokens_as_the_python_paths_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """answer_span confidence is what reads the tokens' strings on the request path: the
    C scanner's LazyTokens give the span the Python path's list gives."""
    config = TaskConfig(confidence=ConfidenceMethod.answer_span, answer_pattern=r"(\w+)\W*$")
    rng = random.Random(11)
    found = 0
    for _ in range(20):
        body = render_json(random_response(rng, "chat", 5), rng)
        lazy = capture_response(body, "chat", 5)
        with monkeypatch.context() as m:
            m.setattr(cap, "_native", None)
            eager = capture_response(body, "chat", 5)
        assert type(eager.tokens) is list
        if isinstance(lazy.tokens, cap.LazyTokens):
            assert lazy.tokens._strings is None
            span = conf.answer_span(lazy, config)
            assert span == conf.answer_span(eager, config)
            found += span is not None
    assert found >= 5
