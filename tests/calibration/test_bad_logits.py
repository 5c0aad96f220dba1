"""NaN and +inf logits are refused; -inf (masked) and vLLM's -9999.0 sentinels keep working.

Before, `fit_temperature([[1, 2], [3, inf]], [0, 1])` returned 19.999 with a
RuntimeWarning: shifting a row by its max turns +inf into NaN, and NaN was
then padded like -inf. The sequence path fitted NaN/+inf logprobs silently.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.calibration import (
    fit_sequence_temperature,
    fit_temperature,
    fit_vector_scaling,
    from_openai_logprobs,
    multiclass_nll,
    validate_multiclass,
    validate_sequence_temperature,
)
from monitor.calibration.packing import TokenBatch
from monitor.calibration.synthetic import synthetic_logits, synthetic_token_batch
from monitor.calibration.validation import holdout_split

INF, NAN = math.inf, math.nan
pytestmark = pytest.mark.filterwarnings("error")  # no RuntimeWarning on the way to an answer


@pytest.mark.parametrize(
    ("logits", "labels", "message"),
    [
        ([[1, 2], [3, INF]], [0, 1], r"logits contain \+inf \(row 1\)"),
        ([[1, 2], [3, INF]], [0, 0], r"logits contain \+inf \(row 1\)"),
        ([[1, NAN], [3, 4]], [0, 1], r"logits contain NaN \(row 0\)"),
        ([[1, 2], [-INF, -INF]], [0, 1], r"logits row 1 has no finite value"),
        ([[1, 2], [3, -INF]], [0, 1], r"a label points at a -inf logit"),
    ],
)
def test_multiclass_refuses_nan_posinf_and_rows_without_a_finite_logit(
    logits: list[list[float]], labels: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit_temperature(logits, labels)
    with pytest.raises(ValueError, match=message):
        multiclass_nll(logits, labels)


def test_every_multiclass_entry_point_refuses_posinf() -> None:
    z, y = synthetic_logits(200, 3, 1.5, seed=1)
    z[17, 2] = INF
    for call in (fit_vector_scaling, validate_multiclass):
        with pytest.raises(ValueError, match=r"\+inf \(row 17\)"):
            call(z, y)


def test_masked_logits_are_a_softmax_over_the_finite_ones() -> None:
    """-inf pads ragged choice sets: the fit equals the fit without that class."""
    z, y = synthetic_logits(600, 4, 2.0, seed=3)
    y = np.minimum(y, 2)  # no label on the masked class
    three = z[:, :3]
    masked = np.concatenate([three, np.full((600, 1), -INF)], axis=1)
    assert fit_temperature(masked, y) == pytest.approx(fit_temperature(three, y), rel=1e-9)
    for t in (0.3, 1.0, 7.0):
        assert multiclass_nll(masked, y, t) == pytest.approx(multiclass_nll(three, y, t), rel=1e-12)
    # mixed: only some rows masked, still finite and the minimum
    z[::2, 3] = -INF
    y = np.where(np.arange(600) % 2 == 0, np.minimum(y, 2), y)
    t = fit_temperature(z, y)
    assert math.isfinite(t) and 0.05 < t < 20
    best = multiclass_nll(z, y, t)
    assert best <= min(multiclass_nll(z, y, t * 1.01), multiclass_nll(z, y, t / 1.01))


def _with(batch: TokenBatch, array: str, at: tuple[int, ...], value: float) -> TokenBatch:
    chosen, top = batch.chosen.copy(), batch.top.copy()
    (chosen if array == "chosen" else top)[at] = value
    return TokenBatch(
        chosen, top, batch.chosen_rank, batch.offsets, batch.span_start, batch.span_end
    )


@pytest.mark.parametrize("top_dtype", [np.float16, np.float32])
@pytest.mark.parametrize("value", [NAN, INF], ids=["nan", "posinf"])
@pytest.mark.parametrize("array", ["chosen", "top"])
def test_sequence_path_refuses_nan_and_posinf(array: str, value: float, top_dtype: type) -> None:
    batch, y = synthetic_token_batch(500, 6, 5, 2.0, seed=4)
    batch.top = batch.top.astype(top_dtype)
    hold = holdout_split(500)[1]
    g = int(hold[3])  # a held-out generation: the fit alone would never see it
    pos = int(batch.offsets[g]) + 2
    bad = _with(batch, array, (pos,) if array == "chosen" else (pos, 4), value)
    name = "chosen logprobs" if array == "chosen" else "top-K logprobs"
    what = "NaN" if math.isnan(value) else r"\+inf"
    message = rf"{name} contain {what} \(generation {g}, token 2\)"
    with pytest.raises(ValueError, match=message):
        validate_sequence_temperature(bad, y)
    with pytest.raises(ValueError, match=message):
        fit_sequence_temperature(bad, y)


def test_sequence_path_keeps_minus_inf_and_vllm_sentinels() -> None:
    batch, y = synthetic_token_batch(800, 6, 5, 2.0, seed=6)
    base = fit_sequence_temperature(batch, y).temperature
    # A missing alternative as -inf or as vLLM's raw -9999.0 is the same thing.
    cols = (np.arange(batch.n_positions), np.where(batch.chosen_rank == 4, 3, 4))
    as_inf = _with(batch, "top", cols, -INF)
    as_sentinel = _with(batch, "top", cols, -9999.0)
    t_inf = fit_sequence_temperature(as_inf, y).temperature
    assert fit_sequence_temperature(as_sentinel, y).temperature == pytest.approx(t_inf, rel=1e-9)
    assert abs(t_inf / base - 1) < 0.05
    # a chosen token of probability 0 (-inf, or vLLM's clamp to -9999.0) is a legitimate input
    for zero in (-INF, -9999.0):
        t = fit_sequence_temperature(_with(batch, "chosen", (5,), zero), y).temperature
        assert math.isfinite(t) and abs(t / base - 1) < 0.05
    assert validate_sequence_temperature(as_sentinel, y).temperature == pytest.approx(
        validate_sequence_temperature(as_inf, y).temperature, rel=1e-9
    )


def test_openai_format_with_sentinels_fits() -> None:
    """What the proxy stores from vLLM: -9999.0 alternatives and a clamped chosen logprob."""
    rng = np.random.default_rng(0)
    gens, labels = [], []
    for i in range(300):
        content = []
        for _ in range(4):
            lps = np.sort(np.log(rng.dirichlet(np.full(5, 0.3))))[::-1]
            alts = [{"token": f"t{j}", "logprob": float(lp)} for j, lp in enumerate(lps)]
            alts[-1]["logprob"] = -9999.0  # not computed
            content.append({"token": "t0", "logprob": alts[0]["logprob"], "top_logprobs": alts})
        if i % 50 == 0:
            content[1]["logprob"] = -9999.0  # vLLM's clamp of -inf
        gens.append(from_openai_logprobs(content, 5))
        labels.append(float(rng.random() < 0.5))
    batch = TokenBatch.from_generations(gens)
    assert np.isneginf(batch.top).any() and np.isneginf(batch.chosen).any()
    res = validate_sequence_temperature(batch, labels)
    assert math.isfinite(res.temperature) and math.isfinite(res.after["nll"])


def test_usable_generations_are_those_without_nan_or_plus_inf() -> None:
    """What the recalibration job keeps: -inf and sentinels are fine, empty ones too."""
    k = 3
    ok = (
        np.array([-0.1, -0.2], np.float32),
        np.full((2, k), -1.0, np.float16),
        np.zeros(2, np.int8),
    )
    empty = (np.zeros(0, np.float32), np.zeros((0, k), np.float16), np.zeros(0, np.int8))
    nan_chosen = (np.array([-0.1, NAN], np.float32), ok[1], ok[2])
    inf_top = (ok[0], np.array([[-1, -2, INF], [-1, -2, -3]], np.float16), ok[2])
    minus_inf = (
        np.array([-INF, -9999.0], np.float32),
        np.array([[-1, -INF, -INF]] * 2, np.float16),
        ok[2],
    )
    batch = TokenBatch.from_generations([ok, nan_chosen, empty, inf_top, minus_inf, ok])
    assert batch.usable_generations().tolist() == [0, 2, 4, 5]
    kept = batch.subset(batch.usable_generations())
    kept.check_values()
    with pytest.raises(ValueError, match=r"chosen logprobs contain NaN \(generation 1, token 1\)"):
        batch.check_values()
