"""``fit`` with a compression grid: compressed candidates are built from the distilled student,
share their common steps, are measured like every other candidate, and respect the budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from smallfit.compress import HealConfig
from smallfit.config import (
    CompressConfig,
    CompressGrid,
    DataConfig,
    EvalConfig,
    FitConfig,
    GoldTeacher,
    SelectConfig,
    TrainConfig,
    TransformerStudent,
)
from smallfit.models.base import read_manifest
from smallfit.pipeline import fit

pytestmark = pytest.mark.slow

# min_steps=0: exactly one pass over the tiny pool (the default minimum would add passes)
FAST_TRAIN = TrainConfig(epochs=1.0, min_steps=0, batch_size=16, lr=1e-4, max_length=32, patience=0)


def _config(run_dir: Path, data: Path, *, budget: str | None = "30m") -> FitConfig:
    return FitConfig(
        run_dir=run_dir,
        data=DataConfig(train=data / "train.jsonl", test=data / "test.jsonl"),
        teacher=GoldTeacher(),
        students=[TransformerStudent(name="student", base="minilm-l6", train=FAST_TRAIN)],
        compress=CompressConfig(
            grid=CompressGrid(
                layers=[None, 3],
                quantize=["torch", "int8-dynamic"],
                heal=HealConfig(epochs=1.0, batch_size=16),
            ),
            budget=budget,
        ),
        evaluate=EvalConfig(latency_queries=10, warmup=2, throughput_batches=2, threads=[1]),
        select=SelectConfig(quality_floor="0.5"),
    )


@pytest.fixture(scope="module")
def run(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("fitc") / "run"
    config = _config(run_dir, snips_slice)
    return config, fit(config, progress=False, log=lambda _: None)


def test_grid_candidates_are_built_and_measured(run) -> None:
    _, result = run
    names = [c["name"] for c in result.results.dump()["candidates"]]
    assert names == ["student", "student-int8", "student-l3-torch", "student-l3-int8"]
    by_name = {c["name"]: c for c in result.results.dump()["candidates"]}
    l3 = read_manifest(result.model_dir("student-l3-int8"))
    assert l3["architecture"]["layers"] == 3
    assert [s["method"] for s in l3["lineage"]["compression"]] == [
        "drop-layers",
        "onnx",
        "int8-dynamic",
    ]
    # Healing distilled against the pool's labels and kept the student's answers mostly.
    drop = l3["lineage"]["compression"][0]["metrics"]
    assert drop["kept_layers"] == [0, 2, 5] and drop["heal"]["steps"] > 0
    assert drop["argmax_agreement"] >= 0.8
    student = by_name["student"]["quality"]["accuracy"]
    for name in ("student-int8", "student-l3-int8"):
        assert by_name[name]["quality"]["accuracy"] >= student - 0.15
        assert by_name[name]["bytes_on_disk"] < by_name["student"]["bytes_on_disk"] / 3


def test_candidates_sharing_steps_build_them_once(run) -> None:
    _, result = run
    torch_l3 = read_manifest(result.model_dir("student-l3-torch"))
    int8_l3 = read_manifest(result.model_dir("student-l3-int8"))
    # The same healed model: identical metrics, one cached directory per distinct prefix.
    assert torch_l3["lineage"]["compression"][0] == int8_l3["lineage"]["compression"][0]
    cached = sorted(p.name for p in (result.run_dir / "compress-cache").iterdir())
    assert len(cached) == 5  # onnx, int8 | l3, l3+onnx, l3+onnx+int8


def test_rerun_skips_and_a_spent_budget_builds_nothing_new(run, snips_slice: Path) -> None:
    config, first = run
    again = fit(config, progress=False, log=lambda _: None)
    assert not any(s.startswith("compress:") for s in again.stages_run)
    # With no budget left, built candidates are still measured; new ones are reported unbuilt.
    changed = config.model_copy(
        update={
            "compress": config.compress.model_copy(
                update={
                    "budget": "0s",
                    "grid": config.compress.grid.model_copy(
                        update={"quantize": ["torch", "int8-dynamic", "onnx"]}
                    ),
                }
            )
        }
    )
    logs: list[str] = []
    third = fit(changed, progress=False, log=logs.append)
    names = [c["name"] for c in third.results.dump()["candidates"]]
    assert "student-l3-int8" in names and "student-onnx" not in names
    not_built = third.results.dump()["not_built"]
    assert {n["name"] for n in not_built} == {"student-onnx", "student-l3-onnx"}
    assert any("budget" in line for line in logs)
    saved = json.loads((first.run_dir / "results.json").read_text("utf-8"))
    assert saved["not_built"] == not_built
