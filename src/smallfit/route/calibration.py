"""Threshold calibration: pick each tier's confidence threshold on dev for a target, keep the
whole trade-off curve, and check the chosen point on test (never tuned there).

Everything here is numpy over saved probabilities: a tier's probabilities on dev and test are
computed once, and every operating point is a replay of the routing rule of
:meth:`smallfit.route.cascade.Cascade.step` over them.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from smallfit.errors import SmallfitError
from smallfit.route.config import Target, parse_target
from smallfit.route.scores import confidence_scores

NEVER = 1.0 + 1e-6
"""A threshold no confidence clears: the tier always passes on."""
MAX_POINTS = 4096
"""Threshold combinations tried at most (3+ tiers: a grid of quantiles)."""
CURVE_POINTS = 200
LOWEST = float(np.finfo(np.float64).min)
"""An abstain threshold no score falls below (finite, so JSON keeps it)."""


@dataclass(frozen=True)
class TierOutputs:
    """One tier's probabilities on a split (columns in the cascade's label order), its cost
    per million queries (None when unknown), its batch-1 p50 in ms (None when unknown), and,
    for the abstaining tier, its out-of-scope score of each row (None: its confidence)."""

    name: str
    probs: np.ndarray
    cost_per_1m_usd: float | None = None
    p50_ms: float | None = None
    in_scope: np.ndarray | None = None


@dataclass(frozen=True)
class Point:
    """One operating point of the cascade on one split."""

    thresholds: list[float]
    answered_by: list[float]
    """Share of queries each tier answered."""
    reach: list[float]
    """Share of queries each tier ran on (the first: all of them)."""
    abstained: float
    escalation: float
    """Share of queries that reached the last tier."""
    accuracy: float
    last_tier_agreement: float
    cost_per_1m_usd: float | None
    mean_latency_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Calibration:
    """The chosen thresholds, how they did on dev and test, and the dev trade-off curve."""

    target: str
    confidence: str
    tiers: list[str]
    thresholds: list[float]
    abstain_threshold: float | None
    reference_accuracy: dict[str, float]
    """What ``teacher`` means in a target, on dev and test: the accuracy of sending every query
    on to the last tier (abstaining as the cascade does, if it does)."""
    dev: Point
    test: Point | None
    met_on_dev: bool
    met_on_test: bool | None
    curve: list[Point] = field(default_factory=list)
    out_of_scope: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["dev"] = self.dev.to_dict()
        out["test"] = self.test.to_dict() if self.test else None
        out["curve"] = [p.to_dict() for p in self.curve]
        return out


def _routes(
    confs: Sequence[np.ndarray],
    thresholds: Sequence[float],
    abstain: tuple[int, float] | None,
    in_scope: Sequence[np.ndarray | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(answering tier per row, -1 where abstained; reach count per tier). The abstaining tier
    compares its ``in_scope`` score with the abstain threshold (its confidence when None)."""
    n = len(confs[0])
    tier = np.full(n, -1, dtype=np.int64)
    open_ = np.ones(n, dtype=bool)
    reach = np.zeros(len(confs))
    for i, conf in enumerate(confs):
        reach[i] = open_.sum()
        gone = np.zeros(n, bool)
        if abstain is not None and abstain[0] == i:
            score = in_scope[i] if in_scope is not None else None
            gone = open_ & ((conf if score is None else score) < abstain[1])
        last = i == len(confs) - 1
        done = open_ & ~gone & (True if last else conf >= thresholds[i])
        tier[done] = i
        open_ &= ~done & ~gone
    return tier, reach


