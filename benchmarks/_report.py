"""What every benchmark does last: save its JSON record, print the verdicts and one JSON line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def save_and_report(record: dict[str, Any]) -> Path:
    """Write ``results/<benchmark>.json``; print PASS/MISS per check, then one JSON line.

    ``record`` holds at least ``benchmark``, ``figures`` and ``passed`` (check -> bool)."""
    record = {**record, "all_passed": all(record["passed"].values())}
    dest = RESULTS / f"{record['benchmark']}.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    for name, ok in record["passed"].items():
        print(f"{'PASS' if ok else 'MISS'}  {name}")
    print(f"saved {dest}")
    summary = {k: record[k] for k in ("benchmark", "figures", "passed")}
    print(json.dumps(summary))
    return dest


def p50_ratio_interval(a: np.ndarray, b: np.ndarray, seed: int = 0) -> list[float]:
    """Paired bootstrap 95% interval of p50(a) / p50(b) over timings taken side by side."""
    rng = np.random.default_rng(seed)
    ratios = []
    for _ in range(2000):
        rows = rng.integers(0, len(a), len(a))
        ratios.append(np.median(a[rows]) / np.median(b[rows]))
    return [float(np.percentile(ratios, 2.5)), float(np.percentile(ratios, 97.5))]


def smallest_over(by_name: dict[str, dict], share: float) -> str:
    """What selection picks at ``quality_floor: <share> * teacher`` with no latency ceiling: the
    smallest student on disk (ties: the lower p50) whose test accuracy reaches the floor; the
    teacher when none does."""
    floor = share * by_name["teacher"]["quality"]["accuracy"]
    over = [
        c
        for name, c in by_name.items()
        if name != "teacher" and c.get("cascade") is None
        if c["quality"]["accuracy"] >= floor - 1e-12
    ]
    if not over:
        return "teacher"
    best = min(over, key=lambda c: (c["bytes_on_disk"], c["speed"]["threads"]["1"]["p50_ms"]))
    return str(best["name"])
