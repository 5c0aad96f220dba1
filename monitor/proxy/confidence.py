"""The one confidence computed per request: raw (T = 1) and calibrated (the task's T).

Works on the numpy arrays capture already built, through the same
renormalised top-K maths the fitter uses (`monitor.calibration.aggregation`),
so what is served is exactly what recalibration optimises.
"""

from __future__ import annotations

import math

import numpy as np

from monitor.calibration.aggregation import answer_span_positions, token_logprobs
from monitor.config import ConfidenceMethod, TaskConfig
from monitor.proxy.capture import native_scanner
from monitor.proxy.captured import Captured

# The C loop's codes for the three aggregates `confidence` takes of log p_T:
# the mean of p, the minimum, and the geometric mean (also what `last_token`
# and `answer_span` take, over the window `_window` chose).
_MEAN_P, _MIN, _GEOMETRIC = 0, 1, 2
_AGGREGATE = {ConfidenceMethod.mean: _MEAN_P, ConfidenceMethod.min: _MIN}


def _aggregate(
    chosen: np.ndarray, top: np.ndarray, rank: np.ndarray, temperature: float, how: int
) -> float:
    """One aggregate of log p_T over the rows: the C loop when built (about 3x
    faster for one answer, where the numpy calls' fixed cost dominates), numpy
    otherwise."""
    native = native_scanner()
    if (  # capture's layout; anything else (a test's views, other dtypes): numpy
        native is not None
        and chosen.dtype == np.float32
        and top.dtype == np.float32
        and rank.dtype == np.int8
        and top.flags.c_contiguous
        and top.shape[1] > 0
    ):
        return float(native.window_confidence(chosen, top, rank, top.shape[1], temperature, how))
    lp = token_logprobs(chosen, top, rank, temperature)
    if how == _MEAN_P:
        return float(np.exp(lp).mean())
    return math.exp(float(lp.min() if how == _MIN else lp.mean()))


def answer_span(captured: Captured, config: TaskConfig) -> tuple[int, int] | None:
    if config.confidence != ConfidenceMethod.answer_span or not config.answer_pattern:
        return None
    if not captured.tokens:
        return None
    return answer_span_positions(captured.tokens, captured.text, config.answer_pattern)


def _window(n: int, method: ConfidenceMethod, span: tuple[int, int] | None) -> tuple[int, int]:
    if method == ConfidenceMethod.last_token:
        return max(n - 1, 0), n
    if method == ConfidenceMethod.answer_span and span is not None:
        start, end = max(0, min(span[0], n)), max(0, min(span[1], n))
        if end > start:
            return start, end
    return 0, n


def confidence(
    captured: Captured,
    method: ConfidenceMethod,
    temperature: float,
    span: tuple[int, int] | None = None,
) -> float | None:
    """The generation's confidence at `temperature`, or None without logprobs."""
    n = int(captured.chosen.shape[0])
    lo, hi = _window(n, method, span)
    if hi <= lo:
        return None
    how = _AGGREGATE.get(method, _GEOMETRIC)
    value = _aggregate(
        captured.chosen[lo:hi], captured.top[lo:hi], captured.chosen_rank[lo:hi], temperature, how
    )
    return value if math.isfinite(value) else None
