"""Issue 2's targets on Banking77: the mpnet-base teacher, the distilled MiniLM-L6 student and
the tiny linear student, measured side by side in one run on this machine.

    .venv/bin/python benchmarks/distill_banking77.py [--data ../shared/data/banking77]
        [--run-dir runs/banking77] [--quick]

Runs (or reuses) the demo's fit, then checks the targets against the saved results and writes
``benchmarks/results/distill_banking77[-quick].json`` (figures, targets, pass/fail, stage
timings, environment). Prints the table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _report import save_and_report

from smallfit.demo import demo_config
from smallfit.pipeline import fit

HERE = Path(__file__).resolve().parent
TARGETS = {
    "teacher_accuracy_min": 0.92,
    "student_accuracy_vs_teacher_min": 0.98,
    "student_p50_speedup_min": 5.0,
    "student_size_ratio_min": 4.0,
}


def _interleaved(run_dir: Path, teacher: dict, student: dict, args: argparse.Namespace) -> dict:
    """Batch-1 latency of teacher and student taking turns query by query in one process, at
    1 thread and at all threads: drift on a shared machine then hits both alike."""
    from smallfit.data import load_dataset
    from smallfit.evaluate import interleaved_latency, limit_threads
    from smallfit.models import load

    config = demo_config(args.data, run_dir=args.run_dir, quick=args.quick)
    texts = load_dataset(config.data).test.texts[:300]
    models = {"teacher": load(teacher["model_dir"]), args.student: load(student["model_dir"])}
    out = {}
    for threads in (1, teacher["speed"]["cpu_threads_all"]):
        with limit_threads(threads, *models.values()):
            out[str(threads)] = interleaved_latency(models, texts, queries=300, warmup=30)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--student", default="minilm-l6")
    args = parser.parse_args()

    config = demo_config(args.data, run_dir=args.run_dir, quick=args.quick)
    started = time.monotonic()
    result = fit(config, progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    wall = time.monotonic() - started
    by_name = {c["name"]: c for c in result.results.dump()["candidates"]}
    teacher, student, linear = by_name["teacher"], by_name[args.student], by_name["linear"]

    def p50(c: dict, threads: str) -> float:
        return c["speed"]["threads"][threads]["p50_ms"]

    all_threads = str(teacher["speed"]["cpu_threads_all"])
    t_acc = teacher["quality"]["accuracy"]
    figures = {
        "teacher_accuracy": t_acc,
        "student_accuracy": student["quality"]["accuracy"],
        "student_accuracy_vs_teacher": student["quality"]["accuracy"] / t_acc,
        "student_teacher_agreement": student["quality"]["teacher_agreement"],
        "student_p50_speedup_1_thread": p50(teacher, "1") / p50(student, "1"),
        f"student_p50_speedup_{all_threads}_threads": p50(teacher, all_threads)
        / p50(student, all_threads),
        "student_size_ratio": teacher["bytes_on_disk"] / student["bytes_on_disk"],
        "linear_accuracy": linear["quality"]["accuracy"],
        "linear_accuracy_vs_teacher": linear["quality"]["accuracy"] / t_acc,
        "linear_p50_speedup_1_thread": p50(teacher, "1") / p50(linear, "1"),
        "linear_size_ratio": teacher["bytes_on_disk"] / linear["bytes_on_disk"],
    }
    checks = {
        "teacher_accuracy": figures["teacher_accuracy"] >= TARGETS["teacher_accuracy_min"],
        "student_accuracy_vs_teacher": figures["student_accuracy_vs_teacher"]
        >= TARGETS["student_accuracy_vs_teacher_min"],
        "student_p50_speedup_1_thread": figures["student_p50_speedup_1_thread"]
        >= TARGETS["student_p50_speedup_min"],
        "student_size_ratio": figures["student_size_ratio"] >= TARGETS["student_size_ratio_min"],
    }
    interleaved = _interleaved(result.run_dir, teacher, student, args)
    for threads, stats in interleaved.items():
        figures[f"student_p50_speedup_{threads}_thread_interleaved"] = (
            stats["teacher"]["p50_ms"] / stats[args.student]["p50_ms"]
        )
    checks["student_p50_speedup_1_thread_interleaved"] = (
        figures["student_p50_speedup_1_thread_interleaved"] >= TARGETS["student_p50_speedup_min"]
    )
    stages = json.loads((result.run_dir / "stages.json").read_text("utf-8"))
    out = {
        "benchmark": "distill_banking77" + ("-quick" if args.quick else ""),
        "command": " ".join(["python", "benchmarks/distill_banking77.py", *sys.argv[1:]]),
        "run_dir": str(result.run_dir),
        "test_examples": teacher["quality"]["n"],
        "targets": TARGETS,
        "figures": figures,
        "passed": checks,
        "interleaved_latency_ms": interleaved,
        "stage_seconds": {name: entry["seconds"] for name, entry in stages.items()},
        "wall_seconds_this_invocation": round(wall, 1),
        "chosen": result.chosen,
        "candidates": {
            name: {
                "accuracy": c["quality"]["accuracy"],
                "macro_f1": c["quality"]["macro_f1"],
                "teacher_agreement": c["quality"]["teacher_agreement"],
                "ece": c["quality"]["ece"],
                "latency_ms": c["speed"]["threads"],
                "throughput_per_s": c["speed"][
                    f"throughput_b{c['speed']['throughput_batch']}_per_s"
                ],
                "peak_rss_bytes": c["speed"]["peak_rss_bytes"],
                "bytes_on_disk": c["bytes_on_disk"],
                "parameters": c["parameters"],
            }
            for name, c in by_name.items()
        },
        "environment": result.results.environment,
    }
    print(result.table)
    save_and_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
