"""Per-task evaluation: calibration metrics, label-free drift signals, rule verdicts."""
