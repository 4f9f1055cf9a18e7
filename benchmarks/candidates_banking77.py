"""Issue 17's accuracy/latency/size targets for every candidate of a fit run, from its own
measurements (each candidate timed isolated, 1 thread, batch 1), against the teacher.

    .venv/bin/python benchmarks/candidates_banking77.py --run-dir RUN [--name NAME]

Reads ``RUN/results.json`` (the run's ``fit`` has measured everything: no model is loaded) and
writes ``benchmarks/results/<NAME>.json`` (default ``candidates_banking77``): per candidate its
accuracy and share of the teacher's, p50 and the teacher's p50 over it, size ratio, roofline
share, and which of the targets it meets (>= 99% with >= 50x lower p50 and >= 50x smaller; a
3-layer one >= 97% and >= 100x), with the run's environment. The ratios come from separate
isolated measurements, so the machine's drift between them counts; the interleaved figures are
``tiers_banking77.py``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from _report import save_and_report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--name", default="candidates_banking77")
    args = parser.parse_args()
    results = json.loads((args.run_dir / "results.json").read_text("utf-8"))
    by_name = {c["name"]: c for c in results["candidates"]}
    teacher = by_name["teacher"]
    t_acc, t_size = teacher["quality"]["accuracy"], teacher["bytes_on_disk"]
    t_p50 = teacher["speed"]["threads"]["1"]["p50_ms"]
    rows, passed = {}, {}
    for name, c in by_name.items():
        speed = (c.get("speed") or {}).get("threads", {}).get("1")
        if name in ("teacher", "cascade") or not speed or not c.get("bytes_on_disk"):
            continue
        share = c["quality"]["accuracy"] / t_acc
        faster, smaller = t_p50 / speed["p50_ms"], t_size / c["bytes_on_disk"]
        rows[name] = {
            "accuracy": c["quality"]["accuracy"],
            "accuracy_vs_teacher": share,
            "p50_ms": speed["p50_ms"],
            "p50_speedup": faster,
            "size_mb": c["bytes_on_disk"] / 1e6,
            "size_ratio": smaller,
            "roofline_share": (c.get("roofline") or {}).get("share_of_peak"),
            "steps": [s.get("method") for s in c["lineage"].get("compression", [])],
        }
        passed[f"{name}: >=99%, >=50x faster, >=50x smaller"] = (
            share >= 0.99 and faster >= 50 and smaller >= 50
        )
        if "-l3" in name:
            passed[f"{name}: 3 layers, >=97%, >=100x faster"] = share >= 0.97 and faster >= 100
    save_and_report(
        {
            "benchmark": args.name,
            "command": " ".join(["python", "benchmarks/candidates_banking77.py", *sys.argv[1:]]),
            "run_dir": str(args.run_dir),
            "teacher": {"accuracy": t_acc, "p50_ms": t_p50, "size_mb": t_size / 1e6},
            "chosen": results["selection"].get("chosen"),
            "figures": rows,
            "passed": passed,
            "environment": results["environment"],
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
