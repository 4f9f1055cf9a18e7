"""Issue 17's graph fusion on Banking77: the demo's students exported with ``onnx:fuse=true``
(ONNX Runtime's fused Attention and EmbedLayerNormalization kernels) and quantized to int8,
against the same students from the plain dynamo export (``onnx:fuse=false``), batch 1, 1 thread,
interleaved.

    .venv/bin/python benchmarks/fusion_banking77.py [--run-dir runs/banking77] [--queries 500]

The 6-layer student is ``models/minilm-l6``; the 3-layer one is its healed, layer-dropped copy
in the run's compression cache. Writes ``benchmarks/results/fusion_banking77.json``: p50 per
model, the fused/plain ratio with a paired bootstrap 95% interval, test accuracy of each, and
the fused operators.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from _report import p50_ratio_interval, save_and_report

from smallfit.compress import OnnxExport, OrtDynamicInt8, compress
from smallfit.config import load_fit_config
from smallfit.data import load_dataset
from smallfit.evaluate import environment, interleaved_latency, limit_threads
from smallfit.models.base import read_manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--queries", type=int, default=500)
    args = parser.parse_args()
    run = args.run_dir
    data = load_dataset(load_fit_config(run / "config.yaml").data)
    sources = {"l6": run / "models" / "minilm-l6"}
    for cached in sorted((run / "compress-cache").glob("*/smallfit.json")):
        manifest = read_manifest(cached.parent)
        if manifest["kind"] == "transformer" and manifest["architecture"]["layers"] == 3:
            sources["l3"] = cached.parent
    models, figures, fused_ops = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, source in sources.items():
            for fuse in (False, True):
                built = compress(
                    source,
                    [OnnxExport(fuse=fuse), OrtDynamicInt8()],
                    out_dir=Path(tmp) / f"{name}-{fuse}",
                    check_texts=data.dev.texts,
                )
                models[f"{name}-{'fused' if fuse else 'plain'}-int8"] = built
            export = [s for s in built.lineage["compression"] if s["method"] == "onnx"][-1]
            fused_ops[name] = export["metrics"]["fused_operators"]
        gold = np.asarray([data.labels.index(y) for y in data.test.labels])
        for key, model in models.items():
            predicted = model.predict_proba(data.test.texts).argmax(1)
            figures[f"{key}_accuracy"] = float((predicted == gold).mean())
        with limit_threads(1, *models.values()):
            timed = interleaved_latency(
                models, data.test.texts, queries=args.queries, warmup=30, samples=True
            )
    samples = {k: np.asarray(v.pop("samples_ms")) for k, v in timed.items()}
    passed = {}
    for name in sources:
        plain, fused = samples[f"{name}-plain-int8"], samples[f"{name}-fused-int8"]
        speedup = float(np.median(plain) / np.median(fused))
        figures |= {
            f"{name}_plain_p50_ms": float(np.median(plain)),
            f"{name}_fused_p50_ms": float(np.median(fused)),
            f"{name}_fused_speedup": speedup,
            f"{name}_fused_speedup_ci95": p50_ratio_interval(plain, fused),
        }
        passed[f"{name}: fused int8 faster at batch 1"] = speedup > 1.0
    save_and_report(
        {
            "benchmark": "fusion_banking77",
            "command": " ".join(["python", *sys.argv]),
            "figures": figures,
            "passed": passed,
            "fused_operators": fused_ops,
            "interleaved_latency_ms_1_thread": timed,
            "environment": environment(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
