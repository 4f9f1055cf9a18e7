"""Issue 13, item 9: knowing what it does not know. Intents held out of training stand in for the
queries outside every intent a real assistant gets; how many of their test queries does the
abstaining tier catch for 5% of in-scope queries lost, with each out-of-scope score?

    .venv/bin/python benchmarks/out_of_scope_holdout.py [--runs-dir runs/oos] [--teacher finetune]

For each dataset (Banking77, 10 of its 77 intents held out; Bitext customer support, 4 of its
27; SNIPS, 1 of its 7; drawn with the data seed 0), one ``smallfit fit`` run that never shows a
held-out intent to any model (``data.hold_out_labels`` removes them from train and dev). By
default (``--teacher gold``) the MiniLM-L6 student is trained 2 epochs (exactly: ``min_steps:
0``) on the gold labels of the held-in intents and is the cascade's one tier, abstaining for 5%
of in-scope dev queries. ``--teacher finetune`` runs the demo's chain instead: the mpnet-base
teacher fine-tuned (1 epoch, raised to ``min_steps``), the student distilled from it, the
cascade student -> teacher abstaining on the student; ``--teacher-tier`` then also measures the
teacher as the abstaining tier. (The fine-tuned teacher takes over an hour on 2 shared cores.)

The route stage measures every out-of-scope score on the held-out intents' test queries
(``cascade.json``'s ``out_of_scope.evaluation``): the share caught at exactly 5% of the in-scope
test queries lost (95% bootstrap interval), AUROC, and what the threshold calibrated on dev for
5% catches and really loses on test.

Writes ``benchmarks/results/out_of_scope_holdout.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from _report import save_and_report

from smallfit.config import (
    AbstainConfig,
    DataConfig,
    FitConfig,
    GoldTeacher,
    RouteConfig,
    SelectConfig,
)
from smallfit.demo import demo_config
from smallfit.evaluate import environment
from smallfit.pipeline import fit
from smallfit.route.stage import route_run

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data"
DATASETS = {"banking77": 10, "bitext_customer_support": 4, "snips": 1}
"""Dataset -> intents held out: about 13-15% of the intents, as the open-intent literature does
with Banking77 (4 of Bitext's 27 and 1 of SNIPS' 7 keep the share; SNIPS' one held-out intent is
a far-out domain rather than a near neighbour, the easier case)."""
LOSS = 0.05
TARGET = 0.80
WHAT = {
    "gold": (
        "per dataset: fit with data.hold_out_labels (seed 0); MiniLM-L6 trained exactly 2 epochs "
        "on the gold labels of the held-in intents (teacher: gold), the cascade's one tier, "
        "abstaining; every score's share of held-out-intent test queries caught at 5% of "
        "in-scope test queries lost (threshold at that test quantile), 95% bootstrap interval "
        "(1,000 resamples, in- and out-of-scope resampled apart)"
    ),
    "finetune": (
        "per dataset: fit with data.hold_out_labels (seed 0); mpnet-base teacher fine-tuned and "
        "MiniLM-L6 student distilled 2 epochs on the held-in intents only (the demo's chain); "
        "the student (tier 0) abstains; every score's share of held-out-intent test queries "
        "caught at 5% of in-scope test queries lost (threshold at that test quantile), 95% "
        "bootstrap interval (1,000 resamples, in- and out-of-scope resampled apart)"
    ),
}


def config_for(name: str, held: int, runs: Path, teacher: str) -> FitConfig:
    folder = DATA / name
    base = demo_config(folder, run_dir=runs / f"{name}-{teacher}")
    data = DataConfig(
        train=folder / "train.jsonl",
        test=folder / "test.jsonl",
        hold_out_labels=held,
    )
    update: dict[str, Any] = {
        "data": data,
        "compress": None,
        "evaluate": base.evaluate.model_copy(update={"latency_queries": 50}),
    }
    if teacher == "gold":
        student = base.students[0]
        update["teacher"] = GoldTeacher()
        update["students"] = [
            student.model_copy(update={"train": student.train.model_copy(update={"min_steps": 0})})
        ]
        update["select"] = SelectConfig(quality_floor="0.5")
        tiers = [student.name]
    else:
        tiers = [base.students[0].name, "teacher"]
    update["route"] = RouteConfig(tiers=tiers, abstain=AbstainConfig(in_scope_loss=LOSS, tier=0))
    return FitConfig.model_validate(dict(base) | update)


def summarise(cascade: dict[str, Any]) -> dict[str, Any]:
    oos = cascade["out_of_scope"]
    evaluation = oos["evaluation"]
    scores = {}
    for name, entry in evaluation["scores"].items():
        if not entry["available"]:
            scores[name] = {"available": False, "why": entry["why"]}
            continue
        point = next(p for p in entry["curve"] if abs(p["loss"] - LOSS) < 1e-9)
        scores[name] = {
            "caught_at_5pct": point["caught"],
            "interval": point["interval"],
            "auroc": entry["auroc"],
            "vs_max_prob": entry.get("vs_max_prob"),
            "dev_threshold_caught": point["caught_dev"],
            "dev_threshold_test_loss": point["lost_dev"],
            "curve": [[p["loss"], p["caught"]] for p in entry["curve"]],
        }
    return {
        "tier": oos["tier_name"],
        "n_out_of_scope": oos["n"],
        "held_out_labels": oos["held_out_labels"],
        "cascade_caught": oos["caught"],
        "cascade_score": oos["score"],
        "best": evaluation["best"],
        "scores": scores,
        "by_label": oos["by_label"],
    }


def table(name: str, summary: dict[str, Any]) -> None:
    print(f"\n{name}: tier {summary['tier']}, {summary['n_out_of_scope']} held-out-intent texts")
    print(
        f"{'score':<22}{'caught @5%':>11}{'95% CI':>17}{'vs max_prob (paired CI)':>32}"
        f"{'AUROC':>8}{'dev thr: caught/loss':>24}"
    )
    for score, s in summary["scores"].items():
        if "caught_at_5pct" not in s:
            print(f"{score:<22}  n/a ({s['why']})")
            continue
        lo, hi = s["interval"]
        vs = s.get("vs_max_prob") or {"diff": 0.0, "interval": [0.0, 0.0]}
        paired = f"{100 * vs['diff']:+.1f} pt [{100 * vs['interval'][0]:+.1f}, "
        paired += f"{100 * vs['interval'][1]:+.1f}]"
        print(
            f"{score:<22}{s['caught_at_5pct']:>10.1%} {lo:>7.1%} - {hi:<7.1%}{paired:>32}"
            f"{s['auroc']:>8.3f}{s['dev_threshold_caught']:>14.1%} / "
            f"{s['dev_threshold_test_loss']:.1%}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/oos"))
    parser.add_argument("--datasets", nargs="*", default=list(DATASETS))
    parser.add_argument("--teacher", choices=["gold", "finetune"], default="gold")
    parser.add_argument("--teacher-tier", action="store_true", help="with --teacher finetune")
    args = parser.parse_args()
    figures: dict[str, Any] = {}
    passed: dict[str, bool] = {}
    details: dict[str, Any] = {}
    for name in args.datasets:
        config = config_for(name, DATASETS[name], args.runs_dir, args.teacher)
        started = time.monotonic()
        result = fit(config, progress=False, log=lambda line: print(line, flush=True))
        seconds = time.monotonic() - started
        # the route stage again, so a rerun measures every score registered now (the tiers'
        # signals are cached under the run's route/: this costs seconds)
        cascade = route_run(config.run_dir, config.route, progress=False)
        summary = summarise(cascade)
        students = {c["name"]: c["quality"] for c in result.results.dump()["candidates"]}
        summary["accuracy"] = {n: q.get("accuracy") for n, q in students.items()}
        summary["seconds_this_invocation"] = round(seconds, 1)  # cached stages: see stage_seconds
        stages = json.loads((Path(config.run_dir) / "stages.json").read_text("utf-8"))
        summary["stage_seconds"] = {k: v.get("seconds") for k, v in stages.items()}
        if args.teacher_tier and args.teacher == "finetune":
            route = config.route.model_copy(
                update={"abstain": config.route.abstain.model_copy(update={"tier": 1})}
            )
            summary["teacher_tier"] = summarise(route_run(config.run_dir, route, progress=False))
            route_run(config.run_dir, config.route, progress=False)  # back to the student's
        details[name] = summary
        table(name, summary)
        if "teacher_tier" in summary:
            table(f"{name} (teacher abstaining)", summary["teacher_tier"])
        best, default = summary["best"], summary["cascade_score"]
        scores = summary["scores"]
        figures[f"{name}_max_prob_caught_at_5pct"] = scores["max_prob"]["caught_at_5pct"]
        figures[f"{name}_default_score"] = default
        figures[f"{name}_default_caught_at_5pct"] = scores[default]["caught_at_5pct"]
        figures[f"{name}_default_caught_at_dev_threshold"] = summary["cascade_caught"]
        figures[f"{name}_best_score_on_test"] = best
        figures[f"{name}_best_caught_at_5pct"] = scores[best]["caught_at_5pct"]
        # judged on the default score (route.abstain.score: auto), not the best picked on test
        passed[f"{name}_default_catches_80pct_at_5pct_loss"] = (
            scores[default]["caught_at_5pct"] >= TARGET
        )
    bests = {details[n]["best"] for n in details}
    figures["best_on_every_dataset"] = bests.pop() if len(bests) == 1 else None
    figures["datasets_meeting_target"] = sum(passed.values())
    record = {
        "benchmark": "out_of_scope_holdout" + ("" if args.teacher == "gold" else "_finetune"),
        "command": " ".join(["python", "benchmarks/out_of_scope_holdout.py", *sys.argv[1:]]),
        "what": WHAT[args.teacher],
        "targets": {"caught_at_5pct_loss_min": TARGET, "loss": LOSS},
        "figures": figures,
        "passed": passed,
        "datasets": details,
        "environment": environment(),
    }
    save_and_report(record)


if __name__ == "__main__":
    main()
