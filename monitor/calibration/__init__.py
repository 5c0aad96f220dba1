"""Calibration maths for Thermostat: metrics, confidence, fitting, validation.

Pure modules (numpy; torch only lazily inside functions), no database or web
code, so the proxy, scheduler and worker can all import them cheaply. The
contract's Python API (CONTRACT.md) is re-exported here.
"""

from monitor.calibration.aggregation import (
    AGGREGATORS,
    answer_span_positions,
    generation_confidence,
    sequence_confidences,
    token_logprobs,
)
from monitor.calibration.fitting import (
    T_MAX,
    T_MIN,
    TemperatureFit,
    fit_sequence_temperature,
    fit_temperature,
    fit_temperature_detailed,
    multiclass_nll,
)
from monitor.calibration.metrics import (
    CalibrationMetrics,
    ReliabilityBin,
    binary_nll,
    brier_score,
    compute_metrics,
    ece_bootstrap_interval,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_bins,
)
from monitor.calibration.packing import (
    TokenBatch,
    from_openai_logprobs,
    pack_token_logprobs,
    unpack_token_logprobs,
)
from monitor.calibration.validation import (
    ValidationResult,
    validate_multiclass,
    validate_sequence_temperature,
)
from monitor.calibration.vector_scaling import (
    VectorScalingFit,
    fit_vector_scaling,
    scaled_probabilities,
)

__all__ = [
    "AGGREGATORS",
    "T_MAX",
    "T_MIN",
    "CalibrationMetrics",
    "ReliabilityBin",
    "TemperatureFit",
    "TokenBatch",
    "ValidationResult",
    "VectorScalingFit",
    "answer_span_positions",
    "binary_nll",
    "brier_score",
    "compute_metrics",
    "ece_bootstrap_interval",
    "expected_calibration_error",
    "fit_sequence_temperature",
    "fit_temperature",
    "fit_temperature_detailed",
    "fit_vector_scaling",
    "from_openai_logprobs",
    "generation_confidence",
    "maximum_calibration_error",
    "multiclass_nll",
    "pack_token_logprobs",
    "reliability_bins",
    "scaled_probabilities",
    "sequence_confidences",
    "token_logprobs",
    "unpack_token_logprobs",
    "validate_multiclass",
    "validate_sequence_temperature",
]
