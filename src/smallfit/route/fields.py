"""The cascade of an extract task: the chosen extractor first, the teacher for the documents it
is unsure of (its document confidence below a threshold calibrated on dev).

Escalating the k least confident dev documents gives one point of the curve; its quality is the
micro F1 of the mixed answers against gold (against the teacher's answers where a dev or test
text has no gold), computed from per-document counts, so every k is measured exactly. The
target is the route's: ``accuracy >= teacher - 0.5pt`` reads "micro F1 within 0.5 points of the
teacher's", ``accuracy >= 0.9`` an absolute F1, ``escalation <= 10%`` the best F1 with at most
that share escalated. The calibrated cascade is saved as a model of the run and measured like
every candidate (its speed in the same probe: the real mix of the two tiers)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.data.fields import FieldDataset, FieldDoc
from smallfit.errors import SmallfitError
from smallfit.evaluate.fields import counts
from smallfit.fields import FieldSchema, Values
from smallfit.route.config import RouteConfig, parse_target
from smallfit.route.stage import Routed, tier_names
from smallfit.run.layout import CASCADE, TEACHER
from smallfit.run.records import CandidateResult, CascadeSummary, Point
from smallfit.run.store import Run


def _doc_counts(
    answers: Sequence[Values], reference: Sequence[Values], schema: FieldSchema
) -> np.ndarray:
    """Per document: true positives, false positives, false negatives (all fields)."""
    return counts(answers, reference, schema)[:, :, :3].sum(axis=1).astype(np.float64)


def _f1(c: np.ndarray) -> float:
    tp, fp, fn = c
    return float(2 * tp / (2 * tp + fp + fn)) if (tp + fp + fn) else 1.0


def mixed_curve(
    confidence: np.ndarray, first: np.ndarray, second: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For k = 0..n (the k least confident documents escalated): the micro F1 of the mix, the
    order documents are escalated in, and whether a threshold escalates exactly k (not when
    the k-th and the (k+1)-th least confident tie). ``first``/``second``: per-document
    counts."""
    order = np.argsort(confidence, kind="stable")
    gain = np.cumsum(second[order] - first[order], axis=0)
    totals = first.sum(axis=0) + np.vstack([np.zeros(3), gain])
    tp, fp, fn = totals[:, 0], totals[:, 1], totals[:, 2]
    denom = 2 * tp + fp + fn
    ranked = confidence[order]
    exact = np.ones(len(order) + 1, dtype=bool)
    exact[1:-1] = ranked[:-1] < ranked[1:]
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), 1.0), order, exact


def choose(
    f1: np.ndarray, teacher_f1: float, target: str, exact: np.ndarray | None = None
) -> tuple[int, bool]:
    """The number of documents to escalate for ``target`` (among the ``exact`` ones, which a
    threshold can give) and whether it is met. For an F1 target: the fewest from which every
    larger number also reaches it, so a k that reaches it only by a bump of the dev curve (a
    few lucky documents, then the F1 falls below the target again) is passed over: on 1,378
    SNIPS dev documents the first crossing escalated 31 and came out under the target on test.
    An absolute target above the teacher's own F1 has no such place: then the fewest that reach
    it. For an escalation target, the best F1 within it. Unmet: the fewest with the best F1."""
    goal = parse_target(target)
    n = len(f1) - 1
    usable = np.ones(n + 1, dtype=bool) if exact is None else exact
    scored = np.where(usable, f1, -np.inf)
    if goal.kind == "escalation":
        limit = int(np.floor(goal.value * n + 1e-9))
        return int(np.argmax(scored[: limit + 1])), True
    if goal.kind != "accuracy":
        raise SmallfitError(
            f"route.target {target!r}: an extract cascade takes an F1 or escalation target"
        )
    need = teacher_f1 + goal.value if goal.relative_to_teacher else goal.value
    reachable = np.flatnonzero(usable)
    below = reachable[f1[reachable] < need - 1e-12]
    if not len(below):
        return int(reachable[0]), True
    if below[-1] != reachable[-1]:
        return int(reachable[reachable > below[-1]][0]), True
    above = reachable[f1[reachable] >= need - 1e-12]
    if len(above):
        return int(above[0]), True
    return int(np.argmax(scored)), False


