"""Pure statistics for evaluation: binned calibration metrics and label-free drift signals.

Everything here works on per-bin sufficient statistics (counts and sums that
SQL can produce with one GROUP BY) instead of per-row arrays, so a window of
a million generations never has to leave the database. No database or web
imports: the scheduler, the API and the benchmark share these functions.

Binned ECE bootstrap (why it is an approximation, and why it is good enough):
the exact percentile bootstrap resamples rows. From per-bin sums we resample
in two stages: the number of rows drawn into each bin is multinomial with the
observed bin frequencies (exact), and within a bin the drawn labels sum to a
binomial draw with the bin's accuracy (exact for 0/1 labels; for soft scores
it overstates the spread a little) while the drawn confidences sum to a
normal draw with the bin's confidence mean and variance (a CLT step; within a
bin of width 1/M the spread is tiny). Within-bin correlation of confidence
and label is ignored. Tests compare it with the row bootstrap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]

# Histogram resolution for the label-free confidence distribution: PSI uses
# PSI_BINS equal-width bins (merged from these), KS is read at every edge.
HIST_BUCKETS = 100
PSI_BINS = 10
# Empty-bin floor for PSI: without it a bin empty on one side gives infinity.
PSI_EPS = 1e-4


@dataclass(frozen=True)
class BinStats:
    """Sufficient statistics of one reliability bin (sums over its rows)."""

    count: int
    conf_sum: float
    conf_sq_sum: float
    label_sum: float
    sq_err_sum: float  # sum of (confidence - label)^2
    nll_sum: float


@dataclass(frozen=True)
class BinnedMetrics:
    n: int
    accuracy: float
    mean_confidence: float
    ece: float
    mce: float
    brier: float
    nll: float
    bins: list[dict[str, float | int | None]]


def bin_edges(n_bins: int) -> FloatArray:
    """The same doubles `monitor.calibration.metrics` uses: b / M correctly rounded."""
    return np.arange(n_bins + 1, dtype=np.float64) / n_bins


def binned_metrics(stats: list[BinStats]) -> BinnedMetrics | None:
    """ECE, MCE, Brier, NLL and the reliability diagram from per-bin sums; None if empty."""
    m = len(stats)
    counts = np.array([s.count for s in stats], dtype=np.float64)
    n = int(counts.sum())
    if n == 0:
        return None
    conf = np.array([s.conf_sum for s in stats], dtype=np.float64)
    lab = np.array([s.label_sum for s in stats], dtype=np.float64)
    gaps = np.abs(lab - conf) / np.where(counts > 0, counts, 1.0)
    edges = bin_edges(m)
    bins = [
        {
            "lower": float(edges[b]),
            "upper": float(edges[b + 1]),
            "count": int(counts[b]),
            "mean_confidence": float(conf[b] / counts[b]) if counts[b] else None,
            "accuracy": float(lab[b] / counts[b]) if counts[b] else None,
        }
        for b in range(m)
    ]
    return BinnedMetrics(
        n=n,
        accuracy=float(lab.sum() / n),
        mean_confidence=float(conf.sum() / n),
        ece=float(np.sum(counts * gaps) / n),
        mce=float(np.max(gaps[counts > 0])),
        brier=float(sum(s.sq_err_sum for s in stats) / n),
        nll=float(sum(s.nll_sum for s in stats) / n),
        bins=bins,
    )


def binned_ece_bootstrap(
    stats: list[BinStats], n_boot: int = 200, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile interval of ECE resampled from per-bin sums (see the module docstring)."""
    counts = np.array([s.count for s in stats], dtype=np.int64)
    n = int(counts.sum())
    if n == 0 or n_boot < 1:
        return None
    safe = np.where(counts > 0, counts, 1).astype(np.float64)
    acc = np.clip(np.array([s.label_sum for s in stats]) / safe, 0.0, 1.0)
    conf_mean = np.array([s.conf_sum for s in stats]) / safe
    conf_var = np.maximum(np.array([s.conf_sq_sum for s in stats]) / safe - conf_mean**2, 0.0)
    rng = np.random.default_rng(seed)
    drawn = rng.multinomial(n, counts / n, size=n_boot)  # (n_boot, M)
    label_sums = rng.binomial(drawn, acc)
    conf_sums = drawn * conf_mean + rng.standard_normal(drawn.shape) * np.sqrt(drawn * conf_var)
    eces = np.abs(label_sums - conf_sums).sum(axis=1) / n
    low, high = np.quantile(eces, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def population_stability_index(reference: FloatArray, current: FloatArray) -> float | None:
    """PSI = sum (p_cur - p_ref) * ln(p_cur / p_ref) over histogram bins.

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 a real shift.
    Proportions are floored at PSI_EPS so an empty bin costs a bounded amount.
    """
    ref_total, cur_total = float(np.sum(reference)), float(np.sum(current))
    if ref_total == 0 or cur_total == 0:
        return None
    p_ref = np.maximum(np.asarray(reference, dtype=np.float64) / ref_total, PSI_EPS)
    p_cur = np.maximum(np.asarray(current, dtype=np.float64) / cur_total, PSI_EPS)
    return float(np.sum((p_cur - p_ref) * np.log(p_cur / p_ref)))


def ks_statistic(reference: FloatArray, current: FloatArray) -> float | None:
    """Two-sample Kolmogorov-Smirnov distance between two histograms on the same edges.

    Evaluated at the bucket edges only, so it is the exact KS of the data
    rounded to the bucket width (a lower bound, at most one bucket's mass off).
    """
    ref_total, cur_total = float(np.sum(reference)), float(np.sum(current))
    if ref_total == 0 or cur_total == 0:
        return None
    cdf_ref = np.cumsum(reference) / ref_total
    cdf_cur = np.cumsum(current) / cur_total
    return float(np.max(np.abs(cdf_cur - cdf_ref)))


def ks_statistic_samples(reference: FloatArray, current: FloatArray) -> float:
    """Exact two-sample KS on raw samples (used to check the histogram version)."""
    a, b = np.sort(np.asarray(reference)), np.sort(np.asarray(current))
    grid = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, grid, side="right") / a.size
    cdf_b = np.searchsorted(b, grid, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def histogram(values: FloatArray, buckets: int = HIST_BUCKETS) -> FloatArray:
    """Counts in [k/B, (k+1)/B), 1.0 in the last bucket: the SQL `floor(c * B)` buckets."""
    idx = np.clip(np.floor(np.asarray(values, dtype=np.float64) * buckets), 0, buckets - 1)
    return np.bincount(idx.astype(np.int64), minlength=buckets).astype(np.float64)


def merge_buckets(counts: FloatArray, groups: int = PSI_BINS) -> FloatArray:
    """Sum adjacent fine buckets into `groups` coarse ones (PSI needs populated bins)."""
    arr = np.asarray(counts, dtype=np.float64)
    if arr.size % groups:
        raise ValueError(f"{arr.size} buckets do not split into {groups} groups")
    return arr.reshape(groups, -1).sum(axis=1)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return float(numerator) / float(denominator)


def difference(reference: float | None, current: float | None) -> float | None:
    """reference - current (a positive value is a drop), None when either is missing."""
    if reference is None or current is None:
        return None
    return float(reference) - float(current)
