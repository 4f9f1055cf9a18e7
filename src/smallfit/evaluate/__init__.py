"""Measuring candidates: quality against gold and teacher, latency, memory, size, roofline,
environment.

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "EvalConfig": "smallfit.evaluate.config",
    "Measured": "smallfit.evaluate.candidate",
    "evaluate_candidate": "smallfit.evaluate.candidate",
    "measured": "smallfit.evaluate.candidate",
    "environment": "smallfit.evaluate.host",
    "expected_calibration_error": "smallfit.evaluate.quality",
    "quality_metrics": "smallfit.evaluate.quality",
    "peak_rates": "smallfit.evaluate.roofline",
    "interleaved_latency": "smallfit.evaluate.speed",
    "limit_threads": "smallfit.evaluate.speed",
    "measure_speed": "smallfit.evaluate.speed",
}

__all__ = [
    "EvalConfig",
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

__getattr__ = lazy_exports(__name__, _LAZY)
