"""Cascades: tiers cheapest first, routed by confidence, calibrated on dev for a target; an
abstaining tier answers the out-of-scope label where its out-of-scope score is low.

The config loads light (pydantic only); the rest loads on first use."""

from __future__ import annotations

from smallfit.lazy import lazy_exports

_LAZY = {
    "AbstainConfig": "smallfit.route.config",
    "RouteConfig": "smallfit.route.config",
    "Target": "smallfit.route.config",
    "parse_target": "smallfit.route.config",
    "Calibration": "smallfit.route.calibration",
    "Point": "smallfit.route.calibration",
    "TierOutputs": "smallfit.route.calibration",
    "abstain_threshold": "smallfit.route.calibration",
    "calibrate": "smallfit.route.calibration",
    "evaluate_point": "smallfit.route.calibration",
    "out_of_scope_caught": "smallfit.route.calibration",
    "pareto": "smallfit.route.calibration",
    "Abstain": "smallfit.route.cascade",
    "Cascade": "smallfit.route.cascade",
    "Decisions": "smallfit.route.cascade",
    "Step": "smallfit.route.cascade",
    "Tier": "smallfit.route.cascade",
    "load_tiers": "smallfit.route.cascade",
    "catch_curve": "smallfit.route.oos",
    "Score": "smallfit.route.scores",
    "confidence_scores": "smallfit.route.scores",
    "make_score": "smallfit.route.scores",
    "register_score": "smallfit.route.scores",
    "score_names": "smallfit.route.scores",
}

__all__ = [
    "Abstain",
    "AbstainConfig",
    "Calibration",
    "Cascade",
    "Decisions",
    "Point",
    "RouteConfig",
    "Score",
    "Step",
    "Target",
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
    "parse_target",
    "register_score",
    "score_names",
]

__getattr__ = lazy_exports(__name__, _LAZY)
