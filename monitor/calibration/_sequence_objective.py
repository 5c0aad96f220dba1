"""The sequence-temperature objective with exact first and second derivatives.

Fitting T over 100k generations x 200 tokens means 20M positions; a single
pass over them costs hundreds of milliseconds on a small CPU, so the fitter
must need few passes. We therefore evaluate loss, gradient and curvature in
one pass (with respect to theta = log T) and let a safeguarded Newton method
converge in a handful of passes instead of the dozens a derivative-free search
or LBFGS with autograd would need.

Per position, with u = 1/T, d_j = l_j - max_j l_j (<= 0) over the
renormalisation set and d_c the chosen token's:

    log p = u d_c - log Z,    Z = sum_j exp(u d_j)
    d/du log p   = d_c - E[d]          (E under the tempered distribution)
    d2/du2 log p = -Var[d]

The set's maximum contributes exactly 1 to Z, so it is dropped from storage:
K-1 dense columns remain (transposed so each column is contiguous), plus a
sparse list for the rare positions whose chosen token is outside the top-K.
Missing entries become -1e4, whose exp underflows to 0 for every allowed T,
keeping d * exp(u d) finite (0 * -inf would be NaN).

Two engines share this layout: numpy (CPU, float32 per position, chunks
aligned to generations so temporaries stay in cache, two threads) and torch
(CUDA or CPU, float64). Per-generation quantities are float64 in both.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.calibration._arrays import ragged_index
from monitor.calibration.aggregation import selected_positions
from monitor.calibration.packing import TokenBatch

MISSING = -1.0e4
EPS = 1e-12
_CHUNK = 1 << 16  # ~64k positions: per-column temporaries of 256 KB stay in L2


@dataclass
class SequenceData:
    """Precomputed, T-independent arrays over the aggregator's positions."""

    dense: np.ndarray  # float32 (K-1, P): d_j of the non-max set members
    dc: np.ndarray  # float32 (P,): d of the chosen token
    sparse_pos: np.ndarray  # int64 (S,): positions with one more set member
    sparse_d: np.ndarray  # float32 (S,)
    offsets: np.ndarray  # int64 (G+1,) into the positions
    labels: np.ndarray  # float64 (G,)
    aggregator: str

    @property
    def n_generations(self) -> int:
        return int(self.offsets.shape[0] - 1)

    def subset(self, gens: np.ndarray) -> SequenceData:
        lengths = np.diff(self.offsets)[gens]
        pos = ragged_index(self.offsets[:-1][gens], lengths)
        inverse = np.full(self.dc.shape[0], -1, dtype=np.int64)
        inverse[pos] = np.arange(pos.shape[0])
        new_sparse = inverse[self.sparse_pos]
        keep = new_sparse >= 0
        order = np.argsort(new_sparse[keep], kind="stable")
        return SequenceData(
            dense=np.ascontiguousarray(self.dense[:, pos]),
            dc=self.dc[pos],
            sparse_pos=new_sparse[keep][order],
            sparse_d=self.sparse_d[keep][order],
            offsets=np.concatenate(([0], np.cumsum(lengths))),
            labels=self.labels[gens],
            aggregator=self.aggregator,
        )


def prepare(batch: TokenBatch, labels: np.ndarray, aggregator: str) -> SequenceData:
    """One pass over the batch building :class:`SequenceData` (chunked, float64 maths)."""
    pos, seg = selected_positions(batch, aggregator)
    p, k = pos.shape[0], batch.k
    dense = np.empty((k, p), dtype=np.float32)
    dc = np.empty(p, dtype=np.float32)
    extra = np.empty(p, dtype=np.float32)
    every = p == batch.n_positions  # all positions: slices instead of gathers
    step = 1 << 18
    for lo in range(0, p, step):
        hi = min(p, lo + step)
        sel: Any = slice(lo, hi) if every else pos[lo:hi]
        c = np.asarray(batch.chosen[sel], dtype=np.float32)
        r = np.asarray(batch.chosen_rank[sel], dtype=np.int64)
        # The renormalisation set, one contiguous row per member (column-wise
        # numpy ops are several times faster than reductions over 6-wide rows).
        s = np.empty((k + 1, hi - lo), dtype=np.float32)
        s[:k] = np.asarray(batch.top[sel]).T
        s[k] = -np.inf
        s[np.where(r >= 0, r, k), np.arange(hi - lo)] = c
        m = s.max(axis=0)
        m[~np.isfinite(m)] = 0.0
        # Drop one maximal member per position (it contributes exactly 1 to Z):
        # the first maximum found is swapped into row 0, which is discarded.
        found = s[0] == m
        for j in range(1, k + 1):
            hit = (s[j] == m) & ~found
            s[j] = np.where(hit, s[0], s[j])
            found |= hit
        d = np.maximum(s[1:] - m, MISSING)  # -inf (missing) -> MISSING
        dense[: k - 1, lo:hi] = d[: k - 1]
        extra[lo:hi] = d[k - 1]
        # a chosen logprob of -inf (confidence 0 at every T) stays finite
        dc[lo:hi] = np.maximum(c - m, MISSING)
    sparse_pos = np.flatnonzero(extra > MISSING / 2)
    return SequenceData(
        dense=np.ascontiguousarray(dense[: k - 1]) if k > 1 else np.zeros((0, p), np.float32),
        dc=dc,
        sparse_pos=sparse_pos,
        sparse_d=extra[sparse_pos],
        offsets=seg,
        labels=np.asarray(labels, dtype=np.float64),
        aggregator=aggregator,
    )


