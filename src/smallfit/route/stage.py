"""The route stage of a run: tiers' probabilities on dev (calibration), test (the check) and the
out-of-scope texts, the calibrated cascade saved as ``models/cascade``, ``cascade.json`` (the
choice, the test check, the whole dev curve and, with an abstaining tier, every out-of-scope
score's catch-against-loss curve) and the cascade measured like any candidate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.config import load_fit_config
from smallfit.data import Dataset
from smallfit.errors import SmallfitError
from smallfit.evaluate.candidate import measured
from smallfit.evaluate.config import EvalConfig
from smallfit.models.base import (
    Signals,
    align_probs,
    load,
)
from smallfit.route.abstain import Scored, SignalCache, score_tier
from smallfit.route.calibration import (
    Calibration,
    TierOutputs,
    abstain_threshold,
    calibrate,
    out_of_scope_caught,
)
from smallfit.route.cascade import Abstain, Cascade, Tier
from smallfit.route.config import RouteConfig
from smallfit.route.front import choose_front, front_options
from smallfit.route.oos import at_loss, by_label
from smallfit.route.tier_probs import TierProbs, front_outputs, tier_dir, tier_facts
from smallfit.run.layout import CASCADE, TEACHER
from smallfit.run.records import CandidateResult, CascadeSummary, Recommendation, resolve_metric
from smallfit.run.store import Run
from smallfit.teach.teacher import fit_dataset


@dataclass(frozen=True)
class Routed:
    """The route stage's outcome: the cascade measured as a candidate, and its summary."""

    result: CandidateResult
    summary: CascadeSummary


def tier_names(
    config: RouteConfig,
    candidates: list[CandidateResult],
    chosen: str | None,
    *,
    metric: str = "accuracy",
) -> list[str]:
    """The tiers to use: the configured ones, else the selected candidate then the teacher.
    When the teacher itself was selected (or nothing was), the fastest local candidate as good
    as the best on ``metric`` (:func:`best_local`) goes first: the cascade is then the way off
    the teacher."""
    if config.tiers:
        return list(config.tiers)
    if not any(c.name == TEACHER for c in candidates):
        raise SmallfitError("no teacher candidate to escalate to (gold labels stand in for it)")
    if chosen is None or chosen == TEACHER:
        best = best_local(candidates, metric)
        if best is None:
            raise SmallfitError("no local candidate to put before the teacher")
        return [best, TEACHER]
    return [chosen, TEACHER]


def recommend(
    chosen: str | None,
    cascade: CascadeSummary | None,
    *,
    min_local: float,
    over_floor: bool = False,
) -> dict[str, Any]:
    """What to deploy: the selected candidate when it is a local model; when the teacher was
    selected (no local candidate reached the floor) or nothing was, the cascade, if it met its
    target (on test, else on dev), or its test quality is over the selection's floor
    (``over_floor``), with at least ``min_local`` of the test queries kept off the teacher.
    ``{"name", "reason"}``; name None when nothing is recommended."""
    if chosen is not None and chosen != TEACHER:
        return {"name": chosen, "reason": f"{chosen} alone is over the quality floor"}
    if cascade is None:
        return {"name": chosen, "reason": "no cascade was built"}
    test = cascade.test or cascade.dev
    met = cascade.met_on_dev if cascade.met_on_test is None else cascade.met_on_test
    local = 1 - float(test.escalation)
    tiers = " -> ".join(cascade.tiers)
    if (met or over_floor) and local >= min_local:
        how = f"meets its target ({cascade.target})" if met else "is over the quality floor"
        return {
            "name": CASCADE,
            "reason": f"no local model alone reaches the floor, but the cascade {tiers} {how} "
            f"with {local:.1%} of test queries answered before the teacher",
        }
    why = "misses its target" if not met else f"keeps only {local:.1%} of queries off the teacher"
    return {
        "name": chosen,
        "reason": f"the cascade {tiers} {why} (route.recommend_min_local {min_local:.0%})",
    }


def clears(result: CandidateResult, selection: Any) -> bool:
    """Whether ``result`` is over the floor of ``selection`` (a Selection or its record), on
    the metric it was chosen by."""
    value = result.quality.value(selection.metric)
    return value is not None and value >= selection.floor - 1e-12