def _threshold(confidence: np.ndarray, order: np.ndarray, k: int) -> float:
    """The confidence below which a document is escalated: exactly the k least confident
    when the k-th and the (k+1)-th differ (see :func:`mixed_curve`)."""
    if k >= len(order):
        return float(np.nextafter(max(1.0, float(confidence.max(initial=1.0))), np.inf))
    return float(confidence[order[k]]) if k > 0 else 0.0


def _point(
    threshold: float,
    confidence: np.ndarray,
    first: np.ndarray,
    second: np.ndarray,
    agreement: tuple[np.ndarray, np.ndarray],
) -> Point:
    """The cascade at ``threshold`` on one split: escalation, F1 and F1 against the teacher."""
    up = confidence < threshold
    mixed = np.where(up[:, None], second, first).sum(axis=0)
    agree = np.where(up[:, None], agreement[1], agreement[0]).sum(axis=0)
    share = float(up.mean()) if len(up) else 0.0
    return Point(
        thresholds=[threshold],
        answered_by=[1 - share, share],
        reach=[1.0, share],
        abstained=0.0,
        escalation=share,
        accuracy=_f1(mixed),
        last_tier_agreement=_f1(agree),
    )


def _rows_confidence(rows: list[dict[str, Any]]) -> np.ndarray:
    return np.array([float(r["confidence"]) for r in rows], dtype=np.float64)


