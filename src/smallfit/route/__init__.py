"""Cascades: tiers cheapest first, routed by confidence, calibrated on dev for a target."""

from smallfit.route.calibrate import (
    Calibration,
    Point,
    TierOutputs,
    abstain_threshold,
    calibrate,
    evaluate_point,
    out_of_scope_caught,
    pareto,
)
from smallfit.route.cascade import (
    Abstain,
    Cascade,
    Decisions,
    Step,
    Tier,
    confidence_scores,
    load_tiers,
)

__all__ = [
    "Abstain",
    "Calibration",
    "Cascade",
    "Decisions",
    "Point",
    "Step",
    "Tier",
    "TierOutputs",
    "abstain_threshold",
    "calibrate",
    "confidence_scores",
    "evaluate_point",
    "load_tiers",
    "out_of_scope_caught",
    "pareto",
]
