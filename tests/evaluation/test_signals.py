"""Pure statistics: binned metrics agree with monitor.calibration; drift signals behave."""

from __future__ import annotations

import numpy as np
import pytest

from monitor.calibration import compute_metrics, ece_bootstrap_interval
from monitor.calibration.metrics import NLL_EPS, bin_edges, bin_indices
from monitor.evaluation.signals import (
    BinStats,
    binned_ece_bootstrap,
    binned_metrics,
    histogram,
    ks_statistic,
    ks_statistic_samples,
    merge_buckets,
    population_stability_index,
)


def stats_of(conf: np.ndarray, lab: np.ndarray, m: int) -> list[BinStats]:
    idx = bin_indices(conf, bin_edges(conf, m))
    c = np.clip(conf, NLL_EPS, 1 - NLL_EPS)
    nll = -(lab * np.log(c) + (1 - lab) * np.log(1 - c))
    out = []
    for b in range(m):
        sel = idx == b
        out.append(
            BinStats(
                int(sel.sum()),
                float(conf[sel].sum()),
                float((conf[sel] ** 2).sum()),
                float(lab[sel].sum()),
                float(((conf[sel] - lab[sel]) ** 2).sum()),
                float(nll[sel].sum()),
            )
        )
    return out


def test_binned_metrics_match_row_metrics_including_golden_values() -> None:
    conf = np.array([0.05, 0.12, 0.25, 0.33, 0.41, 0.5, 0.58, 0.66, 0.72, 0.81, 0.9, 0.97])
    lab = np.array([0, 0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 1], dtype=float)
    got = binned_metrics(stats_of(conf, lab, 15))
    assert got is not None
    assert got.ece == pytest.approx(0.345)
    assert got.mce == pytest.approx(0.75)
    assert got.brier == pytest.approx(0.17865)
    rng = np.random.default_rng(3)
    conf = rng.uniform(0, 1, 3000)
    lab = (rng.random(3000) < conf**1.5).astype(float)
    row = compute_metrics(conf, lab, 15, bootstrap=False)
    got = binned_metrics(stats_of(conf, lab, 15))
    assert got is not None
    for name in ("accuracy", "mean_confidence", "ece", "mce", "brier", "nll"):
        assert getattr(got, name) == pytest.approx(getattr(row, name), rel=1e-9), name
    assert [b["count"] for b in got.bins] == [b.count for b in row.bins]


def test_binned_bootstrap_is_close_to_the_row_bootstrap() -> None:
    rng = np.random.default_rng(7)
    conf = rng.uniform(0.5, 1.0, 5000)
    lab = (rng.random(5000) < conf - 0.1).astype(float)
    exact = ece_bootstrap_interval(conf, lab, 15, n_boot=400, seed=1)
    approx = binned_ece_bootstrap(stats_of(conf, lab, 15), n_boot=400, seed=1)
    assert approx is not None
    assert approx[0] == pytest.approx(exact[0], abs=0.01)
    assert approx[1] == pytest.approx(exact[1], abs=0.01)
    assert approx[0] < compute_metrics(conf, lab, bootstrap=False).ece < approx[1] + 0.01
    assert binned_ece_bootstrap(stats_of(conf[:0], lab[:0], 15)) is None


def test_psi_and_ks_detect_a_shift_and_not_noise() -> None:
    rng = np.random.default_rng(0)
    ref = rng.beta(8, 2, 20_000)
    same = rng.beta(8, 2, 20_000)
    shifted = rng.beta(3, 3, 20_000)
    h_ref, h_same, h_shift = histogram(ref), histogram(same), histogram(shifted)
    stable = population_stability_index(merge_buckets(h_ref), merge_buckets(h_same))
    moved = population_stability_index(merge_buckets(h_ref), merge_buckets(h_shift))
    assert stable is not None and stable < 0.01
    assert moved is not None and moved > 0.25
    exact = ks_statistic_samples(ref, shifted)
    binned = ks_statistic(h_ref, h_shift)
    assert (
        binned is not None and binned <= exact + 1e-12 and binned == pytest.approx(exact, abs=0.02)
    )
    assert population_stability_index(h_ref, np.zeros(100)) is None


def test_histogram_buckets_match_sql_floor_convention() -> None:
    counts = histogram(np.array([0.0, 0.009, 0.01, 0.5, 0.999, 1.0]))
    assert counts[0] == 2 and counts[1] == 1 and counts[50] == 1 and counts[99] == 2
