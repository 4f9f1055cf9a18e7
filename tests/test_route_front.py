"""The default cascade's cheaper first tier: which candidates are tried, and which one is kept."""

from __future__ import annotations

import numpy as np

from smallfit.route.calibration import TierOutputs
from smallfit.route.config import AbstainConfig, RouteConfig
from smallfit.route.front import choose_front, front_options
from smallfit.run.records import CandidateResult, Latency, Speed

N, LABELS = 2000, 3


def _candidate(name: str, p50: float | None, remote: bool = False) -> CandidateResult:
    # the fields front_options reads (model_construct: the rest of a result is not needed)
    threads = {} if p50 is None else {"1": Latency.model_construct(p50_ms=p50)}
    return CandidateResult.model_construct(
        name=name, speed=Speed.model_construct(remote=remote, threads=threads)
    )


def test_only_much_faster_local_candidates_are_tried_fastest_first() -> None:
    candidates = [
        _candidate("teacher", 60.0),
        _candidate("int8", 2.0),
        _candidate("l3", 1.0),  # 2x faster: not enough
        _candidate("linear", 0.3),
        _candidate("static", 0.06),
        _candidate("api", 0.01, remote=True),
        _candidate("cascade", 0.1),
        _candidate("unmeasured", None),
    ]
    names = ["int8", "teacher"]
    assert front_options(RouteConfig(front=True), candidates, names=names) == ["static", "linear"]
    assert front_options(RouteConfig(), candidates, names=names) == []  # off by default
    # configured tiers, or an abstaining cascade, are left as they are
    assert (
        front_options(RouteConfig(front=True, tiers=["int8", "teacher"]), candidates, names=names)
        == []
    )
    abstaining = RouteConfig(front=True, abstain=AbstainConfig(label="oos"))
    assert front_options(abstaining, candidates, names=names) == []
    assert front_options(RouteConfig(front=True), candidates, names=["unmeasured", "teacher"]) == []
    # a budget target is met by buying accuracy: a front tier would be kept for speed alone
    budget = RouteConfig(front=True, target="escalation <= 10%")
    assert front_options(budget, candidates, names=names) == []


def _probs(pred: np.ndarray, confidence: np.ndarray) -> np.ndarray:
    """Rows putting ``confidence`` on ``pred`` and the rest evenly on the other labels."""
    out = np.repeat(((1 - confidence) / (LABELS - 1))[:, None], LABELS, axis=1)
    out[np.arange(len(pred)), pred] = confidence
    return out.astype(np.float32)


def test_a_calibrated_fast_tier_goes_in_front_and_an_overconfident_one_does_not() -> None:
    rng = np.random.default_rng(0)
    gold = rng.integers(0, LABELS, N)
    wrong = (gold + 1) % LABELS
    # the selected tier: right on 95%, sure where it is right
    right = rng.random(N) < 0.95
    chosen = TierOutputs(
        name="int8",
        probs=_probs(np.where(right, gold, wrong), np.where(right, 0.95, 0.5)),
        p50_ms=2.0,
    )
    teacher = TierOutputs(name="teacher", probs=_probs(gold, np.full(N, 0.99)), p50_ms=60.0)
    # calibrated: sure and right on 80%, unsure (and right half the time) on the rest
    easy = rng.random(N) < 0.8
    coin = rng.random(N) < 0.5
    calibrated = TierOutputs(
        name="static",
        probs=_probs(
            np.where(easy | coin, gold, wrong), np.where(easy, 0.99, 0.5).astype(np.float64)
        ),
        p50_ms=0.06,
    )
    # overconfident: always 0.99, right on 70%
    often_wrong = rng.random(N) < 0.3
    overconfident = TierOutputs(
        name="linear",
        probs=_probs(np.where(often_wrong, wrong, gold), np.full(N, 0.99)),
        p50_ms=0.3,
    )
    lines: list[str] = []
    front = choose_front(
        [chosen, teacher],
        gold,
        options=[calibrated, overconfident],
        config=RouteConfig(front=True),
        log=lines.append,
    )
    assert front is calibrated
    assert any("linear not put in front: its ECE on dev" in line for line in lines)
    assert any(line.startswith("[route] static in front: local latency on dev") for line in lines)
    # alone, the overconfident tier is still refused; with no options there is nothing to do
    assert (
        choose_front(
            [chosen, teacher],
            gold,
            options=[overconfident],
            config=RouteConfig(front=True),
            log=print,
        )
        is None
    )
    assert (
        choose_front([chosen, teacher], gold, options=[], config=RouteConfig(front=True), log=print)
        is None
    )
    # a front tier that saves too little local time is not worth a third tier
    slow = TierOutputs(name="static", probs=calibrated.probs, p50_ms=1.9)
    assert (
        choose_front(
            [chosen, teacher], gold, options=[slow], config=RouteConfig(front=True), log=print
        )
        is None
    )
