"""Calibration versions: activation (forward and rollback), re-scoring, and their admin API."""
