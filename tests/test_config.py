"""Configs: strict keys with their paths in errors, YAML round trip, parsers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from smallfit.config import (
    FitConfig,
    LinearStudent,
    ModelTeacher,
    TransformerStudent,
    dump_fit_config,
    load_fit_config,
    parse_duration,
    parse_floor,
)
from smallfit.errors import ConfigError


def test_fit_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = FitConfig.model_validate(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"train": "a.jsonl", "test": "b.csv", "max_train": 100},
            "teacher": {"source": "model", "path": "some/dir"},
            "students": [
                {"kind": "transformer", "name": "s1", "kd": {"temperature": 3.0}},
                {"kind": "linear", "C": 3.0, "char_ngrams": None},
            ],
            "select": {"quality_floor": "0.97 * teacher", "latency_ceiling_ms": 12},
        }
    )
    file = tmp_path / "fit.yaml"
    file.write_text(dump_fit_config(config), encoding="utf-8")
    again = load_fit_config(file)
    assert again == config
    assert isinstance(again.teacher, ModelTeacher)
    assert isinstance(again.students[0], TransformerStudent)
    assert again.students[0].kd.temperature == 3.0
    assert isinstance(again.students[1], LinearStudent)
    assert again.students[1].char_ngrams is None


def test_misspelt_key_fails_with_its_path(tmp_path: Path) -> None:
    file = tmp_path / "fit.yaml"
    file.write_text(
        "data:\n  train: a.jsonl\nstudents:\n  - kind: transformer\n    train:\n      epoch: 3\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_fit_config(file)
    assert str(file) in str(err.value)
    assert "students.0.transformer.train.epoch" in str(err.value)


def test_missing_file_and_bad_yaml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_fit_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_fit_config(bad)


def test_student_names_must_be_unique_and_not_teacher() -> None:
    with pytest.raises(ValidationError, match="repeated: linear"):
        FitConfig.model_validate(
            {"data": {"train": "a"}, "students": [{"kind": "linear"}, {"kind": "linear"}]}
        )
    with pytest.raises(ValidationError, match="reserved"):
        FitConfig.model_validate(
            {"data": {"train": "a"}, "students": [{"kind": "linear", "name": "teacher"}]}
        )


def test_parsers() -> None:
    assert parse_floor("0.9") == (0.9, False)
    assert parse_floor(" 0.98*teacher ") == (0.98, True)
    with pytest.raises(ValueError):
        parse_floor("teacher - 1")
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("45s") == 45.0
    assert parse_duration("20m") == 1200.0
    with pytest.raises(ValueError):
        parse_duration("soon")


def test_compress_section_round_trips_and_expands(tmp_path: Path) -> None:
    file = tmp_path / "fit.yaml"
    file.write_text(
        "data:\n  train: a.jsonl\n"
        "compress:\n  budget: 20m\n"
        "  grid:\n    layers: [null, 4]\n    prune: [0.0, 0.25]\n"
        "    quantize: [torch, int4-weight]\n    heal: {epochs: 2}\n"
        "  candidates:\n    - name: l2-int8s\n"
        "      steps: [{method: drop-layers, keep: 2}, {method: onnx},"
        " {method: int8-static, calibrate_method: percentile}]\n",
        encoding="utf-8",
    )
    config = load_fit_config(file)
    again_file = tmp_path / "again.yaml"
    again_file.write_text(dump_fit_config(config), encoding="utf-8")
    assert load_fit_config(again_file) == config
    candidates = config.compress.expand()
    assert [c.name for c in candidates] == [
        "int4", "p25-torch", "p25-int4", "l4-torch", "l4-int4", "l4-p25-torch", "l4-p25-int4",
        "l2-int8s",
    ]  # fmt: skip
    steps = {c.name: [s.method for s in c.steps] for c in candidates}
    assert steps["l4-p25-int4"] == ["drop-layers", "prune", "onnx", "int4-weight"]
    assert steps["l2-int8s"] == ["drop-layers", "onnx", "int8-static"]
    l4 = candidates[3].steps[0]
    assert l4.keep == 4 and l4.heal.epochs == 2
    assert candidates[-1].steps[2].calibrate_method == "percentile"


def test_compress_section_errors_name_their_path(tmp_path: Path) -> None:
    file = tmp_path / "fit.yaml"
    bad = {
        "  budget: soon\n": "compress.budget",
        "  candidates:\n    - name: x\n      steps: [{method: shrink}]\n": "compress.candidates.0",
        "  candidates:\n    - name: x\n      steps: [{method: drop-layers, kep: 2}]\n": "kep",
        "  grid: {quantize: [int8-dynamic]}\n  candidates:\n    - name: int8\n"
        "      steps: [{method: onnx}]\n": "names must be unique",
    }
    for body, where in bad.items():
        file.write_text("data:\n  train: a.jsonl\ncompress:\n" + body, encoding="utf-8")
        with pytest.raises(ConfigError, match=where):
            load_fit_config(file)
