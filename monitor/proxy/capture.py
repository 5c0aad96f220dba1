"""Read the few fields the proxy needs from an upstream response, fast.

The proxy always asks the upstream for ``top_logprobs = K`` and must both
record the answer's confidences and hand the client back exactly what it asked
for. Logprob-heavy bodies are large (200 tokens at top-5 is ~100 KB), so this
module never builds dicts or pydantic models of a response: msgspec Structs
declare only the fields we read (text, finish_reason, usage, model, token,
logprob, top_logprobs), everything else is skipped by the parser.

Each choice's ``logprobs`` value is also located as a byte span of the body, so
``splice.py`` can replace it (strip or trim) without re-serialising the rest.
Spans come from ``msgspec.Raw``, a zero-copy view whose address minus the
body's address is its offset. The common one-choice case avoids scanning the
big value twice: a regex finds the ``"logprobs":`` key, candidate ends are
tried from the right, and the candidate is accepted only if both the skeleton
(body with the value replaced by ``null``) and the value itself decode; JSON
being unambiguous, that is a proof, not a heuristic. Anything else falls back
to the two-pass path (envelope with ``Raw`` logprobs, then decode the Raw).

Bodies go first through the C scanner (``_logprob_scan.c``, optional): it
reads choice 0's logprobs (chat or completions form) in one pass straight
into the arrays below, three to four times faster than the msgspec decode
plus ``_arrays``, and its end is validated by the same skeleton proof. It
answers None whenever it is not sure, and the msgspec path then decides;
``tests/proxy/test_native_scan.py`` and ``test_native_scan_completions.py``
hold the two to the same results.

Array layout (what the recorder packs and confidence aggregation reads):
``chosen`` float32 (n,), the sampled token's logprob as sent (vLLM clamps -inf
to -9999.0); ``top`` float32 (n, K) sorted descending, ``-9999.0`` sentinels
and missing alternatives as ``-inf``; ``chosen_rank`` int8 (n,) the index of
the sampled token (by token string) in ``top``, -1 when it is not in the
top-K (vLLM then sends it as an extra K+1-th alternative, which is dropped).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard

import msgspec
import numpy as np
import numpy.typing as npt

try:  # the optional C scanner (setup.py); without a compiler, the Python path below
    from monitor.proxy import _logprob_scan as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]

Endpoint = Literal["chat", "completions"]
Span = tuple[int, int]
F32 = npt.NDArray[np.float32]
I8 = npt.NDArray[np.int8]

SENTINEL = -9999.0  # vLLM's stand-in for -inf; at or below it means "no logprob"
_MAX_END_TRIES = 12  # candidate ends tried on the fast path before the two-pass fallback


class CaptureError(ValueError):
    """The body is not a JSON object of the expected shape; forward it untouched."""


# What msgspec raises on a body it cannot decode: invalid JSON or types, invalid
# UTF-8 in a decoded string, nesting deeper than it recurses.
_DECODE_ERRORS = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


# --- msgspec Structs: only the fields we read. gc=False: no cycles are possible,
# and skipping GC tracking of ~1,400 small objects per body is measurably faster.


class _Top(msgspec.Struct, gc=False):
    token: str = ""
    logprob: float = SENTINEL


class _ChatToken(msgspec.Struct, gc=False):
    token: str = ""
    logprob: float = SENTINEL
    top_logprobs: list[_Top] | None = None


class ChatLogprobs(msgspec.Struct, gc=False):
    content: list[_ChatToken] | None = None


class _TopNumber(msgspec.Struct, gc=False):
    logprob: float = SENTINEL


class _ChatTokenNumbers(msgspec.Struct, gc=False):
    token: str = ""
    logprob: float = SENTINEL
    top_logprobs: list[_TopNumber] | None = None


class ChatLogprobNumbers(msgspec.Struct, gc=False):
    """Chat logprobs without the alternatives' token strings: a fifth faster to decode.

    The strings only matter in rows whose numbers do not settle the chosen
    token's rank (see `_arrays`); vLLM's bodies have none, and for the others
    `logprob_arrays` decodes the full `ChatLogprobs` once, on demand.
    """

    content: list[_ChatTokenNumbers] | None = None


class CompletionLogprobs(msgspec.Struct, gc=False):
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None


class _Message(msgspec.Struct, gc=False):
    content: str | None = None


class _Choice(msgspec.Struct, gc=False):
    index: int = 0
    message: _Message | None = None  # chat
    delta: _Message | None = None  # chat stream chunk
    text: str | None = None  # completions (both forms)
    logprobs: msgspec.Raw = msgspec.Raw()  # empty Raw: key absent
    finish_reason: str | None = None


class _Usage(msgspec.Struct, gc=False):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class _Envelope(msgspec.Struct, gc=False):
    model: str | None = None
    choices: list[_Choice] | None = None
    usage: _Usage | None = None


_ENVELOPE = msgspec.json.Decoder(_Envelope)
_LOGPROBS_DECODERS: dict[
    str, msgspec.json.Decoder[ChatLogprobs] | msgspec.json.Decoder[CompletionLogprobs]
] = {
    "chat": msgspec.json.Decoder(ChatLogprobs),
    "completions": msgspec.json.Decoder(CompletionLogprobs),
}
_CHAT_NUMBERS: msgspec.json.Decoder[ChatLogprobNumbers] = msgspec.json.Decoder(ChatLogprobNumbers)
_LOGPROBS_KEY = re.compile(rb'"logprobs"[ \t\r\n]*:[ \t\r\n]*')
_WS = b" \t\r\n"


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


def _address(buf: object) -> int:
    if _native is not None:
        return _native.buffer_address(buf)
    return int(np.frombuffer(buf, np.uint8).ctypes.data)  # type: ignore[call-overload,unused-ignore]


# CPython keeps a bytes object's data inline at a fixed offset from the object:
# reading it that way costs 60 ns against numpy's 1.4 us (paid per SSE chunk).
# Checked here once; anywhere it does not hold, numpy answers.
_BYTES_DATA = sys.getsizeof(b"") - 1
_probe = b"thermostat address probe"
_INLINE_BYTES = _address(_probe) == id(_probe) + _BYTES_DATA
del _probe


def _bytes_address(buf: bytes) -> int:
    if _INLINE_BYTES and type(buf) is bytes:
        return id(buf) + _BYTES_DATA
    return _address(buf)


def _spans(buf: bytes, env: _Envelope) -> list[Span | None]:
    """Byte spans of each choice's logprobs Raw inside ``buf`` (pointer arithmetic)."""
    out: list[Span | None] = []
    base = -1
    for ch in env.choices or ():
        raw = ch.logprobs
        if not len(raw):
            out.append(None)
            continue
        if base < 0:
            base = _bytes_address(buf)
        off = _address(raw) - base
        if not 0 <= off <= len(buf) - len(raw):  # Raw was a copy, not a view
            raise CaptureError("msgspec.Raw is not a view into the body")
        out.append((off, off + len(raw)))
    return out


