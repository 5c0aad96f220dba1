"""Token-by-token decoding with raw logprobs, for the reference model server.

We run our own decode loop (KV cache, one sequence) instead of ``model.generate``
for two reasons. Calibration needs the model's own distribution: every reported
logprob is log_softmax of the raw next-token logits, taken before temperature,
top-p or any calibration processor touches them (vLLM's ``raw_logprobs`` mode).
And streaming wants each token the moment it exists, with stop strings cut
exactly, which is awkward to retrofit onto ``generate``.

Everything here is synchronous and blocking; the app runs it in a worker thread
under ``Engine.lock`` so one generation uses the model at a time.
"""

from __future__ import annotations

import inspect
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# A logits processor maps sampling logits to sampling logits (1-D float tensor).
LogitsProcessor = Callable[[Any], Any]


@dataclass(frozen=True)
class SamplingParams:
    """What one request asks of the decoder, already validated by the schemas."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Alternatives to report per position; 0 still reports the chosen token.
    top_logprobs: int = 0
    processors: tuple[LogitsProcessor, ...] = ()


@dataclass
class TokenInfo:
    """One generated token: its text in the output and its raw logprobs."""

    token_id: int
    token: str  # the token decoded on its own (what logprobs entries show)
    logprob: float
    top: list[tuple[str, float]]  # (token text, logprob), highest first
    text: str = ""  # the characters this token contributed to the output text
    offset: int = 0  # where that text starts in the output


@dataclass
class Piece:
    """Text ready to send, with the tokens that produced it (one stream chunk)."""

    text: str
    tokens: list[TokenInfo]


@dataclass
class Finished:
    finish_reason: str  # "stop" (EOS or a stop string) or "length"
    prompt_tokens: int
    completion_tokens: int


@dataclass
class TextAssembler:
    """Turns token ids into output text, holding back what a stop string may claim.

    The output text is always the decode of all ids so far (so multi-byte characters
    split over tokens come out whole); each token owns the characters its decode
    added. Up to ``len(longest stop) - 1`` trailing characters stay pending, because
    they might be the start of a stop string that the next token completes; nothing
    is ever sent that later has to be taken back.
    """

    decode: Callable[[list[int]], str]
    stops: tuple[str, ...]
    ids: list[int] = field(default_factory=list)
    text: str = ""
    pending: list[TokenInfo] = field(default_factory=list)

    def push(self, info: TokenInfo) -> tuple[Piece | None, bool]:
        """Add one token; return the text now safe to send and whether a stop hit."""
        self.ids.append(info.token_id)
        new_text = self.decode(self.ids)
        info.offset = len(self.text)
        self.pending.append(info)
        # A trailing U+FFFD means the token ended inside a UTF-8 character; its
        # characters are credited to the token that completes it.
        if new_text.endswith("\ufffd"):
            return None, False
        if not new_text.startswith(self.text):
            # Rare re-normalisation of earlier text by the tokenizer: keep what was
            # already accounted for and treat the rest as new.
            new_text = self.text + new_text[len(self.text) :]
        longest = max((len(s) for s in self.stops), default=0)
        # A stop string may start in held-back text but never in sent text.
        search_from = max(0, len(self.text) - longest + 1)
        self.text = new_text
        cut = self._find_stop(search_from)
        if cut is not None:
            self.text = self.text[:cut]
            return self._release(cut, stop=True), True
        return self._release(len(self.text) - max(longest - 1, 0)), False

    def flush(self) -> Piece | None:
        """Release everything at the end of generation (EOS or length)."""
        if self.pending:
            full = self.decode(self.ids)
            if full.startswith(self.text):
                self.text = full
        return self._release(len(self.text))

    def _find_stop(self, start: int) -> int | None:
        hits = [i for i in (self.text.find(s, start) for s in self.stops if s) if i >= 0]
        return min(hits) if hits else None

    def _release(self, upto: int, *, stop: bool = False) -> Piece | None:
        """Send the pending tokens whose text ends at or before ``upto``.

        On a stop string (``stop``), the token spanning the cut is sent with its
        text truncated, and tokens lying wholly inside the stop string are dropped:
        the stop string is not part of the output, so neither are its tokens.
        """
        out: list[TokenInfo] = []
        while self.pending:
            info = self.pending[0]
            end = self.pending[1].offset if len(self.pending) > 1 else len(self.text)
            if end > upto:
                if stop and info.offset < upto:
                    info.text = self.text[info.offset : upto]
                    out.append(info)
                break
            info.text = self.text[info.offset : end]
            out.append(self.pending.pop(0))
        if stop:
            self.pending.clear()
        if not out:
            return None
        return Piece(text="".join(t.text for t in out), tokens=out)


class Engine:
    """A loaded model and tokenizer plus the lock that serialises their use."""

    def __init__(self, model: Any, tokenizer: Any, device: str, name: str) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.name = name
        self.lock = threading.Lock()
        self.context_length: int | None = getattr(model.config, "max_position_embeddings", None)
        self.eos_ids = _eos_ids(model, tokenizer)
        self.cache_name = _cache_name(model)
        self._token_text: dict[int, str] = {}

    def token_text(self, token_id: int) -> str:
        """A token decoded on its own, cached: top-k decoding happens every step."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._token_text[token_id] = text
        return text

    def generate(
        self, prompt_ids: list[int], params: SamplingParams, cancel: threading.Event
    ) -> Iterator[Piece | Finished]:
        """Yield output pieces as they become final, then one Finished.

        The caller must hold ``self.lock``. Stops early (no Finished) if ``cancel``
        is set, e.g. when a streaming client goes away.
        """
        import torch

        def decode(ids: list[int]) -> str:
            return str(self.tokenizer.decode(ids, skip_special_tokens=True))

        assembler = TextAssembler(decode=decode, stops=params.stop)
        gen = torch.Generator(device=self.device)
        gen.manual_seed(params.seed if params.seed is not None else secrets.randbits(63))
        budget = params.max_tokens
        if self.context_length is not None:
            budget = min(budget, self.context_length - len(prompt_ids))
        finish = "length"
        stopped = False
        produced = 0
        with torch.inference_mode():
            step_ids = torch.tensor([prompt_ids], device=self.device)
            cache = None
            while produced < budget:
                if cancel.is_set():
                    return
                kv = {self.cache_name: cache}
                out = self.model(input_ids=step_ids, use_cache=True, **kv)
                cache = getattr(out, self.cache_name)
                raw = out.logits[0, -1].float()
                token_id = _sample(raw, params, gen)
                produced += 1
                if token_id in self.eos_ids:
                    finish = "stop"
                    break
                step_ids = torch.tensor([[token_id]], device=self.device)
                piece, stopped = assembler.push(self._token_info(raw, token_id, params))
                if piece is not None:
                    yield piece
                if stopped:
                    finish = "stop"
                    break
        if not stopped:
            tail = assembler.flush()
            if tail is not None:
                yield tail
        yield Finished(finish, len(prompt_ids), produced)

    def _token_info(self, raw: Any, token_id: int, params: SamplingParams) -> TokenInfo:
        import torch

        # Raw logprobs: the model's own distribution, untouched by sampling settings.
        logprobs = torch.log_softmax(raw, dim=-1)
        top: list[tuple[str, float]] = []
        if params.top_logprobs > 0:
            values, indices = torch.topk(logprobs, params.top_logprobs)
            top = [
                (self.token_text(i), v)
                for i, v in zip(indices.tolist(), values.tolist(), strict=True)
            ]
        return TokenInfo(
            token_id=token_id,
            token=self.token_text(token_id),
            logprob=float(logprobs[token_id]),
            top=top,
        )


