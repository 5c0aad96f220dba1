"""Calibration metrics: ECE, MCE, Brier, NLL, reliability bins, bootstrap interval.

These numbers drive alerts and accept/reject decisions, so the binning is
pinned down exactly (CONTRACT.md "Python API"): M equal-width bins, bin b holds
(b/M, (b+1)/M], 0.0 goes to the first bin. Bin membership is decided by
comparing against ``np.linspace(0, 1, M + 1)`` with ``searchsorted`` instead of
``ceil(c * M) - 1``, because ``0.3 * 10`` is ``3.0000000000000004`` in floating
point and would push 0.3 into the wrong bin. The edges are the doubles
nearest b/M (``arange(M + 1) / M``), so a confidence typed as an edge value
("0.2") sits exactly on that edge and goes to the lower bin, as the contract's
examples require; the reported bins use the same edges. Input of a narrower
float type (float32, bfloat16, ...) is compared with the edges rounded to that
type, so its "0.2" lands in the same bin as float64's (see `_arrays`).

Labels may be soft (a score in [0, 1]); "accuracy" of a bin is then the mean
score. Everything runs in float64.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, astuple, dataclass, field
from typing import Any, Literal

import numpy as np

from monitor.calibration._arrays import (
    FloatArray,
    IntArray,
    check_n_bins,
    confidences_and_labels,
    round_to,
)

Binning = Literal["width", "mass"]

# Confidences are clipped this far from 0 and 1 for log loss: a confident
# mistake costs ~27.6 nats instead of infinity, which keeps means finite.
NLL_EPS = 1e-12


_BIN_KEYS = ("lower", "upper", "count", "mean_confidence", "accuracy")


@dataclass(frozen=True, eq=False)
class ReliabilityBin(Mapping[str, Any]):
    """One bar of a reliability diagram; empty bins carry None statistics.

    Also a read-only mapping of its five fields, because the contract describes
    the bins by key ("bins with lower, upper, ...") and stored snapshots hold
    them as plain dicts: ``b.lower``, ``b["lower"]`` and ``dict(b)`` all work,
    and equality is the mapping's, so a bin equals its dict form (and any
    other bin with the same values). The hash is the values', like a frozen
    dataclass's, so equal bins hash equal.
    """

    lower: float
    upper: float
    count: int
    mean_confidence: float | None
    accuracy: float | None

    def __getitem__(self, key: str) -> Any:
        if key not in _BIN_KEYS:
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(_BIN_KEYS)

    def __len__(self) -> int:
        return len(_BIN_KEYS)

    def __hash__(self) -> int:
        return hash(astuple(self))

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


class _Binned:
    """Validated inputs and their per-bin sums, computed once per call.

    Public functions take array-likes, so `compute_metrics` cannot hand its
    converted float64 arrays on without losing the input's precision; every
    function works from one of these instead.
    """

    def __init__(self, confidences: Any, labels: Any, n_bins: int, binning: Binning) -> None:
        self.conf, self.labels, precision = confidences_and_labels(confidences, labels)
        m = check_n_bins(n_bins)
        self.edges = bin_edges(self.conf, m, binning)
        # Equal-mass edges are quantiles of the float64 values themselves: no rounding.
        typed = round_to(self.edges, precision) if binning == "width" else self.edges
        self.idx = bin_indices(self.conf, typed)
        self.counts = np.bincount(self.idx, minlength=m).astype(np.float64)
        self.conf_sum = np.bincount(self.idx, weights=self.conf, minlength=m).astype(np.float64)
        self.label_sum = np.bincount(self.idx, weights=self.labels, minlength=m).astype(np.float64)

    def gaps(self) -> FloatArray:
        safe = np.where(self.counts > 0, self.counts, 1.0)
        return np.abs(self.label_sum - self.conf_sum) / safe  # |acc - conf|, 0 if empty

    def ece(self) -> float:
        return float(np.sum(self.counts * self.gaps()) / self.conf.shape[0])

    def mce(self) -> float:
        return float(np.max(self.gaps()[self.counts > 0]))

    def bins(self) -> list[ReliabilityBin]:
        edges, counts, cs, ls = self.edges, self.counts, self.conf_sum, self.label_sum
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


def expected_calibration_error(
    confidences: Any, labels: Any, n_bins: int = 15, binning: Binning = "width"
) -> float:
    """Count-weighted mean over non-empty bins of |accuracy - mean confidence|."""
    return _Binned(confidences, labels, n_bins, binning).ece()


def maximum_calibration_error(
    confidences: Any, labels: Any, n_bins: int = 15, binning: Binning = "width"
) -> float:
    """The largest |accuracy - mean confidence| over non-empty bins."""
    return _Binned(confidences, labels, n_bins, binning).mce()


def brier_score(confidences: Any, labels: Any) -> float:
    """Mean squared difference between confidence and label."""
    conf, lab, _ = confidences_and_labels(confidences, labels)
    return _brier(conf, lab)


def _brier(conf: FloatArray, lab: FloatArray) -> float:
    return float(np.mean((conf - lab) ** 2))


def binary_nll(confidences: Any, labels: Any, eps: float = NLL_EPS) -> float:
    """Mean binary log loss (nats); confidences clipped to [eps, 1 - eps]."""
    conf, lab, _ = confidences_and_labels(confidences, labels)
    return _nll(conf, lab, eps)


def _nll(conf: FloatArray, lab: FloatArray, eps: float = NLL_EPS) -> float:
    c = np.clip(conf, eps, 1.0 - eps)
    return float(-np.mean(lab * np.log(c) + (1.0 - lab) * np.log1p(-c)))


def reliability_bins(
    confidences: Any, labels: Any, n_bins: int = 15, binning: Binning = "width"
) -> list[ReliabilityBin]:
    """All bins, in order, empty ones included (count 0, statistics None)."""
    return _Binned(confidences, labels, n_bins, binning).bins()


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
    return _bootstrap(_Binned(confidences, labels, n_bins, binning), n_boot, alpha, seed)


def _bootstrap(binned: _Binned, n_boot: int, alpha: float, seed: int) -> tuple[float, float]:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    conf, lab, idx, m = binned.conf, binned.labels, binned.idx, binned.counts.shape[0]
    n = conf.shape[0]
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
    """All window metrics from one conversion and one binning of the inputs."""
    binned = _Binned(confidences, labels, n_bins, binning)
    conf, lab = binned.conf, binned.labels
    low: float | None = None
    high: float | None = None
    if bootstrap:
        low, high = _bootstrap(binned, n_boot, alpha=0.05, seed=seed)
    return CalibrationMetrics(
        n=int(conf.shape[0]),
        accuracy=float(lab.mean()),
        mean_confidence=float(conf.mean()),
        ece=binned.ece(),
        ece_low=low,
        ece_high=high,
        mce=binned.mce(),
        brier=_brier(conf, lab),
        nll=_nll(conf, lab),
        bins=binned.bins(),
    )
