"""Packed per-token logprob storage and the ragged batch the fitter works on.

Logprob-heavy responses are ~100 KB of JSON per 200-token generation; storing
that per row would dominate the database. Per generation we keep three binary
arrays (DESIGN.md: at most 16 bytes per generated token at K=5):

* ``chosen``      float32 (n,)   logprob of the token actually generated
* ``top``         float16 (n, K) top-K logprobs, missing entries as -inf
* ``chosen_rank`` int8    (n,)   column of the chosen token in ``top``, or -1
                                 when it is not among them (then it is the
                                 K+1-th member of the renormalisation set)

That is 4 + 2K + 1 = 15 bytes per token at K=5, plus a 12-byte header.
float16 is ample for logprobs that only enter a renormalisation (relative
error ~5e-4 on values that are mostly within [-30, 0]); the chosen logprob
keeps float32 because it feeds the raw confidence directly.

``TokenBatch`` concatenates many generations into flat arrays with offsets so
fitting over 100k generations is a handful of numpy calls, not a Python loop.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from monitor.calibration._arrays import ragged_index

MAGIC = b"TK"
VERSION = 1
_HEADER = struct.Struct("<2sBBIH2x")  # magic, version, flags, n, K, pad -> 12 bytes
HEADER_SIZE = _HEADER.size
# vLLM reports alternatives it could not compute as -9999.0; anything at or
# below this is treated as "no entry".
SENTINEL_THRESHOLD = -9990.0

Unpacked = tuple[np.ndarray, np.ndarray, np.ndarray]


def _clean_top(top: Any) -> np.ndarray:
    arr = np.array(top, dtype=np.float32, copy=True)
    arr[~np.isfinite(arr) | (arr <= SENTINEL_THRESHOLD)] = -np.inf
    return arr


def pack_token_logprobs(chosen: Any, top: Any, chosen_rank: Any) -> bytes:
    """Serialise one generation's arrays (see module docstring) into bytes."""
    c = np.ascontiguousarray(chosen, dtype="<f4").reshape(-1)
    t = _clean_top(top)
    if t.ndim != 2:
        t = t.reshape(c.shape[0], -1) if t.size else np.zeros((c.shape[0], 0), np.float32)
    r = np.asarray(chosen_rank, dtype=np.int64).reshape(-1)
    n, k = t.shape
    if c.shape[0] != n or r.shape[0] != n:
        raise ValueError(f"length mismatch: chosen {c.shape[0]}, top {n}, chosen_rank {r.shape[0]}")
    if k > 127:
        raise ValueError(f"K must be at most 127, got {k}")
    if ((r < -1) | (r >= k)).any():
        raise ValueError("chosen_rank must be -1 or a column of top")
    head = _HEADER.pack(MAGIC, VERSION, 0, n, k)
    return b"".join((head, c.tobytes(), t.astype("<f2").tobytes(), r.astype(np.int8).tobytes()))


def unpack_token_logprobs(blob: bytes) -> Unpacked:
    """Inverse of :func:`pack_token_logprobs`; returns read-only views into ``blob``."""
    if len(blob) < HEADER_SIZE:
        raise ValueError("packed logprobs: blob shorter than its header")
    magic, version, _flags, n, k = _HEADER.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ValueError("packed logprobs: bad magic")
    if version != VERSION:
        raise ValueError(f"packed logprobs: unsupported version {version}")
    expected = HEADER_SIZE + n * (4 + 2 * k + 1)
    if len(blob) != expected:
        raise ValueError(f"packed logprobs: expected {expected} bytes, got {len(blob)}")
    off = HEADER_SIZE
    chosen = np.frombuffer(blob, dtype="<f4", count=n, offset=off)
    off += 4 * n
    top = np.frombuffer(blob, dtype="<f2", count=n * k, offset=off).reshape(n, k)
    off += 2 * n * k
    rank = np.frombuffer(blob, dtype=np.int8, count=n, offset=off)
    return chosen, top, rank


def from_openai_logprobs(content: Sequence[dict[str, Any]], k: int) -> Unpacked:
    """Arrays from OpenAI-format ``choices[i].logprobs.content``.

    Each entry is ``{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}``.
    A position may carry more than K alternatives (vLLM appends the sampled
    token); the K largest are kept. The chosen token is located by token
    string equality; if it is not among the kept K its rank is -1.
    """
    n = len(content)
    chosen = np.empty(n, dtype=np.float32)
    top = np.full((n, k), -np.inf, dtype=np.float32)
    rank = np.full(n, -1, dtype=np.int8)
    for i, entry in enumerate(content):
        lp = entry.get("logprob")
        chosen[i] = -math.inf if lp is None or lp <= SENTINEL_THRESHOLD else lp
        alts = [
            (float(a["logprob"]), a.get("token"))
            for a in entry.get("top_logprobs") or ()
            if a.get("logprob") is not None and a["logprob"] > SENTINEL_THRESHOLD
        ]
        alts.sort(key=lambda a: -a[0])
        tok = entry.get("token")
        for j, (val, alt_tok) in enumerate(alts[:k]):
            top[i, j] = val
            if rank[i] < 0 and alt_tok == tok:
                rank[i] = j
    return chosen, top, rank


