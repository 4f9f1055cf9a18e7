"""Issue 17's vocabulary trimming and graph fusion on any demo run: the run's 6-layer student
(and its 3-layer copy in the run's compression cache) built three ways, then scored and timed
beside the run's teacher and its static tier (``models/static``, where the run has one) in one
process.

    .venv/bin/python benchmarks/trim_fuse.py --run-dir runs/banking77 [--queries 500]

The chains, each from the same trained student:

- ``plain``: onnx (``fuse=false``, the dynamo export) -> int8-dynamic;
- ``fused``: onnx (``fuse=true``) -> int8-dynamic: the default since ``fuse: auto``;
- ``trim-fused``: trim-vocab -> onnx (``fuse=true``) -> int8-dynamic.

For each model: test accuracy (with a 95% bootstrap interval, and as a share of the teacher's),
accuracy apart on the test texts holding a token the trimmed vocabulary dropped and on the
others, size on disk (and how many times smaller than the teacher), and batch-1 p50 at 1 thread,
all models taking turns query by query, then again in turns of ``--block`` queries, each
opened by an untimed one ("warm": a small model timed with its weights in cache, as a server
running it alone has them); the ratios to the teacher with paired bootstrap
intervals. Writes ``benchmarks/results/trim_fuse_<dataset>.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from _report import p50_ratio_interval, save_and_report

from smallfit.compress import OnnxExport, OrtDynamicInt8, TrimVocab, compress
from smallfit.config import load_fit_config
from smallfit.data import load_dataset
from smallfit.evaluate import environment, interleaved_latency, limit_threads
from smallfit.models import load
from smallfit.models.base import BaseClassifier, read_manifest
from smallfit.models.vocab import unseen_rows, untrimmed_tokenizer

CHAINS: dict[str, list[Any]] = {
    "plain": [OnnxExport(fuse=False), OrtDynamicInt8()],
    "fused": [OnnxExport(fuse=True), OrtDynamicInt8()],
    "trim-fused": [TrimVocab(), OnnxExport(fuse=True), OrtDynamicInt8()],
}


def accuracy_interval(right: np.ndarray, seed: int = 0) -> list[float]:
    """95% bootstrap interval of the mean of ``right`` (0/1 per test text)."""
    rng = np.random.default_rng(seed)
    means = [right[rng.integers(0, len(right), len(right))].mean() for _ in range(2000)]
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def students(run: Path) -> dict[str, Path]:
    """The run's 6-layer student and, if the compression cache holds one, its 3-layer copy."""
    found = {"l6": run / "models" / "minilm-l6"}
    for cached in sorted((run / "compress-cache").glob("*/smallfit.json")):
        manifest = read_manifest(cached.parent)
        if manifest["kind"] == "transformer" and manifest["architecture"]["layers"] == 3:
            found["l3"] = cached.parent
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument(
        "--block", type=int, default=20, help="queries per turn in the warm (block) timing"
    )
    args = parser.parse_args()
    run = args.run_dir
    data = load_dataset(load_fit_config(run / "config.yaml").data)
    dataset = run.name
    gold = np.asarray([data.labels.index(y) for y in data.test.labels])
    teacher = load(run / "models" / "teacher")
    models: dict[str, BaseClassifier] = {"teacher": teacher}
    if (run / "models" / "static").is_dir():
        models["static"] = load(run / "models" / "static")
    rows: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for layers, source in students(run).items():
            for chain, steps in CHAINS.items():
                name = f"{layers}-{chain}-int8"
                print(f"building {name}", flush=True)
                models[name] = compress(
                    source,
                    steps,
                    out_dir=Path(tmp) / name,
                    check_texts=data.dev.texts,
                    pool_texts=data.train.texts,
                )
                lineage = models[name].lineage["compression"]
                export = [s for s in lineage if s["method"] == "onnx"][-1]["metrics"]
                rows[name] = {"fused_operators": export.get("fused_operators")}
                trim = [s for s in lineage if s["method"] == "trim-vocab"]
                if trim:
                    rows[name]["trim"] = {
                        k: v for k, v in trim[0]["metrics"].items() if k != "untrimmed_from"
                    }
        # the test texts holding a token the (6-layer) trimmed vocabulary dropped
        trimmed = Path(tmp) / "l6-trim-fused-int8"
        untrimmed = untrimmed_tokenizer(trimmed)
        assert untrimmed is not None, "the trimmed model lost its untrimmed tokenizer"
        unseen = unseen_rows(untrimmed, trimmed, data.test.texts)
        teacher_right = None
        for name, model in models.items():
            right = model.predict_proba(data.test.texts).argmax(1) == gold
            teacher_right = right if name == "teacher" else teacher_right
            rows.setdefault(name, {}).update(
                {
                    "accuracy": float(right.mean()),
                    "accuracy_ci95": accuracy_interval(right),
                    "accuracy_unseen_vocab": float(right[unseen].mean()),
                    "accuracy_seen_vocab": float(right[~unseen].mean()),
                    "bytes_on_disk": model.info.bytes_on_disk,
                }
            )
        with limit_threads(1, *models.values()):
            timed = interleaved_latency(
                models, data.test.texts, queries=args.queries, warmup=30, samples=True
            )
            warm = interleaved_latency(
                models, data.test.texts, queries=args.queries, samples=True, block=args.block
            )
    assert teacher_right is not None
    samples = {k: np.asarray(v.pop("samples_ms")) for k, v in timed.items()}
    warm_samples = {k: np.asarray(v.pop("samples_ms")) for k, v in warm.items()}
    base = rows["teacher"]
    for name, row in rows.items():
        row["p50_ms_1_thread"] = float(np.median(samples[name]))
        row["accuracy_of_teacher"] = row["accuracy"] / base["accuracy"]
        row["times_smaller"] = base["bytes_on_disk"] / row["bytes_on_disk"]
        row["times_faster"] = float(np.median(samples["teacher"]) / np.median(samples[name]))
        row["times_faster_ci95"] = p50_ratio_interval(samples["teacher"], samples[name])
        row["warm_p50_ms_1_thread"] = float(np.median(warm_samples[name]))
        row["warm_times_faster"] = float(
            np.median(warm_samples["teacher"]) / np.median(warm_samples[name])
        )
        row["warm_times_faster_ci95"] = p50_ratio_interval(
            warm_samples["teacher"], warm_samples[name]
        )
        print(
            f"{name:22s} {row['accuracy']:.2%} ({row['accuracy_of_teacher']:.1%} of teacher)  "
            f"{row['bytes_on_disk'] / 1e6:6.1f} MB ({row['times_smaller']:.1f}x smaller)  "
            f"p50 {row['p50_ms_1_thread']:.2f} ms ({row['times_faster']:.1f}x faster), "
            f"warm {row['warm_p50_ms_1_thread']:.2f} ms ({row['warm_times_faster']:.1f}x)"
        )
    passed = {}
    for layers in students(run):
        plain, fused = rows[f"{layers}-plain-int8"], rows[f"{layers}-fused-int8"]
        trim = rows[f"{layers}-trim-fused-int8"]
        passed[f"{layers}: fused accuracy within 0.5 pt of plain"] = (
            abs(fused["accuracy"] - plain["accuracy"]) <= 0.005
        )
        passed[f"{layers}: fused faster than plain at batch 1"] = (
            fused["p50_ms_1_thread"] < plain["p50_ms_1_thread"]
        )
        passed[f"{layers}: trimmed accuracy on seen-vocabulary texts within 0.5 pt"] = (
            abs(trim["accuracy_seen_vocab"] - fused["accuracy_seen_vocab"]) <= 0.005
        )
        passed[f"{layers}: trimmed smaller"] = trim["bytes_on_disk"] < fused["bytes_on_disk"]
    save_and_report(
        {
            "benchmark": f"trim_fuse_{dataset}",
            "command": " ".join(["python", *sys.argv]),
            "figures": {
                "test_texts": len(gold),
                "unseen_vocab_texts": int(unseen.sum()),
                **{f"{k}_accuracy": v["accuracy"] for k, v in rows.items()},
                **{f"{k}_p50_ms": v["p50_ms_1_thread"] for k, v in rows.items()},
            },
            "passed": passed,
            "models": rows,
            "interleaved_latency_ms_1_thread": timed,
            "interleaved_in_blocks_latency_ms_1_thread": {"block": args.block, **warm},
            "run": str(run),
            "environment": environment(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
