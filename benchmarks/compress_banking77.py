"""Issue 3 (in progress): the demo's distilled MiniLM student compressed with ONNX export and
ONNX Runtime int8, against the mpnet-base teacher in PyTorch fp32, on Banking77 test.

    .venv/bin/python benchmarks/compress_banking77.py --run-dir runs/banking77

Needs a finished demo run (``smallfit demo --data ../shared/data/banking77``). Writes
``benchmarks/results/compress_banking77.json``; prints a summary, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _report import save_and_report

from smallfit.compress import OnnxExport, OrtDynamicInt8, compress
from smallfit.config import EvalConfig
from smallfit.data import load_dataset
from smallfit.demo import demo_config
from smallfit.evaluate import environment, evaluate_candidate, interleaved_latency, limit_threads
from smallfit.models import load

HERE = Path(__file__).resolve().parent
TARGETS = {"accuracy_vs_teacher_min": 0.98, "p50_speedup_min": 15.0, "size_ratio_min": 15.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--student", default="minilm-l6")
    args = parser.parse_args()

    config = demo_config(args.data, run_dir=args.run_dir)
    data = load_dataset(config.data)
    run = Path(args.run_dir)
    teacher_result = json.loads((run / "results" / "teacher.json").read_text("utf-8"))
    teacher_probs = np.load(run / "results" / "teacher.test_probs.npy")

    out = run / "models" / f"{args.student}-int8"
    started = time.monotonic()
    compress(
        run / "models" / args.student,
        [OnnxExport(), OrtDynamicInt8()],
        out_dir=out,
        check_texts=data.dev.texts[:512],  # never the test split
        name=f"{args.student}-int8",
    )
    compress_seconds = time.monotonic() - started
    result = evaluate_candidate(
        out,
        test=data.test,
        teacher_test_probs=teacher_probs,
        config=EvalConfig(),
        out_file=run / "results" / f"{args.student}-int8.json",
    )

    models = {
        "teacher": load(run / "models" / "teacher"),
        args.student: load(run / "models" / args.student),
        f"{args.student}-int8": load(out),
    }
    interleaved = {}
    for threads in (1, result["speed"]["cpu_threads_all"]):
        with limit_threads(threads, *models.values()):
            interleaved[str(threads)] = interleaved_latency(
                models, data.test.texts[:300], queries=300, warmup=30
            )

    # Dynamic int8 quantizes activations per batch, so an answer depends on its batch-mates;
    # serving answers one text at a time, so measure that too.
    int8 = models[f"{args.student}-int8"]
    batch1 = np.concatenate([int8.predict_proba([t]) for t in data.test.texts]).argmax(1)
    batch1_acc = float(
        np.mean([int8.labels[i] == g for i, g in zip(batch1, data.test.labels, strict=True)])
    )
    t_acc = teacher_result["quality"]["accuracy"]
    one = interleaved["1"]
    figures = {
        "teacher_accuracy": t_acc,
        "int8_accuracy": result["quality"]["accuracy"],
        "int8_accuracy_vs_teacher": result["quality"]["accuracy"] / t_acc,
        "int8_accuracy_batch1": batch1_acc,
        "int8_accuracy_batch1_vs_teacher": batch1_acc / t_acc,
        "int8_teacher_agreement": result["quality"]["teacher_agreement"],
        "int8_p50_speedup_1_thread_interleaved": one["teacher"]["p50_ms"]
        / one[f"{args.student}-int8"]["p50_ms"],
        "int8_p50_speedup_1_thread_isolated": teacher_result["speed"]["threads"]["1"]["p50_ms"]
        / result["speed"]["threads"]["1"]["p50_ms"],
        "int8_size_ratio": teacher_result["bytes_on_disk"] / result["bytes_on_disk"],
        "int8_bytes_on_disk": result["bytes_on_disk"],
        "compress_seconds": round(compress_seconds, 1),
    }
    checks = {
        "accuracy_vs_teacher": min(
            figures["int8_accuracy_vs_teacher"], figures["int8_accuracy_batch1_vs_teacher"]
        )
        >= TARGETS["accuracy_vs_teacher_min"],
        "p50_speedup_1_thread_interleaved": figures["int8_p50_speedup_1_thread_interleaved"]
        >= TARGETS["p50_speedup_min"],
        "size_ratio": figures["int8_size_ratio"] >= TARGETS["size_ratio_min"],
    }
    record = {
        "benchmark": "compress_banking77",
        "command": " ".join(["python", "benchmarks/compress_banking77.py", *sys.argv[1:]]),
        "targets": TARGETS,
        "figures": figures,
        "passed": checks,
        "interleaved_latency_ms": interleaved,
        "int8_candidate": result,
        "environment": environment(),
    }
    for name, stats in one.items():
        print(
            f"{name:>18}: p50 {stats['p50_ms']:7.3f} ms  p99 {stats['p99_ms']:7.3f} ms (1 thread)"
        )
    save_and_report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