@dataclass
class TokenBatch:
    """Many generations' token arrays, concatenated.

    ``offsets`` has n_generations + 1 entries; generation g owns positions
    ``offsets[g]:offsets[g+1]``. ``span_start``/``span_end`` (relative to the
    generation, -1 when absent) mark the answer tokens for ``answer_span``.
    """

    chosen: np.ndarray  # float32 (P,)
    top: np.ndarray  # float16 or float32 (P, K)
    chosen_rank: np.ndarray  # int8 (P,)
    offsets: np.ndarray  # int64 (G + 1,)
    span_start: np.ndarray  # int64 (G,)
    span_end: np.ndarray  # int64 (G,)

    def __post_init__(self) -> None:
        self.offsets = np.asarray(self.offsets, dtype=np.int64)
        g = self.offsets.shape[0] - 1
        if g < 0 or self.offsets[0] != 0 or (np.diff(self.offsets) < 0).any():
            raise ValueError("offsets must start at 0 and be non-decreasing")
        p = int(self.offsets[-1])
        if self.chosen.shape[0] != p or self.top.shape[0] != p or self.chosen_rank.shape[0] != p:
            raise ValueError("token arrays do not match offsets")
        self.span_start = np.asarray(self.span_start, dtype=np.int64)
        self.span_end = np.asarray(self.span_end, dtype=np.int64)
        if self.span_start.shape != (g,) or self.span_end.shape != (g,):
            raise ValueError("span arrays must have one entry per generation")

    @property
    def n_generations(self) -> int:
        return int(self.offsets.shape[0] - 1)

    @property
    def n_positions(self) -> int:
        return int(self.offsets[-1])

    @property
    def k(self) -> int:
        return int(self.top.shape[1])

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @classmethod
    def from_generations(
        cls,
        generations: Iterable[Unpacked],
        spans: Sequence[tuple[int, int] | None] | None = None,
    ) -> TokenBatch:
        """Concatenate unpacked generations (e.g. from many blobs) in one go."""
        gens = list(generations)
        if not gens:
            raise ValueError("no generations")
        ks = {np.shape(t)[1] for _, t, _ in gens if np.ndim(t) == 2}
        if len(ks) > 1:
            raise ValueError(f"generations have different K: {sorted(ks)}")
        lengths = np.fromiter((len(c) for c, _, _ in gens), dtype=np.int64, count=len(gens))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        starts = np.full(len(gens), -1, dtype=np.int64)
        ends = np.full(len(gens), -1, dtype=np.int64)
        if spans is not None:
            if len(spans) != len(gens):
                raise ValueError("spans must have one entry per generation")
            for i, sp in enumerate(spans):
                if sp is not None:
                    starts[i], ends[i] = sp
        return cls(
            chosen=np.concatenate([np.asarray(c, dtype=np.float32) for c, _, _ in gens]),
            top=np.concatenate([np.asarray(t) for _, t, _ in gens]),
            chosen_rank=np.concatenate([np.asarray(r, dtype=np.int8) for _, _, r in gens]),
            offsets=offsets,
            span_start=starts,
            span_end=ends,
        )

    @classmethod
    def from_blobs(
        cls, blobs: Iterable[bytes], spans: Sequence[tuple[int, int] | None] | None = None
    ) -> TokenBatch:
        return cls.from_generations((unpack_token_logprobs(b) for b in blobs), spans)

    def _unusable(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(array name, values, per-row mask of NaN or +inf) for chosen and top-K.

        -inf (a missing alternative, or a chosen token of probability 0) and
        vLLM's -9999.0 sentinels are legitimate. float16 is tested on its bit
        pattern (numpy's float16 comparisons are ~10x slower).
        """
        out = []
        for name, values in (("chosen logprobs", self.chosen), ("top-K logprobs", self.top)):
            arr = np.asarray(values)
            if arr.dtype == np.float16:
                bits = arr.view(np.uint16)  # exponent all ones: inf or NaN; 0xFC00 is -inf
                bad = ((bits & 0x7FFF) >= 0x7C00) & (bits != 0xFC00)
            else:
                bad = ~(arr < np.inf)  # NaN and +inf; -inf < inf
            out.append((name, arr, bad.reshape(arr.shape[0], -1).any(axis=1)))
        return out

    def check_values(self) -> None:
        """Refuse NaN and +inf logprobs (ValueError naming the array and generation).

        NaN or +inf has no renormalised probability: a fit over it would return
        a T that means nothing, so the fitter calls this first.
        """
        for name, arr, bad in self._unusable():
            if bad.any():
                position = int(np.flatnonzero(bad)[0])
                value = arr.reshape(arr.shape[0], -1)[position]
                what = "NaN" if np.isnan(value.astype(np.float32)).any() else "+inf"
                gen = int(np.searchsorted(self.offsets, position, side="right")) - 1
                token = position - int(self.offsets[gen])
                raise ValueError(f"{name} contain {what} (generation {gen}, token {token})")

    def usable_generations(self) -> np.ndarray:
        """Indices of the generations with no NaN or +inf logprob (see `check_values`)."""
        bad = np.zeros(self.n_positions, dtype=bool)
        for _, _, rows in self._unusable():
            bad |= rows
        before = np.concatenate(([0], np.cumsum(bad)))  # bad positions before each offset
        return np.flatnonzero(before[self.offsets[1:]] == before[self.offsets[:-1]])

    def subset(self, index: Any) -> TokenBatch:
        """The generations at ``index`` (any integer index), in that order."""
        idx = np.asarray(index, dtype=np.int64).reshape(-1)
        lengths = self.lengths[idx]
        pos = ragged_index(self.offsets[idx], lengths)
        return TokenBatch(
            chosen=self.chosen[pos],
            top=self.top[pos],
            chosen_rank=self.chosen_rank[pos],
            offsets=np.concatenate(([0], np.cumsum(lengths))),
            span_start=self.span_start[idx],
            span_end=self.span_end[idx],
        )
