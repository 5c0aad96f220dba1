"""Vector scaling: per-class bias plus a shared temperature, softmax(z / T + b).

Applies only where full logits over a fixed label set exist (offline
calibration sets, multiple choice). The C extra parameters overfit small
sets, so the bias is L2-regularised and below a per-class sample threshold we
fall back to plain temperature scaling and say so in the result.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monitor.calibration.fitting import T_MAX, T_MIN, fit_temperature_detailed, prepare_logits


@dataclass(frozen=True)
class VectorScalingFit:
    method: str  # "vector" or "temperature" (the fallback actually used)
    temperature: float
    bias: list[float] = field(default_factory=list)  # zeros for the fallback
    nll_before: float = math.nan
    nll_after: float = math.nan
    n: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def scaled_probabilities(logits: Any, temperature: float, bias: Any = None) -> np.ndarray:
    """softmax(logits / T + b), float64 (N, C); -inf logits get probability 0."""
    z = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits, np.float64)
    s = z / temperature + (0.0 if bias is None else np.asarray(bias, np.float64))
    s = s - s.max(axis=1, keepdims=True)
    p = np.exp(s)
    return np.asarray(p / p.sum(axis=1, keepdims=True))


def _nll(z: np.ndarray, y: np.ndarray, t: float, b: np.ndarray) -> float:
    p = scaled_probabilities(z, t, b)
    return float(-np.mean(np.log(np.maximum(p[np.arange(y.shape[0]), y], 1e-300))))


def fit_vector_scaling(
    logits: Any,
    labels: Any,
    min_per_class: int = 50,
    l2: float = 1e-3,
    max_iter: int = 200,
) -> VectorScalingFit:
    """Fit (T, b) by LBFGS (strong Wolfe) on the regularised mean NLL.

    Falls back to temperature scaling when any class has fewer than
    ``min_per_class`` examples.
    """
    z, y = prepare_logits(logits, labels)
    n, c = z.shape
    counts = np.bincount(y, minlength=c)
    zero = np.zeros(c)
    before = _nll(z, y, 1.0, zero)
    if counts.min() < min_per_class:
        tf = fit_temperature_detailed(z, y)
        return VectorScalingFit(
            method="temperature",
            temperature=tf.temperature,
            bias=zero.tolist(),
            nll_before=before,
            nll_after=tf.nll_after,
            n=n,
            reason=f"fewest examples in a class is {int(counts.min())} < {min_per_class}",
        )
    import torch

    # Start from the temperature-scaling optimum: the bias then only corrects
    # per-class offsets, and LBFGS starts in the right basin.
    t0 = fit_temperature_detailed(z, y).temperature
    zt = torch.from_numpy(z)
    yt = torch.from_numpy(y)
    theta = torch.tensor([math.log(t0)], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [theta, bias],
        lr=1.0,
        max_iter=max_iter,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-10,
        tolerance_change=1e-12,
    )

    def closure() -> Any:
        opt.zero_grad()
        logit = zt * torch.exp(-theta) + bias
        loss = torch.nn.functional.cross_entropy(logit, yt) + l2 * (bias * bias).sum()
        loss.backward()
        return loss

    opt.step(closure)
    t = float(min(max(math.exp(float(theta.detach())), T_MIN), T_MAX))
    b = bias.detach().numpy().copy()
    b -= b.mean()  # softmax is shift-invariant: report the centred bias
    return VectorScalingFit(
        method="vector",
        temperature=t,
        bias=b.tolist(),
        nll_before=before,
        nll_after=_nll(z, y, t, b),
        n=n,
        reason="",
    )