def best_local(candidates: list[CandidateResult], metric: str) -> str | None:
    """The local (not behind an API) non-teacher candidate to put before the teacher: the
    fastest (batch-1 p50, 1 thread) of those whose ``metric`` the test set cannot tell from
    the best one's (at or above the lower end of its 95% interval); without an interval, the
    best, the smaller on disk among equals. The cascade escalates what the first tier is unsure
    of, so a faster first tier the test set cannot tell apart is the better one."""
    local = [
        (quality, -c.bytes_on_disk, c)
        for c in candidates
        if c.name not in (TEACHER, CASCADE)
        and not c.speed.remote
        and (quality := c.quality.value(metric)) is not None
    ]
    if not local:
        return None
    best = max(local, key=lambda q: q[:2])[2]
    interval = best.quality.interval(metric)
    if interval is None:
        return best.name
    close = [c for quality, _, c in local if quality >= interval[0] - 1e-12]
    timed = [c for c in close if c.speed.p50_ms() is not None]
    return min(timed, key=lambda c: c.speed.p50_ms() or 0.0).name if timed else best.name


def build_cascade(
    run_dir: Path,
    config: RouteConfig,
    *,
    dataset: Dataset,
    candidates: list[CandidateResult],
    chosen: str | None,
    evaluate: EvalConfig,
    teacher_dev_probs: np.ndarray | None = None,
    metric: str = "accuracy",
    progress: bool = False,
    log: Callable[[str], None] = print,
) -> Routed:
    """Calibrate the cascade of ``run_dir`` on dev, check it on test, save it as a model of the
    run with its summary, measure it (saved like any candidate); returns both.
    ``metric`` picks the first tier when the teacher was selected (see :func:`tier_names`)."""
    from smallfit.evaluate.speed import measure_speed

    run_dir = Path(run_dir)
    run = Run(run_dir)
    layout = run.dir
    names = tier_names(config, candidates, chosen, metric=metric)
    dirs = [tier_dir(run_dir, n) for n in names]
    models = [load(d) for d in dirs]
    labels = list(models[0].labels)
    for model in models:
        align_probs(np.zeros((0, len(model.labels))), model.labels, labels)  # same label set
    by_name = {c.name: c for c in candidates}
    facts = {name: tier_facts(by_name.get(name), evaluate) for name in names}
    probs = TierProbs(run_dir, labels, progress)
    data = dataset
    index = {label: i for i, label in enumerate(labels)}
    dev_gold = np.array([index.get(y, -1) for y in data.dev.labels])
    test_gold: np.ndarray | None = np.array([index.get(y, -1) for y in data.test.labels])
    against = "gold"
    if data.dev.n_gold < len(data.dev) or data.test.n_gold < len(data.test):
        # without gold on every text, "accuracy" in the target is agreement with the teacher
        against = "teacher"
        if teacher_dev_probs is None:
            raise SmallfitError("dev has texts without a gold label, and no teacher answers them")
        dev_gold = align_probs(np.asarray(teacher_dev_probs), data.labels, labels).argmax(1)
        saved = run.read_test_probs(TEACHER) if TEACHER in by_name else None
        order = run.model_labels(TEACHER) or labels
        test_gold = None if saved is None else align_probs(saved, order, labels).argmax(1)

    def outputs(split: str, texts: list[str]) -> list[TierOutputs]:
        out = []
        for name, model_dir, model in zip(names, dirs, models, strict=True):
            saved = run.read_test_probs(name) if split == "test" and name in by_name else None
            if split == "dev" and name == TEACHER and teacher_dev_probs is not None:
                # the labels stage's, in the dataset's label order
                p = align_probs(np.asarray(teacher_dev_probs, np.float32), data.labels, labels)
            elif saved is not None:
                p = align_probs(saved, model.labels, labels)
            else:
                p = probs.get(model, model_dir, texts, split)
            cost, p50 = facts[name]
            out.append(TierOutputs(name=name, probs=p, cost_per_1m_usd=cost, p50_ms=p50))
        return out

    log(
        f"[route] tiers {' -> '.join(names)}; calibrating for '{config.target}' on dev"
        + (" (accuracy: agreement with the teacher)" if against == "teacher" else "")
    )
    dev = outputs("dev", data.dev.texts)
    options = front_options(config, candidates, names=names)
    if options:
        tried = front_outputs(
            options,
            run_dir=run_dir,
            results=by_name,
            probs=probs,
            texts=data.dev.texts,
            evaluate=evaluate,
        )
        front = choose_front(dev, dev_gold, options=tried, config=config, log=log)
        if front is not None:
            names.insert(0, front.name)
            dirs.insert(0, tier_dir(run_dir, front.name))
            models.insert(0, load(dirs[0]))
            facts[front.name] = (front.cost_per_1m_usd, front.p50_ms)
            dev.insert(0, front)  # its dev outputs, as the others' were read
            log(f"[route] tiers {' -> '.join(names)}: {front.name} goes in front")
    test = outputs("test", data.test.texts)
    oos_probs = [  # only an abstaining cascade is asked about out-of-scope texts
        probs.get(m, d, data.out_of_scope, "oos") if config.abstain is not None else None
        for m, d in zip(models, dirs, strict=True)
    ]
    abstain, scored = None, None
    if config.abstain is not None:
        tier = config.abstain.tier
        if not tier < len(names):
            raise SmallfitError(f"route.abstain.tier {tier} is not one of the {len(names)} tiers")
        model = models[tier]
        own = {
            split: align_probs(p, labels, model.labels)
            for split, p in (("dev", dev[tier].probs), ("test", test[tier].probs))
        } | {"oos": align_probs(oos_probs[tier], labels, model.labels)}  # type: ignore[arg-type]
        scored = score_tier(
            cache=SignalCache(layout, progress),
            model=model,
            model_dir=dirs[tier],
            probs=own,
            texts={"dev": data.dev.texts, "test": data.test.texts, "oos": data.out_of_scope},
            train_texts=data.train.texts,
            train_labels=np.array([index.get(y, -1) for y in data.train.labels]),
            chosen=config.abstain.score,
            log=log,
        )
        threshold = abstain_threshold(
            scored.values["dev"], in_scope_loss=config.abstain.in_scope_loss
        )
        abstain = (tier, threshold)
        dev[tier] = replace(dev[tier], in_scope=scored.values["dev"])
        test[tier] = replace(test[tier], in_scope=scored.values["test"])
    calibration = calibrate(
        dev,
        dev_gold,
        target=config.target,
        confidence=config.confidence,
        test=test,
        test_gold=test_gold,
        abstain=abstain,
        margin_se=config.margin_se,
    )
    oos = None
    if abstain is not None and scored is not None and data.out_of_scope:
        oos_tiers = [
            TierOutputs(
                name=n,
                probs=p,  # type: ignore[arg-type]
                in_scope=scored.values["oos"] if i == abstain[0] else None,
            )
            for i, (n, p) in enumerate(zip(names, oos_probs, strict=True))
        ]
        oos = out_of_scope_caught(
            oos_tiers, calibration.thresholds, confidence=config.confidence, abstain=abstain
        )
        oos |= _oos_facts(config, data, scored, names[abstain[0]], abstain[1])
    cascade = Cascade(
        [
            Tier(model=m, threshold=t, path=d.resolve())
            for m, t, d in zip(models, [*calibration.thresholds, None], dirs, strict=True)
        ],
        confidence=config.confidence,
        abstain=(
            Abstain(
                label=config.abstain.label,
                threshold=abstain[1],
                tier=abstain[0],
                score=scored.score,
            )
            if abstain is not None and config.abstain is not None and scored is not None
            else None
        ),
        timeout_s=config.timeout_s,
        name=CASCADE,
        lineage={"tiers": names, "target": config.target, "calibrated_on": "dev"},
    )
    out_dir = layout.model(CASCADE)
    # back to each tier's own label order, as its model answers; the abstaining tier with the
    # signals its score reads
    replay: list[np.ndarray | Signals] = [
        align_probs(t.probs, labels, m.labels) for t, m in zip(test, models, strict=True)
    ]
    if abstain is not None and scored is not None:
        replay[abstain[0]] = scored.test_signals
    test_probs = cascade.decide_from(replay).probs
    cascade.save(out_dir, metrics={"dev": calibration.dev.to_dict()})
    cascade.close()  # an API tier's connections; the speed probe loads its own copy
    summary = CascadeSummary.model_validate(
        calibration.to_dict()
        | {"out_of_scope": oos, "model_dir": str(out_dir), "scored_against": against}
    )
    run.write_cascade(summary)
    _log_summary(calibration, oos, log)

    teacher_probs = None
    saved_teacher = run.read_test_probs(TEACHER) if TEACHER in by_name else None
    if saved_teacher is not None:
        # in the teacher's own label order on disk; the cascade's, plus its abstain column
        teacher_labels = run.model_labels(TEACHER) or labels
        t = align_probs(saved_teacher, teacher_labels, labels)
        teacher_probs = np.pad(t, ((0, 0), (0, len(cascade.labels) - t.shape[1])))
    if any(m.remote for m in models):
        # an API tier is not run again for a latency probe: the tiers' p50s, weighted by reach
        estimate = calibration.test.mean_latency_ms if calibration.test else None
        one = {"p50_ms": estimate, "estimated": True} if estimate is not None else None
        speed: dict[str, Any] = {"threads": {"1": one} if one else {}, "remote": True}
    else:
        speed = measure_speed(out_dir, list(data.test.texts[:256]), evaluate)
    result = measured(
        cascade.info.to_dict(),
        model_dir=out_dir,
        probs=test_probs,
        test=data.test,
        labels=cascade.labels,
        teacher_probs=teacher_probs,
        ece_bins=evaluate.ece_bins,
        speed=speed,
        cost={
            "per_1m_queries_usd": calibration.test.cost_per_1m_usd if calibration.test else None,
            "basis": "each tier's cost per 1M, weighted by the share of test queries it ran on",
        },
        cascade={
            "tiers": names,
            "thresholds": calibration.thresholds,
            "escalation": calibration.test.escalation if calibration.test else None,
            "answered_by": calibration.test.answered_by if calibration.test else None,
        },
    )
    run.save_candidate(result, test_probs)
    return Routed(result, summary)


