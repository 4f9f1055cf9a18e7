"""A cheaper first tier for the default cascade (``route.front``, off by default).

The default cascade is the selected candidate, then the teacher. A run often holds a much
faster candidate (the static or linear tier) that is right, and sure, on most texts: put in
front, it answers those and passes the rest on, and the cascade's local compute falls.
Each candidate at least :data:`SPEEDUP` times faster than the cascade's first default tier (the
selected candidate; the best local one when the teacher was selected) is tried in front,
calibrated on dev for the same target. Of those that meet it on dev without sending more texts
to the last tier, the one with the lowest local latency (each local tier's p50 weighted by the
share of texts it runs on) is kept, if that saves at least :data:`GAIN` of it. Test plays no
part in the choice. Only for a classify task's cascade with an accuracy target and no
abstention.

Local latency, not the whole cascade's: the last tier's share is what the target sets, and on a
thousand dev texts a few more or fewer escalations outweigh any local difference (Banking77:
the linear tier in front had the lowest whole mean latency on dev, and missed the target on
test; the static tier, 5x faster than the linear one, met it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from smallfit.route.calibration import Calibration, TierOutputs, calibrate
from smallfit.route.config import RouteConfig, parse_target
from smallfit.run.layout import CASCADE, TEACHER
from smallfit.run.records import CandidateResult

__all__ = ["GAIN", "SPEEDUP", "choose_front", "front_options"]

SPEEDUP = 5.0
"""A front tier's batch-1 p50 is at most the first tier's over this."""
MAX_ECE = 0.05
"""A candidate whose confidence is further than this from its accuracy on dev (expected
calibration error) is not put in front: its threshold does not carry from dev to test."""
GAIN = 0.10
"""The share of the local latency on dev a front tier must save to be kept."""


def front_options(
    config: RouteConfig, candidates: Sequence[CandidateResult], *, names: Sequence[str]
) -> list[str]:
    """The candidates worth trying in front of the default tiers ``names``, fastest first:
    local, measured, and at least :data:`SPEEDUP` times faster than ``names[0]``. None unless
    ``route.front`` is on; none when the tiers are configured, the cascade abstains (its
    abstaining tier is set by index) or its target is not an accuracy (an escalation or cost
    target is met by buying accuracy, so a front tier would be kept for its speed while dev
    accuracy fell)."""
    if not config.front or config.tiers or config.abstain is not None:
        return []
    if parse_target(config.target).kind != "accuracy":
        return []
    by_name = {c.name: c for c in candidates}
    first = by_name.get(names[0])
    first_p50 = None if first is None else first.speed.p50_ms(1)
    if first_p50 is None:
        return []
    faster = []
    for candidate in candidates:
        p50 = candidate.speed.p50_ms(1)
        if candidate.name in (*names, TEACHER, CASCADE) or p50 is None or candidate.speed.remote:
            continue
        if p50 * SPEEDUP <= first_p50:
            faster.append((p50, candidate.name))
    return [name for _, name in sorted(faster)]


def choose_front(
    dev: list[TierOutputs],
    dev_gold: np.ndarray,
    *,
    options: list[TierOutputs],
    config: RouteConfig,
    log: Callable[[str], None],
) -> TierOutputs | None:
    """The option (a tier's dev outputs) to put in front of the ``dev`` tiers, or None."""
    if not options:
        return None
    base = _dev_only(dev, dev_gold, config)
    base_local = _local_ms(dev, base)
    if not base.met_on_dev or base_local is None:
        return None
    best, best_local = None, base_local * (1 - GAIN)
    for option in options:
        ece = _ece(option, dev_gold)
        if ece > MAX_ECE:
            log(
                f"[route] {option.name} not put in front: its ECE on dev is {ece:.3f} (> {MAX_ECE})"
            )
            continue
        tiers = [option, *dev]
        tried = _dev_only(tiers, dev_gold, config)
        local = _local_ms(tiers, tried)
        fewer = tried.dev.escalation <= base.dev.escalation
        log(
            f"[route] {option.name} in front: local latency on dev "
            + (f"{local:.3f} ms" if local is not None else "unknown")
            + f" vs {base_local:.3f} ms without it; it answers {tried.dev.answered_by[0]:.1%} "
            f"of dev, {tried.dev.escalation:.1%} go to the last tier "
            f"({base.dev.escalation:.1%} without it); target "
            f"{'met' if tried.met_on_dev else 'NOT met'} on dev"
        )
        if tried.met_on_dev and fewer and local is not None and local < best_local:
            best, best_local = option, local
    return best


def _ece(tier: TierOutputs, gold: np.ndarray) -> float:
    from smallfit.evaluate.quality import expected_calibration_error

    correct = tier.probs.argmax(axis=1) == gold
    return expected_calibration_error(tier.probs.max(axis=1), correct)


def _local_ms(tiers: list[TierOutputs], calibration: Calibration) -> float | None:
    """Each tier but the last's p50, weighted by the share of dev texts it runs on."""
    reach = calibration.dev.reach
    p50s = [t.p50_ms for t in tiers[:-1]]
    if any(p is None for p in p50s):
        return None
    return float(sum(p * r for p, r in zip(p50s, reach, strict=False) if p is not None))


def _dev_only(tiers: list[TierOutputs], gold: np.ndarray, config: RouteConfig) -> Calibration:
    return calibrate(
        tiers, gold, target=config.target, confidence=config.confidence, margin_se=config.margin_se
    )
