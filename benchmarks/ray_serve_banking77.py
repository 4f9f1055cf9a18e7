"""Issue 18: serving behind Ray Serve beside the single-process server, on this machine.

The 3-layer int8 student of a finished demo run, one Banking77 test text per request, ``wrk``
at 8 connections for 10 s, alternated over rounds:

- ``single``: ``smallfit serve MODEL --threads 2`` (uvicorn, one process);
- ``ray_1``: ``smallfit serve MODEL --engine ray --replicas 1 --threads 2``;
- ``ray_2``: ``smallfit serve MODEL --engine ray --replicas 2 --threads 1``.

On 2 cores the replicas, Ray Serve's proxy and wrk share the same CPUs, so this measures what
the proxy costs per request (the figure docs/scaling.md needs), not how replicas scale across
machines.

    .venv/bin/python benchmarks/ray_serve_banking77.py --run-dir runs/banking77

About 6 minutes on 2 cores (``apt-get install wrk``). Writes
``benchmarks/results/ray_serve_banking77.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import save_and_report
from _servers import WRK_SCRIPT, wait_ok, wrk

from smallfit.data import read_split
from smallfit.evaluate import environment
from smallfit.testing.llama_server import free_port

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
SETUPS = {
    "single": ["--threads", "2"],
    "ray_1": ["--engine", "ray", "--replicas", "1", "--threads", "2"],
    "ray_2": ["--engine", "ray", "--replicas", "2", "--threads", "1"],
}


def measure(model: Path, options: list[str], work: Path, seconds: int) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = (work / f"serve-{port}.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smallfit.cli", "serve", str(model), "--port", str(port), *options],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_ok(url + "/readyz", timeout_s=300)
        script, bodies = work / "wrk.lua", work / "bodies.jsonl"
        wrk(url, connections=4, seconds=3, script=script, bodies=bodies)  # warm up
        return wrk(url, connections=8, seconds=seconds, script=script, bodies=bodies)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        time.sleep(2)  # Ray's processes gone before the next setup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    model = args.run_dir / "models" / "minilm-l6-l3-int8"
    work = Path(tempfile.mkdtemp())
    texts = read_split(DATA / "banking77" / "test.jsonl").texts
    (work / "bodies.jsonl").write_text(
        "\n".join(json.dumps({"texts": [t]}) for t in texts) + "\n", "utf-8"
    )
    (work / "wrk.lua").write_text(WRK_SCRIPT, "utf-8")
    runs: dict[str, list[dict]] = {name: [] for name in SETUPS}
    for _ in range(args.rounds):
        for name, options in SETUPS.items():
            runs[name].append(measure(model, options, work, args.seconds))
    medians = {
        name: {
            key: statistics.median(r[key] for r in rows)
            for key in ("requests_per_s", "p50_ms", "p99_ms")
        }
        for name, rows in runs.items()
    }
    single = medians["single"]["requests_per_s"]
    figures = {
        **{f"{name}_requests_per_s": m["requests_per_s"] for name, m in medians.items()},
        **{f"{name}_p50_ms": m["p50_ms"] for name, m in medians.items()},
        "ray_1_vs_single": medians["ray_1"]["requests_per_s"] / single,
        "ray_2_vs_single": medians["ray_2"]["requests_per_s"] / single,
        "failed": sum(r["failed"] for rows in runs.values() for r in rows),
    }
    save_and_report(
        {
            "benchmark": "ray_serve_banking77",
            "environment": environment(),
            "model": str(model),
            "runs": runs,
            "medians": medians,
            "figures": figures,
            "passed": {"no_failed_request": figures["failed"] == 0},
        }
    )


if __name__ == "__main__":
    main()
