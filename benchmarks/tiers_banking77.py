"""Issue 17's tier targets on Banking77: the chosen student, the 3-layer tier and the static tier
against the mpnet-base teacher (PyTorch fp32), latency measured interleaved in one process.

    .venv/bin/python benchmarks/tiers_banking77.py [--data ../shared/data/banking77]
        [--run-dir runs/banking77] [--queries 300] [--block 1]

Runs (or reuses) the demo's fit, then times every tier and the teacher taking turns query by
query at 1 thread on the same test texts (drift hits all alike; with ``--block 20`` each takes
20 in a row, opened by an untimed one, so it is timed warm as a server running it alone is),
and writes ``benchmarks/results/tiers_banking77[_block<N>].json``: accuracy as a share of the
teacher's, the p50 ratio with a paired bootstrap 95% interval, the size ratio, each against its
target, the default cascade's tiers and shares, and the environment. Prints one JSON line at
the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from _report import p50_ratio_interval, save_and_report, smallest_over

from smallfit.demo import demo_config
from smallfit.pipeline import fit

HERE = Path(__file__).resolve().parent
TIERS = {  # tier -> (candidate name, accuracy share of the teacher's, p50 ratio, size ratio)
    "chosen": (None, None, None, None),  # the demo's pick, at its 98% floor
    "pick_at_99": (None, 0.99, 50.0, 50.0),  # the pick at `quality_floor: 0.99 * teacher`
    "three_layer": ("minilm-l6-l3-p50-int8", 0.97, 100.0, None),  # 3 layers, FFN halved
    "three_layer_unpruned": ("minilm-l6-l3-int8", None, None, None),
    "six_layer": ("minilm-l6-int8", None, None, None),  # the distilled student, int8
    "static": ("static", 0.95, 500.0, None),
    "linear": ("linear", None, None, None),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--block", type=int, default=1)
    args = parser.parse_args()

    from smallfit.data import load_dataset
    from smallfit.evaluate import interleaved_latency, limit_threads
    from smallfit.models import load

    config = demo_config(args.data, run_dir=args.run_dir)
    result = fit(config, progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    by_name = {c["name"]: c for c in result.results.dump()["candidates"]}
    names = {tier: spec[0] or result.chosen for tier, spec in TIERS.items()}
    names["pick_at_99"] = smallest_over(by_name, 0.99)
    missing = [n for n in names.values() if n not in by_name]
    if missing:
        print(f"the run has no candidate {missing}", file=sys.stderr)
        return 2
    teacher = by_name["teacher"]
    models = {"teacher": load(teacher["model_dir"])}
    models |= {name: load(by_name[name]["model_dir"]) for name in set(names.values())}
    texts = load_dataset(config.data).test.texts
    with limit_threads(1, *models.values()):
        timed = interleaved_latency(
            models, texts, queries=args.queries, warmup=30, samples=True, block=args.block
        )
    samples = {name: np.asarray(stats.pop("samples_ms")) for name, stats in timed.items()}

    t_acc = teacher["quality"]["accuracy"]
    figures: dict[str, float | list[float] | str] = {"teacher_accuracy": t_acc}
    checks = {}
    for tier, (_, acc_min, speed_min, size_min) in TIERS.items():
        name = names[tier]
        c = by_name[name]
        share = c["quality"]["accuracy"] / t_acc
        ratio = timed["teacher"]["p50_ms"] / timed[name]["p50_ms"]
        size = teacher["bytes_on_disk"] / c["bytes_on_disk"]
        figures |= {
            f"{tier}_name": name,
            f"{tier}_accuracy": c["quality"]["accuracy"],
            f"{tier}_accuracy_vs_teacher": share,
            f"{tier}_p50_ms_interleaved": timed[name]["p50_ms"],
            f"{tier}_p50_speedup_interleaved": ratio,
            f"{tier}_p50_speedup_ci95": p50_ratio_interval(samples["teacher"], samples[name]),
            f"{tier}_size_ratio": size,
        }
        if acc_min is not None:
            checks[f"{tier}_accuracy_vs_teacher"] = share >= acc_min
        if speed_min is not None:
            checks[f"{tier}_p50_speedup_interleaved"] = ratio >= speed_min
        if size_min is not None:
            checks[f"{tier}_size_ratio"] = size >= size_min
    cascade = json.loads((result.run_dir / "cascade.json").read_text("utf-8"))
    save_and_report(
        {
            "benchmark": "tiers_banking77" + (f"_block{args.block}" if args.block > 1 else ""),
            "command": " ".join(["python", "benchmarks/tiers_banking77.py", *sys.argv[1:]]),
            "run_dir": str(result.run_dir),
            "test_examples": teacher["quality"]["n"],
            "timed_queries": args.queries,
            "block": args.block,
            "targets": {
                tier: {"accuracy_vs_teacher": a, "p50_speedup": s, "size_ratio": z}
                for tier, (_, a, s, z) in TIERS.items()
                if a or s or z
            },
            "figures": figures,
            "passed": checks,
            "interleaved_latency_ms_1_thread": timed,
            "cascade": {
                "tiers": cascade["tiers"],
                "test_answered_by": cascade["test"]["answered_by"],
                "test_accuracy": cascade["test"]["accuracy"],
                "met_on_test": cascade["met_on_test"],
            },
            "environment": result.results.environment,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
