"""Input conversion and validation shared by every calibration module.

Callers hand us numpy arrays, plain lists or torch tensors (the worker keeps
tensors around). Everything is converted to float64 numpy here, once, so the
maths below never has to care, and so every public function rejects bad input
with the same one-line messages (the CLI shows them verbatim).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Convert a list, numpy array or torch tensor to a numpy array of ``dtype``."""
    if hasattr(x, "detach"):  # torch tensor: no torch import needed
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def as_probabilities(x: Any, name: str) -> FloatArray:
    """A 1-D float64 array of values in [0, 1]; ValueError naming the problem otherwise."""
    try:
        arr = to_numpy(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.ndim == 0 else arr
        if arr.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    if (arr < 0.0).any() or (arr > 1.0).any():
        bad = arr[(arr < 0.0) | (arr > 1.0)][0]
        raise ValueError(f"{name} has a value outside [0, 1]: {bad!r}")
    return arr


def confidences_and_labels(confidences: Any, labels: Any) -> tuple[FloatArray, FloatArray]:
    """Validate a (confidence, label) pair: same length, no NaN, all in [0, 1]."""
    conf = as_probabilities(confidences, "confidences")
    lab = as_probabilities(labels, "labels")
    if conf.shape != lab.shape:
        raise ValueError(f"length mismatch: {conf.shape[0]} confidences but {lab.shape[0]} labels")
    return conf, lab


def check_n_bins(n_bins: int) -> int:
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


def ragged_index(starts: IntArray, lengths: IntArray) -> IntArray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    seg_first = np.cumsum(lengths) - lengths  # where each segment begins in the output
    shift = np.asarray(starts, dtype=np.int64) - seg_first
    return np.repeat(shift, lengths) + np.arange(total, dtype=np.int64)