def _oos_facts(
    config: RouteConfig, data: Dataset, scored: Scored, tier: str, threshold: float
) -> dict[str, Any]:
    """What ``cascade.json`` says about out-of-scope texts beyond the cascade's catch: where
    they came from, the abstaining tier and score, every score's curve, the catch by label."""
    assert config.abstain is not None
    return {
        "label": config.abstain.label,
        "held_out_labels": list(data.held_out),
        "tier": config.abstain.tier,
        "tier_name": tier,
        "score": scored.score.name,
        "in_scope_loss": config.abstain.in_scope_loss,
        "threshold": threshold,
        "by_label": by_label(data.out_of_scope_labels, scored.values["oos"], threshold),
        "evaluation": scored.evaluation,
    }


def _log_summary(
    calibration: Calibration, oos: dict[str, Any] | None, log: Callable[[str], None]
) -> None:
    dev, test = calibration.dev, calibration.test
    thresholds = ", ".join(f"{t:.3f}" for t in calibration.thresholds)
    log(
        f"[route] thresholds {thresholds}: dev accuracy {dev.accuracy:.4f} (last tier "
        f"{calibration.reference_accuracy['dev']:.4f}), {1 - dev.escalation:.1%} kept off the last "
        f"tier; target {'met' if calibration.met_on_dev else 'NOT met'} on dev"
    )
    if test is not None:
        log(
            f"[route] on test: accuracy {test.accuracy:.4f} (last tier "
            f"{calibration.reference_accuracy['test']:.4f}), {1 - test.escalation:.1%} kept off "
            f"the last tier; target {'met' if calibration.met_on_test else 'NOT met'} on test"
        )
    if oos is not None and oos["n"]:
        log(
            f"[route] out-of-scope test queries caught: {oos['caught']:.1%} of {oos['n']} "
            f"({oos['score']} score at {oos['in_scope_loss']:.0%} in-scope dev loss)"
        )
        evaluation = oos["evaluation"]
        loss = evaluation["headline_loss"]
        for name, entry in evaluation["scores"].items():
            point = at_loss(entry.get("curve") or [], loss)
            if point is not None:
                log(
                    f"[route]   {name:<20} catches {point['caught']:.1%} at {loss:.0%} in-scope "
                    f"test loss (95% CI {point['interval'][0]:.1%}-{point['interval'][1]:.1%}), "
                    f"AUROC {entry['auroc']:.3f}"
                )


