"""The run directory's layout: every path a run holds, spelled once in ``smallfit.run.layout``,
and the same as the paths earlier runs wrote (a changed name would orphan their files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smallfit.run import CASCADE, TEACHER, RunDir, stage, work_key, work_of


def test_every_run_path_is_where_earlier_runs_put_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    key = "0123456789abcdef0123"
    tier = run.model("minilm-l6")
    golden = {
        run.config_file: "config.yaml",
        run.data_file: "data.json",
        run.stages_file: "stages.json",
        run.results_file: "results.json",
        run.cascade_file: "cascade.json",
        run.report_file: "report.html",
        run.log_file: "smallfit.log",
        run.peaks_file: "peak_rates.json",
        run.models_dir: "models",
        run.model(TEACHER): "models/teacher",
        run.model(CASCADE): "models/cascade",
        run.labels_dir: "labels",
        run.labels_summary: "labels/summary.json",
        run.labels_ledger: "labels/ledger.jsonl",
        run.label_probs(key): "labels/probs-0123456789abcdef.npy",
        run.answers_file: "labels/llm-answers.sqlite",
        run.results_dir: "results",
        run.result("linear"): "results/linear.json",
        run.test_probs("linear"): "results/linear.test_probs.npy",
        run.test_split: "results/test.jsonl",
        run.route_dir: "route",
        run.route_probs(tier, "dev", key): "route/minilm-l6.dev-0123456789abcdef.npy",
        run.route_signal(tier, "oos", key, "embeddings"): (
            "route/minilm-l6.oos-0123456789abcdef.embeddings.npy"
        ),
        run.compress_cache: "compress-cache",
        work_of(tier): "models/minilm-l6.work",
        work_key(tier): "models/minilm-l6.work/stage-key",
    }
    for path, relative in golden.items():
        assert path.relative_to(run.root).as_posix() == relative
    # an API teacher's answer store is found from its model directory, relative, so a moved
    # run keeps it
    assert run.answers_from(run.model(TEACHER)) == "../../labels/llm-answers.sqlite"
    assert (run.model(TEACHER) / run.answers_from(run.model(TEACHER))).resolve() == (
        run.answers_file.resolve()
    )
    assert [stage(TEACHER), stage("student", "a"), stage("evaluate", "b")] == [
        "teacher",
        "student:a",
        "evaluate:b",
    ]


def test_no_module_but_the_layout_spells_a_run_path() -> None:
    """A run's file and folder names are joined to a path, or named as a constant, only in
    ``smallfit.run.layout`` (prose may name them)."""
    import ast
    import re

    import smallfit

    names = re.compile(
        r"^(results\.json|cascade\.json|stages\.json|data\.json|config\.yaml|report\.html|"
        r"smallfit\.log|peak_rates\.json|llm-answers\.sqlite|ledger\.jsonl|summary\.json|"
        r"compress-cache|stage-key|models|results|labels|route|\.work|test\.jsonl|"
        r".*\.test_probs\.npy|\.\./\.\./labels/.*)$"
    )
    elsewhere = {  # the same names, not in a run directory
        ("zoo.py", "models"),  # the weights cache
        ("models/decoder.py", "models"),  # the weights cache
        ("demo.py", "test.jsonl"),  # a dataset folder's test file
    }
    root = Path(smallfit.__file__).parent
    found = []
    for file in sorted(root.rglob("*.py")):
        if file.parent.name == "run":
            continue
        for node in ast.walk(ast.parse(file.read_text("utf-8"))):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
                spelled = node.right  # path / "name"
            elif isinstance(node, ast.Assign):
                spelled = node.value  # NAME = "name"
            else:
                continue
            where = (file.relative_to(root).as_posix(), str(getattr(spelled, "value", "")))
            spells = isinstance(spelled, ast.Constant) and names.match(where[1])
            if spells and where not in elsewhere:
                found.append(f"{file.relative_to(root)}:{node.lineno} {spelled.value!r}")
    assert not found, "run paths spelled outside smallfit.run.layout:\n" + "\n".join(found)


def test_compare_runs_says_whether_two_runs_answered_alike(tmp_path: Path) -> None:
    import importlib.util
    import json

    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "compare_runs", Path(__file__).parent.parent / "scripts" / "compare_runs.py"
    )
    assert spec is not None and spec.loader is not None
    compare_runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare_runs)

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50).astype(np.float32)
    runs = [RunDir(tmp_path / name) for name in ("a", "b")]
    for run in runs:
        run.results_dir.mkdir(parents=True)
        np.save(run.test_probs("linear"), probs)
        run.results_file.write_text(json.dumps({"selection": {"chosen": "linear"}}), "utf-8")
    assert compare_runs.main([str(runs[0].root), str(runs[1].root)]) == 0
    moved = probs.copy()
    moved[3] = moved[3][::-1]  # one row's answer changes
    np.save(runs[1].test_probs("linear"), moved)
    report = compare_runs.compare(runs[0].root, runs[1].root)
    assert not report["same"] and report["candidates"]["linear"]["identical"] is False
    assert report["candidates"]["linear"]["argmax_agreement"] < 1.0
    np.save(runs[1].test_probs("extra"), probs)  # a candidate only one run has
    assert compare_runs.compare(runs[0].root, runs[1].root)["candidates"]["extra"] == {
        "missing_from": str(runs[0].root)
    }
    assert compare_runs.main([str(runs[0].root), str(tmp_path / "nope")]) == 2


def test_the_core_asks_models_what_they_declare_not_what_they_happen_to_have(
    snips_linear: Path,
) -> None:
    """Every model has close, set_num_threads, temperature, bytes_on_disk, remote,
    measured_speed/measured_cost, unanswered, label_texts, bulk and count_tokens (neutral
    defaults on the base class), so the core calls them instead of probing for them."""
    import ast

    import smallfit
    from smallfit.evaluate.speed import limit_threads
    from smallfit.models import load

    linear = load(snips_linear)
    linear.close()  # nothing held open: a no-op
    linear.set_num_threads(1)  # no pool of its own: a no-op
    with limit_threads(1, linear):
        assert linear.predict(["play some jazz"])
    assert linear.temperature == 1.0 and linear.remote is False
    assert linear.info.bytes_on_disk == linear.bytes_on_disk > 0
    texts = ["play some jazz", "book a table"]
    assert linear.measured_speed() is None and linear.measured_cost() is None
    assert linear.unanswered(texts) is None and linear.count_tokens(texts) is None
    assert linear.label_texts(texts, progress=False) is None  # labelled by predict_proba
    with linear.bulk():
        assert len(linear.predict_proba(texts)) == 2

    declared = {
        *("close", "set_num_threads", "temperature", "bytes_on_disk", "remote"),
        # declared as measured_speed, measured_cost, unanswered, label_texts, bulk, count_tokens
        *("measured_speed", "unanswered_texts", "labeller", "bf16", "tokenize", "tokenizer"),
    }
    root = Path(smallfit.__file__).parent
    probes = []
    for file in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(file.read_text("utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr")
                and len(node.args) >= 2
                and isinstance(node.args[1], ast.Constant)
                and node.args[1].value in declared
            ):
                probes.append(f"{file.relative_to(root)}:{node.lineno} {ast.unparse(node)}")
    assert not probes, "probes for declared capabilities:\n" + "\n".join(probes)


def _candidate(**quality: Any) -> dict[str, Any]:
    """A candidate's results as evaluation writes them (the figures are made up)."""
    return {
        "name": "linear",
        "backend": "linear",
        "model_dir": "/runs/r/models/linear",
        "parameters": 1000,
        "bytes_on_disk": 4096,
        "lineage": {"teacher": "teacher"},
        "quality": {
            "accuracy": 0.9,
            "macro_f1": 0.88,
            "teacher_agreement": 0.95,
            "ece": 0.03,
            "n": 100,
            "unanswered": 0,
            "per_class": {"a": {"precision": 1.0, "recall": 0.5, "f1": 0.667, "support": 2}},
            "ci95": {
                "accuracy": [0.84, 0.95],
                "macro_f1": [0.8, 0.93],
                "teacher_agreement": [0.9, 0.98],
                "ece": [0.02, 0.06],
            },
            "vs_teacher": {"accuracy": {"diff": -0.01, "ci95": [-0.03, 0.01]}},
            "bootstrap": {"method": "percentile", "resamples": 1000, "seed": 0, "level": 0.95},
            **quality,
        },
        "speed": {
            "threads": {"1": {"p50_ms": 0.2, "p95_ms": 0.3, "p99_ms": 0.4, "mean_ms": 0.2, "n": 9}},
            "throughput_b16_per_s": 5000.0,
            "throughput_batch": 16,
            "peak_rss_bytes": 1 << 20,
        },
        "roofline": None,
        "cost": {"per_1m_queries_usd": 0.01, "basis": "this machine"},
    }


