"""``fit`` end to end on a real slice with real weights, and the rerun that skips every stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smallfit.config import (
    DataConfig,
    EvalConfig,
    FinetuneTeacher,
    FitConfig,
    LinearStudent,
    SelectConfig,
    TrainConfig,
    TransformerStudent,
)
from smallfit.pipeline import fit

pytestmark = pytest.mark.slow

# min_steps=0: exactly one pass over the tiny pool (the default minimum would add passes)
FAST_TRAIN = TrainConfig(epochs=1.0, min_steps=0, batch_size=16, lr=1e-4, max_length=32, patience=0)


def _config(run_dir: Path, data: Path, *, student_epochs: float = 1.0) -> FitConfig:
    return FitConfig(
        run_dir=run_dir,
        data=DataConfig(train=data / "train.jsonl", test=data / "test.jsonl"),
        # A small teacher keeps the test fast; the spine is the same for mpnet-base.
        teacher=FinetuneTeacher(base="minilm-l6", train=FAST_TRAIN),
        students=[
            TransformerStudent(
                name="student",
                base="minilm-l6",
                train=FAST_TRAIN.model_copy(update={"epochs": student_epochs}),
            ),
            LinearStudent(),
        ],
        evaluate=EvalConfig(latency_queries=10, warmup=2, throughput_batches=2),
        select=SelectConfig(quality_floor="0.5 * teacher"),
    )


@pytest.fixture(scope="module")
def first_run(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory):
    run_dir = tmp_path_factory.mktemp("fit") / "run"
    config = _config(run_dir, snips_slice)
    return config, fit(config, progress=False, log=lambda _: None)


def test_fit_writes_the_run_directory(first_run) -> None:
    config, result = first_run
    run = Path(config.run_dir)
    for path in ("config.yaml", "data.json", "stages.json", "results.json", "labels/ledger.jsonl"):
        assert (run / path).is_file(), path
    for name in ("teacher", "student", "linear"):
        assert (run / "models" / name / "smallfit.json").is_file()
        assert (run / "results" / f"{name}.json").is_file()
        assert not any(
            p.suffix in {".pkl", ".pickle", ".joblib"} for p in (run / "models").rglob("*")
        )
    # a finished stage leaves no checkpoints behind, nor the key that claimed them
    assert not list((run / "models").glob("*.work"))
    results = json.loads((run / "results.json").read_text())
    names = [c["name"] for c in results["candidates"]]
    # the cascade (chosen student -> teacher) is calibrated after selection, then measured
    assert names == ["teacher", "student", "linear", "cascade"]
    assert (run / "cascade.json").is_file() and results["cascade"]["tiers"][-1] == "teacher"
    assert results["environment"]["packages"]["torch"].startswith("2.13")
    assert results["selection"]["chosen"] == result.chosen
    assert result.stages_skipped == []


def test_candidates_are_measured_against_gold_and_teacher(first_run) -> None:
    _, result = first_run
    by_name = {c.name: c for c in result.results.candidates}
    teacher = by_name["teacher"]
    # 7 intents, 40 examples each: a real teacher is far above chance (1/7).
    assert teacher.quality.accuracy > 0.7
    assert teacher.quality.teacher_agreement == 1.0  # with itself: a relative floor's base
    assert teacher.quality.n_gold == teacher.quality.n  # every test text has gold
    for name in ("student", "linear"):
        quality = by_name[name].quality
        assert quality.accuracy > 0.5
        assert quality.teacher_agreement is not None and 0.5 < quality.teacher_agreement <= 1.0
        speed = by_name[name].speed
        assert (speed.p50_ms() or 0) > 0
        assert (speed.peak_rss_bytes or 0) > 0
    # the students learnt from the teacher only: the manifest says so
    student = result.model("student")
    assert result.model_dir("student") == Path(by_name["student"].model_dir)
    assert student.lineage["trained_on"] == "teacher labels only"
    assert student.lineage["teacher"] == "teacher"
    rows = result.table.splitlines()
    for name in ("teacher", "student", "linear"):
        assert any(
            row.split()[:2] == [name, by_name[name].backend] or name in row.split()[1:3]
            for row in rows
        )
    assert "selection:" in result.table
    line = json.loads(result.selection_json)
    assert line["chosen"] == result.chosen


def test_teacher_labels_are_the_teachers_probabilities(first_run) -> None:
    config, _ = first_run
    run = Path(config.run_dir)
    files = sorted((run / "labels").glob("probs-*.npy"))
    assert len(files) == 2  # train pool and dev
    sizes = sorted(np.load(f).shape[0] for f in files)
    data = json.loads((run / "data.json").read_text())
    assert sizes == sorted([data["train"], data["dev"]])
    probs = np.load(files[0])
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (probs.max(axis=1) < 1.0).any()  # soft, not one-hot


def test_rerun_skips_every_stage_and_reruns_only_what_changed(first_run, snips_slice) -> None:
    config, first = first_run
    logs: list[str] = []
    again = fit(config, progress=False, log=logs.append)
    assert again.stages_run == []
    assert set(again.stages_skipped) >= {"teacher", "student:student", "student:linear"}
    assert again.results.candidates == first.results.candidates

    changed = _config(Path(config.run_dir), snips_slice, student_epochs=2.0)
    third = fit(changed, progress=False, log=logs.append)
    # the cascade is recalibrated only when the changed student is one of its tiers
    rerouted = ["route"] if third.chosen == "student" else []
    assert third.stages_run == ["student:student", "evaluate:student", *rerouted]
    assert "teacher" in third.stages_skipped and "student:linear" in third.stages_skipped


def test_checkpoints_of_a_changed_config_are_not_resumed(tmp_path: Path) -> None:
    from smallfit.pipeline import _Stages

    out = tmp_path / "models" / "student"
    _Stages.claim_work_dir(out, "key-a")
    ckpt = out.with_name("student.work") / "checkpoints" / "checkpoint-5"
    ckpt.mkdir(parents=True)
    _Stages.claim_work_dir(out, "key-a")  # same config: an interrupted run resumes
    assert ckpt.is_dir()
    _Stages.claim_work_dir(out, "key-b")  # the config changed: start afresh
    assert not ckpt.exists()
    assert (out.with_name("student.work") / "stage-key").read_text() == "key-b"
