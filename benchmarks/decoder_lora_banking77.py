"""A LLaMA-class decoder as a student: SmolLM2-135M-Instruct with LoRA adapters, distilled on a
Banking77 slice, measured like any candidate (test accuracy, agreement with the teacher, batch-1
latency, size on disk, training time).

    .venv/bin/python benchmarks/decoder_lora_banking77.py [--run-dir runs/banking77]
        [--data ../shared/data/banking77] [--per-label 20] [--epochs 2] [--max-length 48]

With ``--run-dir`` (a finished demo run: ``labels/``, ``data.json``, ``models/teacher``), the
student learns the teacher's probabilities for its slice of that run's training pool (read from
the run's label cache; the teacher only runs if they are missing) and is compared with the
teacher and the run's MiniLM student on the same test texts. Without it, gold labels (one-hot)
are the targets. Defaults take about 10-15 minutes on 2 cores. Writes
``benchmarks/results/decoder_lora_banking77.json``; prints a table, the verdicts, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import save_and_report

from smallfit.config import DataConfig, DecoderStudent, EvalConfig, TrainConfig
from smallfit.data import Dataset, Split, load_dataset
from smallfit.distill import distill_student
from smallfit.evaluate import environment, evaluate_candidate
from smallfit.models.base import align_probs, read_manifest
from smallfit.run.layout import RunDir
from smallfit.teach import label_pool, one_hot

HERE = Path(__file__).resolve().parent
TARGETS = {
    "accuracy_min": 0.70,  # 77 classes, 20 texts each: chance is 1.3%
    "bytes_on_disk_max": 10 * 2**20,  # adapter + head + tokenizer, never the base
}


def _stratified(split: Split, per_label: int, *, seed: int) -> list[int]:
    """Indices of at most ``per_label`` rows of each label (seeded draw), in file order."""
    rng = np.random.default_rng(seed)
    picked: list[int] = []
    for label in sorted(set(split.labels)):
        rows = [i for i, g in enumerate(split.labels) if g == label]
        picked += sorted(rng.permutation(rows)[:per_label].tolist())
    return sorted(picked)


def _take(split: Split, rows: list[int]) -> Split:
    return Split([split.texts[i] for i in rows], [split.labels[i] for i in rows], split.source)


def _teacher_run(
    run_dir: Path, dataset: Dataset
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The run's teacher probabilities for the whole train pool, dev and test, and the saved
    test probabilities of its other candidates (all in ``dataset.labels`` order)."""
    from smallfit.models import load

    teacher_dir = run_dir / "models" / "teacher"
    teacher = load(teacher_dir)  # used only if the run's label cache misses
    pools = [
        label_pool(
            teacher,
            split.texts,
            labels=dataset.labels,
            teacher_dir=teacher_dir,
            run=RunDir(run_dir),
            progress=False,
        )
        for split in (dataset.train, dataset.dev)
    ]
    del teacher
    others = {}
    for probs_file in sorted((run_dir / "results").glob("*.test_probs.npy")):
        name = probs_file.name.removesuffix(".test_probs.npy")
        labels = read_manifest(run_dir / "models" / name)["labels"]
        probs = np.load(probs_file, allow_pickle=False)
        others[name] = align_probs(probs, labels, dataset.labels)
    if "teacher" not in others:
        raise SystemExit(f"{run_dir}/results: no teacher.test_probs.npy (an unfinished run?)")
    return pools[0], pools[1], others["teacher"], others


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/data/banking77")
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished demo run")
    parser.add_argument("--per-label", type=int, default=20, help="training texts per label")
    parser.add_argument("--dev-per-label", type=int, default=4)
    parser.add_argument("--test-per-label", type=int, default=10, help="0: the whole test set")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--base", default="smollm2-135m")
    args = parser.parse_args()

    if args.run_dir is not None:
        data_json = json.loads((args.run_dir / "data.json").read_text("utf-8"))
        data_config = DataConfig.model_validate(data_json["config"])
    else:
        data_config = DataConfig(train=args.data / "train.jsonl", test=args.data / "test.jsonl")
    full = load_dataset(data_config)
    teacher_train = teacher_dev = teacher_test = None
    others: dict[str, np.ndarray] = {}
    if args.run_dir is not None:
        teacher_train, teacher_dev, teacher_test, others = _teacher_run(args.run_dir, full)

    train_rows = _stratified(full.train, args.per_label, seed=0)
    dev_rows = _stratified(full.dev, args.dev_per_label, seed=1)
    test_rows = (
        list(range(len(full.test)))
        if args.test_per_label == 0
        else _stratified(full.test, args.test_per_label, seed=2)
    )
    dataset = Dataset(
        _take(full.train, train_rows),
        _take(full.dev, dev_rows),
        _take(full.test, test_rows),
        full.labels,
    )
    if teacher_train is None:
        train_probs = one_hot(dataset.train.labels, dataset.labels)
        dev_probs = one_hot(dataset.dev.labels, dataset.labels)
    else:
        train_probs, dev_probs = teacher_train[train_rows], teacher_dev[dev_rows]

    defaults = DecoderStudent().train.model_dump()
    config = DecoderStudent(
        base=args.base,
        train=TrainConfig(**{**defaults, "epochs": args.epochs, "max_length": args.max_length}),
    )
    work = Path(tempfile.mkdtemp(prefix="decoder-bench-"))
    try:
        started = time.monotonic()
        model = distill_student(
            config,
            dataset,
            train_probs=train_probs,
            dev_probs=dev_probs,
            out_dir=work / config.name,
            teacher_name="teacher" if args.run_dir else "gold",
            progress=sys.stderr.isatty(),
        )
        train_seconds = time.monotonic() - started
        training = model.lineage["training"]
        del model
        aligned_teacher = None if teacher_test is None else teacher_test[test_rows]
        result = evaluate_candidate(
            work / config.name,
            test=dataset.test,
            teacher_test_probs=aligned_teacher,
            config=EvalConfig(latency_queries=200, warmup=20),
        ).result.dump()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    quality, speed = result["quality"], result["speed"]
    all_threads = str(speed["cpu_threads_all"])
    figures: dict[str, Any] = {
        "test_accuracy": quality["accuracy"],
        "test_macro_f1": quality["macro_f1"],
        "teacher_agreement": quality["teacher_agreement"],
        "ece": quality["ece"],
        "p50_ms_batch1_1_thread": speed["threads"]["1"]["p50_ms"],
        f"p50_ms_batch1_{all_threads}_threads": speed["threads"][all_threads]["p50_ms"],
        "throughput_b32_per_s": speed["throughput_b32_per_s"],
        "bytes_on_disk": result["bytes_on_disk"],
        "parameters": result["parameters"],
        "train_seconds": round(train_seconds, 1),
        "train_steps": training["steps"],
        "best_dev_agreement": training["best_dev_agreement"],
    }
    gold = np.array([dataset.labels.index(g) for g in dataset.test.labels])
    same_texts = {
        name: float((probs[test_rows].argmax(1) == gold).mean()) for name, probs in others.items()
    }
    for name in ("teacher", "minilm-l6", "linear"):
        if name in same_texts:
            figures[f"{name}_test_accuracy_same_texts"] = same_texts[name]
    checks = {
        "accuracy": figures["test_accuracy"] >= TARGETS["accuracy_min"],
        "bytes_on_disk": figures["bytes_on_disk"] <= TARGETS["bytes_on_disk_max"],
    }
    reference = {}
    if args.run_dir is not None:
        for name in ("teacher", "minilm-l6", "linear"):
            file = args.run_dir / "results" / f"{name}.json"
            if file.is_file():
                saved = json.loads(file.read_text("utf-8"))
                reference[name] = {
                    "p50_ms": {k: v["p50_ms"] for k, v in saved["speed"]["threads"].items()},
                    "bytes_on_disk": saved["bytes_on_disk"],
                    "note": "measured by the run, earlier; accuracy above is on the same texts",
                }
    out = {
        "benchmark": "decoder_lora_banking77",
        "command": " ".join(["python", "benchmarks/decoder_lora_banking77.py", *sys.argv[1:]]),
        "trained_on": f"teacher probabilities of {args.run_dir}"
        if args.run_dir
        else "gold labels (one-hot)",
        "slice": {
            "train": len(dataset.train),
            "dev": len(dataset.dev),
            "test": len(dataset.test),
            "labels": len(dataset.labels),
        },
        "student": config.model_dump(mode="json"),
        "targets": TARGETS,
        "figures": figures,
        "passed": checks,
        "training": training,
        "reference_candidates": reference,
        "environment": environment(),
    }
    print(f"{'candidate':<16} {'accuracy':>9} {'agreement':>9} {'p50 ms':>8} {'MB':>8}")
    agreement = figures["teacher_agreement"]
    print(
        f"{config.name:<16} {figures['test_accuracy']:>9.3f} "
        f"{agreement if agreement is None else round(agreement, 3)!s:>9} "
        f"{figures['p50_ms_batch1_1_thread']:>8.1f} {figures['bytes_on_disk'] / 2**20:>8.2f}"
    )
    for name, ref in reference.items():
        print(
            f"{name:<16} {same_texts.get(name, float('nan')):>9.3f} {'':>9} "
            f"{ref['p50_ms']['1']:>8.1f} "
            f"{ref['bytes_on_disk'] / 2**20:>8.2f}"
        )
    save_and_report(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
