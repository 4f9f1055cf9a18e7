"""The demo's defaults beyond Banking77 (issue 13, item 5): on several shared datasets, what
share of the teacher's accuracy the distilled student keeps, what was chosen and recommended,
and what share of test queries the cascade answers before the teacher.

    .venv/bin/python benchmarks/defaults_datasets.py [--runs runs] [--data ../shared/data]
        [--datasets sms_spam bitext_customer_support banking77] [--fit]

Reads each dataset's demo run (``RUNS/<dataset>``, as ``smallfit demo --data DATA/<dataset>``
writes it); with ``--fit`` runs the missing ones first (the demo's exact config, one at a time).
Writes ``benchmarks/results/defaults_datasets.json`` (figures per dataset, environment), prints
a Markdown table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from _report import save_and_report

HERE = Path(__file__).resolve().parent
DATASETS = ["sms_spam", "bitext_customer_support", "banking77"]
SHARE_OF_TEACHER = 0.98  # the demo's floor: "0.98 * teacher"


def _row(name: str, run: Path) -> dict[str, Any]:
    results = json.loads((run / "results.json").read_text("utf-8"))
    by_name = {c["name"]: c for c in results["candidates"]}
    teacher = by_name["teacher"]["quality"]
    selection = results.get("selection") or {}
    cascade = results.get("cascade") or {}
    data = json.loads((run / "data.json").read_text("utf-8"))
    student = by_name.get("minilm-l6", {}).get("quality", {})
    chosen = selection.get("chosen")
    test = cascade.get("test") or {}
    return {
        "dataset": name,
        "train": data["train"],
        "labels": len(data["labels"]),
        "test": data["test"],
        "teacher_accuracy": teacher["accuracy"],
        "student_accuracy": student.get("accuracy"),
        "student_share_of_teacher": (student.get("accuracy") or 0) / teacher["accuracy"],
        "student_vs_teacher_ci95": (student.get("vs_teacher") or {}).get("accuracy"),
        "chosen": chosen,
        "chosen_share_of_teacher": by_name[chosen]["quality"]["accuracy"] / teacher["accuracy"]
        if chosen in by_name
        else None,
        "recommended": (selection.get("recommended") or {}).get("name"),
        "cascade_tiers": cascade.get("tiers"),
        "cascade_accuracy": test.get("accuracy"),
        "cascade_local_share": None if not test else 1 - test["escalation"],
        "cascade_met_on_test": cascade.get("met_on_test"),
        "seconds": results.get("seconds"),
    }


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{x * 100:.{digits}f}%"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared" / "data")
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--fit", action="store_true", help="run the missing demos first")
    args = parser.parse_args()

    rows = []
    for name in args.datasets:
        run = args.runs / name
        if not (run / "results.json").is_file():
            if not args.fit:
                parser.error(f"{run}: no demo run (smallfit demo --data {args.data / name})")
            from smallfit.demo import demo_config
            from smallfit.pipeline import fit

            started = time.monotonic()
            fit(demo_config(args.data / name, run_dir=run), progress=False)
            print(f"{name}: demo in {time.monotonic() - started:.0f}s")
        rows.append(_row(name, run))

    print(
        "| dataset | train / labels | teacher acc. | student acc. (share of teacher) | chosen "
        "| recommended | cascade: answered before the teacher, accuracy |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['dataset']} | {r['train']:,} / {r['labels']} | {_pct(r['teacher_accuracy'], 2)} "
            f"| {_pct(r['student_accuracy'], 2)} ({_pct(r['student_share_of_teacher'])}) "
            f"| {r['chosen']} | {r['recommended']} | {_pct(r['cascade_local_share'])}, "
            f"{_pct(r['cascade_accuracy'], 2)} |"
        )
    passed = {
        f"{r['dataset']}: student keeps >= 98% of the teacher's accuracy": r[
            "student_share_of_teacher"
        ]
        >= SHARE_OF_TEACHER
        for r in rows
    }
    from smallfit.evaluate import environment

    save_and_report(
        {
            "benchmark": "defaults_datasets",
            "figures": {r["dataset"]: r for r in rows},
            "passed": passed,
            "environment": environment(),
        }
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
