"""``fit`` on pools without gold labels, or with some: the teacher labels the pool, quality is
agreement with the teacher, and where gold exists the teacher is audited against it first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smallfit.config import (
    DataConfig,
    EvalConfig,
    FitConfig,
    LinearStudent,
    ModelTeacher,
    SelectConfig,
)
from smallfit.pipeline import fit

pytestmark = pytest.mark.slow


def _strip(src: Path, dst: Path, keep_every: int | None) -> Path:
    """``src`` with the label of every row dropped, but every ``keep_every``-th row's."""
    rows = [json.loads(line) for line in src.read_text("utf-8").splitlines()]
    out = [
        r if keep_every is not None and i % keep_every == 0 else {"text": r["text"]}
        for i, r in enumerate(rows)
    ]
    dst.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return dst


def _fit(tmp: Path, slice_dir: Path, teacher: Path, keep_every: int | None) -> FitConfig:
    config = FitConfig(
        run_dir=tmp / "run",
        data=DataConfig(
            train=_strip(slice_dir / "train.jsonl", tmp / "train.jsonl", keep_every),
            test=_strip(slice_dir / "test.jsonl", tmp / "test.jsonl", keep_every),
        ),
        teacher=ModelTeacher(path=teacher),  # its own labels are the label set
        students=[LinearStudent()],
        evaluate=EvalConfig(latency_queries=10, warmup=2, throughput_batches=2),
        select=SelectConfig(quality_floor="0.5 * teacher"),
    )
    logs: list[str] = []
    fit(config, progress=False, log=logs.append)
    (tmp / "log.txt").write_text("\n".join(logs), encoding="utf-8")
    return config


def test_a_pool_without_any_gold(snips_slice: Path, snips_minilm: Path, tmp_path: Path) -> None:
    config = _fit(tmp_path, snips_slice, snips_minilm, keep_every=None)
    run = Path(config.run_dir)
    results = json.loads((run / "results.json").read_text("utf-8"))
    by_name = {c["name"]: c for c in results["candidates"]}
    assert set(by_name) == {"teacher", "linear", "cascade"}
    teacher, linear = by_name["teacher"]["quality"], by_name["linear"]["quality"]
    assert teacher["accuracy"] is None and teacher["n_gold"] == 0 and teacher["n"] == 84
    assert teacher["teacher_agreement"] == 1.0  # with itself: the relative floor's base
    assert 0.3 < linear["teacher_agreement"] <= 1.0 and linear["accuracy"] is None
    assert linear["ci95"]["teacher_agreement"][0] <= linear["teacher_agreement"]
    assert results["selection"]["metric"] == "teacher_agreement"
    assert results["selection"]["chosen"] == "linear"
    assert results["cascade"]["scored_against"] == "teacher"
    assert json.loads((run / "labels" / "summary.json").read_text("utf-8"))["gold_rows"] == 0
    assert "no text of the pool (280) has a gold label" in (tmp_path / "log.txt").read_text()
    page = (run / "report.html").read_text("utf-8")
    assert "No test text has a gold label: every quality figure here is agreement" in page
    assert "linear</strong> gives the teacher's answer on" in page
    assert "<th>teacher's answer</th>" in page  # the confused pairs
    assert "never reach the last tier, at agreement with the teacher <span" in page


def test_a_pool_with_some_gold(snips_slice: Path, snips_minilm: Path, tmp_path: Path) -> None:
    config = _fit(tmp_path, snips_slice, snips_minilm, keep_every=4)
    run = Path(config.run_dir)
    results = json.loads((run / "results.json").read_text("utf-8"))
    teacher = next(c for c in results["candidates"] if c["name"] == "teacher")["quality"]
    assert teacher["n_gold"] == 21 and teacher["n"] == 84  # every 4th test row
    assert 0.0 < teacher["accuracy"] <= 1.0 and teacher["ci95"]["accuracy"] is not None
    audit = json.loads((run / "labels" / "summary.json").read_text("utf-8"))
    assert audit["gold_rows"] == 70 and 0.5 < audit["gold_agreement"] <= 1.0
    log = (tmp_path / "log.txt").read_text()
    assert "[labels] audit: the teacher agrees with gold on" in log
    assert log.index("[labels] audit") < log.index("[student:linear]")  # before distilling
    assert results["selection"]["metric"] == "teacher_agreement"
    page = (run / "report.html").read_text("utf-8")
    assert "21 of the 84 test texts have a gold label" in page
    assert "Audit: the teacher agrees with gold on" in page
