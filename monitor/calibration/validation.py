"""The accept/reject gate for a new calibration.

A fitted temperature reaches serving only if it helps on data it was not fit
on: a seeded split holds out a fraction (20% by default), the fit sees only
the rest, and the candidate is accepted only when held-out NLL and held-out
ECE both improve on the current parameters, each by more than a small
tolerance (see `gate`): a refit that changes nothing must not be accepted or
rejected by float noise. Anything else ends the job ``rejected`` and serving
keeps what it has (DESIGN.md).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monitor.calibration._arrays import as_probabilities
from monitor.calibration._sequence_objective import NumpyObjective, prepare
from monitor.calibration.aggregation import check_aggregator, sequence_confidences
from monitor.calibration.fitting import (
    T_MAX,
    T_MIN,
    _multiclass_objective,
    fit_sequence_temperature,
    fit_temperature_detailed,
    minimise_theta,
    prepare_logits,
)
from monitor.calibration.metrics import CalibrationMetrics, compute_metrics
from monitor.calibration.packing import TokenBatch
from monitor.calibration.vector_scaling import (
    VectorScalingFit,
    fit_vector_scaling,
    scaled_probabilities,
)


@dataclass(frozen=True)
class ValidationResult:
    accepted: bool
    reason: str
    method: str
    temperature: float
    current_temperature: float
    before: dict[str, Any]
    after: dict[str, Any]
    n_train: int
    n_holdout: int
    bias: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def holdout_split(n: int, holdout_fraction: float = 0.2, seed: int = 0) -> tuple[Any, Any]:
    """Seeded (train, holdout) index arrays; both non-empty."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    if n < 2:
        raise ValueError(f"need at least 2 examples to hold some out, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = min(n - 1, max(1, round(n * holdout_fraction)))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


# How much a candidate must improve each held-out number to count. A refit on
# unchanged data lands on the same T to the optimiser's tolerance (theta to
# 1e-7), which moves held-out NLL and ECE by ~1e-10..1e-8: float noise whose
# sign decided, seed by seed, whether an identical T was activated. Real
# recalibrations move held-out NLL by 1e-3 or more, so one part in a million of
# NLL (relative: NLL's scale depends on the data; the absolute floor guards an
# NLL near 0) and 1e-6 of ECE (absolute: ECE is already a fraction in [0, 1])
# sit far above that noise and far below any improvement worth a new version,
# a re-score and a hot-swap.
NLL_RTOL = 1e-6
NLL_ATOL = 1e-9
ECE_ATOL = 1e-6


def gate(before: dict[str, Any], after: dict[str, Any], nll_key: str = "nll") -> tuple[bool, str]:
    """Accept only if held-out NLL and ECE both improve by more than their tolerance.

    Each number is improved (below before - tol), unchanged (within tol) or
    worse; anything but "both improved" rejects, and the reason names which
    numbers got worse and which did not meaningfully change.
    """
    tolerances = {
        "NLL": (nll_key, max(NLL_ATOL, NLL_RTOL * abs(before[nll_key]))),
        "ECE": ("ece", ECE_ATOL),
    }
    worse, unchanged = [], []
    for name, (key, tol) in tolerances.items():
        delta = after[key] - before[key]
        if delta < -tol:
            continue  # improved
        if abs(delta) <= tol:
            unchanged.append(name)
        else:  # worse, or NaN: never accepted
            worse.append(name)
    nums = (
        f"held-out NLL {before[nll_key]:.4f} -> {after[nll_key]:.4f}, "
        f"ECE {before['ece']:.4f} -> {after['ece']:.4f}"
    )
    if not worse and not unchanged:
        return True, f"improved: {nums}"
    parts = []
    if worse:
        parts.append(f"{' and '.join(worse)} did not improve")
    if unchanged:
        parts.append(
            f"no meaningful change in {' and '.join(unchanged)} (did not improve by more "
            f"than the tolerance: NLL {NLL_RTOL:g} relative, ECE {ECE_ATOL:g})"
        )
    return False, f"{'; '.join(parts)}: {nums}"


def _metrics(conf: Any, labels: Any, n_bins: int) -> CalibrationMetrics:
    return compute_metrics(np.clip(conf, 0.0, 1.0), labels, n_bins=n_bins, bootstrap=True)


def validate_sequence_temperature(
    batch: TokenBatch,
    labels: Any,
    aggregator: str = "geometric_mean",
    current_temperature: float = 1.0,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    n_bins: int = 15,
    device: str = "cpu",
) -> ValidationResult:
    """Fit T on the training split of generations, judge it on the held-out split."""
    check_aggregator(aggregator)
    y = as_probabilities(labels, "labels")
    if y.shape[0] != batch.n_generations:
        raise ValueError(
            f"length mismatch: {batch.n_generations} generations but {y.shape[0]} labels"
        )
    batch.check_values()  # here, not only in the fit: held-out rows must be clean too
    has_tokens = np.flatnonzero(batch.lengths > 0)
    train, hold = holdout_split(has_tokens.shape[0], holdout_fraction, seed)
    train, hold = has_tokens[train], has_tokens[hold]
    fit = fit_sequence_temperature(
        batch.subset(train),
        y[train],
        aggregator,
        device=device,
        current_temperature=current_temperature,
    )
    hb = batch.subset(hold)
    before = _metrics(sequence_confidences(hb, current_temperature, aggregator), y[hold], n_bins)
    after = _metrics(sequence_confidences(hb, fit.temperature, aggregator), y[hold], n_bins)
    ok, reason = gate(before.as_dict(), after.as_dict())
    return ValidationResult(
        accepted=ok,
        reason=reason,
        method="temperature",
        temperature=fit.temperature,
        current_temperature=current_temperature,
        before=_with_counts(before, train, hold),
        after=_with_counts(after, train, hold),
        n_train=int(train.shape[0]),
        n_holdout=int(hold.shape[0]),
        seconds=fit.seconds,
    )


def _with_counts(m: CalibrationMetrics, train: Any, hold: Any) -> dict[str, Any]:
    d = m.as_dict()
    d["n_train"], d["n_holdout"] = len(train), len(hold)
    return d


def _top_label(probs: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence of the predicted class and whether it is right (top-label calibration)."""
    return probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)


def validate_multiclass(
    logits: Any,
    labels: Any,
    method: str = "temperature",
    current_temperature: float = 1.0,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    n_bins: int = 15,
    min_per_class: int = 50,
    device: str = "cpu",
) -> ValidationResult:
    """Temperature or vector scaling on full logits, gated on held-out data.

    Metrics are top-label (max probability vs correctness); the NLL the gate
    uses is the multiclass NLL, the quantity the fit minimises, reported as
    ``multiclass_nll`` beside the binary ``nll`` of the top-label confidence.
    """
    z, y = prepare_logits(logits, labels)
    train, hold = holdout_split(z.shape[0], holdout_fraction, seed)
    if method == "temperature":
        t = fit_temperature_detailed(z[train], y[train], device=device).temperature
        fit = VectorScalingFit(method="temperature", temperature=t, bias=[0.0] * z.shape[1])
    elif method == "vector":
        fit = fit_vector_scaling(z[train], y[train], min_per_class=min_per_class)
    else:
        raise ValueError(f"method must be 'temperature' or 'vector', got {method!r}")

    def evaluate(t: float, b: list[float] | None) -> dict[str, Any]:
        probs = scaled_probabilities(z[hold], t, b)
        m = _with_counts(_metrics(*_top_label(probs, y[hold]), n_bins), train, hold)
        picked = probs[np.arange(hold.shape[0]), y[hold]]
        m["multiclass_nll"] = float(-np.mean(np.log(np.maximum(picked, 1e-300))))
        return m

    before = evaluate(current_temperature, None)
    after = evaluate(fit.temperature, fit.bias)
    ok, reason = gate(before, after, nll_key="multiclass_nll")
    if fit.reason:
        reason = f"{reason}; {fit.method} scaling used: {fit.reason}"
    return ValidationResult(
        accepted=ok,
        reason=reason,
        method=fit.method,
        temperature=fit.temperature,
        current_temperature=current_temperature,
        before=before,
        after=after,
        n_train=int(train.shape[0]),
        n_holdout=int(hold.shape[0]),
        bias=list(fit.bias),
    )


def validate_mixed(
    choice_logits: Any,
    choice_labels: Any,
    sequences: TokenBatch,
    sequence_labels: Any,
    aggregator: str,
    holdout_fraction: float = 0.2,
    seed: int = 0,
    n_bins: int = 15,
) -> ValidationResult:
    """One temperature for multiple-choice and target examples together, gated.

    Examples are split once (seeded) over the concatenation [choice rows,
    target rows]; the fit minimises (n_mc * multiclass NLL + n_seq * sequence
    NLL) / n on the training part with the library's bracketed Newton; the
    gate compares pooled held-out metrics at T = 1 and at the fit.
    """
    started = time.perf_counter()
    z, y = prepare_logits(choice_logits, choice_labels)
    seqs, seq_labels = sequences, np.asarray(sequence_labels, dtype=np.float64)
    seqs.check_values()
    n_mc = z.shape[0]
    train, hold = holdout_split(n_mc + seqs.n_generations, holdout_fraction, seed)
    mc_train, mc_hold = train[train < n_mc], hold[hold < n_mc]
    seq_train, seq_hold = train[train >= n_mc] - n_mc, hold[hold >= n_mc] - n_mc

    parts: list[tuple[int, Any]] = []
    if mc_train.size:
        parts.append((int(mc_train.size), _multiclass_objective(z[mc_train], y[mc_train])))
    if seq_train.size:
        seq_data = prepare(seqs.subset(seq_train), seq_labels[seq_train], aggregator)
        parts.append((int(seq_train.size), NumpyObjective(seq_data)))
    total = sum(n for n, _ in parts)

    def objective(theta: float) -> tuple[float, float, float]:
        f = g = h = 0.0
        for n, fgh in parts:
            fi, gi, hi = fgh(theta)
            f, g, h = f + n * fi, g + n * gi, h + n * hi
        return f / total, g / total, h / total

    theta, _, _, _ = minimise_theta(objective, 0.0)
    temperature = float(min(max(math.exp(theta), T_MIN), T_MAX))

    def evaluate(t: float) -> dict[str, Any]:
        mc_conf, mc_right = _top_label(scaled_probabilities(z[mc_hold], t), y[mc_hold])
        conf = np.concatenate([mc_conf, sequence_confidences(seqs.subset(seq_hold), t, aggregator)])
        right = np.concatenate([mc_right, seq_labels[seq_hold]])
        keep = np.isfinite(conf)
        return _with_counts(_metrics(conf[keep], right[keep], n_bins), train, hold)

    before, after = evaluate(1.0), evaluate(temperature)
    accepted, reason = gate(before, after)
    return ValidationResult(
        accepted=accepted,
        reason=reason,
        method="temperature",
        temperature=temperature,
        current_temperature=1.0,
        before=before,
        after=after,
        n_train=int(train.size),
        n_holdout=int(hold.size),
        seconds=time.perf_counter() - started,
    )
