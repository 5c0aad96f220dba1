"""Input conversion and validation shared by every calibration module.

Callers hand us numpy arrays, plain lists or torch tensors (the worker keeps
tensors around, LLM logits are often bfloat16, possibly on a GPU). Everything
is converted to float64 numpy here, once, so the maths below never has to
care, and so every public function rejects bad input with the same one-line
messages (the CLI shows them verbatim).

Widening is exact but not neutral for binning: a float32 "0.2" becomes
0.20000000298..., above the float64 edge 0.2. So the conversion also reports
the float type the values were written in (their *precision*), and binning
rounds its edges to it (`round_to`): a value typed as an edge then sits on
that edge whatever its dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


def numpy_and_precision(x: Any, dtype: Any = np.float64) -> tuple[np.ndarray, Any]:
    """``x`` as a numpy array of ``dtype``, and the float type its values were written in.

    The precision is a numpy float dtype, float64 for lists of Python floats and
    for integer or boolean input (exact), or the torch dtype of a tensor narrower
    than float32 (float16, bfloat16, float8): ``.numpy()`` refuses most of
    those, so they are widened to float32 first, which holds them exactly.
    ``.cpu()`` brings CUDA tensors over.
    """
    precision: Any = None
    if hasattr(x, "detach"):  # torch tensor: no torch import needed
        t = x.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:
            precision, t = t.dtype, t.float()
        x = t.numpy()
    raw = np.asarray(x)
    if precision is None:
        precision = raw.dtype if raw.dtype.kind == "f" else np.dtype(np.float64)
    # Non-float input goes the direct way, which numpy handles more leniently
    # (None -> NaN, reported as such, rather than a cast error).
    return np.asarray(raw if raw.dtype.kind == "f" else x, dtype=dtype), precision


def to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    """Convert a list, numpy array or torch tensor (any float dtype, any device) to ``dtype``."""
    return numpy_and_precision(x, dtype)[0]


def round_to(values: FloatArray, precision: Any) -> FloatArray:
    """``values`` as a number of type ``precision`` holds them, back in float64.

    Rounded by the library that rounded the input (numpy or torch), so the
    edge b / M comes out as exactly the value an input of that type holds for
    a typed "b / M".
    """
    if isinstance(precision, np.dtype):
        return values.astype(precision).astype(np.float64)
    import torch  # only reached with a torch dtype, so torch is already loaded

    return torch.from_numpy(values).to(precision).double().numpy()


def _probabilities(arr: np.ndarray, name: str) -> FloatArray:
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


def probabilities_and_precision(x: Any, name: str) -> tuple[FloatArray, Any]:
    """`as_probabilities`, plus the precision the values were written in."""
    try:
        arr, precision = numpy_and_precision(x)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric: {exc}") from None
    return _probabilities(arr, name), precision


def as_probabilities(x: Any, name: str) -> FloatArray:
    """A 1-D float64 array of values in [0, 1]; ValueError naming the problem otherwise."""
    return probabilities_and_precision(x, name)[0]


def confidences_and_labels(confidences: Any, labels: Any) -> tuple[FloatArray, FloatArray, Any]:
    """Validate a (confidence, label) pair: same length, no NaN, all in [0, 1].

    Also returns the confidences' precision, which width binning rounds its
    edges to (see the module docstring).
    """
    conf, precision = probabilities_and_precision(confidences, "confidences")
    lab = as_probabilities(labels, "labels")
    if conf.shape != lab.shape:
        raise ValueError(f"length mismatch: {conf.shape[0]} confidences but {lab.shape[0]} labels")
    return conf, lab, precision


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
