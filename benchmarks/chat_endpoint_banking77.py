"""Issue 15 (first part): the drop-in endpoint as an application sees it. The official ``openai``
client sends Banking77 test texts one at a time to ``smallfit serve``'s
``/v1/chat/completions``; the same texts, measured side by side, go to ``/v1/classify`` (a
plain HTTP client).

    .venv/bin/python benchmarks/chat_endpoint_banking77.py --run-dir runs/banking77

It needs a finished Banking77 run (the demo), and serves the run's cascade: the chosen student,
then the fine-tuned mpnet teacher for the queries the student is unsure of. The teacher here is
a local stand-in for the team's LLM (no capable LLM runs offline here), so "upstream" below
means that teacher tier, not an API. The server is the real CLI (a subprocess on 127.0.0.1).

Measured, interleaved request by request (chat through the openai client, the same chat
request through httpx, classify through httpx, ...):
- application-side latency p50, p95 and p99 of each (the client's wall time), so the cost of the
  OpenAI shape on the server and of the openai client itself show apart;
- whether chat answers the same label as classify, from the same tier;
- accuracy against gold;
- the share answered before the last tier.

Writes ``benchmarks/results/chat_endpoint_banking77.json``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
from _report import save_and_report
from _servers import wait_ok

from smallfit.data import read_split
from smallfit.evaluate import environment
from smallfit.stats import latency_percentiles
from smallfit.testing.llama_server import free_port

TARGETS = {"chat_p50_ms_max": 5.0, "same_label_as_classify_min": 1.0}
SYSTEM = "Classify the customer's banking query into one of the intents. Answer the intent only."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--data", type=Path, default=Path("../shared/data/banking77/test.jsonl"))
    parser.add_argument("--texts", type=int, default=600, help="test texts sent through each")
    parser.add_argument("--warmup", type=int, default=30)
    args = parser.parse_args()

    split = read_split(args.data)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(split.texts))[: args.texts + args.warmup]
    texts = [split.texts[i] for i in order]
    gold = [split.labels[i] for i in order]

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    smallfit = Path(sys.executable).with_name("smallfit")
    server = subprocess.Popen(
        [str(smallfit), "serve", str(args.run_dir), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ},
    )
    chat_ms, raw_chat_ms, classify_ms, same, local, correct = [], [], [], [], [], []
    try:
        wait_ok(f"{url}/readyz")
        with (
            openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0) as client,
            httpx.Client(base_url=url, timeout=60) as http,
        ):
            tiers = http.get("/readyz").json()["tiers"]
            for i, (text, label) in enumerate(zip(texts, gold, strict=True)):
                started = time.perf_counter()
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o-mini",
                    messages=[
                        {"role": "system", "content": SYSTEM},
                        {"role": "user", "content": text},
                    ],
                )
                answer = raw.parse().choices[0].message.content
                chat_elapsed = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                body = {"model": "m", "messages": [{"role": "user", "content": text}]}
                http.post("/v1/chat/completions", json=body).json()
                raw_chat_elapsed = (time.perf_counter() - started) * 1000
                started = time.perf_counter()
                plain = http.post("/v1/classify", json={"texts": [text]}).json()["results"][0]
                classify_elapsed = (time.perf_counter() - started) * 1000
                if i < args.warmup:
                    continue
                chat_ms.append(chat_elapsed)
                raw_chat_ms.append(raw_chat_elapsed)
                classify_ms.append(classify_elapsed)
                tier = raw.headers["x-smallfit-tier"]
                same.append(answer == plain["label"] and tier == plain["tier"])
                local.append(tier != tiers[-1])
                correct.append(answer == label)
    finally:
        server.terminate()
        server.wait(timeout=30)

    chat, plain_route = latency_percentiles(chat_ms), latency_percentiles(classify_ms)
    raw_chat = latency_percentiles(raw_chat_ms)
    figures = {
        "texts": len(chat_ms),
        "tiers": tiers,
        "chat_latency_ms": chat,
        "chat_via_httpx_latency_ms": raw_chat,
        "classify_latency_ms": plain_route,
        "chat_minus_classify_p50_ms": chat["p50_ms"] - plain_route["p50_ms"],
        "same_label_as_classify": float(np.mean(same)),
        "accuracy_vs_gold": float(np.mean(correct)),
        "answered_before_last_tier": float(np.mean(local)),
        "note": "the last tier is the fine-tuned mpnet teacher, a local stand-in for the LLM",
    }
    record = {
        "benchmark": "chat_endpoint_banking77",
        "command": " ".join(sys.argv),
        "environment": environment(),
        "targets": TARGETS,
        "figures": figures,
        "passed": {
            "chat_p50_ms_max": chat["p50_ms"] <= TARGETS["chat_p50_ms_max"],
            "same_label_as_classify_min": figures["same_label_as_classify"]
            >= TARGETS["same_label_as_classify_min"],
        },
    }
    save_and_report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