def envelope_spans(body: bytes) -> tuple[_Envelope, list[Span | None]]:
    """One decode: the envelope, every choice's logprobs left raw, and their spans."""
    try:
        env = _ENVELOPE.decode(body)
    except _DECODE_ERRORS as exc:
        raise CaptureError(str(exc)) from exc
    return env, _spans(body, env)


def _choice0(env: _Envelope) -> int:
    """Position in "choices" of the choice with index 0 (usually the first)."""
    for pos, ch in enumerate(env.choices or ()):
        if ch.index == 0:
            return pos
    return -1


def _skeleton(body: bytes, start: int, end: int) -> tuple[_Envelope, list[Span | None]] | None:
    """Envelope and spans if ``body[start:end]`` is choice 0's logprobs value, else None.

    The body with that value replaced by ``null`` must decode and put choice 0's
    logprobs exactly there; with the value itself valid JSON, that is a proof.
    """
    j = end
    while j < len(body) and body[j] in _WS:
        j += 1
    if body[j : j + 1] not in (b",", b"}"):
        return None  # inside a choice object the value is followed by , or }
    skeleton = body[:start] + b"null" + body[end:]
    try:
        env = _ENVELOPE.decode(skeleton)
    except _DECODE_ERRORS:
        return None
    spans = _spans(skeleton, env)
    c0 = _choice0(env)
    if c0 < 0 or spans[c0] != (start, start + 4):
        return None
    shift = end - start - 4
    fixed: list[Span | None] = [
        None if s is None else (s if s[0] < start else (s[0] + shift, s[1] + shift)) for s in spans
    ]
    fixed[c0] = (start, end)
    return env, fixed


def _logprobs_start(body: bytes) -> int:
    """Offset of the first ``"logprobs":`` object value (choice 0's, usually), or -1."""
    m = _LOGPROBS_KEY.search(body)
    if m is None or body[m.end() : m.end() + 1] != b"{":
        return -1
    return m.end()


def _fast_split(
    body: bytes, dec: msgspec.json.Decoder[Any]
) -> tuple[_Envelope, object, list[Span | None]] | None:
    """One-scan path: locate choice 0's logprobs by key + validated end. None: fall back."""
    start = _logprobs_start(body)
    if start < 0:
        return None
    pos = len(body)
    for _ in range(_MAX_END_TRIES):
        end = body.rfind(b"}", start, pos)
        if end < 0:
            return None
        pos = end
        located = _skeleton(body, start, end + 1)
        if located is None:
            continue
        try:
            lp = dec.decode(memoryview(body)[start : end + 1])
        except msgspec.DecodeError:
            continue
        return located[0], lp, located[1]
    return None


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


def split_body(body: bytes, endpoint: Endpoint) -> tuple[_Envelope, object, list[Span | None]]:
    """Envelope, choice 0's decoded logprobs (or None) and every choice's logprobs span.

    Chat logprobs come back as `ChatLogprobNumbers` (`logprob_arrays` decodes
    the alternatives' strings on demand).
    """
    dec: msgspec.json.Decoder[Any] = (
        _CHAT_NUMBERS if endpoint == "chat" else _LOGPROBS_DECODERS[endpoint]
    )
    try:
        fast = _fast_split(body, dec)
        if fast is not None:
            return fast
        env, spans = envelope_spans(body)
        c0 = _choice0(env)
        lp = None
        raw = env.choices[c0].logprobs if c0 >= 0 else None  # type: ignore[index]
        if raw is not None and len(raw) and bytes(raw) != b"null":
            lp = dec.decode(raw)
    except _DECODE_ERRORS as exc:
        raise CaptureError(str(exc)) from exc
    return env, lp, spans


# --- arrays ---------------------------------------------------------------------


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
