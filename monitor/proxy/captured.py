"""What capture hands the rest of the proxy: one `Captured` per answer.

Kept apart from the parsers so that its readers (confidence, splice,
recording, the handler, the stream accumulator) depend on the result's shape,
not on how a body was read: whole or streamed, by the C scanner or by msgspec.

Array layout (what the recorder packs and confidence aggregation reads):
``chosen`` float32 (n,), the sampled token's logprob as sent (vLLM clamps -inf
to -9999.0); ``top`` float32 (n, K) sorted descending, ``-9999.0`` sentinels
and missing alternatives as ``-inf``; ``chosen_rank`` int8 (n,) the index of
the sampled token (by token string) in ``top``, -1 when it is not in the
top-K (vLLM then sends it as an extra K+1-th alternative, which is dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Endpoint = Literal["chat", "completions"]
Span = tuple[int, int]
F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]


class CaptureError(ValueError):
    """The body is not a JSON object of the expected shape; forward it untouched."""


@dataclass(slots=True)
class Captured:
    """What the proxy records of one response (choice index 0) and needs to splice it."""

    endpoint: Endpoint
    model: str | None
    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    n_choices: int
    has_logprobs: bool  # False: the upstream ignored the request (or sent null)
    tokens: Sequence[str]  # a list, or LazyTokens from the C scanner
    chosen: F32
    top: F32
    chosen_rank: I8
    # One entry per element of "choices", in body order: (start, end) of the
    # logprobs value, or None where the key is absent. Valid for this body only.
    logprobs_spans: tuple[Span | None, ...] = ()
    partial: bool = False

    @property
    def k(self) -> int:
        return int(self.top.shape[1])
