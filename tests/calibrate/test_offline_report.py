"""The text report of `thermostat calibrate`: exact rendering of metrics and bins."""

from __future__ import annotations

import pytest

from monitor.calibration import reliability_bins
from monitor.calibration.offline_report import format_metrics, format_reliability


def test_metrics_table_has_before_after_and_signed_change() -> None:
    before = {"ece": 0.25, "mce": 0.5, "brier": 0.2, "nll": 0.7, "accuracy": 0.6, "n": 20}
    after = {"ece": 0.05, "mce": 0.125, "brier": 0.18, "nll": 0.65, "accuracy": 0.6, "n": 20}
    lines = format_metrics(before, after).splitlines()
    assert lines[0].split() == ["metric", "before", "after", "change"]
    assert lines[1].split() == ["ECE", "0.2500", "0.0500", "-0.2000"]
    assert lines[2].split() == ["MCE", "0.5000", "0.1250", "-0.3750"]
    assert lines[5].split() == ["accuracy", "0.6000", "0.6000", "+0.0000"]
    assert lines[-1].split() == ["n", "20", "20", "+0"]
    assert len(lines) == 7  # mean confidence absent from both: no row


def test_reliability_table_lists_every_bin_with_gap() -> None:
    bins = reliability_bins([0.05, 0.12, 0.25, 0.33, 0.9, 0.97], [0, 0, 1, 0, 1, 1], n_bins=5)
    lines = format_reliability(bins).splitlines()
    assert lines[0].split() == ["range", "count", "mean", "conf", "accuracy", "gap"]
    assert len(lines) == 6
    assert lines[1].split() == ["(0.000,", "0.200]", "2", "0.0850", "0.0000", "-0.0850"]
    assert lines[2].split() == ["(0.200,", "0.400]", "2", "0.2900", "0.5000", "+0.2100"]
    assert lines[3].split() == ["(0.400,", "0.600]", "0", "-", "-", "-"]
    assert lines[5].split() == ["(0.800,", "1.000]", "2", "0.9350", "1.0000", "+0.0650"]
    # Stored metrics hold the bins as plain dicts; both render the same.
    assert format_reliability([b.as_dict() for b in bins]) == format_reliability(bins)


def test_reliability_table_refuses_nothing_to_show() -> None:
    with pytest.raises(ValueError, match="no reliability bins"):
        format_reliability([])
