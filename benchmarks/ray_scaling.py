"""Issue 18: rows per second at 1 and 2 Ray workers on this machine, for scoring (``predict``) and
for LLM labelling (against llama.cpp), and the figures the scaling model in docs/scaling.md
starts from.

1. Scoring: the chosen student of a finished demo run (ONNX int8) over Banking77's 3,080 test
   texts, 1 thread per worker: the local engine, then Ray with 1 and with 2 workers, alternated
   over rounds; each Ray pass after a warm-up pass on the same actors (model loading is not
   scoring). The driver's own ceiling (reading and writing rows, no model work) is measured with
   the linear student, the cheapest model there is.
2. Labelling: SmolLM2-135M on llama.cpp (2 threads) labels fresh Banking77 texts (never cached)
   with 1 and 2 Ray workers of 2 requests each, alternated; and the tokens a text takes.

    .venv/bin/python benchmarks/ray_scaling.py --run-dir runs/banking77

About 10 minutes on 2 cores. Writes ``benchmarks/results/ray_scaling.json``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _report import save_and_report

from smallfit.config import DEFAULT_INSTRUCTION
from smallfit.data import read_split
from smallfit.engine.config import EngineConfig
from smallfit.evaluate import environment
from smallfit.llm.client import Endpoint
from smallfit.llm.labeller import Labeller, Prices
from smallfit.llm.prompt import Prompt
from smallfit.llm.ray_askers import ray_asking
from smallfit.llm.store import Store
from smallfit.predict import Answerer, load_answerer, predict_file
from smallfit.predict.file import BatchEngine
from smallfit.predict.ray_engine import ray_engine
from smallfit.testing.llama_server import llama_server

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
BATCH = 64
LABEL_TEXTS = 24  # per pass
PRICES = Prices(0.15, 0.60)


def score_pass(
    answerer: Answerer, source: Path, out: Path, engine: BatchEngine | None = None
) -> float:
    out.unlink(missing_ok=True)
    summary = predict_file(
        answerer, source, out, batch_size=BATCH, progress=False, engine=engine, overwrite=True
    )
    return summary.written / summary.seconds


def scoring(run_dir: Path, rounds: int) -> dict:
    import ray

    model = run_dir / "models" / "minilm-l6-int8"
    source = DATA / "banking77" / "test.jsonl"
    tmp = Path(tempfile.mkdtemp())
    answerer = load_answerer(model)
    answerer.model.set_num_threads(1)
    rates: dict[str, list[float]] = {"local": [], "ray_1": [], "ray_2": []}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        for _ in range(rounds):
            rates["local"].append(score_pass(answerer, source, tmp / "local.jsonl"))
            for workers in (1, 2):
                with ray_engine(model, workers=workers) as spread:
                    score_pass(answerer, source, tmp / "warm.jsonl", spread)  # loads the models
                    rates[f"ray_{workers}"].append(
                        score_pass(answerer, source, tmp / f"ray{workers}.jsonl", spread)
                    )
        cheap = load_answerer(run_dir / "models" / "linear")
        driver = [score_pass(cheap, source, tmp / "linear.jsonl") for _ in range(rounds)]
    finally:
        ray.shutdown()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "rows": len(read_split(source).texts),
        "rows_per_s": rates,
        "median_rows_per_s": medians,
        "speedup_2_vs_1_workers": medians["ray_2"] / medians["ray_1"],
        "ray_1_vs_local": medians["ray_1"] / medians["local"],
        "driver_ceiling_rows_per_s": statistics.median(driver),
    }


def labelling(rounds: int) -> dict:
    import ray

    split = read_split(DATA / "banking77" / "train.jsonl")
    labels = sorted(set(split.labels))
    tmp = Path(tempfile.mkdtemp())
    os.environ.setdefault("OPENAI_API_KEY", "sk-local")
    rates: dict[str, list[float]] = {"ray_1": [], "ray_2": []}
    tokens: list[float] = []
    offset = 0
    with llama_server(api_key=os.environ["OPENAI_API_KEY"], threads=2) as url:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            for _ in range(rounds):
                for workers in (1, 2):
                    texts = split.texts[offset : offset + LABEL_TEXTS]  # never asked before
                    offset += LABEL_TEXTS
                    labeller = Labeller(
                        Endpoint(url, "smollm2", timeout_s=300),
                        Prompt(template=DEFAULT_INSTRUCTION, labels=labels),
                        Store(tmp / "answers.sqlite"),
                        prices=PRICES,
                        concurrency=2,
                    )
                    labeller.check()
                    with ray_asking(labeller, EngineConfig(kind="ray", workers=workers)):
                        started = time.monotonic()
                        _, report = labeller.label(texts, progress=False)
                        seconds = time.monotonic() - started
                    rates[f"ray_{workers}"].append(report.answered / seconds)
                    tokens.append(report.run_spent["tokens"] / max(report.answered, 1))
                    labeller.close()
        finally:
            ray.shutdown()
    medians = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "texts_per_pass": LABEL_TEXTS,
        "labels": len(labels),
        "rows_per_s": rates,
        "median_rows_per_s": medians,
        "speedup_2_vs_1_workers": medians["ray_2"] / medians["ray_1"],
        "tokens_per_text": statistics.median(tokens),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.monotonic()
    score = scoring(args.run_dir, args.rounds)
    label = labelling(args.rounds)
    figures = {
        "scoring_rows_per_s_1_worker": score["median_rows_per_s"]["ray_1"],
        "scoring_rows_per_s_2_workers": score["median_rows_per_s"]["ray_2"],
        "scoring_speedup_2_vs_1": score["speedup_2_vs_1_workers"],
        "scoring_driver_ceiling_rows_per_s": score["driver_ceiling_rows_per_s"],
        "labelling_rows_per_s_1_worker": label["median_rows_per_s"]["ray_1"],
        "labelling_rows_per_s_2_workers": label["median_rows_per_s"]["ray_2"],
        "labelling_speedup_2_vs_1": label["speedup_2_vs_1_workers"],
        "labelling_tokens_per_text": label["tokens_per_text"],
    }
    save_and_report(
        {
            "benchmark": "ray_scaling",
            "environment": environment(),
            "scoring": score,
            "labelling": label,
            "figures": figures,
            # the scaling model's prediction for 2 workers on 2 cores, checked: scoring scales
            # with cores until the driver's ceiling; labelling is the server's rate, whatever
            # the workers
            "passed": {
                "scoring_2_workers_at_least_1.5x": score["speedup_2_vs_1_workers"] >= 1.5,
                "labelling_bound_by_the_server_within_20pct": abs(
                    label["speedup_2_vs_1_workers"] - 1.0
                )
                <= 0.2,
            },
            "seconds": round(time.monotonic() - started, 1),
        }
    )


if __name__ == "__main__":
    main()
