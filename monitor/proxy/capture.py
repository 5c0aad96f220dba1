"""Read the few fields the proxy needs from an upstream response, fast.

The proxy always asks the upstream for ``top_logprobs = K`` and must both
record the answer's confidences and hand the client back exactly what it asked
for. `capture_response` is the one entry point for a whole body; the work is
spread over modules that each hold one idea:

- `captured`: the result (`Captured`, its array layout) and `CaptureError`;
- `capture_structs`: the msgspec Structs of only the fields read;
- `capture_split`: the pure-Python path's envelope, choice 0's logprobs and
  every choice's byte span (for ``splice.py``), with the skeleton proof;
- `capture_arrays`: the pure-Python path's numpy arrays.

This module is the front of the C scanner (``_logprob_scan.c``, optional):
it reads choice 0's logprobs (chat or completions form) in one pass straight
into the arrays, three to four times faster than the msgspec decode plus
``_arrays``, and its end is validated by the same skeleton proof. It answers
None whenever it is not sure, and the msgspec path then decides;
``tests/proxy/test_native_scan.py`` and ``test_native_scan_completions.py``
hold the two to the same results. Setting ``_native`` here to None turns the
scanner off everywhere (`native_scanner` is how the others ask for it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, TypeGuard

import msgspec
import numpy as np

from monitor.proxy.capture_arrays import logprob_arrays
from monitor.proxy.capture_split import _choice0, _logprobs_start, _skeleton, split_body
from monitor.proxy.capture_structs import _DECODE_ERRORS, _Envelope
from monitor.proxy.captured import F32, I8, Captured, CaptureError, Endpoint, Span

try:  # the optional C scanner (setup.py); without a compiler, the Python path
    from monitor.proxy import _logprob_scan as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]


class LazyTokens(Sequence[str]):
    """The chosen tokens' strings of a body the C scanner read, built when first read.

    The scanner checked that every one decodes and left where each sits in
    the body; only `answer_span` confidence reads them on the request path,
    and building and freeing 200 strings an answer was about 4% of a proxied
    request's instructions. Equal to any sequence of the same strings.
    """

    __slots__ = ("_body", "_strings", "_table")
    _ENTRY = 24  # bytes per token in the scanner's table: offset, length, escaped

    def __init__(self, body: bytes, table: bytes) -> None:
        self._body = body
        self._table = table
        self._strings: list[str] | None = None

    def _decoded(self) -> list[str]:
        if self._strings is None:
            self._strings = _native.decode_tokens(self._body, self._table, msgspec.json.decode)
        return self._strings

    def __len__(self) -> int:
        return len(self._table) // self._ENTRY

    def __getitem__(self, index: Any) -> Any:
        return self._decoded()[index]

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return self._decoded() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._decoded())


def _native_split(
    body: bytes, k: int | None, endpoint: Endpoint = "chat"
) -> tuple[_Envelope, list[Span | None], tuple[Sequence[str], F32, F32, I8]] | None:
    """The native scanner's path: envelope, spans and the arrays.

    None (not built, K not given or outside int8, or the scanner is unsure of
    the body): the Python path.
    """
    if _native is None or not native_k(k):
        return None
    start = _logprobs_start(body)
    if start < 0:
        return None
    scan = _native.scan_chat if endpoint == "chat" else _native.scan_completions
    scanned = scan(body, start, k, msgspec.json.decode, True)
    if scanned is None:
        return None
    end, table, chosen, top, rank = scanned
    located = _skeleton(body, start, end)
    if located is None:
        return None
    tokens = LazyTokens(body, table)
    return located[0], located[1], native_arrays((end, tokens, chosen, top, rank), k)


def native_scanner() -> Any:
    """The C scanner's module, or None where it was not built (or a test turned it off)."""
    return _native


def native_k(k: int | None) -> TypeGuard[int]:
    """Whether the C scanner can fill top-K arrays of this K: 1 to 127 (ranks are int8)."""
    return k is not None and 0 < k < 128


def native_arrays(
    scanned: tuple[int, Sequence[str], bytearray, bytearray, bytearray], k: int
) -> tuple[Sequence[str], F32, F32, I8]:
    """(tokens, chosen, top, rank) as numpy arrays over the scanner's buffers."""
    _, tokens, chosen, top, rank = scanned
    return (
        tokens,
        np.frombuffer(chosen, np.float32),
        np.frombuffer(top, np.float32).reshape(len(tokens), k),
        np.frombuffer(rank, np.int8),
    )


def capture_response(body: bytes, endpoint: Endpoint, k: int | None = None) -> Captured:
    """Capture choice 0 of a non-streaming response body.

    ``k`` is the ``top_logprobs`` the proxy asked for; None infers it from the
    body. Raises CaptureError when the body is not a response object.
    """
    body = bytes(body)
    native = _native_split(body, k, endpoint)
    if native is not None:
        env, spans, (tokens, chosen, top, rank) = native
        has_logprobs = True
    else:
        env, lp, spans = split_body(body, endpoint)
        has_logprobs = lp is not None
    choices = env.choices or []
    c0 = _choice0(env)
    ch = choices[c0] if c0 >= 0 else None
    if ch is None:
        text, finish = "", None
    elif endpoint == "chat":
        text, finish = (ch.message.content if ch.message else None) or "", ch.finish_reason
    else:
        text, finish = ch.text or "", ch.finish_reason
    if native is None:
        span = spans[c0] if c0 >= 0 else None
        raw = memoryview(body)[span[0] : span[1]] if span else None
        try:  # the alternatives' strings, when decoded, can still be invalid
            tokens, chosen, top, rank = logprob_arrays(lp, k, raw)
        except _DECODE_ERRORS as exc:
            raise CaptureError(str(exc)) from exc
    usage = env.usage
    return Captured(
        endpoint=endpoint,
        model=env.model,
        text=text,
        finish_reason=finish,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        n_choices=len(choices),
        has_logprobs=has_logprobs,
        tokens=tokens,
        chosen=chosen,
        top=top,
        chosen_rank=rank,
        logprobs_spans=tuple(spans),
    )
