"""Cascades: tiers cheapest first, routed by confidence, calibrated on dev for a target; an
abstaining tier answers the out-of-scope label where its out-of-scope score is low."""

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
    load_tiers,
)
from smallfit.route.oos import catch_curve
from smallfit.route.scores import (
    Score,
    confidence_scores,
    make_score,
    register_score,
    score_names,
)

__all__ = [
    "Abstain",
    "Calibration",
    "Cascade",
    "Decisions",
    "Point",
    "Score",
    "Step",
    "Tier",
    "TierOutputs",
    "abstain_threshold",
    "calibrate",
    "catch_curve",
    "confidence_scores",
    "evaluate_point",
    "load_tiers",
    "make_score",
    "out_of_scope_caught",
    "pareto",
    "register_score",
    "score_names",
]
