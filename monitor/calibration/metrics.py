"""Calibration metrics: ECE, MCE, Brier, NLL, reliability bins, bootstrap interval.

These numbers drive alerts and accept/reject decisions, so the binning is
pinned down exactly (CONTRACT.md "Python API"): M equal-width bins, bin b holds
(b/M, (b+1)/M], 0.0 goes to the first bin. Bin membership is decided by
comparing against ``np.linspace(0, 1, M + 1)`` with ``searchsorted`` instead of
``ceil(c * M) - 1``, because ``0.3 * 10`` is ``3.0000000000000004`` in floating
point and would push 0.3 into the wrong bin. The edges are the doubles
nearest b/M (``arange(M + 1) / M``), so a confidence typed as an edge value
("0.2") sits exactly on that edge and goes to the lower bin, as the contract's
examples require; the reported bins use the same edges.

Labels may be soft (a score in [0, 1]); "accuracy" of a bin is then the mean
score. Everything runs in float64.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from monitor.calibration._arrays import FloatArray, IntArray, check_n_bins, confidences_and_labels

Binning = Literal["width", "mass"]

# Confidences are clipped this far from 0 and 1 for log loss: a confident
# mistake costs ~27.6 nats instead of infinity, which keeps means finite.
NLL_EPS = 1e-12


@dataclass(frozen=True)
class ReliabilityBin:
    """One bar of a reliability diagram; empty bins carry None statistics."""

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def bin_edges(conf: FloatArray, n_bins: int, binning: Binning = "width") -> FloatArray:
    """Bin edges: equal width, or equal mass (edges at the empirical quantiles)."""
    if binning == "width":
        # b / M correctly rounded (IEEE division), i.e. the very double a user
        # writes as "0.3"; linspace's b * (1 / M) can land one ulp off
        # (3 / 5 -> 0.6000000000000001) and would move typed edges across bins.
        return np.arange(n_bins + 1, dtype=np.float64) / n_bins
    if binning == "mass":
        inner = np.quantile(conf, np.arange(1, n_bins) / n_bins)
        return np.concatenate(([0.0], inner, [1.0]))
    raise ValueError(f"binning must be 'width' or 'mass', got {binning!r}")


def bin_indices(conf: FloatArray, edges: FloatArray) -> IntArray:
    """Index of the bin (edges[b], edges[b+1]] holding each confidence; 0.0 -> bin 0."""
    n_bins = edges.shape[0] - 1
    idx = np.searchsorted(edges, conf, side="left") - 1
    return np.clip(idx, 0, n_bins - 1).astype(np.int64)


def _bin_sums(
    conf: FloatArray, labels: FloatArray, n_bins: int, binning: Binning
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    edges = bin_edges(conf, n_bins, binning)
    idx = bin_indices(conf, edges)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins).astype(np.float64)
    label_sum = np.bincount(idx, weights=labels, minlength=n_bins).astype(np.float64)
    return edges, counts, conf_sum, label_sum


def _gaps(counts: FloatArray, conf_sum: FloatArray, label_sum: FloatArray) -> FloatArray:
    safe = np.where(counts > 0, counts, 1.0)
    return np.abs(label_sum - conf_sum) / safe  # |accuracy - confidence|, 0 for empty bins


def expected_calibration_error(
    confidences: Any, labels: Any, n_bins: int = 15, binning: Binning = "width"
) -> float:
    """Count-weighted mean over non-empty bins of |accuracy - mean confidence|."""
    conf, lab = confidences_and_labels(confidences, labels)
    _, counts, cs, ls = _bin_sums(conf, lab, check_n_bins(n_bins), binning)
    return float(np.sum(counts * _gaps(counts, cs, ls)) / conf.shape[0])


def maximum_calibration_error(
    confidences: Any, labels: Any, n_bins: int = 15, binning: Binning = "width"
) -> float:
    """The largest |accuracy - mean confidence| over non-empty bins."""
    conf, lab = confidences_and_labels(confidences, labels)
    _, counts, cs, ls = _bin_sums(conf, lab, check_n_bins(n_bins), binning)
    return float(np.max(_gaps(counts, cs, ls)[counts > 0]))


def brier_score(confidences: Any, labels: Any) -> float:
    """Mean squared difference between confidence and label."""
    conf, lab = confidences_and_labels(confidences, labels)
    return float(np.mean((conf - lab) ** 2))


def binary_nll(confidences: Any, labels: Any, eps: float = NLL_EPS) -> float:
    """Mean binary log loss (nats); confidences clipped to [eps, 1 - eps]."""
    conf, lab = confidences_and_labels(confidences, labels)
    c = np.clip(conf, eps, 1.0 - eps)
    return float(-np.mean(lab * np.log(c) + (1.0 - lab) * np.log1p(-c)))


def reliability_bins(
    confidences: Any, labels: Any, n_bins: int = 15, binning: Binning = "width"
) -> list[ReliabilityBin]:
    """All bins, in order, empty ones included (count 0, statistics None)."""
    conf, lab = confidences_and_labels(confidences, labels)
    edges, counts, cs, ls = _bin_sums(conf, lab, check_n_bins(n_bins), binning)
    out = []
    for b in range(edges.shape[0] - 1):
        n = int(counts[b])
        out.append(
            ReliabilityBin(
                lower=float(edges[b]),
                upper=float(edges[b + 1]),
                count=n,
                mean_confidence=float(cs[b] / n) if n else None,
                accuracy=float(ls[b] / n) if n else None,
            )
        )
    return out


def ece_bootstrap_interval(
    confidences: Any,
    labels: Any,
    n_bins: int = 15,
    n_boot: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    binning: Binning = "width",
) -> tuple[float, float]:
    """Percentile bootstrap interval for ECE.

    Vectorised: bin indices are computed once, each resample is a row of
    indices and per-(resample, bin) sums come from one ``bincount`` over
    ``resample * M + bin``. Resamples are processed in chunks so memory stays
    bounded (~4M indices at a time) for large windows. With equal-mass binning
    the edges of the full sample are kept fixed across resamples.
    """
    conf, lab = confidences_and_labels(confidences, labels)
    m = check_n_bins(n_bins)
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n = conf.shape[0]
    idx = bin_indices(conf, bin_edges(conf, m, binning))
    rng = np.random.default_rng(seed)
    eces = np.empty(n_boot, dtype=np.float64)
    chunk = max(1, 4_000_000 // n)
    for lo in range(0, n_boot, chunk):
        b = min(chunk, n_boot - lo)
        draw = rng.integers(0, n, size=(b, n))
        key = (np.arange(b, dtype=np.int64)[:, None] * m + idx[draw]).ravel()
        cs = np.bincount(key, weights=conf[draw].ravel(), minlength=b * m).reshape(b, m)
        ls = np.bincount(key, weights=lab[draw].ravel(), minlength=b * m).reshape(b, m)
        eces[lo : lo + b] = np.abs(ls - cs).sum(axis=1) / n  # sum_b n_b|acc-conf| / n
    low, high = np.quantile(eces, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


@dataclass(frozen=True)
class CalibrationMetrics:
    """One evaluation window's numbers, as the snapshot API reports them."""

    n: int
    accuracy: float
    mean_confidence: float
    ece: float
    ece_low: float | None
    ece_high: float | None
    mce: float
    brier: float
    nll: float
    bins: list[ReliabilityBin] = field(default_factory=list)

    def as_dict(self, include_bins: bool = True) -> dict[str, Any]:
        d = asdict(self)
        if not include_bins:
            d.pop("bins")
        return d


def compute_metrics(
    confidences: Any,
    labels: Any,
    n_bins: int = 15,
    bootstrap: bool = True,
    binning: Binning = "width",
    n_boot: int = 200,
    seed: int = 0,
) -> CalibrationMetrics:
    """All window metrics in one pass over validated inputs."""
    conf, lab = confidences_and_labels(confidences, labels)
    m = check_n_bins(n_bins)
    low: float | None = None
    high: float | None = None
    if bootstrap:
        low, high = ece_bootstrap_interval(conf, lab, m, n_boot=n_boot, seed=seed, binning=binning)
    bins = reliability_bins(conf, lab, m, binning)
    return CalibrationMetrics(
        n=int(conf.shape[0]),
        accuracy=float(lab.mean()),
        mean_confidence=float(conf.mean()),
        ece=expected_calibration_error(conf, lab, m, binning),
        ece_low=low,
        ece_high=high,
        mce=maximum_calibration_error(conf, lab, m, binning),
        brier=brier_score(conf, lab),
        nll=binary_nll(conf, lab),
        bins=bins,
    )