def _generation_terms(
    lp: Any, lp_u: Any, lp_uu: Any, seg: np.ndarray, aggregator: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(G, dG/du, d2G/du2) per generation from per-position terms (numpy)."""
    lengths = np.diff(seg)
    starts = seg[:-1]
    if aggregator == "mean":
        p = np.exp(lp)
        c = np.add.reduceat(p, starts) / lengths
        cu = np.add.reduceat(p * lp_u, starts) / lengths
        cuu = np.add.reduceat(p * (lp_uu + lp_u * lp_u), starts) / lengths
        c = np.maximum(c, 1e-300)
        gu = cu / c
        return np.log(c), gu, cuu / c - gu * gu
    if aggregator == "min":
        g = np.minimum.reduceat(lp, starts).astype(np.float64)
        at_min = (lp == np.repeat(g.astype(lp.dtype), lengths)).astype(np.float64)
        cnt = np.add.reduceat(at_min, starts)
        gu = np.add.reduceat(at_min * lp_u, starts) / cnt
        return g, gu, np.add.reduceat(at_min * lp_uu, starts) / cnt
    n = lengths.astype(np.float64)
    return (
        np.add.reduceat(lp.astype(np.float64), starts) / n,
        np.add.reduceat(lp_u.astype(np.float64), starts) / n,
        np.add.reduceat(lp_uu.astype(np.float64), starts) / n,
    )


def loss_terms(
    g: np.ndarray, gu: np.ndarray, guu: np.ndarray, y: np.ndarray, u: float
) -> tuple[float, float, float]:
    """Mean binary log loss of exp(G) and its derivatives w.r.t. theta = log T."""
    lo, hi = np.log(EPS), np.log1p(-EPS)
    free = (g > lo) & (g < hi)  # clipped confidences have zero derivative
    gc = np.clip(g, lo, hi)
    q = np.exp(gc)
    loss = -(y * gc + (1.0 - y) * np.log(-np.expm1(gc)))
    dl = np.where(free, -y + (1.0 - y) * q / (1.0 - q), 0.0)
    d2l = np.where(free, (1.0 - y) * q / (1.0 - q) ** 2, 0.0)
    gu, guu = np.where(free, gu, 0.0), np.where(free, guu, 0.0)
    f_u = float(np.mean(dl * gu))
    f_uu = float(np.mean(d2l * gu * gu + dl * guu))
    return float(np.mean(loss)), -u * f_u, u * u * f_uu + u * f_u


class NumpyObjective:
    """CPU engine: float32 per position, generation-aligned chunks on a thread pool."""

    def __init__(self, data: SequenceData, threads: int | None = None) -> None:
        self.data = data
        off = data.offsets
        p = int(off[-1])
        # Chunk boundaries on generation boundaries, so reduceat stays chunk-local.
        marks = np.searchsorted(off, np.arange(0, p, _CHUNK), side="left")
        bounds = np.unique(np.concatenate((marks, [off.shape[0] - 1])))
        self.chunks = [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        # Measured: two threads gave no gain on a 2-core box (memory-bound), so 1 by default.
        self.threads = threads or 1
        self.evaluations = 0

    def _chunk(self, ga: int, gb: int, u: float) -> tuple[np.ndarray, ...]:
        d = self.data
        lo, hi = int(d.offsets[ga]), int(d.offsets[gb])
        uf = np.float32(u)
        z = np.ones(hi - lo, dtype=np.float32)
        s1 = np.zeros(hi - lo, dtype=np.float32)
        s2 = np.zeros(hi - lo, dtype=np.float32)
        e = np.empty(hi - lo, dtype=np.float32)
        for col in d.dense:
            c = col[lo:hi]
            np.multiply(c, uf, out=e)
            np.exp(e, out=e)
            z += e
            e *= c
            s1 += e
            e *= c
            s2 += e
        a, b = np.searchsorted(d.sparse_pos, [lo, hi])
        if b > a:
            idx = d.sparse_pos[a:b] - lo
            sd = d.sparse_d[a:b]
            es = np.exp(sd * uf)
            z[idx] += es
            s1[idx] += es * sd
            s2[idx] += es * sd * sd
        s1 /= z
        s2 /= z
        dc = d.dc[lo:hi]
        lp = dc * uf - np.log(z)
        lp_u = dc - s1
        lp_uu = s1 * s1 - s2
        return _generation_terms(lp, lp_u, lp_uu, d.offsets[ga : gb + 1] - lo, d.aggregator)

    def __call__(self, theta: float) -> tuple[float, float, float]:
        u = float(np.exp(-theta))
        self.evaluations += 1
        if self.threads > 1 and len(self.chunks) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                parts = list(pool.map(lambda ab: self._chunk(ab[0], ab[1], u), self.chunks))
        else:
            parts = [self._chunk(a, b, u) for a, b in self.chunks]
        g, gu, guu = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return loss_terms(g, gu, guu, self.data.labels, u)


class TorchObjective:
    """torch engine (CUDA or CPU), float64 throughout; segment sums by index_add_."""

    def __init__(self, data: SequenceData, device: str) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        dt = torch.float64

        def put(a: np.ndarray, dtype: Any = dt) -> Any:
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device, dtype)

        self.dense = put(data.dense)
        self.dc = put(data.dc)
        self.sparse_pos = put(data.sparse_pos, torch.int64)
        self.sparse_d = put(data.sparse_d)
        lengths = np.diff(data.offsets)
        self.lengths = put(lengths)
        self.seg_id = put(np.repeat(np.arange(lengths.shape[0]), lengths), torch.int64)
        self.n_gen = int(lengths.shape[0])
        self.data = data
        self.evaluations = 0

    def _segsum(self, x: Any) -> Any:
        out = self.torch.zeros(self.n_gen, dtype=x.dtype, device=self.device)
        return out.index_add_(0, self.seg_id, x)

    def __call__(self, theta: float) -> tuple[float, float, float]:
        torch = self.torch
        u = float(np.exp(-theta))
        self.evaluations += 1
        e = torch.exp(self.dense * u)
        z = 1.0 + e.sum(0)
        s1 = (e * self.dense).sum(0)
        s2 = (e * self.dense * self.dense).sum(0)
        if self.sparse_pos.numel():
            es = torch.exp(self.sparse_d * u)
            z.index_add_(0, self.sparse_pos, es)
            s1.index_add_(0, self.sparse_pos, es * self.sparse_d)
            s2.index_add_(0, self.sparse_pos, es * self.sparse_d * self.sparse_d)
        s1, s2 = s1 / z, s2 / z
        lp = self.dc * u - torch.log(z)
        lp_u = self.dc - s1
        lp_uu = s1 * s1 - s2
        n = self.lengths
        agg = self.data.aggregator
        if agg == "mean":
            p = torch.exp(lp)
            c = (self._segsum(p) / n).clamp_min(1e-300)
            gu = self._segsum(p * lp_u) / n / c
            guu = self._segsum(p * (lp_uu + lp_u * lp_u)) / n / c - gu * gu
            g = torch.log(c)
        elif agg == "min":
            g = torch.full((self.n_gen,), float("inf"), dtype=lp.dtype, device=self.device)
            g = g.scatter_reduce(0, self.seg_id, lp, reduce="amin")
            at = (lp == g[self.seg_id]).to(lp.dtype)
            cnt = self._segsum(at)
            gu, guu = self._segsum(at * lp_u) / cnt, self._segsum(at * lp_uu) / cnt
        else:
            g, gu, guu = self._segsum(lp) / n, self._segsum(lp_u) / n, self._segsum(lp_uu) / n
        to_np = [t.double().cpu().numpy() for t in (g, gu, guu)]
        return loss_terms(to_np[0], to_np[1], to_np[2], self.data.labels, u)
