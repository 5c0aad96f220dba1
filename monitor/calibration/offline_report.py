"""Plain-text tables for `thermostat calibrate`: before/after metrics and reliability bins.

The offline workflow ends in a terminal or a CI log, often piped to a file, so
the report is fixed-width text built from plain data (the dicts the validation
gate returns, or `ReliabilityBin`s), with no terminal library: the same text
prints everywhere and tests can parse it. Kept apart from the command so the
formatting is pure and unit-testable without a model or a database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, is_dataclass
from typing import Any

# (key in the metrics dict, label, decimals); n is an integer count.
METRIC_ROWS: tuple[tuple[str, str, int], ...] = (
    ("ece", "ECE", 4),
    ("mce", "MCE", 4),
    ("brier", "Brier", 4),
    ("nll", "NLL", 4),
    ("accuracy", "accuracy", 4),
    ("mean_confidence", "mean confidence", 4),
    ("n", "n", 0),
)

RELIABILITY_HEADER = ("range", "count", "mean conf", "accuracy", "gap")


def _number(value: Any, decimals: int) -> str:
    if value is None:
        return "-"
    number = float(value)
    if math.isnan(number):
        return "nan"
    return f"{round(number)}" if decimals == 0 else f"{number:.{decimals}f}"


def _change(before: Any, after: Any, decimals: int) -> str:
    if before is None or after is None:
        return "-"
    delta = float(after) - float(before)
    if math.isnan(delta):
        return "nan"
    return f"{round(delta):+d}" if decimals == 0 else f"{delta:+.{decimals}f}"


def _render(rows: Sequence[Sequence[str]], left_columns: int = 1) -> str:
    """Fixed-width columns: the first `left_columns` left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(w) if i < left_columns else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def format_metrics(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """metric | before | after | change, for ECE, MCE, Brier, NLL, accuracy, n."""
    rows: list[list[str]] = [["metric", "before", "after", "change"]]
    for key, label, decimals in METRIC_ROWS:
        if key not in before and key not in after:
            continue
        b, a = before.get(key), after.get(key)
        rows.append([label, _number(b, decimals), _number(a, decimals), _change(b, a, decimals)])
    return _render(rows)


def _bin_dict(item: Any) -> Mapping[str, Any]:
    if is_dataclass(item) and not isinstance(item, type):
        return asdict(item)
    if isinstance(item, Mapping):
        return item
    raise TypeError(f"a reliability bin must be a mapping or a dataclass, got {type(item)!r}")


def format_reliability(bins: Sequence[Any]) -> str:
    """One row per bin: (lower, upper], count, mean confidence, accuracy, gap.

    The gap is accuracy minus mean confidence: negative means over-confident.
    Empty bins are listed with a count of 0 and dashes, so the table always
    shows the full binning.
    """
    if not bins:
        raise ValueError("no reliability bins to format")
    rows: list[list[str]] = [list(RELIABILITY_HEADER)]
    for item in bins:
        b = _bin_dict(item)
        count = int(b["count"])
        conf, acc = b.get("mean_confidence"), b.get("accuracy")
        gap = None if conf is None or acc is None else float(acc) - float(conf)
        rows.append(
            [
                f"({float(b['lower']):.3f}, {float(b['upper']):.3f}]",
                str(count),
                _number(conf, 4),
                _number(acc, 4),
                "-" if gap is None else f"{gap:+.4f}",
            ]
        )
    return _render(rows)
