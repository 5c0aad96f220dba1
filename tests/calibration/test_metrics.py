"""Metrics: contract golden values, a loop reference under hypothesis, input errors."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
from collections.abc import Callable, Mapping
from typing import Any

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

# Every way a caller may hand over confidences of float32 precision or wider.
FLOAT_KINDS: dict[str, Callable[[list[float]], Any]] = {
    "list": lambda v: [float(x) for x in v],
    "numpy-float64": lambda v: np.asarray(v, dtype=np.float64),
    "numpy-float32": lambda v: np.asarray(v, dtype=np.float32),
    "torch-float64": lambda v: torch.tensor(v, dtype=torch.float64),
    "torch-float32": lambda v: torch.tensor(v, dtype=torch.float32),
}
# Narrower floats: LLM outputs are often bfloat16 (numpy cannot hold it).
NARROW_KINDS: dict[str, Callable[[list[float]], Any]] = {
    "numpy-float16": lambda v: np.asarray(v, dtype=np.float16),
    "torch-float16": lambda v: torch.tensor(v, dtype=torch.float16),
    "torch-bfloat16": lambda v: torch.tensor(v, dtype=torch.bfloat16),
}


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


def bin_of(one: Any, m: int) -> int:
    """The bin `reliability_bins` puts a single confidence in."""
    return [b.count for b in reliability_bins(one, [1], n_bins=m)].index(1)


@pytest.mark.parametrize("kind", FLOAT_KINDS.values(), ids=list(FLOAT_KINDS))
def test_golden_values_hold_for_every_float_input_type(kind: Callable[[list[float]], Any]) -> None:
    # float32 holds 0.2 as 0.20000000298: it must still go to (0.1, 0.2], as float64's 0.2 does.
    conf, lab = kind(GOLD_CONF), kind([float(y) for y in GOLD_LAB])
    assert expected_calibration_error(conf, lab) == pytest.approx(0.345, abs=1e-6)
    assert maximum_calibration_error(conf, lab) == pytest.approx(0.75, abs=1e-6)
    assert brier_score(conf, lab) == pytest.approx(0.17865, abs=1e-6)
    want = [b.count for b in reliability_bins(GOLD_CONF, GOLD_LAB)]
    assert [b.count for b in reliability_bins(conf, lab)] == want
    for c, y, m, ece in [
        ([0.95, 1.0], [1, 0], 15, 0.475),
        ([0.0, 0.03], [1, 0], 15, 0.485),
        ([0.2, 0.25], [1, 0], 10, 0.525),
    ]:
        assert expected_calibration_error(kind(c), y, n_bins=m) == pytest.approx(ece, abs=1e-6)
        assert compute_metrics(kind(c), y, m, bootstrap=False).ece == pytest.approx(ece, abs=1e-6)
    bins = compute_metrics(kind([0.2, 0.25]), [1, 0], 10, bootstrap=False).bins
    assert [b.count for b in bins][1:3] == [1, 1]
    interval = ece_bootstrap_interval(kind([0.2, 0.25]), [1, 0], n_bins=10, n_boot=50)
    assert interval == pytest.approx(ece_bootstrap_interval([0.2, 0.25], [1, 0], 10, 50), abs=1e-6)
    bundle = compute_metrics(kind([0.2, 0.25]), [1, 0], 10, n_boot=50)
    assert (bundle.ece_low, bundle.ece_high) == pytest.approx(interval, abs=1e-12)


@pytest.mark.parametrize("m", [3, 5, 7, 10, 15])
def test_every_edge_and_its_float32_neighbours_bin_alike_for_every_input_type(m: int) -> None:
    values: list[float] = []
    expected: list[int] = []
    for b in range(1, m + 1):
        e32 = np.float32(b / m)  # what a float32 input holds for "b / M"
        values += [b / m, float(np.nextafter(e32, np.float32(0)))]
        expected += [b - 1, b - 1]
        if b < m:
            values.append(float(np.nextafter(e32, np.float32(1))))
            expected.append(b)
    labels = [float(i % 2) for i in range(len(values))]
    counts = np.bincount(expected, minlength=m).tolist()
    ece = expected_calibration_error(values, labels, n_bins=m)
    mce = maximum_calibration_error(values, labels, n_bins=m)
    for name, kind in FLOAT_KINDS.items():
        assert [bin_of(kind([v]), m) for v in values] == expected, name
        conf = kind(values)
        assert [b.count for b in reliability_bins(conf, labels, n_bins=m)] == counts, name
        got = compute_metrics(conf, labels, m, bootstrap=False)
        assert [b.count for b in got.bins] == counts, name
        assert got.ece == pytest.approx(ece, abs=1e-6), name
        assert expected_calibration_error(conf, labels, n_bins=m) == pytest.approx(ece, abs=1e-6)
        assert maximum_calibration_error(conf, labels, n_bins=m) == pytest.approx(mce, abs=1e-6)


def _neighbours(one: Any) -> tuple[Any, Any]:
    """The next representable values below and above a one-element float16/bfloat16 input."""
    if isinstance(one, np.ndarray):
        return np.nextafter(one, np.float16(0)), np.nextafter(one, np.float16(2))
    bits = one.view(torch.int16)  # positive values: the bit pattern orders like the value
    return (bits - 1).view(one.dtype), (bits + 1).view(one.dtype)


@pytest.mark.parametrize("kind", NARROW_KINDS.values(), ids=list(NARROW_KINDS))
def test_float16_and_bfloat16_inputs_are_accepted_and_binned_at_their_precision(
    kind: Callable[[list[float]], Any],
) -> None:
    # bfloat16 holds 0.2 as 0.2001953125 and float16 0.3 as 0.300048828125: both are
    # still "b / M" typed, so they go to the bin below the edge, as float64's would.
    conf = kind([0.2, 0.25])
    assert [b.count for b in reliability_bins(conf, [1, 0], n_bins=10)][1:3] == [1, 1]
    assert expected_calibration_error(conf, [1, 0], n_bins=10) == pytest.approx(0.525, abs=1e-3)
    want = [b.count for b in reliability_bins(GOLD_CONF, GOLD_LAB)]
    assert [b.count for b in reliability_bins(kind(GOLD_CONF), GOLD_LAB)] == want
    assert expected_calibration_error(kind(GOLD_CONF), GOLD_LAB) == pytest.approx(0.345, abs=5e-3)
    for m in (3, 5, 7, 10, 15):
        for b in range(1, m + 1):
            edge = kind([b / m])
            below, above = _neighbours(edge)
            assert (bin_of(edge, m), bin_of(below, m)) == (b - 1, b - 1), (m, b)
            if b < m:
                assert bin_of(above, m) == b, (m, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_are_accepted() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        conf = torch.tensor([0.2, 0.25], dtype=dtype, device="cuda")
        lab = torch.tensor([1, 0], device="cuda")
        assert expected_calibration_error(conf, lab, n_bins=10) == pytest.approx(0.525, abs=1e-3)


def test_reliability_bins_are_mappings_as_well_as_dataclasses() -> None:
    bins = reliability_bins([0.2, 0.25], [1, 0], n_bins=10)
    b = bins[1]
    want = {"lower": 0.1, "upper": 0.2, "count": 1, "mean_confidence": 0.2, "accuracy": 1.0}
    assert (b.lower, b.upper, b.count, b.mean_confidence, b.accuracy) == tuple(want.values())
    assert isinstance(b, Mapping)
    assert b["lower"] == 0.1 and b["accuracy"] == 1.0 and b.get("nope") is None
    assert dict(b) == want and b == want and want == b and b != {**want, "count": 2}
    assert list(b.keys()) == list(want) and len(b) == 5 and "count" in b
    with pytest.raises(KeyError):
        b["nope"]
    empty = {"lower": 0.0, "upper": 0.1, "count": 0, "mean_confidence": None, "accuracy": None}
    assert bins[0] == empty
    # equality and hashing by value, as the frozen dataclass had
    again = reliability_bins([0.2, 0.25], [1, 0], n_bins=10)
    assert bins == again and b != bins[2] and hash(b) == hash(again[1]) and len({b, again[1]}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.count = 2  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(b)) == b
    # serialisation: as_dict, asdict and the metrics bundle's JSON all give the same dicts
    assert b.as_dict() == dataclasses.asdict(b) == want
    stored = json.loads(json.dumps(compute_metrics([0.2, 0.25], [1, 0], 10).as_dict()))
    assert stored["bins"] == bins and bins == stored["bins"]
