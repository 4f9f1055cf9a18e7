"""Measuring candidates: quality against gold and teacher, latency, memory, size, roofline,
environment."""

from smallfit.evaluate.candidate import Measured, evaluate_candidate, measured
from smallfit.evaluate.environment import environment
from smallfit.evaluate.quality import expected_calibration_error, quality_metrics
from smallfit.evaluate.roofline import peak_rates
from smallfit.evaluate.speed import interleaved_latency, limit_threads, measure_speed

__all__ = [
    "Measured",
    "environment",
    "evaluate_candidate",
    "expected_calibration_error",
    "interleaved_latency",
    "limit_threads",
    "measure_speed",
    "measured",
    "peak_rates",
    "quality_metrics",
]
