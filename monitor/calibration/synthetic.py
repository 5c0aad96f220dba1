"""Synthetic data with a known true temperature, for tests, benchmarks and demos.

Recovering a planted T* is the only end-to-end check of a fitter that does not
depend on the fitter itself: labels are drawn from the calibrated confidence
at T*, so the best temperature in expectation is T*.
"""

from __future__ import annotations

import numpy as np

from monitor.calibration.aggregation import sequence_confidences
from monitor.calibration.packing import TokenBatch


def synthetic_logits(
    n: int, n_classes: int, true_temperature: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Logits (n, C) and labels drawn from softmax(logits / T*)."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 4.0, size=(n, 1))  # varied sharpness -> varied confidence
    z = rng.normal(size=(n, n_classes)) * scale
    p = np.exp(z / true_temperature - (z / true_temperature).max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = (rng.random((n, 1)) > np.cumsum(p, axis=1)).sum(axis=1)
    return z, np.minimum(labels, n_classes - 1)


def synthetic_token_batch(
    n_generations: int,
    n_tokens: int,
    k: int = 5,
    true_temperature: float = 1.0,
    aggregator: str = "geometric_mean",
    seed: int = 0,
    sharpness: tuple[float, float] = (0.1, 9.0),
) -> tuple[TokenBatch, np.ndarray]:
    """A TokenBatch of top-K logprobs and labels ~ Bernoulli(confidence at T*).

    Each generation has its own sharpness so that confidences spread over
    (0, 1); each position's logprobs are normalised over the top-K plus a tail
    of 50 unseen tokens, and the chosen token is sampled from that
    distribution (sometimes from the tail: rank -1).
    """
    rng = np.random.default_rng(seed)
    g, n = n_generations, n_tokens
    p = g * n
    sharp = np.repeat(rng.uniform(*sharpness, size=g), n).astype(np.float32)[:, None]
    gaps = rng.exponential(1.0, size=(p, k)).astype(np.float32) * sharp
    gaps[:, 0] = 0.0
    z = -np.cumsum(gaps, axis=1)
    tail = z[:, -1] - sharp[:, 0] + np.log(50.0)  # log of the tail's total mass
    lse = np.logaddexp(np.log(np.exp(z).sum(axis=1)), tail)
    top = (z - lse[:, None]).astype(np.float32)
    probs = np.exp(top)
    u = rng.random(p)
    rank = (u[:, None] > np.cumsum(probs, axis=1)).sum(axis=1)
    in_top = rank < k
    chosen = np.where(
        in_top,
        top[np.arange(p), np.minimum(rank, k - 1)],
        top[:, -1] - sharp[:, 0] * (1.0 + rng.exponential(1.0, size=p)),
    ).astype(np.float32)
    batch = TokenBatch(
        chosen=chosen,
        top=top.astype(np.float16),
        chosen_rank=np.where(in_top, rank, -1).astype(np.int8),
        offsets=np.arange(0, p + 1, n, dtype=np.int64),
        span_start=np.full(g, max(0, n - 3), dtype=np.int64),  # last 3 tokens are "the answer"
        span_end=np.full(g, n, dtype=np.int64),
    )
    conf = sequence_confidences(batch, true_temperature, aggregator)
    labels = (rng.random(g) < conf).astype(np.float64)
    return batch, labels
