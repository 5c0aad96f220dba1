"""Capture across a stream: one accumulator fed every SSE chunk of one answer.

Streams carry the logprobs of an answer spread over many chunks; the
accumulator appends text, finish reason, usage and logprobs from every chunk
(never only the last one) and builds the same `Captured` a whole body gives,
also when the stream was cut off or the client went away (`partial`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.proxy.capture import (
    Captured,
    CaptureError,
    ChatLogprobs,
    CompletionLogprobs,
    Endpoint,
    Span,
    _ChatToken,
    logprob_arrays,
    split_body,
)


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

    def feed(self, payload: bytes) -> ChunkInfo:
        """Feed one SSE ``data:`` payload (without the ``data:`` prefix)."""
        if payload.strip() == b"[DONE]":
            self.done = True
            return ChunkInfo(self.endpoint, ())
        try:
            env, lp, spans = split_body(bytes(payload), self.endpoint)
        except CaptureError:
            self.bad_chunks += 1
            return ChunkInfo(self.endpoint, (), ok=False)
        self.model = self.model or env.model
        if env.usage is not None:
            self.prompt_tokens = env.usage.prompt_tokens
            self.completion_tokens = env.usage.completion_tokens
        for ch in env.choices or ():
            self.n_choices = max(self.n_choices, ch.index + 1)
            if ch.index != 0:
                continue
            piece = ch.delta.content if ch.delta else ch.text
            if piece:
                self._text.append(piece)
            if ch.finish_reason is not None:
                self.finish_reason = ch.finish_reason
        if isinstance(lp, ChatLogprobs):
            self._saw_logprobs = True
            self._chat.extend(lp.content or ())
        elif isinstance(lp, CompletionLogprobs):
            self._saw_logprobs = True
            toks = lp.tokens or []
            self._tokens.extend(toks)
            self._token_lps.extend(lp.token_logprobs or [None] * len(toks))
            tops = list(lp.top_logprobs or [])
            self._tops.extend(tops + [None] * (len(toks) - len(tops)))
        return ChunkInfo(self.endpoint, tuple(spans))

    def result(self, partial: bool | None = None) -> Captured:
        """The accumulated capture; ``partial`` defaults to "no [DONE] was seen"."""
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
