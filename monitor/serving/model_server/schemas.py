"""Request bodies of the OpenAI-compatible routes.

Unknown fields are accepted and ignored (clients and SDKs send many: ``user``,
``metadata``, ...), but parameters that would change the output and that this
reference server does not implement are refused with a 400, so nobody mistakes
an ignored penalty or ``n`` for one that was honoured.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

# OpenAI's default for legacy completions; chat defaults to the rest of the context.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
CHAT_DEFAULT_MAX_TOKENS = 1024


class RequestError(Exception):
    """A request the server understands but refuses (mapped to HTTP 400)."""

    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")


class StreamOptions(_Body):
    include_usage: bool = False


class ChatMessage(_Body):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        """Content as one string; only text parts are meaningful to a text model."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise RequestError("only text content parts are supported", "messages")
            parts.append(part["text"])
        return "".join(parts)


class _Sampling(_Body):
    model: str | None = None
    temperature: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def check_supported(self) -> None:
        if self.n != 1:
            raise RequestError("only n=1 is supported by the reference server", "n")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise RequestError(f"{name} is not supported by the reference server", name)
        if self.logit_bias:
            raise RequestError("logit_bias is not supported by the reference server", "logit_bias")

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs requires logprobs to be true", "top_logprobs")

    def token_limit(self) -> int:
        # max_completion_tokens is the newer name; it wins when both are sent.
        return self.max_completion_tokens or self.max_tokens or CHAT_DEFAULT_MAX_TOKENS


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise RequestError("echo is not supported by the reference server", "echo")
        if self.suffix:
            raise RequestError("suffix is not supported by the reference server", "suffix")

    def single_prompt(self) -> str | list[int]:
        """The one prompt of the request (a string or token ids); batches are refused."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return prompt
        if prompt and all(isinstance(p, int) for p in prompt):
            return [int(p) for p in prompt]  # type: ignore[arg-type]
        if len(prompt) == 1:
            only = prompt[0]
            return only if isinstance(only, str) else [int(p) for p in only]  # type: ignore[union-attr]
        raise RequestError("exactly one prompt per request is supported", "prompt")

    def token_limit(self) -> int:
        return self.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS
