"""The msgspec view of an upstream response: only the fields capture reads.

Logprob-heavy bodies are large (200 tokens at top-5 is ~100 KB), so capture
never builds dicts or pydantic models of a response: these Structs declare only
the fields we read (text, finish_reason, usage, model, token, logprob,
top_logprobs), and the parser skips everything else. The decoders are built
once, here, and shared by the whole-body path (`capture_split`,
`capture_arrays`) and the stream accumulator (`stream_capture`).
"""

from __future__ import annotations

import msgspec

SENTINEL = -9999.0  # vLLM's stand-in for -inf; at or below it means "no logprob"

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
    token's rank (see `capture_arrays._arrays`); vLLM's bodies have none, and
    for the others `logprob_arrays` decodes the full `ChatLogprobs` once, on
    demand.
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
