"""Fitting recovers a planted temperature; engines agree; gates and fallbacks behave."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from monitor.calibration import (
    expected_calibration_error,
    fit_sequence_temperature,
    fit_temperature,
    fit_temperature_detailed,
    fit_vector_scaling,
    multiclass_nll,
    scaled_probabilities,
    sequence_confidences,
    validate_multiclass,
    validate_sequence_temperature,
)
from monitor.calibration.fitting import minimise_theta
from monitor.calibration.synthetic import synthetic_logits, synthetic_token_batch
from monitor.calibration.validation import gate


@pytest.mark.parametrize("t_true", [0.5, 1.5, 2.5])
def test_fit_temperature_recovers_truth(t_true: float) -> None:
    z, y = synthetic_logits(5000, 10, t_true, seed=11)
    t = fit_temperature(z, y)
    assert abs(t / t_true - 1) < 0.05
    p = scaled_probabilities(z, t)
    ece = expected_calibration_error(p.max(1), p.argmax(1) == y)
    assert ece < 0.03
    # it is the minimum: nearby temperatures are no better
    best = multiclass_nll(z, y, t)
    assert best <= multiclass_nll(z, y, t * 1.01) and best <= multiclass_nll(z, y, t / 1.01)


def test_fit_temperature_accepts_torch_and_reports() -> None:
    z, y = synthetic_logits(500, 4, 2.0, seed=1)
    res = fit_temperature_detailed(torch.tensor(z), torch.tensor(y), device="auto")
    assert res.converged and res.nll_after < res.nll_before
    assert res.temperature == pytest.approx(fit_temperature(z, y), rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_fit_temperature_accepts_bfloat16_and_float16_logits(dtype: torch.dtype) -> None:
    z, y = synthetic_logits(500, 4, 2.0, seed=1)
    narrow = torch.tensor(z).to(dtype)
    t = fit_temperature(narrow, torch.tensor(y))
    # widening to float32 is exact, so the fit sees the very same numbers
    assert t == pytest.approx(fit_temperature(narrow.float().numpy(), y), rel=1e-12)
    assert abs(t / 2.0 - 1) < 0.2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fit_temperature_accepts_cuda_bfloat16_logits() -> None:
    z, y = synthetic_logits(500, 4, 2.0, seed=1)
    narrow = torch.tensor(z, device="cuda").to(torch.bfloat16)
    t = fit_temperature(narrow, torch.tensor(y, device="cuda"))
    assert t == pytest.approx(fit_temperature(narrow.float().cpu().numpy(), y), rel=1e-12)


def test_fit_temperature_input_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        fit_temperature(np.zeros(3), [0, 1, 2])
    with pytest.raises(ValueError, match="length mismatch"):
        fit_temperature(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="labels must be integers"):
        fit_temperature(np.zeros((2, 2)), [0, 2])
    with pytest.raises(ValueError, match="NaN"):
        fit_temperature(np.full((2, 2), np.nan), [0, 1])


def test_clamped_at_bounds() -> None:
    z, _ = synthetic_logits(300, 3, 1.0, seed=2)
    y = z.argmax(1)  # always right: the sharper the better -> lower bound
    assert fit_temperature(z, y) == pytest.approx(0.05)
    y_bad = z.argmin(1)  # always the least likely class: flatten as far as allowed
    assert fit_temperature(z, y_bad) == pytest.approx(20.0)


def test_minimiser_finds_minimum_of_nonconvex_function() -> None:
    def fgh(x: float) -> tuple[float, float, float]:  # minima at x = +-1, max at 0
        return (x * x - 1) ** 2, 4 * x * (x * x - 1), 12 * x * x - 4

    x, _, _, ok = minimise_theta(fgh, 0.1, lo=-2.0, hi=3.0)
    assert ok and abs(abs(x) - 1) < 1e-6


@pytest.mark.parametrize("t_true", [0.5, 1.5, 2.5])
def test_sequence_fit_recovers_truth(t_true: float) -> None:
    # Binary labels on sequence confidences carry less information about T than
    # multiclass labels: at 5,000 generations the estimate's spread across seeds
    # is 2.5-5% (measured), so 5% recovery is checked at 50,000 (spread ~1.5%).
    batch, y = synthetic_token_batch(50_000, 8, 5, t_true, seed=21)
    res = fit_sequence_temperature(batch, y)
    assert res.converged
    assert abs(res.temperature / t_true - 1) < 0.05
    conf = sequence_confidences(batch, res.temperature)
    assert expected_calibration_error(conf, y) < 0.03
    assert res.nll_after <= res.nll_before


@pytest.mark.parametrize("agg", ["geometric_mean", "mean", "min", "last_token", "answer_span"])
def test_sequence_fit_is_the_minimum_and_engines_agree(agg: str) -> None:
    batch, y = synthetic_token_batch(1500, 12, 5, 1.7, aggregator=agg, seed=5)
    res = fit_sequence_temperature(batch, y, agg)
    via_torch = fit_sequence_temperature(batch, y, agg, engine="torch")  # CUDA's code path
    assert via_torch.temperature == pytest.approx(res.temperature, rel=1e-4)

    def loss(t: float) -> float:
        c = np.clip(sequence_confidences(batch, t, agg), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(c) + (1 - y) * np.log1p(-c)))

    assert loss(res.temperature) == pytest.approx(res.nll_after, abs=1e-6)
    assert loss(res.temperature) <= min(loss(res.temperature * 1.02), loss(res.temperature / 1.02))
    assert abs(res.temperature / 1.7 - 1) < 0.15  # noisier aggregators at this size


def test_sequence_fit_warm_start_path_agrees() -> None:
    batch, y = synthetic_token_batch(3000, 10, 5, 1.3, seed=8)
    cold = fit_sequence_temperature(batch, y, warm_start_generations=10**6)
    warm = fit_sequence_temperature(batch, y, warm_start_generations=500)
    assert warm.temperature == pytest.approx(cold.temperature, rel=1e-5)


def test_sequence_fit_soft_labels_and_errors() -> None:
    batch, _ = synthetic_token_batch(800, 8, 5, 1.0, seed=9)
    soft = sequence_confidences(batch, 2.0)  # expected labels at T* = 2
    res = fit_sequence_temperature(batch, soft)
    assert res.temperature == pytest.approx(2.0, rel=1e-3)
    with pytest.raises(ValueError, match="length mismatch"):
        fit_sequence_temperature(batch, soft[:-1])
    with pytest.raises(ValueError, match="outside"):
        fit_sequence_temperature(batch, soft + 1)
    with pytest.raises(ValueError, match="aggregator"):
        fit_sequence_temperature(batch, soft, "median")


def test_vector_scaling_and_fallback() -> None:
    z, y = synthetic_logits(4000, 4, 1.5, seed=3)
    shifted = z + np.array([0.0, 1.0, 0.0, -1.0])  # per-class miscalibration
    vec = fit_vector_scaling(shifted, y)
    temp_only = fit_temperature_detailed(shifted, y)
    assert vec.method == "vector"
    assert vec.nll_after < temp_only.nll_after - 0.01
    assert vec.bias[1] < -0.4 and vec.bias[3] > 0.4
    small = fit_vector_scaling(shifted[:120], y[:120])
    assert small.method == "temperature" and "< 50" in small.reason
    assert small.bias == [0.0] * 4


def test_validation_gate_sequence() -> None:
    batch, y = synthetic_token_batch(20_000, 10, 5, 2.5, seed=13)
    res = validate_sequence_temperature(batch, y)
    assert res.accepted, res.reason
    assert res.n_train + res.n_holdout == 20_000 and res.n_holdout == 4000
    assert res.after["ece"] < res.before["ece"] and res.after["nll"] < res.before["nll"]
    assert {"ece", "mce", "brier", "nll", "n", "accuracy", "mean_confidence"} <= set(res.after)
    # Re-fitting the same data from its own fit lands on the same T (to ~1e-8):
    # held-out numbers move by float noise only, which must not decide anything.
    again = validate_sequence_temperature(batch, y, current_temperature=res.temperature)
    assert again.temperature == pytest.approx(res.temperature, rel=1e-6)
    assert not again.accepted and "no meaningful change in NLL and ECE" in again.reason
    assert validate_sequence_temperature(batch, y, seed=1).n_holdout == 4000


def test_validation_rejects_when_worse() -> None:
    """Serving the held-out optimum: any T fit on the training split is worse there."""
    batch, y = synthetic_token_batch(1000, 6, 5, 2.0, seed=14)
    hold = _hold(1000)
    best = fit_sequence_temperature(batch.subset(hold), y[hold]).temperature
    res = validate_sequence_temperature(batch, y, current_temperature=best)
    assert abs(res.temperature / best - 1) > 0.01  # a real candidate, not a no-op
    assert res.after["nll"] > res.before["nll"] * (1 + 1e-5)
    assert not res.accepted
    assert res.reason.startswith("NLL") and "did not improve" in res.reason
    assert "no meaningful change" not in res.reason and "held-out NLL" in res.reason


def test_gate_tolerances() -> None:
    before = {"nll": 0.5, "ece": 0.1}

    def judge(d_nll: float, d_ece: float) -> tuple[bool, str]:
        return gate(before, {"nll": 0.5 + d_nll, "ece": 0.1 + d_ece})

    assert judge(-1e-6, -2e-6)[0]  # NLL by 2e-6 relative, ECE by 2e-6: real, accepted
    assert judge(-0.01, -0.02) == (
        True,
        "improved: held-out NLL 0.5000 -> 0.4900, ECE 0.1000 -> 0.0800",
    )
    for d_nll, d_ece in [(-4e-11, -7e-11), (4e-11, -7e-11), (-4e-7, 0.0)]:  # noise
        ok, reason = judge(d_nll, d_ece)
        assert not ok and "no meaningful change in NLL and ECE" in reason
    ok, reason = judge(-0.01, -1e-9)
    assert not ok and reason.startswith("no meaningful change in ECE (")
    ok, reason = judge(0.01, 1e-9)
    assert not ok and reason.startswith("NLL did not improve; no meaningful change in ECE")
    ok, reason = judge(-0.01, 0.003)
    assert not ok and reason.startswith("ECE did not improve: held-out")
    assert not judge(math.nan, -0.01)[0] and not judge(-0.01, math.nan)[0]
    # validate_multiclass gates on the multiclass NLL, with the same tolerance
    mc = {"multiclass_nll": 1.0, "ece": 0.1}
    assert gate(mc, {"multiclass_nll": 0.9, "ece": 0.05}, "multiclass_nll")[0]
    assert not gate(mc, {"multiclass_nll": 1.0 - 1e-9, "ece": 0.05}, "multiclass_nll")[0]


def test_validation_gate_multiclass() -> None:
    z, y = synthetic_logits(3000, 5, 0.6, seed=4)
    res = validate_multiclass(z, y)
    assert res.accepted and abs(res.temperature / 0.6 - 1) < 0.1
    assert res.before["multiclass_nll"] == pytest.approx(
        multiclass_nll(z[_hold(3000)], y[_hold(3000)], 1.0)
    )
    vec = validate_multiclass(z[:200], y[:200], method="vector")
    assert vec.method == "temperature" and "scaling used" in vec.reason
    assert math.isfinite(vec.after["ece"])


def _hold(n: int) -> np.ndarray:
    from monitor.calibration.validation import holdout_split

    return holdout_split(n)[1]
