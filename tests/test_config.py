"""Configs: strict keys with their paths in errors, YAML round trip, parsers."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from smallfit.config import (
    STUDENT_MIN_STEPS,
    TEACHER_MIN_STEPS,
    DataConfig,
    DecoderStudent,
    FinetuneTeacher,
    FitConfig,
    GoldTeacher,
    LinearStudent,
    ModelTeacher,
    RouteConfig,
    SelectConfig,
    TrainConfig,
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


# -- contradictions between parts of a config fail at load, each naming its keys ----------------


def _load(tmp_path: Path, body: str) -> FitConfig:
    file = tmp_path / "fit.yaml"
    file.write_text("data: {train: a.jsonl}\n" + body, encoding="utf-8")
    return load_fit_config(file)


def _refused(tmp_path: Path, body: str) -> list[str]:
    """The problem lines of a config that must not load."""
    with pytest.raises(ConfigError) as err:
        _load(tmp_path, body)
    head, *lines = str(err.value).splitlines()
    assert head.endswith("fit.yaml: invalid config")
    return [line.strip() for line in lines]


GOLD = "teacher: {source: gold}\n"


def test_a_relative_floor_with_a_gold_teacher_fails_at_load(tmp_path: Path) -> None:
    (line,) = _refused(tmp_path, GOLD)  # the default floor is relative: refused, not guessed
    assert line.startswith("select.quality_floor '0.98 * teacher' (the default) is relative")
    assert "teacher.source is gold" in line and "select.quality_floor: '0.9'" in line
    (line,) = _refused(tmp_path, GOLD + "select: {quality_floor: 0.95 * teacher}\n")
    assert "'0.95 * teacher' is relative" in line and "(the default)" not in line
    assert "teacher.source is gold" in line
    assert _load(tmp_path, GOLD + "select: {quality_floor: '0.9'}\n").select.quality_floor == "0.9"


def test_the_cascade_is_off_by_default_with_a_gold_teacher(tmp_path: Path) -> None:
    floor = "select: {quality_floor: '0.9'}\n"
    config = _load(tmp_path, GOLD + floor)
    assert config.route is None  # its default tiers end with the teacher
    again = tmp_path / "again.yaml"
    again.write_text(dump_fit_config(config), encoding="utf-8")
    assert load_fit_config(again) == config
    assert _load(tmp_path, floor).route == RouteConfig()  # with a teacher model it is on
    (line,) = _refused(tmp_path, GOLD + floor + "route: {target: 'escalation <= 10%'}\n")
    assert line.startswith("route is set, but teacher.source is gold")
    assert "route.tiers" in line and "route: null" in line
    (line,) = _refused(tmp_path, GOLD + floor + "route: {tiers: [linear, teacher]}\n")
    assert line.startswith("route.tiers names 'teacher', but teacher.source is gold")
    # a cascade of students needs no teacher ('teacher' in its target is the last tier)
    two = _load(tmp_path, GOLD + floor + "route: {tiers: [linear, minilm-l6]}\n")
    assert two.route is not None and two.route.tiers == ["linear", "minilm-l6"]


def test_teacher_agreement_needs_a_teacher(tmp_path: Path) -> None:
    # the teacher's own agreement is measured (with itself), so a relative floor is a share of it
    relative = _load(tmp_path, "select: {metric: teacher_agreement}\n")
    assert relative.select.metric == "teacher_agreement"
    assert relative.select.quality_floor == "0.98 * teacher"
    assert _load(tmp_path, "").select.metric is None  # resolved from the data at selection
    agreement = "select: {metric: teacher_agreement, quality_floor: '0.97'}\n"
    (line,) = _refused(tmp_path, GOLD + agreement)
    assert line.startswith("select.metric is teacher_agreement, but teacher.source is gold")


def test_compress_must_name_transformer_students_that_exist(tmp_path: Path) -> None:
    students = "students: [{kind: linear}, {kind: transformer, name: mini}]\n"
    lines = _refused(tmp_path, students + "compress: {students: [linear, minilm]}\n")
    assert lines == [
        "compress.students names 'linear', a linear student: only transformer students can be "
        "compressed (mini)",
        "compress.students names 'minilm', which is not one of students (linear, mini)",
    ]
    assert _load(tmp_path, students + "compress: {students: [mini]}\n").compress is not None
    (line,) = _refused(tmp_path, "students: [{kind: linear}]\ncompress: {}\n")
    assert line.startswith("compress is set, but students has no transformer student")
    (line,) = _refused(tmp_path, "compress: {students: []}\n")
    assert line.startswith("compress.students is empty")
    (line,) = _refused(tmp_path, "compress: {grid: null}\n")
    assert line.startswith("compress.grid is null and compress.candidates is empty")


def test_route_tiers_must_be_candidates_or_model_directories(tmp_path: Path) -> None:
    compress = "compress: {grid: {layers: [null], quantize: [int8-dynamic]}}\n"
    route = "route: {tiers: [minilm-l6-int8, minilm-l6, teacher]}\n"
    assert _load(tmp_path, compress + route).route.tiers[0] == "minilm-l6-int8"
    (line,) = _refused(tmp_path, route)  # not compressed: no such candidate
    assert line.startswith("route.tiers names 'minilm-l6-int8', which is neither a candidate")
    assert "(teacher, minilm-l6, linear)" in line
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    config = _load(tmp_path, f"route: {{tiers: [{model_dir}, teacher]}}\n")
    assert config.route.tiers == [str(model_dir), "teacher"]


def test_abstention_follows_the_data_out_of_scope_label(tmp_path: Path) -> None:
    file = tmp_path / "fit.yaml"
    file.write_text(
        "data: {train: a.jsonl, out_of_scope: out_of_scope}\nroute: {abstain: {}}\n",
        encoding="utf-8",
    )
    config = load_fit_config(file)
    assert config.route.abstain.label == "out_of_scope"
    file.write_text(dump_fit_config(config), encoding="utf-8")
    assert load_fit_config(file) == config
    file.write_text(
        "data: {train: a.jsonl, out_of_scope: out_of_scope}\n"
        "route: {abstain: {label: oos, tier: 2}}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as err:
        load_fit_config(file)
    tier, label = str(err.value).splitlines()[1:]
    assert tier.strip().startswith("route.abstain.tier 2 is not one of the 2 tiers")
    assert label.strip().startswith(
        "route.abstain.label 'oos' differs from data.out_of_scope 'out_of_scope'"
    )
    # without an out-of-scope label in the data, abstaining is still allowed (on unsure queries)
    assert _load(tmp_path, "route: {abstain: {label: unsure}}\n").route.abstain.label == "unsure"


def test_gold_labels_and_no_students_leave_nothing_to_measure(tmp_path: Path) -> None:
    (line,) = _refused(tmp_path, GOLD + "students: []\nselect: {quality_floor: '0.9'}\n")
    assert line == (
        "students is empty and teacher.source is gold: there is no candidate to measure"
    )


def test_contradictions_are_caught_in_python_too() -> None:
    with pytest.raises(ValidationError, match=r"teacher\.source is gold"):
        FitConfig(data=DataConfig(train=Path("a")), teacher=GoldTeacher())
    config = FitConfig(
        data=DataConfig(train=Path("a")),
        teacher=GoldTeacher(),
        select=SelectConfig(quality_floor="0.9"),
    )
    assert config.route is None


def test_fit_refuses_a_contradiction_with_exit_code_2_before_any_work(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from smallfit.cli import main

    run_dir = tmp_path / "run"
    file = tmp_path / "fit.yaml"
    file.write_text(
        f"run_dir: {run_dir}\ndata: {{train: {tmp_path / 'missing.jsonl'}}}\n" + GOLD,
        encoding="utf-8",
    )
    result = CliRunner().invoke(main, ["fit", "--config", str(file)])
    assert result.exit_code == 2, result.output
    assert "select.quality_floor '0.98 * teacher'" in result.stderr
    assert "teacher.source is gold" in result.stderr
    assert "Traceback" not in result.output
    assert not run_dir.exists()  # nothing was started: no run directory, no data read


# -- training length follows the data -----------------------------------------------------------


def test_training_steps_follow_the_pool_size() -> None:
    train = TrainConfig(epochs=2.0, min_steps=560)
    banking77 = train.schedule(9003)  # the demo's MiniLM on Banking77's pool: unchanged
    assert (banking77.epochs, banking77.steps_per_epoch, banking77.steps) == (2.0, 282, 564)
    assert not banking77.raised
    small = train.schedule(2000)  # 63 steps an epoch: 2 epochs would be 126 steps
    assert (small.epochs, small.steps_per_epoch, small.steps) == (9.0, 63, 567)
    assert small.raised and "train.min_steps 560" in small.describe()
    assert small.describe().startswith("9 epochs x 63 steps = 567 steps: train.epochs 2 would")
    assert TrainConfig(epochs=0.5).schedule(100).steps == 2  # no minimum: as the trainer counts
    assert TrainConfig(epochs=1.0, min_steps=0).schedule(10).steps == 1
    budget = TrainConfig(epochs=1.0, min_steps=50, time_budget="5m").schedule(64)
    assert budget.steps == 50 and "time_budget 5m may stop it sooner" in budget.describe()


def test_min_steps_defaults_by_what_is_trained() -> None:
    assert TransformerStudent().train.min_steps == STUDENT_MIN_STEPS == 560
    assert TransformerStudent(train={"epochs": 2.0}).train.min_steps == 560
    assert TransformerStudent(train={"min_steps": 0}).train.min_steps == 0
    assert FinetuneTeacher().train.min_steps == TEACHER_MIN_STEPS == 280
    assert FinetuneTeacher(train={"epochs": 1.0}).train.min_steps == 280
    assert FinetuneTeacher().train.schedule(9003).steps == 282  # Banking77: one epoch, as before
    assert DecoderStudent().train.min_steps is None  # LoRA students: no minimum
    assert TrainConfig().min_steps is None


def test_the_demo_lengthens_small_pools(tmp_path: Path) -> None:
    from smallfit.demo import demo_config

    (tmp_path / "train.jsonl").write_text("", encoding="utf-8")
    config = demo_config(tmp_path)
    teacher, student = config.teacher.train, config.students[0].train
    # Banking77's pool: one epoch of the teacher, six of the student (at most 15 minutes)
    assert teacher.schedule(9003).steps == 282 and student.schedule(9003).steps == 1692
    assert student.time_budget == "15m" and teacher.time_budget == "45m"
    assert teacher.schedule(4410).steps == 414 and student.schedule(4410).steps == 828
    assert student.schedule(1000).steps == 576  # 18 epochs of 32 steps reach min_steps 560
    quick = demo_config(tmp_path, quick=True)  # a few minutes: exactly its epochs
    assert quick.teacher.train.schedule(1800).steps == 57
    assert quick.students[0].train.schedule(1800).steps == 114
    # the pruned 3-layer tiers are the full demo's alone (the second healing takes minutes)
    assert [c.name for c in config.compress.candidates] == [
        "l3-p50-int8",
        "l3-p50-tv-int8",
        "p60-tv-int8",
    ]
    assert quick.compress.candidates == []


# The fields a config class cannot do without (every other field has a default).
_REQUIRED = {
    "FitConfig": {"run_dir": "runs/x", "data": {"train": "train.jsonl"}},
    "DataConfig": {"train": "train.jsonl"},
    "ModelTeacher": {"path": "models/teacher"},
    "DropLayers": {"keep": 3},
    "CompressCandidate": {"name": "l3", "steps": [{"method": "drop-layers", "keep": 3}]},
}


def _all_configs() -> list[type]:
    from smallfit.config import all_configs

    return all_configs()


@pytest.mark.parametrize("kind", _all_configs(), ids=lambda k: k.__name__)
def test_every_config_class_round_trips_through_yaml(kind: type) -> None:
    """Each config class a user can write (found from FitConfig's and ServeConfig's fields, so
    none is left out) survives YAML: dumped, read back, equal."""
    import yaml

    config = kind.model_validate(_REQUIRED.get(kind.__name__, {}))
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    assert kind.model_validate(yaml.safe_load(text)) == config


def test_the_config_reference_covers_every_config_class() -> None:
    from smallfit.docs import config_markdown

    text = config_markdown()
    names = {k.__name__ for k in _all_configs()}
    assert {"LLMTeacher", "LLMPrices", "RouteConfig", "AbstainConfig", "ServeConfig"} <= names
    assert {"ReportConfig", "OrtInt4Weight"} <= names
    for name in names:
        assert f"### `{name}`" in text, name
