"""Issue 16's targets on SNIPS slots (700 test texts), measured on the demo's run: the mpnet-base
tagger teacher (trained on gold, the stand-in for an LLM), the encoder student the selection
chose, and the cascade, all with the demo's defaults.

    .venv/bin/smallfit demo --data ../shared/data/snips_slots        # the run (about 35 min)
    .venv/bin/python benchmarks/extract_snips.py --run runs/snips_slots

Quality comes from the run's results (micro F1 against gold with its 95% bootstrap interval,
the cascade's test point). Speed is measured here, side by side: the teacher and the chosen
student answer the same test texts at batch 1 on one thread, interleaved text by text (the
order alternating), and the speed-up is the median of the per-text ratios with a bootstrap 95%
interval. The Q4_K_M GGUF decoder student (SmolLM2-135M with LoRA, run by llama.cpp under the
schema's grammar) joins the same interleaved loop, with its decoding rate in tokens per second.

Writes ``benchmarks/results/extract_snips.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _report import save_and_report

from smallfit.evaluate import environment
from smallfit.models.extractor import load_extractor
from smallfit.stats import latency_percentiles

TARGETS = {
    "teacher_micro_f1_min": 0.95,
    "student_share_of_teacher_f1_min": 0.98,
    "speedup_min": 10.0,
    "cascade_gap_pt_max": 0.5,
    "cascade_local_min": 0.80,
}
"""The issue's targets; the Q4 GGUF decoder has none but to be reported (with 100% valid JSON)."""


def _interval(values: np.ndarray, seed: int = 0, resamples: int = 1000) -> list[float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    medians = np.median(values[idx], axis=1)
    return [float(np.quantile(medians, 0.025)), float(np.quantile(medians, 0.975))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("runs/snips_slots"))
    parser.add_argument("--latency-texts", type=int, default=300)
    parser.add_argument(
        "--name",
        default="extract_snips",
        help="results file name (e.g. for a run without the generator, whose decoder check "
        "then misses)",
    )
    args = parser.parse_args()

    results = json.loads((args.run / "results.json").read_text("utf-8"))
    by_name = {c["name"]: c for c in results["candidates"]}
    chosen = results["selection"]["chosen"]
    teacher = by_name["teacher"]["quality"]["fields"]
    student = by_name[chosen]["quality"]["fields"]
    t_ci = by_name["teacher"]["quality"]["ci95"]["field_f1"]
    s_ci = by_name[chosen]["quality"]["ci95"]["field_f1"]
    cascade = results.get("cascade")
    cascade_f1 = by_name["cascade"]["quality"]["fields"]["micro_f1"] if cascade else None

    test = [json.loads(line)["text"] for line in (args.run / "results" / "test.jsonl").open()]
    rng = np.random.default_rng(0)
    texts = [test[i] for i in rng.permutation(len(test))[: args.latency_texts]]
    decoder = next(
        (n for n, c in by_name.items() if c["backend"] == "gguf-extractor" and n.endswith("q4km")),
        None,
    )
    models = {
        "teacher": load_extractor(args.run / "models" / "teacher"),
        chosen: load_extractor(args.run / "models" / chosen),
    }
    if decoder is not None:
        models[decoder] = load_extractor(args.run / "models" / decoder)
    for model in models.values():
        model.set_num_threads(1)
        for text in texts[:20]:
            model.extract([text])
    times: dict[str, list[float]] = {name: [] for name in models}
    generation = getattr(models.get(decoder or ""), "generation", None)
    if generation is not None:
        generation.reset()
    for i, text in enumerate(texts):
        pair = list(models.items())
        for name, model in pair if i % 2 else pair[::-1]:
            t0 = time.perf_counter()
            model.extract([text])
            times[name].append((time.perf_counter() - t0) * 1000)
    ratios = np.array(times["teacher"]) / np.array(times[chosen])
    speedup = float(np.median(ratios))
    share = student["micro_f1"] / teacher["micro_f1"]
    gap = None if cascade_f1 is None else 100 * (teacher["micro_f1"] - cascade_f1)
    local = None if cascade is None else 1 - cascade["test"]["escalation"]

    def quality(name: str, q: dict[str, Any], ci: list[float] | None) -> dict[str, Any]:
        keys = ("micro_f1", "micro_precision", "micro_recall", "macro_f1", "doc_exact")
        return {
            "name": name,
            **{k: q[k] for k in keys},
            "json_valid": q["json_valid"],
            "micro_f1_ci95": ci,
            "bytes_on_disk": by_name[name]["bytes_on_disk"],
        }

    figures = {
        "run": str(args.run),
        "test_texts": len(test),
        "teacher": quality("teacher", teacher, t_ci),
        "chosen_student": quality(chosen, student, s_ci),
        "student_agreement_micro_f1": student["teacher_micro_f1"],
        "student_share_of_teacher_f1": share,
        "latency_batch1_1thread_ms": {
            k: latency_percentiles(np.array(v)) for k, v in times.items()
        },
        "speedup_median_per_text": speedup,
        "speedup_ci95": _interval(ratios),
        "cascade": None
        if cascade is None
        else {
            "tiers": cascade["tiers"],
            "threshold": cascade["thresholds"][0],
            "test_micro_f1": cascade_f1,
            "gap_to_teacher_pt": gap,
            "answered_locally": local,
            "met_on_dev": cascade["met_on_dev"],
        },
        "decoder_q4_gguf": None
        if decoder is None
        else {
            **quality(decoder, by_name[decoder]["quality"]["fields"], None),
            "micro_f1_ci95": by_name[decoder]["quality"]["ci95"]["field_f1"],
            "values_not_in_text": by_name[decoder]["quality"]["fields"].get("values_not_in_text"),
            "p50_ms_1t_interleaved": float(np.median(times[decoder])),
            "tokens_per_s_1t": None if generation is None else generation.rate(),
            "teacher_over_decoder_p50": float(np.median(times["teacher"]))
            / float(np.median(times[decoder])),
        },
        "candidates": {
            n: {
                "micro_f1": c["quality"]["fields"]["micro_f1"],
                "p50_ms_1t": c["speed"]["threads"]["1"]["p50_ms"],
                "bytes_on_disk": c["bytes_on_disk"],
            }
            for n, c in by_name.items()
        },
    }
    record = {
        "benchmark": args.name,
        "command": f"benchmarks/extract_snips.py --run {args.run} --name {args.name}",
        "environment": environment(),
        "targets": TARGETS,
        "figures": figures,
        "passed": {
            "teacher_micro_f1_min": teacher["micro_f1"] >= TARGETS["teacher_micro_f1_min"],
            "student_share_of_teacher_f1_min": share >= TARGETS["student_share_of_teacher_f1_min"],
            "speedup_min": speedup >= TARGETS["speedup_min"],
            "cascade_gap_pt_max": gap is not None and gap <= TARGETS["cascade_gap_pt_max"],
            "cascade_local_min": local is not None and local >= TARGETS["cascade_local_min"],
            "decoder_q4_gguf_reported": decoder is not None,
        },
    }
    save_and_report(record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
