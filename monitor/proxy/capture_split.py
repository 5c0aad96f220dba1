"""Split a response body into its envelope and choice 0's logprobs, with byte spans.

The proxy must record the answer's confidences and also hand the client back
exactly the logprobs it asked for, so each choice's ``logprobs`` value is
located as a byte span of the body: ``splice.py`` then replaces it (strip or
trim) without re-serialising the rest. Spans come from ``msgspec.Raw``, a
zero-copy view whose address minus the body's address is its offset.

The common one-choice case avoids scanning the big value twice: a regex finds
the ``"logprobs":`` key, candidate ends are tried from the right, and the
candidate is accepted only if both the skeleton (body with the value replaced
by ``null``) and the value itself decode; JSON being unambiguous, that is a
proof, not a heuristic. Anything else falls back to the two-pass path
(envelope with ``Raw`` logprobs, then decode the Raw). The C scanner's front
(`capture.py`) validates its own end with the same skeleton proof.
"""

from __future__ import annotations

import re
import sys
from typing import Any

import msgspec
import numpy as np

from monitor.proxy.capture_structs import (
    _CHAT_NUMBERS,
    _DECODE_ERRORS,
    _ENVELOPE,
    _LOGPROBS_DECODERS,
    _Envelope,
)
from monitor.proxy.captured import CaptureError, Endpoint, Span

try:  # the optional C scanner (setup.py) reads addresses faster; numpy otherwise
    from monitor.proxy import _logprob_scan as _native
except ImportError:  # pragma: no cover - depends on the build
    _native = None  # type: ignore[assignment]

_MAX_END_TRIES = 12  # candidate ends tried on the fast path before the two-pass fallback
_LOGPROBS_KEY = re.compile(rb'"logprobs"[ \t\r\n]*:[ \t\r\n]*')
_WS = b" \t\r\n"


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
