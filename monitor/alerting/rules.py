"""Alert rules: YAML files in `alerts/` (shipped) or `THERMOSTAT_ALERT_RULES` (file or folder).

A rule names a metric of the evaluation snapshot, a comparison and a
threshold, which may be a number or a reference to the task's config
(`task.ece_threshold`) so one rule serves tasks with different policies.
Loading validates everything up front: a typo in a metric name or a bad
value must stop the scheduler at start with one line that names the file
and the rule, not silently never fire. `THERMOSTAT_ALERT_RULES` replaces
the shipped rules (copy the shipped files to extend them).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

import monitor
from monitor.config import TaskConfig, describe_validation_error
from monitor.errors import ConfigError

# Which sample count guards each metric (see `monitor.evaluation.service`):
# calibrated: labelled generations under the active calibration (n);
# generations: all generations in the window; shift: min(current, reference)
# generations; feedback: labelled generations in the window (any version);
# feedback_shift: min(current, reference) labelled generations.
METRICS: dict[str, str] = {
    "n": "calibrated",
    "accuracy": "calibrated",
    "mean_confidence": "calibrated",
    "ece": "calibrated",
    "ece_low": "calibrated",
    "ece_high": "calibrated",
    "mce": "calibrated",
    "brier": "calibrated",
    "nll": "calibrated",
    "confidence_psi": "shift",
    "confidence_ks": "shift",
    "mean_response_length": "generations",
    "mean_response_length_change": "shift",
    "truncation_rate": "generations",
    "repetition_rate": "generations",
    "top_margin": "generations",
    "feedback_rate": "generations",
    "feedback_accuracy": "feedback",
    "feedback_accuracy_drop": "feedback_shift",
}

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}

_NUMERIC_TASK_FIELDS = {
    name
    for name, info in TaskConfig.model_fields.items()
    if info.annotation in (int, float) and name != "top_logprobs"
}


def default_rules_path() -> Path:
    """The shipped rules: `alerts/` at the repository root in a checkout (or an editable
    install), else the copy a built wheel carries as `monitor/_alerts/` (see setup.py)."""
    package = Path(monitor.__file__).resolve().parent
    root = package.parent
    # pyproject.toml marks a checkout: an unrelated `alerts` folder in site-packages is not ours.
    if (root / "alerts").is_dir() and (root / "pyproject.toml").is_file():
        return root / "alerts"
    return package / "_alerts"


def _task_reference(value: Any) -> Any:
    if isinstance(value, str):
        name = value.removeprefix("task.")
        if not value.startswith("task.") or name not in _NUMERIC_TASK_FIELDS:
            known = ", ".join(f"task.{f}" for f in sorted(_NUMERIC_TASK_FIELDS))
            raise ValueError(f"{value!r} is neither a number nor one of {known}")
    return value


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    metric: str
    comparison: Literal[">", ">=", "<", "<="]
    threshold: float | str
    # Consecutive breaching evaluations before firing (DESIGN.md: default 2).
    for_: int = Field(default=2, ge=1, alias="for")
    min_samples: int | str = 0
    severity: Literal["info", "warning", "critical"] = "warning"
    description: str = ""

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in METRICS:
            raise ValueError(f"unknown metric {value!r} (known: {', '.join(sorted(METRICS))})")
        return value

    @field_validator("threshold", "min_samples")
    @classmethod
    def _reference(cls, value: Any) -> Any:
        return _task_reference(value)

    @field_validator("min_samples")
    @classmethod
    def _non_negative(cls, value: Any) -> Any:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be >= 0")
        return value

    @property
    def basis(self) -> str:
        return METRICS[self.metric]

    def threshold_for(self, config: TaskConfig) -> float:
        return float(_resolve(self.threshold, config))

    def min_samples_for(self, config: TaskConfig) -> int:
        minimum = int(_resolve(self.min_samples, config))
        # A calibration metric is never judged below the task's own floor.
        return max(minimum, config.min_samples) if self.basis == "calibrated" else minimum

    def breached(self, value: float, threshold: float) -> bool:
        return COMPARISONS[self.comparison](value, threshold)


def _resolve(value: float | int | str, config: TaskConfig) -> float | int:
    if isinstance(value, str):
        resolved: float | int = getattr(config, value.removeprefix("task."))
        return resolved
    return value


def _rule_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    if path.is_file():
        return [path]
    raise ConfigError(f"alert rules {path} does not exist")


def _parse_file(path: Path) -> list[Rule]:
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        detail = str(exc).replace("\n", " ")
        raise ConfigError(f"alert rules file {path} cannot be read: {detail}") from None
    items = raw.get("rules") if isinstance(raw, dict) else raw
    if items is None:
        return []
    if not isinstance(items, list):
        raise ConfigError(f"alert rules file {path}: expected a list under 'rules'")
    rules = []
    for position, item in enumerate(items):
        name = item.get("name") if isinstance(item, dict) else None
        label = repr(name) if name else f"#{position + 1}"
        if not isinstance(item, dict):
            raise ConfigError(f"alert rules file {path}: rule {label}: must be a mapping")
        try:
            rules.append(Rule.model_validate(item))
        except ValidationError as exc:
            detail = describe_validation_error(exc)
            raise ConfigError(f"alert rules file {path}: rule {label}: {detail}") from None
    return rules


def load_rules(path: Path | None = None) -> list[Rule]:
    """All rules of a file or folder (default: the shipped `alerts/`), validated."""
    source = (path or default_rules_path()).expanduser()
    files = _rule_files(source)
    stamp = tuple((str(f), f.stat().st_mtime_ns) for f in files)
    return list(_load_cached(stamp))


@lru_cache(maxsize=8)
def _load_cached(stamp: tuple[tuple[str, int], ...]) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    seen: dict[str, Path] = {}
    for name, _mtime in stamp:
        path = Path(name)
        for rule in _parse_file(path):
            if rule.name in seen:
                where = f"alert rules file {path}: rule {rule.name!r}"
                raise ConfigError(f"{where} already defined in {seen[rule.name]}")
            seen[rule.name] = path
            rules.append(rule)
    return tuple(rules)
