"""Issue 15 item 1: the latency ``smallfit capture`` adds. The official ``openai`` client sends
Banking77 test texts one at a time to an upstream, straight and through the capture proxy,
interleaved text by text; the difference is what recording costs the application.

    .venv/bin/python benchmarks/capture_overhead_banking77.py --model runs/banking77/models/linear

The upstream is ``smallfit serve`` on a fast local model (its drop-in chat route), so that the
proxy's own cost is not lost in an LLM's seconds: no capable LLM runs offline here. Both servers
are the real CLI, subprocesses on 127.0.0.1, with the load generator on the same 2 cores.

Measured: p50/p95/p99 of each path, the median of the per-text differences (through minus
straight, the same text sent both ways back to back) with a bootstrap 95% interval, and whether
every answer through the proxy equals the straight one and was recorded.

Writes ``benchmarks/results/capture_overhead_banking77.json``.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import openai
from _report import save_and_report
from _servers import wait_ok

from smallfit.data import read_split
from smallfit.evaluate import environment
from smallfit.stats import latency_percentiles
from smallfit.testing.llama_server import free_port

TARGETS = {"added_p50_ms_max": 1.0}
SYSTEM = "Classify the customer's banking query into one of the intents. Answer the intent only."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/banking77/models/linear"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/banking77/test.jsonl"))
    parser.add_argument("--texts", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=50)
    args = parser.parse_args()

    split = read_split(args.data)
    order = np.random.default_rng(0).permutation(len(split.texts))[: args.texts + args.warmup]
    texts = [split.texts[i] for i in order]
    smallfit = str(Path(sys.executable).with_name("smallfit"))
    upstream_port, capture_port = free_port(), free_port()
    upstream = f"http://127.0.0.1:{upstream_port}"
    proxy = f"http://127.0.0.1:{capture_port}"
    db = Path(tempfile.mkdtemp()) / "capture.sqlite"
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": {**os.environ}}
    servers = [
        subprocess.Popen(
            [smallfit, "serve", str(args.model), "--port", str(upstream_port)], **quiet
        ),
        subprocess.Popen(
            [
                smallfit,
                "capture",
                "--upstream",
                f"{upstream}/v1",
                "--port",
                str(capture_port),
                "--db",
                str(db),
            ],
            **quiet,
        ),
    ]
    straight_ms, through_ms, same = [], [], []
    try:
        wait_ok(f"{upstream}/readyz")
        wait_ok(f"{proxy}/healthz")
        with (
            openai.OpenAI(base_url=f"{upstream}/v1", api_key="k", max_retries=0) as direct,
            openai.OpenAI(base_url=f"{proxy}/v1", api_key="k", max_retries=0) as captured,
        ):
            for i, text in enumerate(texts):
                messages = [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": text},
                ]
                answers, times = [], []
                # alternate which path goes first, so neither always meets a warmer server
                pair = (direct, captured) if i % 2 == 0 else (captured, direct)
                for client in pair:
                    started = time.perf_counter()
                    reply = client.chat.completions.create(model="m", messages=messages)
                    times.append((time.perf_counter() - started) * 1000)
                    answers.append(reply.choices[0].message.content)
                if i % 2:
                    times.reverse()
                if i < args.warmup:
                    continue
                straight_ms.append(times[0])
                through_ms.append(times[1])
                same.append(answers[0] == answers[1])
    finally:
        for server in reversed(servers):
            server.terminate()
            server.wait(timeout=30)
    with sqlite3.connect(db) as conn:
        recorded = conn.execute("SELECT COUNT(*) FROM exchanges WHERE complete = 1").fetchone()[0]
    diff = np.asarray(through_ms) - np.asarray(straight_ms)
    rng = np.random.default_rng(0)
    medians = [float(np.median(rng.choice(diff, size=len(diff)))) for _ in range(2000)]
    added = float(np.median(diff))
    figures = {
        "texts": len(diff),
        "straight_latency_ms": latency_percentiles(np.asarray(straight_ms)),
        "through_capture_latency_ms": latency_percentiles(np.asarray(through_ms)),
        "added_p50_ms": added,
        "added_p50_ci95_ms": [
            float(np.percentile(medians, 2.5)),
            float(np.percentile(medians, 97.5)),
        ],
        "same_answers": float(np.mean(same)),
        "recorded_complete": int(recorded),
        "sent_through_capture": len(texts),
        "note": "upstream: smallfit serve on a local model (a fast stand-in for the LLM)",
    }
    record = {
        "benchmark": "capture_overhead_banking77",
        "command": " ".join(sys.argv),
        "environment": environment(),
        "targets": TARGETS,
        "figures": figures,
        "passed": {
            "added_p50_ms_max": added <= TARGETS["added_p50_ms_max"],
            "same_answers": figures["same_answers"] == 1.0,
            "every_exchange_recorded": recorded == len(texts),
        },
    }
    save_and_report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
