"""The cascade's config: tiers, the calibration target and abstention."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator

from smallfit.schema import Strict


class AbstainConfig(Strict):
    """When a tier is too unsure to answer or escalate, the cascade answers `label` instead."""

    label: str = "oos"
    """The answer given when abstaining: the out-of-scope label of the data. In a fit config it
    defaults to `data.out_of_scope` when that is set, and must then equal it."""
    in_scope_loss: float = Field(0.02, ge=0, lt=1)
    """Share of in-scope dev queries allowed to abstain: sets the threshold."""
    tier: int = Field(0, ge=0)
    """Index of the tier that abstains: 0, the cheapest, sees every query; a later (local)
    tier screens only the queries escalated to it."""
    score: str = "auto"
    """How in-scope a query looks to the abstaining tier (higher: more in scope): `auto` (the
    default: `knn` where the tier gives embeddings, else `max_prob`), `max_prob`,
    `margin`, `entropy` (its probabilities), `energy` (its logits' log-sum-exp at its
    temperature), `knn` (cosine similarity to the 10th nearest training embedding),
    `mahalanobis` (distance to the nearest class mean of the training embeddings, shared
    covariance) or `relative_mahalanobis` (the same, less the distance to all of them). `energy`
    needs a tier that gives logits (transformer, ONNX, linear, static); the last three need
    embeddings (transformer, static; ONNX as the `onnx` step now exports it). The route stage
    measures every score the tier gives on the out-of-scope test texts (`data.out_of_scope`,
    `data.hold_out_labels`);
    `cascade.json` and the report say how each did."""

    @field_validator("score")
    @classmethod
    def _check_score(cls, value: str) -> str:
        from smallfit.route.scores import AUTO, score_names

        if value != AUTO and value not in score_names():
            known = ", ".join([AUTO, *score_names()])
            raise ValueError(f"unknown score {value!r} (known: {known})")
        return value


class RouteConfig(Strict):
    """The cascade: tiers cheapest first, each answers when its confidence clears its threshold;
    thresholds are calibrated on dev for a target and checked on test."""

    tiers: list[str] | None = None
    """Candidate names of the run, cheapest first (or model directories); default: the selected
    candidate, then the teacher (with `front`, a cheaper tier may go before them). A name that
    is neither fails when the config is loaded."""
    front: bool = False
    """Try a much cheaper tier in front of the default tiers: each local candidate at least 5x
    faster (batch-1 p50) than the first, with an ECE on dev of at most 0.05, is calibrated in
    front on dev; the one that meets the target without sending more to the teacher and cuts
    the local latency most (by at least 10%) is kept. Classify tasks with an accuracy target,
    no `tiers` and no `abstain` only. Off by default: on Banking77 the static tier in front
    answered 83% of the texts first and sent 30% fewer to the teacher, but left the cascade at
    the edge of its target (dev exactly at it, test 0.1 pt under it on one run, 0.01 pt over
    on another), where the two-tier cascade had 0.5 pt to spare on test."""
    confidence: Literal["max_prob", "margin", "entropy"] = "max_prob"
    """How sure a tier is: top probability, top-1 minus top-2, or 1 - normalised entropy."""
    target: str = "accuracy >= teacher - 0.5pt"
    """What the calibration must reach: `accuracy >= teacher - 0.5pt` (`teacher`: the last
    tier; or `accuracy >= 0.9`), `escalation <= 10%`, or `cost <= 5` (US dollars per million
    queries)."""
    margin_se: float = Field(1.645, ge=0)
    """A classify cascade's accuracy target must be met on dev by this many standard errors
    of the dev estimate to spare (of the cascade's accuracy minus the teacher's, text by text,
    for a target relative to the teacher); 0 meets it exactly on dev. 1.645 is one-sided 95%.
    On Banking77's 1,000 dev texts with the 3-layer student first, meeting the target exactly
    escalated 2.9% and ended 1.01 pt under the teacher on test; with 1.645, 6.1% and 0.36 pt."""
    abstain: AbstainConfig | None = None
    """Abstain (answer the out-of-scope label) when the abstaining tier is very unsure."""
    timeout_s: float | None = Field(10.0, gt=0)
    """A remote tier (an API) slower than this per batch is given up on: the best local
    answer stands, flagged as a fallback."""
    recommend_min_local: float = Field(0.25, ge=0, le=1)
    """When the teacher is selected (no local model alone reaches the floor), the cascade is
    recommended instead if it meets its target with at least this share of test queries
    answered before the teacher."""

    @field_validator("target")
    @classmethod
    def _check_target(cls, value: str) -> str:
        parse_target(value)
        return value


_TARGET = re.compile(
    r"^\s*(?P<what>accuracy|escalations?|cost)\s*(?P<op>>=|<=)\s*"
    r"(?:(?P<teacher>teacher)\s*(?P<sign>[-+])\s*)?(?P<x>\d+(\.\d+)?)\s*(?P<unit>pt|%|\$)?\s*$"
)


@dataclass(frozen=True)
class Target:
    """A calibration target: ``kind`` accuracy (``value`` absolute, or ``teacher`` + ``value``
    as a difference), escalation (``value`` a share) or cost (``value`` USD per 1M queries)."""

    kind: Literal["accuracy", "escalation", "cost"]
    value: float
    relative_to_teacher: bool = False


def parse_target(text: str) -> Target:
    """``'accuracy >= teacher - 0.5pt'``, ``'accuracy >= 0.92'``, ``'escalation <= 10%'``,
    ``'cost <= 5'`` (USD per 1M queries) -> :class:`Target`."""
    match = _TARGET.match(text)
    expected = (
        "targets look like 'accuracy >= teacher - 0.5pt', 'accuracy >= 0.92', "
        f"'escalation <= 10%' or 'cost <= 5' (USD per 1M queries); got {text!r}"
    )
    if not match:
        raise ValueError(expected)
    what, op, x, unit = match["what"], match["op"], float(match["x"]), match["unit"]
    if what == "accuracy":
        if op != ">=" or unit == "$":
            raise ValueError(expected)
        if match["teacher"]:
            delta = x / 100 if unit in ("pt", "%") else x
            return Target("accuracy", -delta if match["sign"] == "-" else delta, True)
        value = x / 100 if unit in ("pt", "%") else x
        if not 0 < value <= 1:
            raise ValueError(f"an accuracy target is a share in (0, 1] or a percentage: {text!r}")
        return Target("accuracy", value)
    if op != "<=" or match["teacher"]:
        raise ValueError(expected)
    if what.startswith("escalation"):
        if unit == "$":
            raise ValueError(expected)
        value = x / 100 if unit in ("%", "pt") else x
        if not 0 <= value <= 1:
            raise ValueError(f"an escalation target is a share in [0, 1] or a percentage: {text!r}")
        return Target("escalation", value)
    if unit in ("%", "pt"):
        raise ValueError(expected)
    return Target("cost", x)
