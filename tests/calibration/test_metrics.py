"""Metrics: contract golden values, a loop reference under hypothesis, input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.calibration import (
    binary_nll,
    brier_score,
    compute_metrics,
    ece_bootstrap_interval,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_bins,
)

GOLD_CONF = [0.05, 0.12, 0.25, 0.33, 0.41, 0.5, 0.58, 0.66, 0.72, 0.81, 0.9, 0.97]
GOLD_LAB = [0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1]


def reference_bins(conf: list[float], labels: list[float], m: int) -> list[list[int]]:
    """Bin b holds (b/M, (b+1)/M]; 0.0 in bin 0; edge b/M is the double Python's b / m gives."""
    bins: list[list[int]] = [[] for _ in range(m)]
    for i, c in enumerate(conf):
        b = 0
        while b < m - 1 and c > (b + 1) / m:
            b += 1
        bins[b].append(i)
    return bins


def reference_ece_mce(conf: list[float], labels: list[float], m: int) -> tuple[float, float]:
    total, worst = 0.0, 0.0
    for members in reference_bins(conf, labels, m):
        if members:
            acc = sum(labels[i] for i in members) / len(members)
            mc = sum(conf[i] for i in members) / len(members)
            total += len(members) * abs(acc - mc)
            worst = max(worst, abs(acc - mc))
    return total / len(conf), worst


def test_golden_values() -> None:
    assert round(expected_calibration_error(GOLD_CONF, GOLD_LAB), 6) == 0.345
    assert round(maximum_calibration_error(GOLD_CONF, GOLD_LAB), 6) == 0.75
    assert round(brier_score(GOLD_CONF, GOLD_LAB), 6) == 0.17865
    assert expected_calibration_error([0.95, 1.0], [1, 0]) == pytest.approx(0.475, abs=1e-12)
    assert expected_calibration_error([0.0, 0.03], [1, 0]) == pytest.approx(0.485, abs=1e-12)
    assert expected_calibration_error([0.2, 0.25], [1, 0], n_bins=10) == pytest.approx(
        0.525, abs=1e-12
    )


@pytest.mark.parametrize("m", [3, 5, 7, 10, 15, 20])
def test_edges_land_in_lower_bin(m: int) -> None:
    # every representable edge b/M (e.g. 0.3 with M=10, where 0.3*10 > 3) goes to bin b-1
    for b in range(1, m + 1):
        bins = reliability_bins([b / m], [1], n_bins=m)
        assert bins[b - 1].count == 1, (b, m)
        assert bins[b - 1].upper == b / m


def test_inputs_as_list_numpy_torch_agree() -> None:
    expected = expected_calibration_error(GOLD_CONF, GOLD_LAB)
    assert expected_calibration_error(np.array(GOLD_CONF), np.array(GOLD_LAB)) == expected
    t = torch.tensor(GOLD_CONF, dtype=torch.float32, requires_grad=True)
    got = expected_calibration_error(t, torch.tensor(GOLD_LAB))
    assert got == pytest.approx(expected, abs=1e-6)  # float32 inputs


@pytest.mark.parametrize(
    ("conf", "labels", "message"),
    [
        ([], [], "confidences is empty"),
        ([0.5, math.nan], [1, 0], "confidences contains NaN"),
        ([0.5, 1.2], [1, 0], "confidences has a value outside"),
        ([0.5, 0.2], [1, -0.1], "labels has a value outside"),
        ([0.5, 0.2], [1, math.nan], "labels contains NaN"),
        ([0.5, 0.2, 0.3], [1, 0], "length mismatch"),
        ([[0.1, 0.2]], [[1, 0]], "one-dimensional"),
    ],
)
def test_input_errors(conf: list, labels: list, message: str) -> None:
    for fn in (expected_calibration_error, maximum_calibration_error, brier_score, binary_nll):
        with pytest.raises(ValueError, match=message):
            fn(conf, labels)


def test_bad_n_bins() -> None:
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.5], [1], n_bins=0)


probs = st.floats(0.0, 1.0, allow_nan=False)
edgey = st.sampled_from([0.0, 1.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1 / 3, 2 / 15, 14 / 15, 0.6])
cases = st.integers(1, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.one_of(probs, edgey), min_size=n, max_size=n),
        st.lists(st.one_of(st.sampled_from([0.0, 1.0]), probs), min_size=n, max_size=n),
        st.integers(1, 25),
    )
)


