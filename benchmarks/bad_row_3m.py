"""Issue 18's bad input at scale: ``smallfit predict`` over 3,000,001 rows whose last row is
malformed. The command must name the file and line 3,000,001, keep the 3,000,000 rows before it
(written, in order, once), and after the row is fixed a rerun must write only that row.

Also the memory the run took (peak RSS of the command: bounded, whatever the file's size) and
its rows per second. Banking77's texts are cycled to make the file; the model is the static
tier of a finished demo run (the cheapest there is, so the run measures the file handling).

    .venv/bin/python benchmarks/bad_row_3m.py --run-dir runs/banking77

About 5 minutes on 2 cores and 700 MB of temporary disk. Writes
``benchmarks/results/bad_row_3m.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import save_and_report

from smallfit.data import read_split
from smallfit.evaluate import environment

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
ROWS = 3_000_000
BAD = '{"id": 3000001, "text": null}\n'
FIXED = '{"id": 3000001, "text": "where is my card?"}\n'


def predict(model: Path, source: Path, out: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "predict", str(model), str(source), "-o",
         str(out), "--batch-size", "1024", "-q"],
        capture_output=True,
        text=True,
        timeout=3600,
    )  # fmt: skip
    return done, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/banking77"))
    args = parser.parse_args()
    model = args.run_dir / "models" / "static"
    texts = read_split(DATA / "banking77" / "test.jsonl").texts
    tmp = Path(tempfile.mkdtemp())
    source, out = tmp / "in.jsonl", tmp / "out.jsonl"
    with open(source, "w", encoding="utf-8") as handle:
        for i in range(ROWS):
            handle.write(json.dumps({"id": i + 1, "text": texts[i % len(texts)]}) + "\n")
        handle.write(BAD)

    first, first_s = predict(model, source, out)
    peak_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    kept = 0
    last_line = 0
    in_order = True
    with open(out, encoding="utf-8") as handle:
        for raw in handle:
            line = json.loads(raw)["line"]
            in_order &= line == last_line + 1
            last_line = line
            kept += 1
    message = first.stderr.strip().splitlines()[-1] if first.stderr.strip() else ""

    # fix the last row in place, and rerun the same command
    with open(source, "r+b") as handle:
        handle.seek(-len(BAD.encode()), 2)
        handle.truncate()
        handle.write(FIXED.encode())
    second, second_s = predict(model, source, out)
    with open(out, "rb") as handle:
        total = sum(1 for _ in handle)

    figures = {
        "rows": ROWS + 1,
        "exit_code_on_bad_row": first.returncode,
        "error": message,
        "rows_kept": kept,
        "rows_kept_in_order_once": in_order and kept == ROWS,
        "first_run_s": round(first_s, 1),
        "rows_per_s": round(ROWS / first_s),
        "peak_rss_mb": round(peak_rss / 1e6),
        "rerun_exit_code": second.returncode,
        "rerun_s": round(second_s, 1),
        "rerun_summary": second.stdout.strip().splitlines()[-1] if second.stdout else "",
        "rows_after_rerun": total,
    }
    save_and_report(
        {
            "benchmark": "bad_row_3m",
            "environment": environment(),
            "figures": figures,
            "passed": {
                "bad_row_named_by_file_and_line": first.returncode == 2
                and str(source) in message
                and "3000001" in message.replace(",", ""),
                "rows_before_kept_once_in_order": figures["rows_kept_in_order_once"],
                "rerun_writes_only_the_fixed_row": second.returncode == 0
                and total == ROWS + 1
                and "wrote 1 row to" in figures["rerun_summary"],
            },
        }
    )


if __name__ == "__main__":
    main()
