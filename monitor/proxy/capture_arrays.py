"""Capture's arrays from decoded logprobs: the pure-Python (numpy) path.

Where the C scanner (`capture.py`) is not built or not sure of a body, the
logprobs decoded by msgspec (`capture_structs`) become the `Captured` arrays
here: all numpy, no per-token Python loop, with token strings compared only in
the rows whose numbers do not settle the chosen token's rank. Streams end here
too (`stream_capture`), with every chunk's logprobs concatenated first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.proxy.capture_structs import (
    _LOGPROBS_DECODERS,
    SENTINEL,
    ChatLogprobNumbers,
    ChatLogprobs,
    CompletionLogprobs,
)
from monitor.proxy.captured import F32, I8


def _arrays(
    chosen_tok: list[str],
    chosen_lp: list[float | None],
    top_lp: list[float],
    counts: list[int],
    k: int | None,
    row_tokens: Callable[[int], list[str]],
) -> tuple[F32, F32, I8]:
    """(chosen, top, rank) from flat per-alternative logprobs; ``counts`` gives the row lengths.

    All numpy, no per-token Python loop: rows of unequal length (K and K+1 mixed)
    are scattered into -inf padding, unsorted rows sorted, then cut to K. The
    work is done alternatives-major, shape (alternatives, tokens): numpy reduces
    a short inner axis (K ~ 5) row by row, about five times slower than it
    reduces the long one, and this runs on every proxied response.

    The rank is the column of the first alternative whose token string is the
    chosen token. Strings are compared only where the numbers do not settle it:
    a row whose alternatives hold exactly one bit-equal copy of the chosen
    logprob, above the row's lowest value, has its match there (a chosen token
    outside the list can tie only with the lowest alternative); so does a row
    longer than K whose single match is its lowest value (vLLM's appended
    sample: it sorts past column K and is cut, rank -1 either way). Rows with no
    or several equal logprobs, another match at the row's minimum, or a
    sentinel/null chosen logprob compare token strings (``row_tokens(i)``), as
    before. The one case the two rules can differ: two alternatives with the
    same token string and different logprobs; the logprob then finds the
    sampled one, the string the first.
    """
    n = len(chosen_tok)
    try:
        chosen = np.array(chosen_lp, dtype=np.float32)
    except TypeError:  # null token_logprobs (e.g. echoed first prompt token)
        chosen = np.array([np.nan if v is None else v for v in chosen_lp], dtype=np.float32)
    c = np.fromiter(counts, dtype=np.intp, count=n)
    if k is None:  # the most common row length: K (K+1 rows carry the appended sample)
        k = int(np.bincount(c).argmax()) if n else 0
    if n == 0:
        return chosen, np.zeros((0, k), np.float32), np.zeros(0, np.int8)
    hi = int(c.max())
    flat_lp = np.fromiter(top_lp, dtype=np.float32, count=len(top_lp))
    flat_eq = flat_lp == np.repeat(chosen, c)  # NaN (null chosen) matches nothing
    ragged = len(flat_lp) != n * hi
    lp: npt.NDArray[np.float32]  # (hi, n): lp[j, i] is token i's j-th alternative
    eq: npt.NDArray[np.bool_]
    if not ragged:  # every row has hi entries
        lp = np.ascontiguousarray(flat_lp.reshape(n, hi).T)
        eq = np.ascontiguousarray(flat_eq.reshape(n, hi).T)
        lowest = lp.min(axis=0) if hi else np.full(n, np.inf, np.float32)
    else:  # ragged: scatter into +inf padding (for the row minimum), then -inf
        row = np.repeat(np.arange(n), c)
        col = np.arange(len(flat_lp)) - np.repeat(np.cumsum(c) - c, c)
        dest = col * n + row
        lp = np.full(hi * n, np.inf, np.float32)
        lp[dest] = flat_lp
        eq = np.zeros(hi * n, bool)
        eq[dest] = flat_eq
        lp, eq = lp.reshape(hi, n), eq.reshape(hi, n)
        lowest = lp.min(axis=0)
        np.putmask(lp, np.arange(hi)[:, None] >= c, -np.inf)
    if hi:
        # Rows the logprobs do not settle: compare token strings there (few rows).
        at_lowest = ~(chosen > lowest)
        if ragged or hi > k:  # rows longer than K: a unique lowest match is cut anyway
            at_lowest &= c <= k
        unsettled = (eq.sum(axis=0) != 1) | at_lowest | ~(chosen > SENTINEL)
        for i in np.flatnonzero(unsettled).tolist():
            tok = chosen_tok[i]
            matches = [t == tok for t in row_tokens(i)]
            eq[: len(matches), i] = matches
    lp[lp <= SENTINEL] = -np.inf
    if hi > 1 and not bool((lp[:-1] >= lp[1:]).all()):
        # vLLM lists the sampled token first; sort so alternative j is the j-th best.
        order = np.argsort(-lp, axis=0, kind="stable")
        lp = np.take_along_axis(lp, order, axis=0)
        eq = np.take_along_axis(eq, order, axis=0)
    if k == 0:
        return chosen, np.zeros((n, 0), np.float32), np.full(n, -1, np.int8)
    if hi >= k:
        top_t, eq = lp[:k], eq[:k]
    else:
        top_t = np.full((k, n), -np.inf, np.float32)
        top_t[:hi] = lp
        eq = np.concatenate((eq, np.zeros((k - hi, n), bool)))
    rank = np.where(eq.any(axis=0), eq.argmax(axis=0), -1).astype(np.int8)
    return chosen, np.ascontiguousarray(top_t.T), rank


def fit(values: list[Any] | None, n: int) -> list[Any]:
    """``values`` cut or padded with None to length ``n``."""
    values = list(values or ())[:n]
    return values + [None] * (n - len(values))


def logprob_arrays(
    lp: object, k: int | None, raw: bytes | memoryview | None = None
) -> tuple[list[str], F32, F32, I8]:
    """Tokens and (chosen, top, rank) arrays from decoded chat or completions logprobs.

    ``raw``: the JSON `lp` was decoded from, needed when `lp` is `ChatLogprobNumbers`
    and some row's alternatives must be compared by token string.
    """
    tops: list[Any]
    row_tokens: Callable[[int], list[str]]
    if isinstance(lp, ChatLogprobs | ChatLogprobNumbers):
        content = lp.content or []
        tokens = [e.token for e in content]
        tops = [e.top_logprobs or () for e in content]
        chosen_lp: list[float | None] = [e.logprob for e in content]
        top_lp = [t.logprob for ts in tops for t in ts]
        named: list[Any] = [] if isinstance(lp, ChatLogprobNumbers) else tops

        def row_tokens(i: int) -> list[str]:
            if not named:  # decode the alternatives' strings once, on the first need
                full = _LOGPROBS_DECODERS["chat"].decode(raw or b"{}")
                named.extend(e.top_logprobs or () for e in full.content or [])  # type: ignore[union-attr]
            return [t.token for t in named[i]]

    elif isinstance(lp, CompletionLogprobs):
        tokens = lp.tokens or []
        # The tokens are the positions: the parallel arrays are cut or padded to
        # them (a missing logprob is NaN), so a malformed answer cannot misalign.
        chosen_lp = fit(lp.token_logprobs, len(tokens))
        tops = [d or {} for d in fit(lp.top_logprobs, len(tokens))]
        top_lp = [v for d in tops for v in d.values()]

        def row_tokens(i: int) -> list[str]:
            return list(tops[i])

    else:
        tokens, tops, chosen_lp, top_lp = [], [], [], []

        def row_tokens(i: int) -> list[str]:
            return []

    counts = list(map(len, tops))
    chosen, top, rank = _arrays(tokens, chosen_lp, top_lp, counts, k, row_tokens)
    return tokens, chosen, top, rank