def test_a_candidate_result_keeps_its_shape_on_disk() -> None:
    """The throughput key keeps its batch in its name, in its place; absent keys stay absent;
    the figures read through the record's accessors."""
    from smallfit.run.records import CandidateResult

    raw = _candidate()
    record = CandidateResult.model_validate(raw)
    assert json.dumps(record.dump()) == json.dumps(raw)
    assert record.speed.throughput_per_s == 5000.0 and record.speed.p50_ms() == 0.2
    assert record.quality.value("accuracy") == 0.9 and record.quality.value("per_class") is None
    assert "cascade" not in record.dump()


def test_results_of_older_runs_load_with_the_fields_added_since_absent() -> None:
    from smallfit.run.records import CandidateResult, RunResults

    raw = _candidate()
    for key in ("ci95", "vs_teacher", "bootstrap", "unanswered"):
        raw["quality"].pop(key)
    for key in ("cost", "roofline"):
        raw.pop(key)
    old = CandidateResult.model_validate(raw)
    assert old.cost is None and old.quality.ci95 is None and old.quality.unanswered == 0
    results = RunResults.model_validate(
        {"environment": {}, "candidates": [raw], "selection": _selection("linear")}
    )
    assert results.not_built == [] and results.cascade is None
    assert results.candidate("linear") is not None and results.candidate("x") is None


