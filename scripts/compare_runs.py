"""Compare two runs' test answers, candidate by candidate: the check that a change meant to
leave behaviour alone did (issue 14: the same quick demo before and after).

    .venv/bin/python scripts/compare_runs.py RUN_A RUN_B

For every candidate with saved test probabilities in either run: rows, whether the arrays are
identical, argmax agreement and the largest absolute difference; then the selection of each.
Prints a table and one JSON line; exits 1 when any candidate differs or is missing from one run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.run.layout import RunDir

SUFFIX = ".test_probs.npy"


def _probs(run: RunDir) -> dict[str, Path]:
    return {f.name[: -len(SUFFIX)]: f for f in sorted(run.results_dir.glob(f"*{SUFFIX}"))}


def _chosen(run: RunDir) -> str | None:
    if not run.results_file.is_file():
        return None
    return (json.loads(run.results_file.read_text("utf-8")).get("selection") or {}).get("chosen")


def compare(a: Path, b: Path) -> dict[str, Any]:
    """Per candidate: identical, argmax agreement, max |difference| (None when one run lacks
    it); and each run's chosen candidate."""
    run_a, run_b = RunDir(a), RunDir(b)
    probs_a, probs_b = _probs(run_a), _probs(run_b)
    rows: dict[str, Any] = {}
    for name in sorted(set(probs_a) | set(probs_b)):
        if name not in probs_a or name not in probs_b:
            rows[name] = {"missing_from": str(a if name not in probs_a else b)}
            continue
        x = np.load(probs_a[name], allow_pickle=False)
        y = np.load(probs_b[name], allow_pickle=False)
        if x.shape != y.shape:
            rows[name] = {"shapes": [list(x.shape), list(y.shape)], "identical": False}
            continue
        rows[name] = {
            "rows": int(x.shape[0]),
            "identical": bool(np.array_equal(x, y)),
            "argmax_agreement": float((x.argmax(1) == y.argmax(1)).mean()) if len(x) else 1.0,
            "max_abs_diff": float(np.abs(x - y).max()) if x.size else 0.0,
        }
    same = bool(rows) and all(r.get("identical") for r in rows.values())
    chosen = [_chosen(run_a), _chosen(run_b)]
    return {"candidates": rows, "chosen": chosen, "same": same and chosen[0] == chosen[1]}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    a, b = (Path(x) for x in args)
    for run in (a, b):
        if not RunDir(run).results_dir.is_dir():
            print(
                f"{run}: not a run directory (no {RunDir(run).results_dir.name}/)", file=sys.stderr
            )
            return 2
    report = compare(a, b)
    print(f"{'candidate':<24}{'rows':>7}  {'identical':<10}{'argmax agree':>13}{'max |diff|':>12}")
    for name, r in report["candidates"].items():
        if "rows" not in r:
            print(f"{name:<24}  {json.dumps(r)}")
            continue
        print(
            f"{name:<24}{r['rows']:>7}  {r['identical']!s:<10}{r['argmax_agreement']:>13.4f}"
            f"{r['max_abs_diff']:>12.3g}"
        )
    print(f"chosen: {report['chosen'][0]} | {report['chosen'][1]}")
    print(json.dumps(report))
    return 0 if report["same"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
