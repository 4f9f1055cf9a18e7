"""What ``session.x64quantprecision`` (u8 x u8 int8 products) costs and changes on this CPU.

On an x86 CPU without VNNI, ONNX Runtime's default u8 x s8 int8 kernel adds pairs of products
into 16 bits, which can overflow; smallfit sets the option there
(``smallfit.models.precision.int8_pairs_may_overflow``). For each dataset: a MiniLM-L6 with its
head fitted on 3,000 training texts (the body frozen, as ``warmstart_head`` does), exported and
dynamically quantized to int8, then run on up to 1,000 test texts with both kernels: answers
that differ, the largest logit difference, accuracy against gold, and batch-1 p50 at 1 thread,
interleaved (300 texts, twice).

    .venv/bin/python benchmarks/int8_kernels.py --data ../shared/data/banking77 \\
        ../shared/data/bitext_customer_support

About 1.5 minutes a dataset on 2 cores. Writes ``benchmarks/results/int8_kernels.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _report import p50_ratio_interval, save_and_report

import smallfit.models.onnx as onnx_models
from smallfit import zoo
from smallfit.compress import OnnxExport, OrtDynamicInt8, compress
from smallfit.data import read_split
from smallfit.evaluate import environment
from smallfit.models import load
from smallfit.models.precision import int8_pairs_may_overflow
from smallfit.models.transformer import TransformerClassifier
from smallfit.teach import one_hot
from smallfit.train import warmstart_head

TARGETS = {"u8u8_p50_ratio_max": 1.25}


def measure(folder: Path, work: Path) -> dict[str, Any]:
    torch.manual_seed(0)
    train, test = read_split(folder / "train.jsonl"), read_split(folder / "test.jsonl")
    rows = random.Random(0).sample(range(len(train.texts)), min(3000, len(train.texts)))
    texts, gold = [train.texts[i] for i in rows], [train.labels[i] for i in rows]
    labels = sorted(set(train.labels))
    model = TransformerClassifier.from_base(
        zoo.resolve("minilm-l6"), labels=labels, name="s", max_length=64
    )
    warmstart_head(model, texts, one_hot(gold, labels), progress=False)
    student = model.save(work / "student")
    int8 = work / "int8"
    compress(student, [OnnxExport(), OrtDynamicInt8()], out_dir=int8, check_texts=texts[:200])
    models = {}
    for kernel, guard in (("u8u8", True), ("u8s8", False)):
        onnx_models.int8_pairs_may_overflow = lambda guard=guard: guard  # type: ignore[misc]
        models[kernel] = load(int8)
        models[kernel].set_num_threads(1)
        models[kernel].logits(test.texts[:1])  # the session is built with the option now
    onnx_models.int8_pairs_may_overflow = int8_pairs_may_overflow
    queries, answers = test.texts[:1000], test.labels[:1000]
    logits = {k: m.logits(queries) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for text in queries[:300] * 2:
        for kernel, m in models.items():
            start = time.perf_counter()
            m.logits([text])
            times[kernel].append(time.perf_counter() - start)
    u8u8, u8s8 = np.array(times["u8u8"]), np.array(times["u8s8"])

    def accuracy(kernel: str) -> float:
        picked = logits[kernel].argmax(axis=1)
        return float(np.mean([labels[i] == g for i, g in zip(picked, answers, strict=True)]))

    return {
        "test_texts": len(queries),
        "answers_differ": int((logits["u8u8"].argmax(1) != logits["u8s8"].argmax(1)).sum()),
        "max_abs_logit_diff": float(np.abs(logits["u8u8"] - logits["u8s8"]).max()),
        "accuracy_u8u8": accuracy("u8u8"),
        "accuracy_u8s8": accuracy("u8s8"),
        "p50_ms_u8u8": statistics.median(u8u8) * 1e3,
        "p50_ms_u8s8": statistics.median(u8s8) * 1e3,
        "p50_ratio_u8u8_over_u8s8": float(np.median(u8u8) / np.median(u8s8)),
        "p50_ratio_ci95": p50_ratio_interval(u8u8, u8s8),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    args = parser.parse_args()
    figures: dict[str, Any] = {"guard_on_this_cpu": int8_pairs_may_overflow()}
    passed = {}
    for folder in args.data:
        with tempfile.TemporaryDirectory() as tmp:
            got = measure(folder, Path(tmp))
        figures[folder.name] = got
        ratio = got["p50_ratio_u8u8_over_u8s8"]
        passed[f"{folder.name}_u8u8_p50_ratio"] = ratio <= TARGETS["u8u8_p50_ratio_max"]
    save_and_report(
        {
            "benchmark": "int8_kernels",
            "command": "python benchmarks/int8_kernels.py --data "
            + " ".join(str(d) for d in args.data),
            "targets": TARGETS,
            "figures": figures,
            "passed": passed,
            "environment": environment(),
        }
    )


if __name__ == "__main__":
    main()