def answers(
    tiers: Sequence[TierOutputs],
    thresholds: Sequence[float],
    *,
    confs: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    abstain: tuple[int, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cascade's answer per row (-2 where abstained), the answering tier per row (-1
    where abstained) and the reach count per tier."""
    tier, reach = _routes(confs, thresholds, abstain, [t.in_scope for t in tiers])
    pred = np.full(len(tier), -2, dtype=np.int64)
    for i, p in enumerate(preds):
        pred = np.where(tier == i, p, pred)
    return pred, tier, reach


def evaluate_point(
    tiers: Sequence[TierOutputs],
    gold: np.ndarray,
    thresholds: Sequence[float],
    *,
    confidence: str,
    abstain: tuple[int, float] | None = None,
    confs: Sequence[np.ndarray] | None = None,
    preds: Sequence[np.ndarray] | None = None,
) -> Point:
    """The cascade's behaviour on a split for ``thresholds`` (one per tier but the last).

    ``gold`` holds label indices in the cascade's order (-1 for a label no tier knows: always
    wrong). ``abstain`` is (tier index, threshold)."""
    if confs is None:
        confs = [confidence_scores(t.probs, confidence) for t in tiers]
    if preds is None:
        preds = [t.probs.argmax(axis=1) for t in tiers]
    routed = answers(tiers, thresholds, confs=confs, preds=preds, abstain=abstain)
    return _point(tiers, gold, thresholds, routed, preds)


def _point(
    tiers: Sequence[TierOutputs],
    gold: np.ndarray,
    thresholds: Sequence[float],
    routed: tuple[np.ndarray, np.ndarray, np.ndarray],
    preds: Sequence[np.ndarray],
) -> Point:
    """The :class:`Point` of a routing :func:`answers` gave."""
    pred, tier, reach = routed
    share = reach / len(gold)
    costs = [t.cost_per_1m_usd for t in tiers]
    cost = None
    if all(c is not None or r == 0 for c, r in zip(costs, share, strict=True)):
        cost = float(sum((c or 0.0) * r for c, r in zip(costs, share, strict=True)))
    p50s = [t.p50_ms for t in tiers]
    latency = None
    if all(p is not None or r == 0 for p, r in zip(p50s, share, strict=True)):
        latency = float(sum((p or 0.0) * r for p, r in zip(p50s, share, strict=True)))
    return Point(
        thresholds=[float(t) for t in thresholds],
        answered_by=[float((tier == i).mean()) for i in range(len(tiers))],
        reach=[float(r) for r in share],
        abstained=float((tier == -1).mean()),
        escalation=float(share[-1]),
        accuracy=float((pred == gold).mean()),
        last_tier_agreement=float((pred == preds[-1]).mean()),
        cost_per_1m_usd=cost,
        mean_latency_ms=latency,
    )


def _candidates(conf: np.ndarray, quantiles: int | None) -> np.ndarray:
    """Thresholds worth trying for one tier: every distinct confidence (or that many quantiles
    when several tiers multiply the grid), plus 0 (always answer) and NEVER (always pass on)."""
    values = conf if quantiles is None else np.quantile(conf, np.linspace(0, 1, quantiles))
    return np.unique(np.concatenate([[0.0], np.unique(values), [NEVER]]))


def _feasible(point: Point, target: Target, reference: float, slack: float = 0.0) -> bool:
    """Whether ``point`` meets ``target``; an accuracy target by ``slack`` to spare."""
    if target.kind == "accuracy":
        floor = reference + target.value if target.relative_to_teacher else target.value
        return point.accuracy - slack >= floor - 1e-12
    if target.kind == "escalation":
        return point.escalation <= target.value + 1e-12
    return point.cost_per_1m_usd is not None and point.cost_per_1m_usd <= target.value + 1e-12


def _rank(point: Point, target: Target) -> tuple[float, ...]:
    """Higher is better. A quality target keeps as many queries as it can on the cheap tiers;
    a budget target (escalations, cost) buys the most accuracy it can."""
    cheap = 1.0 - point.escalation
    first = point.answered_by[0]
    if target.kind == "accuracy":
        return (cheap, first, point.accuracy)
    return (point.accuracy, cheap, first)


def pareto(points: Sequence[Point]) -> list[Point]:
    """The points no other point beats on both accuracy and share kept off the last tier,
    ordered by escalation."""
    ordered = sorted(points, key=lambda p: (p.escalation, -p.accuracy))
    front: list[Point] = []
    best = -1.0
    for point in ordered:
        if point.accuracy > best + 1e-12:
            front.append(point)
            best = point.accuracy
    return front


def calibrate(
    dev: Sequence[TierOutputs],
    dev_gold: np.ndarray,
    *,
    target: str,
    confidence: str = "max_prob",
    test: Sequence[TierOutputs] | None = None,
    test_gold: np.ndarray | None = None,
    abstain: tuple[int, float] | None = None,
    margin_se: float = 0.0,
) -> Calibration:
    """Choose the thresholds on dev that meet ``target`` (see :func:`parse_target`) and keep
    the most queries on the cheap tiers (accuracy targets) or buy the most accuracy (escalation
    and cost targets); then replay them on test. When no point meets the target on dev, the
    closest is chosen and ``met_on_dev`` is False.

    ``margin_se``: an accuracy target must be met on dev by that many standard errors of the
    dev estimate to spare: of the cascade's accuracy minus the teacher's, text by text (a
    relative target), or of its accuracy (an absolute one). A point that meets the target
    exactly on a small dev split often misses it on test."""
    goal = parse_target(target)
    if len(dev) < 1:
        raise SmallfitError("calibration needs at least one tier")
    confs = [confidence_scores(t.probs, confidence) for t in dev]
    preds = [t.probs.argmax(axis=1) for t in dev]
    gold = np.asarray(dev_gold)
    # "teacher" in a target: the cascade that sends everything on to the last tier (with the
    # same abstention, if any), which is the last tier's own accuracy when nothing abstains
    everything_on = [NEVER] * (len(dev) - 1)
    reference = evaluate_point(
        dev, gold, everything_on, confidence=confidence, abstain=abstain, confs=confs, preds=preds
    ).accuracy
    if goal.kind == "cost" and any(t.cost_per_1m_usd is None for t in dev):
        unknown = [t.name for t in dev if t.cost_per_1m_usd is None]
        raise SmallfitError(f"a cost target needs every tier's cost; unknown for {unknown}")
    # one threshold: every distinct dev confidence; several: a grid of quantiles per tier
    per_tier = None if len(dev) <= 2 else max(3, int(MAX_POINTS ** (1 / (len(dev) - 1))) - 2)
    grids = [_candidates(c, per_tier) for c in confs[:-1]]
    combos = list(itertools.product(*grids))
    margin = goal.kind == "accuracy" and margin_se > 0 and len(gold) > 1
    ref_right = answers(dev, everything_on, confs=confs, preds=preds, abstain=abstain)[0] == gold
    points, slack = [], []
    for combo in combos:  # each threshold combination routed once: its point and its slack
        routed = answers(dev, combo, confs=confs, preds=preds, abstain=abstain)
        points.append(_point(dev, gold, combo, routed, preds))
        if margin:
            right = (routed[0] == gold).astype(float)
            diff = right - ref_right if goal.relative_to_teacher else right
            slack.append(margin_se * float(diff.std(ddof=1)) / np.sqrt(len(diff)))
        else:
            slack.append(0.0)
    feasible = [p for p, s in zip(points, slack, strict=True) if _feasible(p, goal, reference, s)]
    if feasible:
        chosen, met = max(feasible, key=lambda p: _rank(p, goal)), True
    else:
        chosen, met = _closest(points, goal), False
    curve = pareto(points)
    if len(curve) > CURVE_POINTS:
        idx = np.unique(np.linspace(0, len(curve) - 1, CURVE_POINTS).round().astype(int))
        curve = [curve[i] for i in idx]
    test_point, met_test, ref_test = None, None, None
    if test is not None and test_gold is not None:
        test_point = evaluate_point(
            test, np.asarray(test_gold), chosen.thresholds, confidence=confidence, abstain=abstain
        )
        ref_test = evaluate_point(
            test, np.asarray(test_gold), everything_on, confidence=confidence, abstain=abstain
        ).accuracy
        met_test = _feasible(test_point, goal, ref_test)
    references = {"dev": reference} | ({"test": ref_test} if ref_test is not None else {})
    return Calibration(
        target=target,
        confidence=confidence,
        tiers=[t.name for t in dev],
        thresholds=chosen.thresholds,
        abstain_threshold=abstain[1] if abstain else None,
        reference_accuracy=references,
        dev=chosen,
        test=test_point,
        met_on_dev=met,
        met_on_test=met_test,
        curve=curve,
    )


def _closest(points: Sequence[Point], goal: Target) -> Point:
    if goal.kind == "accuracy":
        return max(points, key=lambda p: (p.accuracy, 1.0 - p.escalation))
    if goal.kind == "escalation":
        return min(points, key=lambda p: (p.escalation, -p.accuracy))
    return min(points, key=lambda p: (p.cost_per_1m_usd or float("inf"), -p.accuracy))


def abstain_threshold(dev_scores: np.ndarray, *, in_scope_loss: float) -> float:
    """The out-of-scope score below which ``in_scope_loss`` of (in-scope) dev queries fall:
    abstaining under it gives up about that share of in-scope answers (none at 0)."""
    scores = np.asarray(dev_scores, dtype=np.float64)
    if in_scope_loss <= 0 or len(scores) == 0:
        return LOWEST
    return float(np.quantile(scores, in_scope_loss, method="lower"))


def out_of_scope_caught(
    tiers: Sequence[TierOutputs],
    thresholds: Sequence[float],
    *,
    confidence: str,
    abstain: tuple[int, float],
) -> dict[str, Any]:
    """What the cascade does with out-of-scope queries (``tiers`` hold their probabilities):
    the share caught (abstained), and the share that reached the last tier (paid for)."""
    n = len(tiers[0].probs)
    if n == 0:
        return {"n": 0, "caught": None, "escalated": None, "answered_by": None}
    confs = [confidence_scores(t.probs, confidence) for t in tiers]
    tier, reach = _routes(confs, thresholds, abstain, [t.in_scope for t in tiers])
    return {
        "n": n,
        "caught": float((tier == -1).mean()),
        "escalated": float(reach[-1] / n),
        "answered_by": [float((tier == i).mean()) for i in range(len(tiers))],
    }
