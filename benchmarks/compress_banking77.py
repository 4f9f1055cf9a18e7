"""Issue 3: ``fit`` searches a grid of compressed students (layers x pruning x int8) built from
the demo's distilled MiniLM, selects by the quality floor, and the choice is compared with the
mpnet-base teacher in PyTorch fp32 on Banking77 test.

    .venv/bin/python benchmarks/compress_banking77.py --run-dir runs/banking77

Needs a finished demo run (``smallfit demo --data ../shared/data/banking77``): the teacher,
its labels and the students are reused from it; only the compressed candidates are built.
Writes ``benchmarks/results/compress_banking77.json``; prints the table, verdicts, one JSON line.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from _report import save_and_report

from smallfit.config import CompressConfig, CompressGrid
from smallfit.data import load_dataset
from smallfit.demo import demo_config
from smallfit.evaluate import environment, interleaved_latency, limit_threads
from smallfit.models import load
from smallfit.pipeline import fit

HERE = Path(__file__).resolve().parent
TARGETS = {
    "selected_accuracy_vs_teacher_min": 0.98,
    "selected_p50_speedup_min": 15.0,
    "selected_size_ratio_min": 15.0,
    "minilm_l3_int8_accuracy_vs_teacher_min": 0.96,
}
GRID = CompressGrid(
    layers=[None, 3], prune=[0.0, 0.3], quantize=["int8-dynamic", "int8-static", "int4-weight"]
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--budget", default="40m")
    args = parser.parse_args()

    base = demo_config(args.data, run_dir=args.run_dir)
    config = base.model_copy(
        update={"compress": CompressConfig(grid=GRID, budget=args.budget, students=["minilm-l6"])}
    )
    started = time.monotonic()
    result = fit(config, progress=False)
    search_seconds = time.monotonic() - started
    print(result.table)
    by_name = {c["name"]: c for c in result.results.dump()["candidates"]}
    chosen = result.chosen
    assert chosen is not None, "nothing met the quality floor"
    l3 = "minilm-l6-l3-int8"

    # Latency ratios measured side by side, query by query, in one process.
    run = Path(args.run_dir)
    models = {name: load(run / "models" / name) for name in dict.fromkeys(["teacher", chosen, l3])}
    test = load_dataset(config.data).test
    test_texts = test.texts
    with limit_threads(1, *models.values()):
        interleaved = interleaved_latency(models, test_texts[:300], queries=300, warmup=30)

    # Dynamic int8 quantizes activations per batch, so an answer depends on its batch-mates;
    # serving answers one text at a time, so the chosen model's accuracy is measured so too.
    chosen_model = models[chosen]
    batch1 = np.concatenate([chosen_model.predict_proba([t]) for t in test_texts]).argmax(1)
    batch1_acc = float(
        np.mean([chosen_model.labels[i] == g for i, g in zip(batch1, test.labels, strict=True)])
    )

    teacher = by_name["teacher"]
    t_acc = teacher["quality"]["accuracy"]
    sel = by_name[chosen]
    figures = {
        "teacher_accuracy": t_acc,
        "selected": chosen,
        "selected_accuracy": sel["quality"]["accuracy"],
        "selected_accuracy_vs_teacher": sel["quality"]["accuracy"] / t_acc,
        "selected_accuracy_batch1_vs_teacher": batch1_acc / t_acc,
        "selected_teacher_agreement": sel["quality"]["teacher_agreement"],
        "selected_p50_speedup_1_thread_interleaved": interleaved["teacher"]["p50_ms"]
        / interleaved[chosen]["p50_ms"],
        "selected_p50_speedup_1_thread_isolated": teacher["speed"]["threads"]["1"]["p50_ms"]
        / sel["speed"]["threads"]["1"]["p50_ms"],
        "selected_size_ratio": teacher["bytes_on_disk"] / sel["bytes_on_disk"],
        "minilm_l3_int8_accuracy_vs_teacher": by_name[l3]["quality"]["accuracy"] / t_acc,
        "minilm_l3_int8_p50_speedup_1_thread_interleaved": interleaved["teacher"]["p50_ms"]
        / interleaved[l3]["p50_ms"],
        "candidates_measured": len(by_name),
        "not_built": result.results.dump()["not_built"],
        "search_seconds": round(search_seconds, 1),
    }
    checks = {
        "selected_accuracy_vs_teacher": min(
            figures["selected_accuracy_vs_teacher"], figures["selected_accuracy_batch1_vs_teacher"]
        )
        >= TARGETS["selected_accuracy_vs_teacher_min"],
        "selected_p50_speedup_1_thread_interleaved": figures[
            "selected_p50_speedup_1_thread_interleaved"
        ]
        >= TARGETS["selected_p50_speedup_min"],
        "selected_size_ratio": figures["selected_size_ratio"] >= TARGETS["selected_size_ratio_min"],
        "minilm_l3_int8_accuracy_vs_teacher": figures["minilm_l3_int8_accuracy_vs_teacher"]
        >= TARGETS["minilm_l3_int8_accuracy_vs_teacher_min"],
    }
    record = {
        "benchmark": "compress_banking77",
        "command": " ".join(["python", "benchmarks/compress_banking77.py", *sys.argv[1:]]),
        "targets": TARGETS,
        "grid": GRID.model_dump(mode="json"),
        "figures": figures,
        "passed": checks,
        "interleaved_latency_ms_1_thread": interleaved,
        "candidates": [_summary(c, t_acc) for c in result.results.dump()["candidates"]],
        "selection": result.results.dump()["selection"],
        "environment": environment(),
    }
    for name, stats in interleaved.items():
        print(
            f"{name:>24}: p50 {stats['p50_ms']:7.3f} ms  p99 {stats['p99_ms']:7.3f} ms (1 thread)"
        )
    save_and_report(record)
    return 0


def _summary(candidate: dict, teacher_accuracy: float) -> dict:
    """The figures of one candidate worth keeping in the record."""
    steps = candidate["lineage"].get("compression", [])
    return {
        "name": candidate["name"],
        "backend": candidate["backend"],
        "accuracy": candidate["quality"]["accuracy"],
        "accuracy_vs_teacher": candidate["quality"]["accuracy"] / teacher_accuracy,
        "teacher_agreement": candidate["quality"].get("teacher_agreement"),
        "p50_ms_1_thread": candidate["speed"]["threads"]["1"]["p50_ms"],
        "bytes_on_disk": candidate["bytes_on_disk"],
        "parameters": candidate["parameters"],
        "roofline": candidate.get("roofline"),
        "steps": [
            {
                "method": s["method"],
                "seconds": s["seconds"],
                **{k: v for k, v in s["metrics"].items() if k in _KEPT_METRICS},
            }
            for s in steps
        ],
    }


_KEPT_METRICS = (
    "argmax_agreement",
    "agreement_before_heal",
    "kept_layers",
    "heads_removed",
    "ffn_neurons_removed",
    "float_nodes",
    "max_abs_logit_diff",
)


if __name__ == "__main__":
    sys.exit(main())
