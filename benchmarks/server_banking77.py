"""Issue 17's server target on Banking77: single-text requests per second at p99 <= 20 ms from
``smallfit serve`` with the 3-layer int8 student, the load generator (wrk) on the same 2 cores,
rotating through all 3,080 test texts; then a run under load with hot swaps.

    .venv/bin/python benchmarks/server_banking77.py [--run-dir runs/banking77]
        [--student minilm-l6-l3-int8] [--connections 1,2,4,8,16] [--seconds 10] [--threads 1]

Needs the demo's Banking77 run (with its compressed candidates) and ``wrk``. Steps: the server
(the real CLI, a subprocess) under wrk at each connection count; at the best count, a run with
two hot swaps (the student reloaded from disk) mid-run, counting failed requests; then 300 test
texts asked one by one, whose labels must equal the model's own offline. Writes
``benchmarks/results/server_banking77.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from _report import save_and_report
from _servers import WRK_SCRIPT, Server, metric_value, wrk

from smallfit.config import load_fit_config
from smallfit.data import load_dataset
from smallfit.evaluate import environment
from smallfit.models import load
from smallfit.models.base import MANIFEST

TARGET_RPS, TARGET_P99_MS = 1000.0, 20.0


def _classify(url: str, text: str) -> str:
    request = urllib.request.Request(
        url + "/v1/classify",
        data=json.dumps({"texts": [text]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return str(json.loads(r.read())["results"][0]["label"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--student", default="minilm-l6-l3-int8")
    parser.add_argument("--connections", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="compute threads per worker")
    parser.add_argument("--workers", type=int, default=1, help="server processes")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=0,
        help="also run one single-process server with this many threads, measured at each "
        "connection count right before the server under test (0: none)",
    )
    parser.add_argument("--name", default="server_banking77", help="result file name")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    run, model = args.run_dir, args.run_dir / "models" / args.student
    work = run / "route"
    work.mkdir(exist_ok=True)
    texts = load_dataset(load_fit_config(run / "config.yaml").data).test.texts
    bodies, script = work / "server-bodies.jsonl", work / "server-wrk.lua"
    bodies.write_text("\n".join(json.dumps({"texts": [t]}) for t in texts) + "\n", "utf-8")
    script.write_text(WRK_SCRIPT, "utf-8")
    # one text at a time, as the check asks the server: a dynamically quantized model's answer
    # can move with the batch a text shares (its activation scale is the batch's)
    student = load(model)
    offline = [student.predict([t])[0] for t in texts[:300]]

    # the swaps alternate between a copy of the model (its manifest touched: another version,
    # so that every worker really swaps) and the model itself
    twin = work / f"{args.student}-swap-twin"
    shutil.rmtree(twin, ignore_errors=True)
    shutil.copytree(model, twin)
    (twin / MANIFEST).touch()
    server = Server(model, threads=args.threads, log=work / "serve-bench.log", workers=args.workers)
    url = server.url + "/v1/classify"
    load_rows: list[dict[str, Any]] = []
    baseline_rows: list[dict[str, Any]] = []
    baseline = None
    if args.baseline_threads:
        log = work / "serve-bench-baseline.log"
        baseline = Server(model, threads=args.baseline_threads, log=log)
    try:
        wrk(url, connections=4, seconds=3, script=script, bodies=bodies)  # warm up
        for c in [int(c) for c in args.connections.split(",")]:
            if baseline is not None:
                base_url = baseline.url + "/v1/classify"
                if not baseline_rows:
                    wrk(base_url, connections=4, seconds=3, script=script, bodies=bodies)
                row = wrk(
                    base_url, connections=c, seconds=args.seconds, script=script, bodies=bodies
                )
                print(
                    f"baseline c={c}: {row['requests_per_s']:.0f} req/s, p99 {row['p99_ms']:.2f} ms"
                )
                baseline_rows.append(row)
            row = wrk(url, connections=c, seconds=args.seconds, script=script, bodies=bodies)
            print(f"c={c}: {row['requests_per_s']:.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                  f"p99 {row['p99_ms']:.2f} ms, failed {row['failed']}")  # fmt: skip
            load_rows.append(row)
        ok = [r for r in load_rows if r["p99_ms"] <= TARGET_P99_MS and r["failed"] == 0]
        best = max(ok, key=lambda r: r["requests_per_s"]) if ok else None
        # the swaps under the target's load: the fewest connections that reached it
        enough = [r for r in ok if r["requests_per_s"] >= TARGET_RPS]
        swap_c = min(r["connections"] for r in enough) if enough else 8
        swaps: list[dict[str, Any]] = []

        def swapper() -> None:
            for target in (twin, model):
                time.sleep(args.seconds / 3)
                began = time.monotonic()
                reply = server.post("/admin/swap", {"path": str(target)})
                swaps.append({**reply, "seconds": round(time.monotonic() - began, 2)})

        time.sleep(1.0)  # every worker has written its counts
        before = metric_value(server.metrics(), 'smallfit_requests_total{status="200"}')
        swaps_before = metric_value(server.metrics(), "smallfit_model_swaps_total")
        thread = threading.Thread(target=swapper)
        thread.start()
        swap_run = wrk(url, connections=swap_c, seconds=args.seconds, script=script, bodies=bodies)
        thread.join()
        time.sleep(1.0)
        metrics = server.metrics()
        answered = metric_value(metrics, 'smallfit_requests_total{status="200"}') - before
        swapped = metric_value(metrics, "smallfit_model_swaps_total") - swaps_before
        served = [_classify(server.url, t) for t in texts[:300]]
    finally:
        server.stop()
        if baseline is not None:
            baseline.stop()
    swap_run |= {"swaps": swaps, "server_counted_200": answered, "worker_swaps": swapped}
    print(f"hot swaps at c={swap_c}: {swap_run['requests_per_s']:.0f} req/s, p99 "
          f"{swap_run['p99_ms']:.2f} ms, failed {swap_run['failed']}")  # fmt: skip
    same = sum(a == b for a, b in zip(served, offline, strict=True))
    figures = {
        "best_rps_at_p99_le_20ms": best and best["requests_per_s"],
        "best_connections": best and best["connections"],
        "max_rps": max(r["requests_per_s"] for r in load_rows),
        "swap_run_rps": swap_run["requests_per_s"],
        "swap_run_p99_ms": swap_run["p99_ms"],
        "swap_run_failed": swap_run["failed"],
        "answers_equal_offline": f"{same}/{len(served)}",
    }
    save_and_report(
        {
            "benchmark": args.name,
            "command": " ".join(["python", *sys.argv]),
            "targets": {"rps": TARGET_RPS, "p99_ms": TARGET_P99_MS, "failed_across_swaps": 0},
            "figures": figures,
            "passed": {
                f">= {TARGET_RPS:.0f} req/s at p99 <= {TARGET_P99_MS:.0f} ms": bool(
                    best and best["requests_per_s"] >= TARGET_RPS
                ),
                "0 failed requests across 2 hot swaps under load": swap_run["failed"] == 0
                and len(swaps) == 2,
                "every worker swapped twice": swapped == 2 * args.workers,
                # wrk stops with up to one request per connection unread, which the server counted
                "the server counted every request wrk completed": 0
                <= answered - swap_run["requests"]
                <= swap_c,
                "served answers equal the model's offline": same == len(served),
            },
            "load": load_rows,
            "baseline": baseline_rows
            and {
                "server": f"smallfit serve, 1 process x {args.baseline_threads} thread(s)",
                "load": baseline_rows,
                "best_rps_at_p99_le_20ms": max(
                    (r["requests_per_s"] for r in baseline_rows if r["p99_ms"] <= TARGET_P99_MS),
                    default=None,
                ),
            },
            "swap_run": swap_run,
            "model": str(model),
            "load_generator": "wrk 4.1 (1 thread, closed loop), single-text POST /v1/classify "
            f"rotating through the {len(texts)} Banking77 test texts, on the same machine",
            "server": f"smallfit serve, {args.workers} worker(s) x {args.threads} thread(s)",
            "environment": environment(),
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