@settings(max_examples=500, deadline=None)
@given(cases)
def test_matches_loop_reference(case: tuple[list[float], list[float], int]) -> None:
    conf, labels, m = case
    ece, mce = reference_ece_mce(conf, labels, m)
    assert expected_calibration_error(conf, labels, n_bins=m) == pytest.approx(ece, abs=1e-9)
    assert maximum_calibration_error(conf, labels, n_bins=m) == pytest.approx(mce, abs=1e-9)
    bins = reliability_bins(conf, labels, n_bins=m)
    ref = reference_bins(conf, labels, m)
    assert [b.count for b in bins] == [len(r) for r in ref]
    brier = sum((c - y) ** 2 for c, y in zip(conf, labels, strict=True)) / len(conf)
    assert brier_score(conf, labels) == pytest.approx(brier, abs=1e-9)
    eps = 1e-12
    nll = -sum(
        y * math.log(min(max(c, eps), 1 - eps)) + (1 - y) * math.log(1 - min(max(c, eps), 1 - eps))
        for c, y in zip(conf, labels, strict=True)
    ) / len(conf)
    assert binary_nll(conf, labels) == pytest.approx(nll, abs=1e-9)


@settings(max_examples=300, deadline=None)
@given(cases)
def test_mass_binning_properties(case: tuple[list[float], list[float], int]) -> None:
    conf, labels, m = case
    bins = reliability_bins(conf, labels, n_bins=m, binning="mass")
    assert sum(b.count for b in bins) == len(conf)
    assert all(b.lower <= b.upper for b in bins)
    ece = expected_calibration_error(conf, labels, n_bins=m, binning="mass")
    weighted = sum(
        b.count * abs(b.accuracy - b.mean_confidence)  # type: ignore[operator]
        for b in bins
        if b.count
    )
    assert ece == pytest.approx(weighted / len(conf), abs=1e-9)


def test_mass_binning_balances_counts() -> None:
    conf = np.random.default_rng(0).beta(5, 1, size=1500)  # skewed towards 1
    counts = [b.count for b in reliability_bins(conf, conf > 0.5, n_bins=15, binning="mass")]
    assert max(counts) - min(counts) <= 2
    width_counts = [b.count for b in reliability_bins(conf, conf > 0.5, n_bins=15)]
    assert max(width_counts) > 4 * max(counts)  # equal width piles them up at the top


def test_bootstrap_matches_per_resample_loop() -> None:
    rng = np.random.default_rng(1)
    conf = rng.random(300)
    lab = (rng.random(300) < conf**1.5).astype(float)
    low, high = ece_bootstrap_interval(conf, lab, n_bins=10, n_boot=50, alpha=0.1, seed=7)
    draws = np.random.default_rng(7).integers(0, 300, size=(50, 300))  # same stream
    ref = [expected_calibration_error(conf[d], lab[d], n_bins=10) for d in draws]
    assert low == pytest.approx(np.quantile(ref, 0.05), abs=1e-12)
    assert high == pytest.approx(np.quantile(ref, 0.95), abs=1e-12)


def test_bootstrap_chunking_and_coverage() -> None:
    rng = np.random.default_rng(2)
    conf = rng.random(50_000)
    lab = (rng.random(50_000) < conf).astype(float)  # calibrated by construction
    low, high = ece_bootstrap_interval(conf, lab, n_boot=200)  # several chunks
    ece = expected_calibration_error(conf, lab)
    assert low <= ece <= high
    assert high - low < 0.02


def test_compute_metrics_bundle() -> None:
    m = compute_metrics(GOLD_CONF, GOLD_LAB)
    assert m.n == 12
    assert m.ece == pytest.approx(0.345)
    assert m.mce == pytest.approx(0.75)
    assert m.brier == pytest.approx(0.17865)
    assert m.accuracy == pytest.approx(7 / 12)
    assert m.mean_confidence == pytest.approx(np.mean(GOLD_CONF))
    assert m.ece_low is not None and m.ece_high is not None and m.ece_low <= m.ece_high
    d = m.as_dict()
    assert len(d["bins"]) == 15 and set(d["bins"][0]) == {
        "lower",
        "upper",
        "count",
        "mean_confidence",
        "accuracy",
    }
    assert compute_metrics(GOLD_CONF, GOLD_LAB, bootstrap=False).ece_low is None