def _selection(chosen: str | None) -> dict[str, Any]:
    return {"chosen": chosen, "metric": "accuracy", "floor": 0.5, "reason": "the smallest"}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (
            lambda c: c["quality"].pop("accuracy"),
            "candidate 'linear': missing field 'quality.accuracy'",
        ),
        (
            lambda c: c["quality"].update(extra=1),
            "candidate 'linear': unknown field 'quality.extra'",
        ),
        (
            lambda c: c["quality"]["ci95"].update(accuracy=[0.9, 0.8]),
            "field 'quality.ci95.accuracy' is [0.9, 0.8], not a [low, high] interval",
        ),
        (lambda c: c["quality"].update(accuracy=True), "field 'quality.accuracy' is True, not"),
        (lambda c: c["quality"].update(accuracy="0.9"), "field 'quality.accuracy' is '0.9', not"),
        (lambda c: c["quality"].update(accuracy=float("nan")), "field 'quality.accuracy' is nan"),
        (
            lambda c: c["speed"].update(throughput_b8_per_s=1.0),
            "unknown field 'speed.throughput_b8_per_s'",
        ),
        (lambda c: c.update(parameters=1.5), "field 'parameters' is 1.5, not an integer"),
    ],
)
def test_a_bad_results_file_is_one_line_naming_the_file_and_the_field(
    tmp_path: Path, change: Any, says: str
) -> None:
    from smallfit.errors import SmallfitError
    from smallfit.run.store import Run

    run = Run(tmp_path / "r")
    c = _candidate()
    change(c)
    file = run.dir.results_file
    file.parent.mkdir(parents=True)
    file.write_text(json.dumps({"environment": {}, "candidates": [c]}), "utf-8")
    with pytest.raises(SmallfitError) as info:
        run.read_results()
    message = str(info.value)
    assert message.startswith(f"{file}: ") and says in message and "\n" not in message


def test_the_chosen_candidate_must_be_one_of_the_run(tmp_path: Path) -> None:
    from smallfit.errors import SmallfitError
    from smallfit.run.store import Run

    run = Run(tmp_path / "r")
    run.dir.root.mkdir()
    run.dir.results_file.write_text(
        json.dumps({"environment": {}, "candidates": [_candidate()], "selection": _selection("x")})
    )
    with pytest.raises(SmallfitError, match=r"results\.json: selection\.chosen 'x' is not among"):
        run.read_results()
    for corrupt, says in (("{", "corrupt results file"), ("[]", "no 'candidates' list")):
        run.dir.results_file.write_text(corrupt)
        with pytest.raises(SmallfitError, match=says):
            run.read_results()


def test_the_core_never_branches_on_a_model_or_a_teacher_or_student_type() -> None:
    """No isinstance on a model class (models/, the cascade) or a teacher/student config
    anywhere in the package: the pipeline asks declared capabilities (builds_model, schedule,
    compressible, ...). The one exception is Cascade.of, the cascade recognising itself."""
    import ast

    import smallfit

    root = Path(smallfit.__file__).parent
    trees = {f: ast.parse(f.read_text("utf-8")) for f in sorted(root.rglob("*.py"))}
    kinds: set[str] = set()
    for file, tree in trees.items():
        in_models = file.parent.name == "models" or file.name == "cascade.py"
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(b) for b in node.bases}
                model = in_models and node.name.endswith(("Classifier", "Cascade"))
                if model or bases & {"TeacherBase", "StudentBase"}:
                    kinds.add(node.name)
    assert {"Cascade", "LinearClassifier", "GoldTeacher", "TransformerStudent"} <= kinds
    branches = []
    for file, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and ast.unparse(node.func) == "isinstance"):
                continue
            types = node.args[1]
            names = {ast.unparse(e) for e in getattr(types, "elts", [types])}
            itself = file.name == "cascade.py" and names == {"Cascade"}  # Cascade.of
            if names & kinds and not itself:
                branches.append(f"{file.relative_to(root)}:{node.lineno} {ast.unparse(node)}")
    assert not branches, "branches on a model or config type:\n" + "\n".join(branches)
