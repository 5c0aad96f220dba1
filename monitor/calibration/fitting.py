"""Temperature fitting: classic multiclass and the production sequence path.

T = exp(theta) minimises the mean NLL, clamped to [0.05, 20]. The optimiser is
a bracketed (safeguarded) Newton method on theta using exact first and second
derivatives: a 1-D problem does not need LBFGS, and the reference recipe
(LBFGS lr=0.01, max_iter=50) stops far from the optimum. The bracket keeps
derivative < 0 on its left end and > 0 on its right, so every step either is a
Newton step inside it or a bisection: it converges to a local minimum, never
to a maximum, and it is deterministic. A minimum beyond the clamp returns the
bound.

For the sequence path on large batches a seeded subsample of generations
gives a warm start, after which the full data needs ~3 Newton passes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monitor.calibration._arrays import as_probabilities, to_numpy
from monitor.calibration._sequence_objective import (
    NumpyObjective,
    SequenceData,
    TorchObjective,
    prepare,
)
from monitor.calibration.aggregation import check_aggregator
from monitor.calibration.packing import TokenBatch

T_MIN, T_MAX = 0.05, 20.0
Objective = Callable[[float], tuple[float, float, float]]


@dataclass(frozen=True)
class TemperatureFit:
    temperature: float
    nll_before: float  # at the starting (current) temperature
    nll_after: float
    iterations: int  # objective passes over the full data
    device: str
    seconds: float
    converged: bool

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_device(device: str) -> str:
    """'cpu', 'cuda' (error if absent) or 'auto' (cuda when torch sees one)."""
    if device == "cpu":
        return "cpu"
    if device not in ("cuda", "auto") and not device.startswith("cuda:"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {device!r}")
    try:
        import torch

        available = bool(torch.cuda.is_available())
    except ImportError:
        available = False
    if device == "auto":
        return "cuda" if available else "cpu"
    if not available:
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def minimise_theta(
    fgh: Objective,
    theta0: float = 0.0,
    lo: float = math.log(T_MIN),
    hi: float = math.log(T_MAX),
    tol: float = 1e-7,
    max_iter: int = 60,
) -> tuple[float, float, int, bool]:
    """Bracketed Newton on a scalar; returns (theta, f(theta), evaluations, converged)."""
    a, b = lo, hi
    a_hit = b_hit = False  # whether a domain bound has itself been evaluated
    x = min(max(theta0, lo), hi)
    f = math.inf
    for it in range(1, max_iter + 1):
        f, g, h = fgh(x)
        if g > 0:
            b, b_hit = x, True
        elif g < 0:
            a, a_hit = x, True
        else:
            return x, f, it, True
        if b - a <= tol:
            return x, f, it, True
        xn = x - g / h if h > 0 else math.nan
        if not a < xn < b:
            # Past an untouched domain bound: try the bound itself (a clamped
            # optimum then ends in one step); otherwise bisect.
            if g < 0 and b == hi and not b_hit:
                xn = hi
            elif g > 0 and a == lo and not a_hit:
                xn = lo
            else:
                xn = 0.5 * (a + b)
        if (x == hi and g < 0) or (x == lo and g > 0):
            return x, f, it, True  # optimum beyond the clamp
        if abs(xn - x) <= tol:
            return xn, f, it, True
        x = xn
    return x, f, max_iter, False


# --------------------------------------------------------------------- multiclass
def _multiclass_objective(z: np.ndarray, y: np.ndarray) -> Objective:
    """Mean softmax NLL of logits z/T and its theta-derivatives (numpy float64)."""
    zy = z[np.arange(z.shape[0]), y]

    def fgh(theta: float) -> tuple[float, float, float]:
        u = math.exp(-theta)
        s = u * z
        m = s.max(axis=1, keepdims=True)
        w = np.exp(s - m)
        zs = w.sum(axis=1)
        lse = m[:, 0] + np.log(zs)
        w /= zs[:, None]
        ez = (w * z).sum(axis=1)
        var = (w * z * z).sum(axis=1) - ez * ez
        f_u = float(np.mean(ez - zy))
        f_uu = float(np.mean(var))
        return float(np.mean(lse - u * zy)), -u * f_u, u * u * f_uu + u * f_u

    return fgh


def _torch_multiclass_objective(z: np.ndarray, y: np.ndarray, device: str) -> Objective:
    import torch

    zt = torch.from_numpy(z).to(device, torch.float64)
    zy = zt[torch.arange(z.shape[0], device=device), torch.from_numpy(y).to(device)]

    def fgh(theta: float) -> tuple[float, float, float]:
        u = math.exp(-theta)
        s = u * zt
        w = torch.softmax(s, dim=1)
        ez = (w * zt).sum(1)
        var = (w * zt * zt).sum(1) - ez * ez
        f_u = float((ez - zy).mean())
        f_uu = float(var.mean())
        f = float((torch.logsumexp(s, 1) - u * zy).mean())
        return f, -u * f_u, u * u * f_uu + u * f_u

    return fgh


def prepare_logits(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated float64 logits (N, C), rows shifted to max 0, -inf padding finite.

    -inf is a masked class (ragged choice sets are padded with it): allowed
    while its row keeps a finite logit and the label's logit is finite. NaN
    and +inf have no softmax (shifting by the row max makes them NaN), so
    they are refused rather than fitted into a meaningless T.
    """
    z = to_numpy(logits)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with N >= 1, C >= 2; got {z.shape}")
    if np.isnan(z).any():
        raise ValueError(f"logits contain NaN (row {int(np.argwhere(np.isnan(z))[0, 0])})")
    if np.isposinf(z).any():
        raise ValueError(f"logits contain +inf (row {int(np.argwhere(np.isposinf(z))[0, 0])})")
    masked = np.isneginf(z).all(axis=1)
    if masked.any():
        raise ValueError(f"logits row {int(np.flatnonzero(masked)[0])} has no finite value")
    y = to_numpy(labels, np.float64).reshape(-1)
    if y.shape[0] != z.shape[0]:
        raise ValueError(f"length mismatch: {z.shape[0]} logits rows but {y.shape[0]} labels")
    if np.isnan(y).any() or (y != np.round(y)).any() or (y < 0).any() or (y >= z.shape[1]).any():
        raise ValueError(f"labels must be integers in [0, {z.shape[1] - 1}]")
    yi = y.astype(np.int64)
    z = z - z.max(axis=1, keepdims=True)
    if np.isinf(z[np.arange(z.shape[0]), yi]).any():
        raise ValueError("a label points at a -inf logit")
    # -inf pads ragged choice sets; -1e4 keeps w * z finite and exp(-1e4/T) ~ 0.
    return np.where(np.isfinite(z), z, -1.0e4), yi


