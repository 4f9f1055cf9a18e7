"""Issue 4: an LLM teacher behind an OpenAI-compatible API, against a real local server
(llama.cpp serving SmolLM2-135M-Instruct on 127.0.0.1, 2 threads).

1. Throughput: the same requests sent by a bare client (urllib, same concurrency, no parsing,
   no ledger) and by smallfit's labeller, alternated on fresh texts: if the two rates match, the
   server is the limit, not the client. Also the client's own CPU time per text.
2. The ledger against the server's reported usage (counted by a proxy in between).
3. 30% injected faults (429, 500, stalls past the timeout, truncated JSON) plus a kill -9
   midway: rows lost, rows duplicated, cached rows asked again, ledger vs server usage.
4. The LLM teacher's accuracy and cost per 1M queries on a Banking77 slice, beside the local
   candidates of a finished demo run measured on the same texts.

    .venv/bin/python benchmarks/llm_teacher.py --run-dir runs/banking77

About 12 minutes on 2 cores. Writes ``benchmarks/results/llm_teacher.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _report import save_and_report

from smallfit.config import DEFAULT_INSTRUCTION
from smallfit.data import read_split
from smallfit.evaluate import environment
from smallfit.llm.client import Endpoint
from smallfit.llm.labeller import Labeller, Prices
from smallfit.llm.prompt import Prompt
from smallfit.llm.store import Store
from smallfit.testing.fault_proxy import FaultProxy
from smallfit.testing.llama_server import llama_server

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
PRICES = Prices(0.15, 0.60)  # a small hosted model's list price per 1M tokens, for illustration
CONCURRENCY = 2
TARGETS = {
    "client_rate_vs_bare_min": 0.9,  # smallfit's rate at least 90% of a bare client's
    "ledger_vs_server_max_error": 0.01,
}


def per_label(path: Path, k: int, *, skip: int = 0) -> tuple[list[str], list[str]]:
    split = read_split(path)
    seen: dict[str, int] = {}
    texts, labels = [], []
    for text, label in zip(split.texts, split.labels, strict=True):
        seen[label] = seen.get(label, 0) + 1
        if skip < seen[label] <= skip + k:
            texts.append(text)
            labels.append(label)
    return texts, labels


def bare_rate(url: str, prompt: Prompt, texts: list[str]) -> float:
    """Texts per second of a minimal client: same bodies, same concurrency, nothing else."""

    def one(text: str) -> None:
        body = {
            "model": "smollm2",
            "messages": prompt.messages(text),
            "max_tokens": prompt.max_tokens,
            "temperature": 0.0,
            "seed": 0,
            "logprobs": True,
            "top_logprobs": prompt.top_logprobs,
            "response_format": prompt.response_format("json_object"),
        }
        request = urllib.request.Request(
            url + "/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:
            json.loads(response.read())

    started = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, texts))
    return len(texts) / (time.perf_counter() - started)


def smallfit_rate(labeller: Labeller, texts: list[str]) -> tuple[float, float]:
    """Texts per second through the labeller, and its CPU seconds per text."""
    cpu, started = time.process_time(), time.perf_counter()
    _, report = labeller.label(texts, progress=False)
    assert report.answered == len(texts), report.summary()
    return len(texts) / (time.perf_counter() - started), (time.process_time() - cpu) / len(texts)


def throughput_and_ledger(url: str, tmp: Path) -> dict:
    texts, _ = per_label(DATA / "snips" / "test.jsonl", 12)
    labels = sorted(set(read_split(DATA / "snips" / "test.jsonl").labels))
    prompt = Prompt(template=DEFAULT_INSTRUCTION, labels=labels)
    with FaultProxy(url, rate=0.0) as proxy:
        labeller = Labeller(
            Endpoint(proxy.url, "smollm2", timeout_s=120),
            prompt,
            Store(tmp / "throughput.sqlite"),
            prices=PRICES,
            concurrency=CONCURRENCY,
        )
        labeller.label(texts[:2], progress=False)  # warm-up (and the response-format probe)
        chunks = [texts[2 + i * 20 : 2 + (i + 1) * 20] for i in range(4)]
        bare, ours, cpu = [], [], []
        for i, chunk in enumerate(chunks):
            if i % 2 == 0:
                bare.append(bare_rate(url, prompt, chunk))
            else:
                rate, seconds = smallfit_rate(labeller, chunk)
                ours.append(rate)
                cpu.append(seconds)
        with sqlite3.connect(tmp / "throughput.sqlite") as db:
            ledger = db.execute(
                "SELECT SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) FROM requests"
            ).fetchone()
        server = proxy.upstream_usage()
    ledger_tokens = ledger[0] + ledger[1]
    server_tokens = server["prompt_tokens"] + server["completion_tokens"]
    return {
        "texts_per_s_bare_client": [round(r, 3) for r in bare],
        "texts_per_s_smallfit": [round(r, 3) for r in ours],
        "smallfit_vs_bare": round(statistics.median(ours) / statistics.median(bare), 3),
        "smallfit_client_cpu_ms_per_text": round(1000 * statistics.median(cpu), 2),
        "concurrency": CONCURRENCY,
        "ledger_tokens": ledger_tokens,
        "server_tokens": server_tokens,
        "ledger_cost_usd": ledger[2],
        "ledger_vs_server_error": abs(ledger_tokens - server_tokens) / server_tokens,
    }


def faults_and_kill(url: str, tmp: Path) -> dict:
    data = tmp / "faults.jsonl"
    texts, labels = per_label(DATA / "snips" / "train.jsonl", 8)
    data.write_text(
        "".join(
            json.dumps({"text": t, "label": g}) + "\n" for t, g in zip(texts, labels, strict=True)
        ),
        "utf-8",
    )
    out, cache = tmp / "faults-out.jsonl", tmp / "faults-out.sqlite"
    with FaultProxy(url, rate=0.3, seed=11, stall_s=8.0) as proxy:
        command = [
            sys.executable, "-m", "smallfit.cli", "label", "--data", str(data), "-o", str(out),
            "--base-url", proxy.url, "--model", "smollm2", "--concurrency", str(CONCURRENCY),
            "--timeout", "6", "--price-input", "0.15", "--price-output", "0.6", "-q",
        ]  # fmt: skip
        env = {**os.environ, "OPENAI_API_KEY": "sk-bench"}
        victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)  # fmt: skip
        while _count(cache) < len(texts) // 2:
            time.sleep(0.2)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.time()
        with sqlite3.connect(cache) as db:
            before = {t for (t,) in db.execute("SELECT text FROM answers")}
        rerun = subprocess.run(command, env=env, capture_output=True, text=True)
        assert rerun.returncode == 0, rerun.stderr
        server = proxy.upstream_usage()
        faults: dict[str, int] = {}
        for record in proxy.log:
            if record.fault:
                faults[record.fault] = faults.get(record.fault, 0) + 1
        resent = sum(
            1
            for r in proxy.log
            if r.time > killed_at and r.text and r.text.rsplit("Text: ", 1)[-1] in before
        )
        chat = sum(1 for r in proxy.log if r.path.endswith("/chat/completions"))
    rows = [json.loads(line) for line in out.read_text("utf-8").splitlines()]
    with sqlite3.connect(cache) as db:
        answers = db.execute("SELECT COUNT(*), COUNT(DISTINCT text) FROM answers").fetchone()
        measured = db.execute(
            "SELECT SUM(prompt_tokens + completion_tokens) FROM requests WHERE estimated=0"
        ).fetchone()[0]
        estimated = db.execute(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) FROM requests "
            "WHERE estimated=1"
        ).fetchone()[0]
        statuses = dict(db.execute("SELECT status, COUNT(*) FROM requests GROUP BY status"))
    server_tokens = server["prompt_tokens"] + server["completion_tokens"]
    labelled = [r["text"] for r in rows if r["status"] in ("ok", "unparseable")]
    return {
        "rows": len(texts),
        "killed_after_answers": len(before),
        "chat_requests": chat,
        "faults_injected": faults,
        "fault_rate": round(sum(faults.values()) / chat, 3),
        "ledger_statuses": statuses,
        "rows_lost": len(texts) - len(set(labelled)),
        "rows_duplicated": len(labelled) - len(set(labelled)) + (answers[0] - answers[1]),
        "cached_rows_asked_again": resent,
        "ledger_tokens_measured": measured,
        "ledger_tokens_estimated": estimated,
        "server_tokens": server_tokens,
        "ledger_vs_server_error": abs(measured + estimated - server_tokens) / server_tokens,
    }


def _count(cache: Path) -> int:
    try:
        with sqlite3.connect(cache, timeout=30) as db:
            return int(db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


def banking77(url: str, tmp: Path, run_dir: Path | None, per: int) -> dict:
    texts, gold = per_label(DATA / "banking77" / "test.jsonl", per)
    labels = sorted(set(read_split(DATA / "banking77" / "train.jsonl").labels))
    prompt = Prompt(template=DEFAULT_INSTRUCTION, labels=labels)
    labeller = Labeller(
        Endpoint(url, "smollm2", timeout_s=300),
        prompt,
        Store(tmp / "banking77.sqlite"),
        prices=PRICES,
        concurrency=CONCURRENCY,
    )
    started = time.perf_counter()
    answers, report = labeller.label(texts, progress=True)
    seconds = time.perf_counter() - started
    correct = sum(a is not None and a.label == g for a, g in zip(answers, gold, strict=True))
    pt, ct = labeller.store.answer_tokens("smollm2", prompt.fingerprint)
    latencies = sorted(labeller.store.latencies_ms("smollm2"))
    out = {
        "texts": len(texts),
        "llm": {
            "model": "SmolLM2-135M-Instruct Q4_1 via llama.cpp server (2 threads)",
            "accuracy": correct / len(texts),
            "unparseable": report.unparseable,
            "p50_ms": statistics.median(latencies),
            "texts_per_s": len(texts) / seconds,
            "prompt_tokens_per_query": pt,
            "completion_tokens_per_query": ct,
            "per_1m_usd_at_api_prices": (pt * PRICES.input_per_1m + ct * PRICES.output_per_1m),
            "per_1m_usd_self_hosted_here": 0.10 / 3600 / (len(texts) / seconds) * 1e6,
        },
        "local": {},
    }
    results = run_dir / "results.json" if run_dir else None
    if results and results.is_file():
        from smallfit.evaluate.candidate import predict_in_batches
        from smallfit.models import load

        for candidate in json.loads(results.read_text("utf-8"))["candidates"]:
            model = load(run_dir / "models" / candidate["name"])
            probs = predict_in_batches(model, texts)
            predicted = [model.labels[i] for i in probs.argmax(1)]
            out["local"][candidate["name"]] = {
                "accuracy": sum(p == g for p, g in zip(predicted, gold, strict=True)) / len(gold),
                "p50_ms": candidate["speed"]["threads"]["1"]["p50_ms"],
                "per_1m_usd_here": (candidate.get("cost") or {}).get("per_1m_queries_usd")
                or 0.10 / 3600 / candidate["speed"]["throughput_b32_per_s"] * 1e6,
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=None, help="a finished demo run")
    parser.add_argument("--banking77-per-label", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="smallfit-llm-") as name, llama_server(
        threads=2, log_file=Path(name) / "server.log"
    ) as url:  # fmt: skip
        tmp = Path(name)
        figures = {
            "throughput": throughput_and_ledger(url, tmp),
            "faults_and_kill": faults_and_kill(url, tmp),
            "banking77": banking77(url, tmp, args.run_dir, args.banking77_per_label),
        }
    t, f = figures["throughput"], figures["faults_and_kill"]
    passed = {
        "client is not the limit (smallfit rate >= 90% of a bare client's)": t["smallfit_vs_bare"]
        >= TARGETS["client_rate_vs_bare_min"],
        "ledger within 1% of server usage (clean)": t["ledger_vs_server_error"]
        <= TARGETS["ledger_vs_server_max_error"],
        "ledger within 1% of server usage (30% faults + kill)": f["ledger_vs_server_error"]
        <= TARGETS["ledger_vs_server_max_error"],
        "zero rows lost": f["rows_lost"] == 0,
        "zero rows duplicated": f["rows_duplicated"] == 0,
        "no cached row asked again": f["cached_rows_asked_again"] == 0,
    }
    save_and_report(
        {
            "benchmark": "llm_teacher",
            "command": "benchmarks/llm_teacher.py " + " ".join(sys.argv[1:]),
            "environment": environment(),
            "targets": TARGETS,
            "figures": figures,
            "passed": passed,
        }
    )
    return 0 if all(passed.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