def _sample(raw: Any, params: SamplingParams, gen: Any) -> int:
    """Pick the next token from a copy of the raw logits, never changing them."""
    import torch

    logits = raw
    for processor in params.processors:
        logits = processor(logits)
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits / params.temperature, dim=-1)
    if params.top_p < 1.0:
        # Nucleus: keep the smallest prefix of the sorted distribution whose mass
        # reaches top_p (the token that crosses the line stays, so never empty).
        sorted_probs, order = torch.sort(probs, descending=True)
        before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
        sorted_probs = torch.where(before < params.top_p, sorted_probs, 0.0)
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=gen))


def _cache_name(model: Any) -> str:
    """The name the model's forward gives its KV cache, in and out.

    transformers 5 calls it `cache` and deprecates `past_key_values` (gone in
    5.40); 4.x, which pyproject still allows, knows only `past_key_values`.
    """
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return frozenset(ids)


def resolve_device(device: str) -> str:
    """Map auto|cpu|cuda[:N] to a torch device string, failing clearly."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    return device


def load_engine(model_path: str, device: str, name: str) -> Engine:
    """Load any local transformers causal LM; blocking, so call it off the event loop."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_device(device)
    # The config first: a broken config.json then says so, rather than failing
    # in the tokenizer with a message about tokenizer backends.
    config = AutoConfig.from_pretrained(model_path)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    # Any: transformers' decorated signatures confuse mypy on .to().
    model: Any = AutoModelForCausalLM.from_pretrained(model_path, config=config, dtype="auto")
    model.to(resolved)
    model.eval()
    return Engine(model, tokenizer, resolved, name)
