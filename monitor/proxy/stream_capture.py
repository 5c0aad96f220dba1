"""Capture across a stream: one accumulator fed every SSE chunk of one answer.

Streams carry the logprobs of an answer spread over many chunks; the
accumulator appends text, finish reason, usage and logprobs from every chunk
(never only the last one) and builds the same `Captured` a whole body gives,
also when the stream was cut off or the client went away (`partial`).

Each chunk is decoded once, with its logprobs left raw: that gives the text,
the finish reason and the spans the client's copy is shaped with. The raw
logprobs are kept and decoded together, in one call, when the result is
asked for. Per chunk that halves the capture's CPU (8 to 4 us), and the
chunks are what the event loop handles 100 times a second per stream, in
front of every other stream's next event and every new stream's first one
(`docs/proxy-benchmark-history.md`, fifth session). A chunk whose logprobs
turn out not to have the expected shape is counted in `bad_chunks` then,
and skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec

from monitor.proxy.capture import native_arrays, native_k, native_scanner
from monitor.proxy.capture_arrays import fit, logprob_arrays
from monitor.proxy.capture_split import _choice0, envelope_spans
from monitor.proxy.capture_structs import (
    _DECODE_ERRORS,
    _LOGPROBS_DECODERS,
    ChatLogprobs,
    CompletionLogprobs,
    _ChatToken,
)
from monitor.proxy.captured import F32, I8, Captured, CaptureError, Endpoint, Span

_MANY: dict[
    str,
    msgspec.json.Decoder[list[ChatLogprobs]] | msgspec.json.Decoder[list[CompletionLogprobs]],
] = {
    "chat": msgspec.json.Decoder(list[ChatLogprobs]),
    "completions": msgspec.json.Decoder(list[CompletionLogprobs]),
}


@dataclass(slots=True)
class ChunkInfo:
    """Spans of one SSE chunk payload, for stripping or trimming it before forwarding."""

    endpoint: Endpoint
    logprobs_spans: tuple[Span | None, ...]
    ok: bool = True  # False: not parseable, forward as is


@dataclass
class StreamCapture:
    """Accumulates choice 0 over a stream's chunks; ``result()`` works even if cut off."""

    endpoint: Endpoint
    k: int | None = None
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    n_choices: int = 0
    done: bool = False
    bad_chunks: int = 0
    _text: list[str] = field(default_factory=list)
    _chat: list[_ChatToken] = field(default_factory=list)
    _tokens: list[str] = field(default_factory=list)
    _token_lps: list[float | None] = field(default_factory=list)
    _tops: list[dict[str, float] | None] = field(default_factory=list)
    _saw_logprobs: bool = False
    _pending: list[bytes] = field(default_factory=list)  # raw logprobs, not decoded yet

    def feed(self, payload: bytes) -> ChunkInfo:
        """Feed one SSE ``data:`` payload (without the ``data:`` prefix)."""
        if payload.strip() == b"[DONE]":
            self.done = True
            return ChunkInfo(self.endpoint, ())
        payload = bytes(payload)
        try:
            env, spans = envelope_spans(payload)
        except CaptureError:
            self.bad_chunks += 1
            return ChunkInfo(self.endpoint, (), ok=False)
        self.model = self.model or env.model
        if env.usage is not None:
            self.prompt_tokens = env.usage.prompt_tokens
            self.completion_tokens = env.usage.completion_tokens
        choices = env.choices or []
        for ch in choices:
            self.n_choices = max(self.n_choices, ch.index + 1)
            if ch.index != 0:
                continue
            piece = ch.delta.content if ch.delta else ch.text
            if piece:
                self._text.append(piece)
            if ch.finish_reason is not None:
                self.finish_reason = ch.finish_reason
        c0 = _choice0(env)
        if c0 >= 0:
            raw = bytes(choices[c0].logprobs)
            if raw and raw != b"null":
                self._pending.append(raw)
        return ChunkInfo(self.endpoint, tuple(spans))

    def _decode_pending(self) -> None:
        """Decode the logprobs `feed` kept raw: one call for all chunks since the last time."""
        if not self._pending:
            return
        joined = b"[" + b",".join(self._pending) + b"]"
        try:
            decoded: list[object] = list(_MANY[self.endpoint].decode(joined))
        except _DECODE_ERRORS:  # some chunk's logprobs have another shape: skip those
            decoded = []
            for raw in self._pending:
                try:
                    decoded.append(_LOGPROBS_DECODERS[self.endpoint].decode(raw))
                except _DECODE_ERRORS:
                    self.bad_chunks += 1
        self._pending.clear()
        for lp in decoded:
            self._append(lp)

    def _append(self, lp: object) -> None:
        if isinstance(lp, ChatLogprobs):
            self._saw_logprobs = True
            self._chat.extend(lp.content or ())
        elif isinstance(lp, CompletionLogprobs):
            self._saw_logprobs = True
            toks = lp.tokens or []
            self._tokens.extend(toks)
            self._token_lps.extend(fit(lp.token_logprobs, len(toks)))
            self._tops.extend(fit(lp.top_logprobs, len(toks)))

    def _scan_pending(self) -> tuple[Sequence[str], F32, F32, I8] | None:
        """Every chunk's raw logprobs through the C scanner, in one call.

        None (not built, something it is unsure of): the Python path,
        which also finds and skips the chunks that cannot be decoded. The chunks
        stay pending, so a second `result()` gives the same answer.
        """
        scanner, k = native_scanner(), self.k
        if scanner is None or self._chat or self._tokens or not self._pending:
            return None
        if not native_k(k):
            return None
        scan = scanner.scan_chat_many if self.endpoint == "chat" else scanner.scan_completions_many
        scanned = scan(self._pending, k, msgspec.json.decode)
        return None if scanned is None else native_arrays(scanned, k)

    def result(self, partial: bool | None = None) -> Captured:
        """The accumulated capture; ``partial`` defaults to "no [DONE] was seen"."""
        arrays = self._scan_pending()
        if arrays is not None:
            self._saw_logprobs = True
            tokens, chosen, top, rank = arrays
        else:
            self._decode_pending()
            lp: object = None
            if self._saw_logprobs:
                if self.endpoint == "chat":
                    lp = ChatLogprobs(content=self._chat)
                else:
                    lp = CompletionLogprobs(self._tokens, self._token_lps, self._tops)
            tokens, chosen, top, rank = logprob_arrays(lp, self.k)
        return Captured(
            endpoint=self.endpoint,
            model=self.model,
            text="".join(self._text),
            finish_reason=self.finish_reason,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            n_choices=self.n_choices,
            has_logprobs=self._saw_logprobs,
            tokens=tokens,
            chosen=chosen,
            top=top,
            chosen_rank=rank,
            partial=(not self.done) if partial is None else partial,
        )