def route_run(
    run_dir: str | Path,
    config: RouteConfig | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> CascadeSummary:
    """Calibrate (again) the cascade of a finished run; ``config`` defaults to the run's own
    ``route`` section. Updates ``results.json``; returns the cascade's summary."""
    run = Run(run_dir)
    fit_config = load_fit_config(run.dir.config_file)
    config = config or fit_config.route or RouteConfig()
    results = run.read_results()
    candidates = [c for c in results.candidates if c.name != CASCADE]
    chosen = None if results.selection is None else results.selection.chosen
    dataset = fit_dataset(fit_config)
    routed = build_cascade(
        run.root,
        config,
        dataset=dataset,
        candidates=candidates,
        chosen=chosen,
        evaluate=fit_config.evaluate,
        metric=(
            results.selection.metric
            if results.selection is not None
            else resolve_metric(fit_config.select.metric, candidates)
        ),
        progress=progress,
        log=log,
    )
    update: dict[str, Any] = {"candidates": [*candidates, routed.result], "cascade": routed.summary}
    if results.selection is not None:
        advice = recommend(
            chosen,
            routed.summary,
            min_local=config.recommend_min_local,
            over_floor=clears(routed.result, results.selection),
        )
        update["selection"] = results.selection.model_copy(
            update={"recommended": Recommendation.model_validate(advice)}
        )
    run.write_results(results.model_copy(update=update))  # updated fields count as set
    return routed.summary