def _estimated(
    candidates: list[CandidateResult], names: list[str], escalation: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The speed and cost of a cascade with an API tier, which is not run again for a probe:
    the first tier's batch-1 p50 and cost per 1M, plus the teacher's for the share of test
    documents escalated."""
    by_name = {c.name: c for c in candidates}
    first, second = (by_name[n] for n in names)
    p50s = [
        c.speed.threads["1"].p50_ms if "1" in c.speed.threads else None for c in (first, second)
    ]
    one = None
    if p50s[0] is not None and p50s[1] is not None:
        one = {"p50_ms": p50s[0] + escalation * p50s[1], "estimated": True}
    costs = [c.cost.per_1m_queries_usd if c.cost else None for c in (first, second)]
    cost = None
    if costs[0] is not None and costs[1] is not None:
        cost = costs[0] + escalation * costs[1]
    return (
        {"threads": {"1": one} if one else {}, "remote": True},
        {
            "per_1m_queries_usd": cost,
            "basis": "the first tier's cost per 1M, plus the teacher's for the share of test "
            "documents escalated",
        },
    )


def build_field_cascade(
    run_dir: Path,
    config: RouteConfig,
    *,
    dataset: FieldDataset,
    candidates: list[CandidateResult],
    chosen: str | None,
    teacher_dev: list[FieldDoc],
    metric: str,
    evaluate: Callable[..., tuple[CandidateResult, Any]],
    log: Callable[[str], None] = print,
) -> Routed:
    """Calibrate, save, check on test and measure the cascade (``evaluate(model_dir,
    teacher_test_answers, known)`` measures a saved extractor like any candidate; ``known``:
    its speed and cost when they are not probed, with an API tier)."""
    from smallfit.evaluate.extract import extract_in_batches
    from smallfit.models.extractor import load_extractor
    from smallfit.models.field_cascade import FieldCascade

    if config.abstain is not None:
        raise SmallfitError("route.abstain applies to a classify task only")
    names = tier_names(config, candidates, chosen, metric=metric)
    if len(names) != 2 or names[-1] != TEACHER:
        raise SmallfitError("an extract cascade has two tiers: a local extractor, then the teacher")
    run = Run(run_dir)
    dirs = [run.dir.model(n) for n in names]
    schema = dataset.schema
    first = load_extractor(dirs[0])
    dev_rows = extract_in_batches(first, list(dataset.dev.texts), what="dev")
    first.close()
    teacher_dev_values = [d.values for d in teacher_dev]
    gold_dev = [d.values if d is not None else None for d in dataset.dev.docs]
    test_first = run.read_answers(names[0])
    test_teacher = run.read_answers(TEACHER)
    if test_first is None or test_teacher is None:
        raise SmallfitError("the tiers' test answers are missing (written by the evaluate stage)")
    gold_test = [d.values if d is not None else None for d in dataset.test.docs]
    against = "gold" if all(g is not None for g in (*gold_dev, *gold_test)) else "teacher"

    def reference(gold: list[Values | None], teacher: list[Values]) -> list[Values]:
        return [
            g if g is not None and against == "gold" else t
            for g, t in zip(gold, teacher, strict=True)
        ]

    ref_dev = reference(gold_dev, teacher_dev_values)
    mine_dev = [r["fields"] for r in dev_rows]
    c_first, c_second = (
        _doc_counts(mine_dev, ref_dev, schema),
        _doc_counts(teacher_dev_values, ref_dev, schema),
    )
    conf_dev = _rows_confidence(dev_rows)
    f1, order, exact = mixed_curve(conf_dev, c_first, c_second)
    teacher_f1 = _f1(c_second.sum(axis=0))
    k, met = choose(f1, teacher_f1, config.target, exact)
    threshold = _threshold(conf_dev, order, k)
    log(
        f"[route] tiers {' -> '.join(names)}; '{config.target}' (micro F1 against {against}) on "
        f"dev: {k} of {len(conf_dev)} documents escalated, F1 {f1[k]:.4f} "
        f"(teacher {teacher_f1:.4f})" + ("" if met else "; target not met")
    )
    agree_dev = (
        _doc_counts(mine_dev, teacher_dev_values, schema),
        _doc_counts(teacher_dev_values, teacher_dev_values, schema),
    )
    dev_point = _point(threshold, conf_dev, c_first, c_second, agree_dev)
    curve = [
        _point(
            _threshold(conf_dev, order, round(float(s) * len(order))),
            conf_dev,
            c_first,
            c_second,
            agree_dev,
        )
        for s in np.linspace(0, 1, 21)
    ]
    teacher_test_values = [r["fields"] for r in test_teacher]
    ref_test = reference(gold_test, teacher_test_values)
    mine_test = [r["fields"] for r in test_first]
    test_counts = (
        _doc_counts(mine_test, ref_test, schema),
        _doc_counts(teacher_test_values, ref_test, schema),
    )
    agree_test = (
        _doc_counts(mine_test, teacher_test_values, schema),
        _doc_counts(teacher_test_values, teacher_test_values, schema),
    )
    test_point = _point(threshold, _rows_confidence(test_first), *test_counts, agree_test)
    out = run.dir.model(CASCADE)
    tiers = [load_extractor(d) for d in dirs]
    cascade = FieldCascade(
        tiers, dirs, threshold, name=CASCADE, lineage={"tiers": names, "target": config.target}
    )
    cascade.save(out)
    cascade.close()
    known = None
    if any(t.remote for t in tiers):
        known = _estimated(candidates, names, test_point.escalation)
    result, answers = evaluate(out, test_teacher, known)
    run.save_answers(result, answers)
    teacher_test_f1 = _f1(test_counts[1].sum(axis=0))
    goal = parse_target(config.target)
    met_test = (
        test_point.escalation <= goal.value + 1e-12
        if goal.kind == "escalation"
        else test_point.accuracy
        >= (teacher_test_f1 + goal.value if goal.relative_to_teacher else goal.value) - 1e-12
    )
    summary = CascadeSummary(
        target=config.target,
        confidence="document (lowest word tag probability)",
        tiers=names,
        thresholds=[threshold],
        reference_accuracy={names[0]: _f1(c_first.sum(axis=0)), TEACHER: teacher_f1},
        dev=dev_point,
        test=test_point,
        met_on_dev=met,
        met_on_test=met_test,
        curve=curve,
        model_dir=str(out),
        scored_against=against,  # type: ignore[arg-type]
    )
    run.write_cascade(summary)
    return Routed(result, summary)
