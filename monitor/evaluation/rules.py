"""The rule engine: judge one task's evaluation against every alert rule.

Pure: takes the snapshot's values and sample counts, returns a verdict per
rule. A metric that could not be computed, or was computed on fewer samples
than the rule asks for, is `insufficient`, never `ok`: small samples lie
(DESIGN.md), and calling a task healthy on 50 samples would resolve real
alerts on noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from monitor.alerting.rules import Rule
from monitor.config import TaskConfig

Verdict = Literal["breach", "ok", "insufficient"]


@dataclass(frozen=True)
class RuleOutcome:
    rule: Rule
    task: str
    verdict: Verdict
    value: float | None
    threshold: float
    samples: int
    min_samples: int


def samples_by_basis(
    n: int, generations: int, ref_generations: int, feedback: int, ref_feedback: int
) -> dict[str, int]:
    """The sample count that guards each kind of metric (see `METRICS`)."""
    return {
        "calibrated": n,
        "generations": generations,
        "shift": min(generations, ref_generations),
        "feedback": feedback,
        "feedback_shift": min(feedback, ref_feedback),
    }


def judge(
    rules: list[Rule],
    task: str,
    config: TaskConfig,
    values: dict[str, float | None],
    samples: dict[str, int],
) -> list[RuleOutcome]:
    outcomes = []
    for rule in rules:
        threshold = rule.threshold_for(config)
        minimum = rule.min_samples_for(config)
        value = values.get(rule.metric)
        count = samples[rule.basis]
        verdict: Verdict
        if value is None or count < minimum:
            verdict = "insufficient"
        else:
            verdict = "breach" if rule.breached(float(value), threshold) else "ok"
        outcomes.append(RuleOutcome(rule, task, verdict, value, threshold, count, minimum))
    return outcomes
