"""Issue 5: the calibrated cascade (compressed student -> mpnet-base teacher) on Banking77, and
the server under load from a real load generator (wrk) on 127.0.0.1, with hot swaps mid-run.

    .venv/bin/python benchmarks/cascade_serve_banking77.py --run-dir runs/banking77

Needs a finished Banking77 run with the mpnet-base teacher and a compressed student (the demo
on banking77 plus ``benchmarks/compress_banking77.py``), and ``wrk`` (``apt-get install wrk``).
Steps:

1. calibrate ``student -> teacher`` on dev for "accuracy >= teacher - 0.5pt", check on test;
2. out of scope: 500 SNIPS test texts (music, weather, restaurants...) sent to the banking
   cascade with abstention on the student's least sure 2% of in-scope dev queries;
3. ``smallfit serve`` (the real CLI, a subprocess) under ``wrk`` at several connection counts,
   single-text requests rotating through Banking77 test texts: the linear model (0.3 ms a text:
   the server's own ceiling), the student alone, then the cascade; one more cascade run with
   two hot swaps (to the student alone and back) mid-run.

Writes ``benchmarks/results/cascade_serve_banking77.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _report import save_and_report
from _servers import WRK_SCRIPT, Server, metric_value, wrk

from smallfit.config import AbstainConfig, RouteConfig, load_fit_config
from smallfit.data import load_dataset, read_split
from smallfit.evaluate import environment
from smallfit.route.stage import build_cascade, route_run
from smallfit.run.store import Run

HERE = Path(__file__).resolve().parent
TARGETS = {
    "cascade_accuracy_minus_teacher_min_pt": -0.5,
    "kept_off_teacher_min": 0.85,
    "student_first_tier_rps_min": 500,
    "p99_ms_max": 50,
    "failed_requests_across_swaps": 0,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    parser.add_argument("--student", default="minilm-l6-int8")
    parser.add_argument("--snips", type=Path, default=HERE.parents[1] / "shared/data/snips")
    parser.add_argument("--connections", default="1,4,8,16")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="server compute threads")
    parser.add_argument("--name", default="cascade_serve_banking77", help="result file name")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    run = args.run_dir
    tiers = [args.student, "teacher"]
    fit_config = load_fit_config(run / "config.yaml")
    results = Run(run).read_results().dump()
    candidates = [c for c in results["candidates"] if c.get("name") != "cascade"]

    # 2. out of scope first (it writes a cascade with abstention; step 1 writes the final one)
    with tempfile.TemporaryDirectory() as tmp:
        test = Path(tmp) / "test.jsonl"
        oos_texts = read_split(args.snips / "test.jsonl").texts[:500]
        lines = (fit_config.data.test or run / "missing").read_text("utf-8").rstrip("\n")
        extra = "\n".join(json.dumps({"text": t, "label": "oos"}) for t in oos_texts)
        test.write_text(lines + "\n" + extra + "\n", "utf-8")
        data = fit_config.data.model_copy(update={"test": test, "out_of_scope": "oos"})
        oos_route = RouteConfig(tiers=tiers, abstain=AbstainConfig(label="oos", in_scope_loss=0.02))
        build_cascade(
            run,
            oos_route,
            dataset=load_dataset(data),
            candidates=candidates,
            chosen=None,
            evaluate=fit_config.evaluate,
            log=print,
        )
        oos = Run(run).read_cascade().dump()  # type: ignore[union-attr]
    # 1. the calibrated cascade, checked on test
    route = route_run(
        run, RouteConfig(tiers=tiers, target="accuracy >= teacher - 0.5pt"), log=print
    ).dump()
    test_point, reference = route["test"], route["reference_accuracy"]["test"]

    # 3. load
    bodies = run / "route" / "wrk-bodies.jsonl"
    texts = load_dataset(fit_config.data).test.texts
    bodies.write_text("\n".join(json.dumps({"texts": [t]}) for t in texts) + "\n", "utf-8")
    script = run / "route" / "wrk.lua"
    script.write_text(WRK_SCRIPT, "utf-8")
    levels = [int(c) for c in args.connections.split(",")]
    load: dict[str, list[dict[str, Any]]] = {}
    swap_run: dict[str, Any] = {}
    served = [("student", run / "models" / args.student), ("cascade", run / "models" / "cascade")]
    if (run / "models" / "linear" / "smallfit.json").is_file():  # the HTTP layer's own ceiling
        served.insert(0, ("linear", run / "models" / "linear"))
    for name, model in served:
        server = Server(model, threads=args.threads, log=run / "route" / f"serve-{name}.log")
        try:
            wrk(server.url + "/v1/classify", connections=4, seconds=3, script=script, bodies=bodies)
            load[name] = []
            for c in levels:
                figures = wrk(server.url + "/v1/classify", connections=c, seconds=args.seconds,
                              script=script, bodies=bodies)  # fmt: skip
                print(f"{name} c={c}: {figures['requests_per_s']:.0f} req/s p50 "
                      f"{figures['p50_ms']:.1f} ms p99 {figures['p99_ms']:.1f} ms "
                      f"failed {figures['failed']}")  # fmt: skip
                load[name].append(figures)
            if name == "cascade":
                swaps: list[dict[str, Any]] = []

                def swapper(srv: Server = server, swaps: list[dict[str, Any]] = swaps) -> None:
                    for target in (run / "models" / args.student, run / "models" / "cascade"):
                        time.sleep(args.seconds / 3)
                        began = time.monotonic()
                        reply = srv.post("/admin/swap", {"path": str(target)})
                        swaps.append({**reply, "seconds": round(time.monotonic() - began, 2)})

                thread = threading.Thread(target=swapper)
                thread.start()
                figures = wrk(server.url + "/v1/classify", connections=8, seconds=args.seconds,
                              script=script, bodies=bodies)  # fmt: skip
                thread.join()
                metrics = server.metrics()
                swap_run = {
                    **figures,
                    "swaps": swaps,
                    "server_swaps_total": metric_value(metrics, "smallfit_model_swaps_total"),
                    "server_5xx": sum(
                        metric_value(metrics, f'smallfit_requests_total{{status="{s}"}}')
                        for s in ("500", "503")
                    ),
                    "escalation_rate": metric_value(metrics, "smallfit_escalation_rate"),
                }
                print(f"hot swap run: {figures['requests_per_s']:.0f} req/s, p99 "
                      f"{figures['p99_ms']:.1f} ms, failed {figures['failed']}")  # fmt: skip
        finally:
            server.stop()

    def best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
        ok = [r for r in rows if r["p99_ms"] <= TARGETS["p99_ms_max"] and r["failed"] == 0]
        return max(ok, key=lambda r: r["requests_per_s"]) if ok else None

    best_student, best_cascade = best(load["student"]), best(load["cascade"])
    figures = {
        "teacher_test_accuracy": reference,
        "cascade_test_accuracy": test_point["accuracy"],
        "cascade_minus_teacher_pt": 100 * (test_point["accuracy"] - reference),
        "kept_off_teacher_test": 1 - test_point["escalation"],
        "threshold": route["thresholds"][0],
        "cascade_cost_per_1m_usd": test_point["cost_per_1m_usd"],
        "oos_caught": (oos.get("out_of_scope") or {}).get("caught"),
        "oos_escalated": (oos.get("out_of_scope") or {}).get("escalated"),
        "in_scope_abstained_test": (oos.get("test") or {}).get("abstained"),
        "linear_best_rps_at_p99_le_50ms": (best(load["linear"]) or {}).get("requests_per_s")
        if "linear" in load
        else None,
        "student_best_rps_at_p99_le_50ms": best_student and best_student["requests_per_s"],
        "cascade_best_rps_at_p99_le_50ms": best_cascade and best_cascade["requests_per_s"],
        # the compute budget: what the cascade's teacher tier must do at 500 req/s, against
        # what the teacher can do on these cores (its batch-32 throughput, all threads)
        "escalated_texts_per_s_at_500rps": 500 * test_point["escalation"],
        "teacher_texts_per_s_b32": next(
            (c["speed"].get("throughput_b32_per_s") for c in candidates if c["name"] == "teacher"),
            None,
        ),
        "swap_run_failed": swap_run["failed"],
        "swap_run_rps": swap_run["requests_per_s"],
        "swap_run_p99_ms": swap_run["p99_ms"],
    }
    passed = {
        "cascade within 0.5 pt of the teacher on test": figures["cascade_minus_teacher_pt"] >= -0.5,
        ">= 85% of test queries never reach the teacher": figures["kept_off_teacher_test"] >= 0.85,
        ">= 500 req/s at p99 <= 50 ms, student alone": bool(
            best_student and best_student["requests_per_s"] >= 500
        ),
        ">= 500 req/s at p99 <= 50 ms, cascade (student first, teacher last)": bool(
            best_cascade and best_cascade["requests_per_s"] >= 500
        ),
        "zero failed requests across hot swaps under load": swap_run["failed"] == 0
        and swap_run["server_5xx"] == 0
        and len(swap_run["swaps"]) == 2,
    }
    record = {
        "benchmark": args.name,
        "command": " ".join(["python", *sys.argv]),
        "targets": TARGETS,
        "figures": figures,
        "passed": passed,
        "calibration": {
            k: route[k]
            for k in (
                "target",
                "tiers",
                "thresholds",
                "dev",
                "test",
                "reference_accuracy",
                "met_on_dev",
                "met_on_test",
            )
        },
        "curve": route["curve"],
        "out_of_scope": oos.get("out_of_scope"),
        "load": load,
        "swap_run": swap_run,
        "load_generator": "wrk 4.1 (1 thread, closed loop: each connection waits for its reply), "
        "single-text POST /v1/classify rotating through the Banking77 test texts",
        "server": f"smallfit serve, 1 uvicorn worker, {args.threads} compute thread(s)",
        "environment": environment(),
    }
    save_and_report(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
