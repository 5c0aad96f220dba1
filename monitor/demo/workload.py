"""The demo's workload: two tasks, their prompts, and a simulated grader.

The tiny model knows little, so its real answers are rarely right; a grader
that compares with an answer key would make every task hopelessly
overconfident and nothing could be shown. The demo's grader is therefore
simulated, and says so: an answer is marked correct with the probability the
model's own top-K distribution gives it at a *true* temperature. For the quiz
that temperature is 1.0 (the raw model is calibrated); for autocomplete
(continuing a sentence of the shipped prose, where the tiny model is most
sure of itself) it is 4 (the raw model is overconfident, as instruction-tuned
models often are). Recalibration should then find a temperature near 4 for
autocomplete only.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from monitor.calibration.aggregation import generation_confidence
from monitor.calibration.packing import from_openai_logprobs
from monitor.serving.tiny_model import read_corpus

TOP_K = 5


@dataclass(frozen=True)
class DemoTask:
    name: str
    endpoint: str  # "chat" or "completions"
    true_temperature: float
    aggregator: str
    max_tokens: int
    description: str


QUIZ = DemoTask("quiz", "chat", 1.0, "last_token", 1, "multiple choice, one-letter answers")
AUTOCOMPLETE = DemoTask(
    "autocomplete", "completions", 4.0, "geometric_mean", 5, "continue a sentence"
)
TASKS = (QUIZ, AUTOCOMPLETE)


def prompts_for(task: DemoTask) -> list[str]:
    """From the shipped corpus: letter-answer quiz lines, or openings of sentences."""
    prose, pairs = read_corpus()
    if task is QUIZ:
        questions = [q for q, _ in pairs if q.startswith("Which of these") and "letter" in q]
        return questions or [q for q, _ in pairs if q.startswith("Which of these")]
    sentences = [s for p in prose for s in re.split(r"(?<=[.!?])\s+", p) if len(s.split()) > 9]
    return [" ".join(s.split()[:cut]) for s in sentences for cut in range(4, 9)]


def request_for(task: DemoTask, question: str, seed: int) -> dict[str, Any]:
    """Keyword arguments for the openai client; the grader needs the logprobs."""
    common: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": task.max_tokens,
        "temperature": 1.0,
        "seed": seed,
        "extra_headers": {"X-Thermostat-Task": task.name},
    }
    if task.endpoint == "chat":
        messages = [{"role": "user", "content": question}]
        return {**common, "messages": messages, "logprobs": True, "top_logprobs": TOP_K}
    return {**common, "prompt": question, "logprobs": TOP_K}


def _content_entries(task: DemoTask, choice: Any) -> list[dict[str, Any]]:
    """OpenAI chat-format logprob entries, from either endpoint's response."""
    logprobs = choice.logprobs
    if logprobs is None:
        return []
    if task.endpoint == "chat":
        return [entry.model_dump() for entry in logprobs.content or []]
    entries = []
    for token, lp, alternatives in zip(
        logprobs.tokens or [],
        logprobs.token_logprobs or [],
        logprobs.top_logprobs or [],
        strict=False,
    ):
        tops = [{"token": t, "logprob": v} for t, v in (alternatives or {}).items()]
        entries.append({"token": token, "logprob": lp, "top_logprobs": tops})
    return entries


def true_probability(task: DemoTask, choice: Any) -> float | None:
    """The chance this answer is right, in the simulated world of the demo."""
    entries = _content_entries(task, choice)
    if not entries:
        return None
    chosen, top, rank = from_openai_logprobs(entries, TOP_K)
    return generation_confidence(
        chosen.tolist(),
        top.tolist(),
        [int(r) for r in rank],
        task.true_temperature,
        task.aggregator,
    )


def grade(probability: float, rng: random.Random) -> bool:
    return rng.random() < probability


def pick(prompts: Sequence[str], rng: random.Random) -> str:
    return prompts[rng.randrange(len(prompts))]
