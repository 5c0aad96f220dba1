"""Edit an upstream body by byte splicing, never by re-serialising it.

The proxy asks the upstream for ``top_logprobs = K`` whatever the client asked,
so before forwarding it must give the body back the client's shape: no logprobs
(``"logprobs": null``, what OpenAI sends when they were not requested), or the
top-k alternatives trimmed to the client's k. A full ``loads``/``dumps`` round
trip of a 100 KB body costs about a millisecond; replacing one byte span costs a
memcpy. The spans come from ``capture_split.py`` (``Captured.logprobs_spans`` for a
body, ``ChunkInfo.logprobs_spans`` for one SSE chunk payload) and are only valid
for the exact bytes they were computed on.

Trimming is rare (a client asking for fewer alternatives than K): only that
choice's logprobs value is decoded as generic objects, cut, and re-encoded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import msgspec

from monitor.proxy.captured import Endpoint, Span

_NULL = b"null"
_WS = b" \t\r\n"
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder()


class Spanned(Protocol):
    """Anything carrying the logprobs spans of one body (Captured, ChunkInfo)."""

    @property
    def endpoint(self) -> Endpoint: ...

    @property
    def logprobs_spans(self) -> tuple[Span | None, ...]: ...


def replace_spans(body: bytes, edits: Sequence[tuple[Span, bytes]]) -> bytes:
    """``body`` with each (start, end) span replaced; spans must not overlap."""
    if not edits:
        return body
    parts: list[bytes | memoryview] = []
    view = memoryview(body)
    pos = 0
    for (start, end), new in sorted(edits, key=lambda e: e[0][0]):
        parts.append(view[pos:start])
        parts.append(new)
        pos = end
    parts.append(view[pos:])
    return b"".join(parts)


def _check(body: bytes, span: Span) -> None:
    start, end = span
    if not 0 <= start < end <= len(body):
        raise ValueError(f"span {span} outside a body of {len(body)} bytes")


def strip_logprobs(body: bytes, spanned: Spanned) -> bytes:
    """Set every choice's ``logprobs`` to null (the client did not ask for them)."""
    edits: list[tuple[Span, bytes]] = []
    for span in spanned.logprobs_spans:
        if span is None:
            continue
        _check(body, span)
        start, end = span
        if end - start != len(_NULL) or body[start:end] != _NULL:  # no 100 KB slice to compare
            edits.append((span, _NULL))
    return replace_spans(body, edits)


def _by_logprob(entry: Any) -> float:
    lp = entry.get("logprob") if isinstance(entry, dict) else None
    return -float(lp) if isinstance(lp, int | float) else float("inf")


def _trim_chat(value: Any, k: int) -> Any:
    # Sorting first makes the cut keep the k best even where vLLM lists the
    # sampled token first; sorted input is left in its order (stable sort).
    for part in ("content", "refusal"):
        entries = value.get(part) if isinstance(value, dict) else None
        for entry in entries or ():
            tops = entry.get("top_logprobs") if isinstance(entry, dict) else None
            if isinstance(tops, list):
                entry["top_logprobs"] = sorted(tops, key=_by_logprob)[:k]
    return value


def _trim_completions(value: Any, k: int) -> Any:
    tops = value.get("top_logprobs") if isinstance(value, dict) else None
    if isinstance(tops, list):
        value["top_logprobs"] = [
            dict(sorted(d.items(), key=lambda kv: -kv[1])[:k]) if isinstance(d, dict) else d
            for d in tops
        ]
    return value


def trim_logprobs_value(raw: bytes | memoryview, endpoint: Endpoint, k: int) -> bytes:
    """Re-encode one logprobs value keeping the k highest alternatives per token."""
    value = _DECODER.decode(raw)
    if value is None:
        return _NULL
    trimmed = _trim_chat(value, k) if endpoint == "chat" else _trim_completions(value, k)
    return _ENCODER.encode(trimmed)


def trim_top_logprobs(body: bytes, spanned: Spanned, k: int) -> bytes:
    """Cut every choice's top-k alternatives to the client's ``k`` (0: chat's empty lists)."""
    if k < 0:
        raise ValueError("k must be >= 0")
    view = memoryview(body)
    edits: list[tuple[Span, bytes]] = []
    for span in spanned.logprobs_spans:
        if span is None:
            continue
        _check(body, span)
        edits.append((span, trim_logprobs_value(view[span[0] : span[1]], spanned.endpoint, k)))
    return replace_spans(body, edits)


def thermostat_insertion(body: bytes, obj: bytes) -> tuple[int, bytes]:
    """Where and what to insert so the body gains ``"thermostat": obj`` as its last key.

    Lets a caller write ``body[:pos]``, the insert and ``body[pos:]`` without
    concatenating 100 KB. Tolerates trailing whitespace; raises ValueError when
    the body does not end with a JSON object.
    """
    end = len(body)
    while end and body[end - 1] in _WS:
        end -= 1
    if not end or body[end - 1] != 0x7D:  # "}"
        raise ValueError("body does not end with a JSON object")
    before = end - 2
    while before >= 0 and body[before] in _WS:
        before -= 1
    if before < 0:
        raise ValueError("body does not end with a JSON object")
    sep = b'"thermostat":' if body[before] == 0x7B else b',"thermostat":'  # "{": empty object
    return end - 1, sep + obj


def append_thermostat(body: bytes, obj: bytes) -> bytes:
    """``body`` with ``"thermostat": obj`` inserted before its final closing brace."""
    pos, ins = thermostat_insertion(body, obj)
    return b"".join((memoryview(body)[:pos], ins, memoryview(body)[pos:]))