def fit_temperature_detailed(
    logits: Any, labels: Any, device: str = "cpu", current_temperature: float = 1.0
) -> TemperatureFit:
    """Classic temperature scaling of multiclass logits (N, C) with integer labels."""
    t0 = time.perf_counter()
    z, y = prepare_logits(logits, labels)
    dev = resolve_device(device)
    fgh = _multiclass_objective(z, y) if dev == "cpu" else _torch_multiclass_objective(z, y, dev)
    before = fgh(math.log(current_temperature))[0]
    theta, _, iters, ok = minimise_theta(fgh, math.log(current_temperature))
    return TemperatureFit(
        temperature=float(min(max(math.exp(theta), T_MIN), T_MAX)),
        nll_before=before,
        nll_after=fgh(theta)[0],
        iterations=iters,
        device=dev,
        seconds=time.perf_counter() - t0,
        converged=ok,
    )


def fit_temperature(logits: Any, labels: Any, device: str = "cpu") -> float:
    """Temperature minimising the NLL of softmax(logits / T); see the contract."""
    return fit_temperature_detailed(logits, labels, device=device).temperature


def multiclass_nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    z, y = prepare_logits(logits, labels)
    return _multiclass_objective(z, y)(math.log(temperature))[0]


# ----------------------------------------------------------------------- sequence
def _objective(data: SequenceData, dev: str, engine: str) -> NumpyObjective | TorchObjective:
    if engine == "auto":
        engine = "numpy" if dev == "cpu" else "torch"
    if engine == "numpy":
        if dev != "cpu":
            raise ValueError("the numpy engine runs on the CPU only")
        return NumpyObjective(data)
    if engine == "torch":
        return TorchObjective(data, dev)
    raise ValueError(f"engine must be 'auto', 'numpy' or 'torch', got {engine!r}")


def fit_sequence_temperature(
    batch: TokenBatch,
    labels: Any,
    aggregator: str = "geometric_mean",
    device: str = "cpu",
    current_temperature: float = 1.0,
    engine: str = "auto",
    warm_start_generations: int = 8192,
    seed: int = 0,
) -> TemperatureFit:
    """Fit T for sequence confidences (top-K renormalised, aggregated) vs labels.

    Loss: binary cross-entropy of each generation's confidence at T against
    its label (0/1 or a soft score). Generations with no tokens to aggregate
    are ignored.
    """
    t0 = time.perf_counter()
    check_aggregator(aggregator)
    y = as_probabilities(labels, "labels")
    if y.shape[0] != batch.n_generations:
        raise ValueError(
            f"length mismatch: {batch.n_generations} generations but {y.shape[0]} labels"
        )
    if not current_temperature > 0:
        raise ValueError("current_temperature must be positive")
    batch.check_values()
    dev = resolve_device(device)
    data = prepare(batch, y, aggregator)
    nonempty = np.flatnonzero(np.diff(data.offsets) > 0)
    if nonempty.shape[0] == 0:
        raise ValueError("no generation has tokens to aggregate")
    if nonempty.shape[0] < data.n_generations:
        data = data.subset(nonempty)
    theta0 = math.log(current_temperature)
    start = theta0
    if data.n_generations > 2 * warm_start_generations:
        rng = np.random.default_rng(seed)
        pick = np.sort(rng.choice(data.n_generations, warm_start_generations, replace=False))
        start, _, _, _ = minimise_theta(
            _objective(data.subset(pick), dev, engine), theta0, tol=1e-4
        )
    obj = _objective(data, dev, engine)
    before = obj(theta0)[0]
    theta, after, iters, ok = minimise_theta(obj, start)
    return TemperatureFit(
        temperature=float(min(max(math.exp(theta), T_MIN), T_MAX)),
        nll_before=before,
        nll_after=after,
        iterations=iters,
        device=dev,
        seconds=time.perf_counter() - t0,
        converged=ok,
    )
