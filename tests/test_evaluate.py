from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import smallfit.evaluate as ev
from smallfit.config import EvalConfig, LinearStudent
from smallfit.data import Split
from smallfit.distill import linear_args
from smallfit.errors import SmallfitError
from smallfit.evaluate import (
    environment,
    evaluate_candidate,
    expected_calibration_error,
    measure_speed,
    quality_metrics,
)
from smallfit.evaluate.host import CPU_FLAGS

LABELS = ["a", "b", "c"]


def onehot(idx: list[int], k: int = 3) -> np.ndarray:
    return np.eye(k, dtype=np.float32)[idx]


def test_public_api() -> None:
    assert sorted(ev.__all__) == [
        "EvalConfig",
        "Measured",
        "environment",
        "evaluate_candidate",
        "expected_calibration_error",
        "interleaved_latency",
        "limit_threads",
        "measure_speed",
        "measured",
        "peak_rates",
        "quality_metrics",
    ]
    assert all(getattr(ev, name) is not None for name in ev.__all__)


def test_accuracy_macro_f1_agreement() -> None:
    # gold a a b c, predicted a b b b
    probs = onehot([0, 1, 1, 1]) * 0.7 + 0.1
    m = quality_metrics(probs, ["a", "a", "b", "c"], LABELS, teacher_probs=onehot([0, 0, 1, 1]))
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    # a: P 1, R 1/2, F 2/3; b: P 1/3, R 1, F 1/2; c: never predicted, F 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    )
    assert m["per_class"]["b"]["precision"] == pytest.approx(1 / 3)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["teacher_agreement"] == pytest.approx(0.75)
    assert quality_metrics(probs, ["a"] * 4, LABELS)["teacher_agreement"] is None


def test_macro_f1_skips_absent_labels_and_counts_unknown_gold() -> None:
    labels = ["a", "b", "c", "d"]  # d is neither gold nor predicted
    probs = np.array([[0.9, 0.1, 0, 0], [0.1, 0.9, 0, 0], [0.1, 0.9, 0, 0]])
    m = quality_metrics(probs, ["a", "b", "zzz"], labels)
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert set(m["per_class"]) == {"a", "b", "zzz"}
    # a: F 1; b: P 1/2 R 1 F 2/3; zzz: F 0
    assert m["macro_f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert m["per_class"]["zzz"]["support"] == 1


def test_ece_calibrated_and_overconfident() -> None:
    calibrated = np.array([[0.75, 0.25]] * 4)
    m = quality_metrics(calibrated, ["a", "a", "a", "b"], ["a", "b"])
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)
    overconfident = np.array([[1.0, 0.0]] * 4)
    assert quality_metrics(overconfident, ["a", "b", "a", "b"], ["a", "b"])["ece"] == 0.5
    # two bins: conf 0.9 both right (gap 0.1), conf 0.6 one of two right (gap 0.1)
    conf = np.array([0.9, 0.9, 0.6, 0.6])
    ok = np.array([True, True, True, False])
    assert expected_calibration_error(conf, ok, bins=10) == pytest.approx(0.1)
    # one bin: mean conf 0.75, accuracy 0.75
    assert expected_calibration_error(conf, ok, bins=1) == pytest.approx(0.0)


def test_quality_rejects_bad_shapes() -> None:
    with pytest.raises(SmallfitError, match="shape"):
        quality_metrics(np.ones((2, 2)) / 2, ["a", "b"], LABELS)
    with pytest.raises(SmallfitError, match="teacher"):
        quality_metrics(onehot([0, 1]), ["a", "b"], LABELS, teacher_probs=np.ones((2, 2)))
    with pytest.raises(SmallfitError, match="empty"):
        quality_metrics(np.zeros((0, 3)), [], LABELS)


def test_environment_keys() -> None:
    env = environment()
    assert set(env) >= {
        "python",
        "platform",
        "cpu_model",
        "cpu_flags",
        "logical_cores",
        "torch_threads",
        "packages",
        "timestamp",
    }
    # which flags are reported, not which this host has
    assert set(env["cpu_flags"]) == set(CPU_FLAGS)
    assert all(isinstance(v, bool) for v in env["cpu_flags"].values())
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["smallfit"] is not None
    assert "onnxruntime" in env["packages"]
    assert env["timestamp"].endswith("+00:00")
    if "torch" not in sys.modules:
        assert env["torch_threads"] is None
    json.dumps(env)


# --- speed, on the real linear backend ---------------------------------------------------------

TRAIN = [
    ("my card was charged twice", "billing"),
    ("refund the double charge please", "billing"),
    ("why is there an extra fee on my bill", "billing"),
    ("invoice shows the wrong amount", "billing"),
    ("the app crashes when I log in", "bug"),
    ("error message on the settings page", "bug"),
    ("button does nothing after the update", "bug"),
    ("screen freezes when uploading a photo", "bug"),
    ("how do I change my password", "account"),
    ("I want to delete my account", "account"),
    ("update my email address", "account"),
    ("can I add a second user to my account", "account"),
]


@pytest.fixture(scope="module")
def linear_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from smallfit.models.linear import LinearClassifier

    texts = [t for t, _ in TRAIN]
    labels = sorted({y for _, y in TRAIN})
    targets = np.eye(len(labels), dtype=np.float32)[[labels.index(y) for _, y in TRAIN]]
    config = LinearStudent(name="tiny-linear", char_ngrams=None, max_features=500)
    model = LinearClassifier.fit(
        texts, targets, labels=labels, name=config.name, **linear_args(config)
    )
    return model.save(tmp_path_factory.mktemp("models") / "linear")


FAST = {"latency_queries": 20, "warmup": 2, "throughput_batch": 8, "throughput_batches": 2}


def check_speed(speed: dict, config: EvalConfig) -> None:
    from smallfit.evaluate.speed import cpu_threads_all

    assert set(speed) == {
        "threads",
        "throughput_b8_per_s",
        "throughput_batch",
        "peak_rss_bytes",
        "load_rss_bytes",
        "cpu_threads_all",
        "isolated",
    }
    assert speed["cpu_threads_all"] == cpu_threads_all()
    assert set(speed["threads"]) == {"1", str(cpu_threads_all())}
    one = speed["threads"]["1"]
    assert set(one) == {"p50_ms", "p95_ms", "p99_ms", "mean_ms", "n", "samples_ms"}
    assert one["n"] == config.latency_queries == len(one["samples_ms"])
    assert 0 < one["p50_ms"] <= one["p95_ms"] <= one["p99_ms"]
    # the percentiles are those of the saved samples (the report draws them)
    assert one["p50_ms"] == pytest.approx(float(np.median(one["samples_ms"])), rel=1e-3)
    assert speed["throughput_b8_per_s"] > 0
    assert speed["peak_rss_bytes"] >= speed["load_rss_bytes"] > 1_000_000


@pytest.mark.parametrize("isolate", [False, True])
def test_measure_speed_linear(linear_dir: Path, isolate: bool) -> None:
    config = EvalConfig(isolate=isolate, **FAST)
    speed = measure_speed(linear_dir, [t for t, _ in TRAIN][:5], config)
    check_speed(speed, config)
    assert speed["isolated"] is isolate


def test_isolated_peak_rss_is_the_probes_own(linear_dir: Path) -> None:
    """A parent holding 800 MB must not leak into the probe's peak (ru_maxrss survives exec)."""
    ballast = np.ones(100_000_000, dtype=np.float64)  # 800 MB, touched
    config = EvalConfig(isolate=True, **FAST)
    speed = measure_speed(linear_dir, [t for t, _ in TRAIN][:5], config)
    assert ballast.sum() > 0
    assert speed["peak_rss_bytes"] < 500_000_000


def test_evaluate_candidate_linear(linear_dir: Path, tmp_path: Path) -> None:
    test = Split(
        texts=["charged twice for one order", "app crashes on start", "change my password"],
        labels=["billing", "bug", "account"],
        source="inline",
    )
    teacher = np.eye(3, dtype=np.float32)  # the gold labels, columns billing, bug, account
    config = EvalConfig(isolate=False, **FAST)
    measured = evaluate_candidate(
        linear_dir,
        test=test,
        teacher_test_probs=teacher,
        config=config,
        teacher_labels=["billing", "bug", "account"],
    )
    assert measured.test_probs.shape == (3, 3) and measured.test_probs.dtype == np.float32
    result = measured.result.dump()
    assert set(result) == {
        "name",
        "backend",
        "model_dir",
        "parameters",
        "bytes_on_disk",
        "lineage",
        "quality",
        "speed",
        "roofline",
        "cost",
    }
    assert result["roofline"] is None  # a linear model has no architecture
    # cost per 1M queries: this machine's hourly price over the batched throughput
    speed = result["speed"]
    per_s = speed[f"throughput_b{speed['throughput_batch']}_per_s"]
    assert result["cost"]["per_1m_queries_usd"] == pytest.approx(0.10 / 3600 / per_s * 1e6)
    assert (result["name"], result["backend"]) == ("tiny-linear", "linear")
    assert result["parameters"] > 0 and result["bytes_on_disk"] > 0
    assert result["quality"]["n"] == 3
    # the teacher is the gold here, so agreement equals accuracy once columns are aligned
    assert result["quality"]["teacher_agreement"] == result["quality"]["accuracy"]
    check_speed(result["speed"], config)


def test_speed_errors(tmp_path: Path) -> None:
    with pytest.raises(SmallfitError, match="not a smallfit model directory"):
        measure_speed(tmp_path, ["x"], EvalConfig(**FAST))
    (tmp_path / "smallfit.json").write_text('{"kind": "nope", "labels": ["a"]}', "utf-8")
    with pytest.raises(SmallfitError, match="unknown model kind 'nope'"):
        measure_speed(tmp_path, ["x"], EvalConfig(isolate=True, **FAST))
    with pytest.raises(SmallfitError, match="no texts"):
        measure_speed(tmp_path, [], EvalConfig(**FAST))


def test_probe_never_imports_torch_for_linear(linear_dir: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["refund please", "app crashes"]), encoding="utf-8")
    config = EvalConfig(**FAST).model_dump_json()
    code = (
        "import sys, contextlib, io\n"
        "from smallfit.evaluate.probe import main\n"
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        f"    rc = main([{str(linear_dir)!r}, '--texts-file', {str(texts)!r}, "
        f"'--config-json', {config!r}])\n"
        "print(rc, 'torch' in sys.modules, out.getvalue().count('p50_ms'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    rc, torch_loaded, settings = proc.stdout.split()
    assert (rc, torch_loaded) == ("0", "False") and int(settings) >= 1


def test_limit_threads_sets_and_restores_torch() -> None:
    torch = pytest.importorskip("torch")
    from smallfit.evaluate.speed import limit_threads

    before = torch.get_num_threads()
    with limit_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_interleaved_latency_times_each_model_every_turn(linear_dir: Path) -> None:
    from smallfit.evaluate import interleaved_latency
    from smallfit.models import load

    a, b = load(linear_dir), load(linear_dir)
    out = interleaved_latency({"a": a, "b": b}, [t for t, _ in TRAIN][:4], queries=15, warmup=2)
    assert set(out) == {"a", "b"}
    for stats in out.values():
        assert stats["n"] == 15
        assert 0 < stats["p50_ms"] <= stats["p95_ms"] <= stats["p99_ms"]


def test_interleaved_latency_in_blocks_opens_each_turn_with_an_untimed_query(
    linear_dir: Path,
) -> None:
    from smallfit.evaluate import interleaved_latency
    from smallfit.models import load

    asked: list[tuple[str, str]] = []

    def counted(name: str) -> Any:
        model = load(linear_dir)
        answer = model.answer

        def answering(texts: list[str]) -> Any:
            asked.append((name, texts[0]))
            return answer(texts)

        model.answer = answering  # type: ignore[method-assign]
        return model

    texts = [t for t, _ in TRAIN][:6]
    out = interleaved_latency(
        {"a": counted("a"), "b": counted("b")}, texts, queries=10, block=4, samples=True
    )
    assert [out[m]["n"] for m in "ab"] == [10, 10]
    # turns of 4, 4 and 2 queries, each opened by its first text once more, untimed
    turn = [texts[0], *texts[:4]]
    assert asked[:10] == [("a", t) for t in turn] + [("b", t) for t in turn]
    assert len(asked) == 2 * (10 + 3)


def test_a_probe_past_its_time_budget_stops_at_its_minimum(linear_dir: Path) -> None:
    from smallfit.evaluate.speed import MIN_BATCHES, MIN_QUERIES, measure_loaded
    from smallfit.models import load

    texts = [t for t, _ in TRAIN][:4]
    spent = EvalConfig(**{**FAST, "latency_queries": 500, "throughput_batches": 50})
    spent = spent.model_copy(update={"probe_budget_s": 1e-9, "threads": [1]})
    speed = measure_loaded(load(linear_dir), texts, spent, load_rss_bytes=0, isolated=False)
    assert speed["threads"]["1"]["n"] == MIN_QUERIES == len(speed["threads"]["1"]["samples_ms"])
    assert MIN_BATCHES >= 2 and speed[f"throughput_b{spent.throughput_batch}_per_s"] > 0
    unlimited = spent.model_copy(update={"probe_budget_s": None, "latency_queries": 40})
    again = measure_loaded(load(linear_dir), texts, unlimited, load_rss_bytes=0, isolated=False)
    assert again["threads"]["1"]["n"] == 40


def test_unanswered_rows_count_wrong_whatever_their_probabilities() -> None:
    # row 0's uniform probabilities would argmax to "a", its gold: it must still count wrong
    probs = np.array([[1 / 3, 1 / 3, 1 / 3], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    gold = ["a", "b", "c"]
    plain = quality_metrics(probs, gold, LABELS)
    masked = quality_metrics(probs, gold, LABELS, unanswered=np.array([True, False, False]))
    assert plain["accuracy"] == 1.0 and plain["unanswered"] == 0
    assert masked["accuracy"] == pytest.approx(2 / 3) and masked["unanswered"] == 1
    assert masked["per_class"]["a"]["recall"] == 0.0
    assert "(unanswered)" not in masked["per_class"]


# -- 95% intervals -------------------------------------------------------------------------------


def _noisy(gold: np.ndarray, right: float, k: int, seed: int) -> np.ndarray:
    """One-hot probabilities that are right on about ``right`` of the rows."""
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(len(gold)) < right, gold, rng.integers(0, k, len(gold)))
    return np.eye(k)[pred] * 0.8 + 0.2 / k


def test_every_quality_figure_has_a_seeded_bootstrap_interval() -> None:
    k, n = 5, 2000
    labels = [f"l{i}" for i in range(k)]
    gold_idx = np.random.default_rng(0).integers(0, k, n)
    gold = [labels[i] for i in gold_idx]
    probs, teacher = _noisy(gold_idx, 0.9, k, 1), _noisy(gold_idx, 0.92, k, 2)
    m = quality_metrics(probs, gold, labels, teacher_probs=teacher)
    assert m["bootstrap"] == {"method": "percentile", "resamples": 1000, "seed": 0, "level": 0.95}
    assert set(m["ci95"]) == {"accuracy", "macro_f1", "teacher_agreement", "ece"}
    for name, (lo, hi) in m["ci95"].items():
        assert lo < m[name] < hi, name
    # a share's interval is about +-1.96 standard errors wide
    p = m["accuracy"]
    half = 1.96 * np.sqrt(p * (1 - p) / n)
    lo, hi = m["ci95"]["accuracy"]
    assert (hi - lo) / 2 == pytest.approx(half, rel=0.15)
    # seeded: the same test set gets the same intervals; a 25x smaller one, 5x wider ones
    assert quality_metrics(probs, gold, labels, teacher_probs=teacher) == m
    small = quality_metrics(probs[:80], gold[:80], labels)
    assert small["ci95"]["accuracy"][1] - small["ci95"]["accuracy"][0] > 3 * (hi - lo)
    assert small["teacher_agreement"] is None and small["vs_teacher"] is None
    assert small["ci95"]["teacher_agreement"] is None
    none = quality_metrics(probs, gold, labels, teacher_probs=teacher, resamples=0)
    assert none["ci95"] is None and none["vs_teacher"] is None and none["accuracy"] == p


def test_difference_from_the_teacher_is_paired() -> None:
    """The same resampled texts for both models: two models that differ on a few texts are
    told apart although each one's own interval is far wider than the gap."""
    k, n = 4, 3000
    labels = ["a", "b", "c", "d"]
    gold_idx = np.random.default_rng(3).integers(0, k, n)
    gold = [labels[i] for i in gold_idx]
    teacher = _noisy(gold_idx, 0.85, k, 4)
    student = teacher.copy()
    fixed = np.flatnonzero(teacher.argmax(axis=1) != gold_idx)[:20]  # 0.67 pt better
    student[fixed] = np.eye(k)[gold_idx[fixed]]
    m = quality_metrics(student, gold, labels, teacher_probs=teacher)
    t = quality_metrics(teacher, gold, labels)
    paired = m["vs_teacher"]["accuracy"]
    assert paired["diff"] == pytest.approx(m["accuracy"] - t["accuracy"]) == pytest.approx(20 / n)
    assert m["vs_teacher"]["macro_f1"]["diff"] == pytest.approx(m["macro_f1"] - t["macro_f1"])
    lo, hi = paired["ci95"]
    assert 0 < lo < paired["diff"] < hi  # resolved: the student is better
    own = m["ci95"]["accuracy"]
    assert own[0] < t["accuracy"] and hi - lo < (own[1] - own[0]) / 3  # unpaired: not resolved
    # against itself: a difference of exactly 0
    same = quality_metrics(teacher, gold, labels, teacher_probs=teacher)["vs_teacher"]
    assert same["accuracy"] == {"diff": 0.0, "ci95": [0.0, 0.0]}


def test_a_teachers_unanswered_rows_count_wrong_in_the_paired_difference() -> None:
    """An API teacher's unparseable reply is a uniform row (counted wrong in its own
    evaluation): the paired difference must not score it as the first label."""
    gold = ["a", "b", "c", "a"]
    teacher = np.array([[1 / 3] * 3, [0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=np.float32)
    own = quality_metrics(teacher, gold, LABELS, unanswered=np.array([1, 0, 0, 0], bool))
    student = quality_metrics(onehot([0, 1, 2, 1]), gold, LABELS, teacher_probs=teacher)
    assert student["vs_teacher"]["accuracy"]["diff"] == pytest.approx(
        student["accuracy"] - own["accuracy"]
    )
    assert student["vs_teacher"]["macro_f1"]["diff"] == pytest.approx(
        student["macro_f1"] - own["macro_f1"]
    )


def test_macro_f1_interval_counts_classes_as_the_point_estimate_does() -> None:
    """Unknown gold labels, unanswered rows and absent labels: each resample's macro-F1 follows
    the point estimate's rules, so the interval holds the estimate on a skewed test set."""
    labels = ["a", "b", "c", "d"]
    rng = np.random.default_rng(5)
    gold = list(rng.choice(["a", "a", "a", "b", "c", "zzz"], 600))
    probs = np.eye(4)[rng.choice([0, 0, 1, 2], 600)] * 0.9 + 0.025
    missing = rng.random(600) < 0.05
    m = quality_metrics(probs, gold, labels, unanswered=missing, teacher_probs=probs)
    lo, hi = m["ci95"]["macro_f1"]
    assert lo < m["macro_f1"] < hi and hi - lo < 0.1
    # an unanswered row is wrong for the student but not for the teacher that answered it
    t = quality_metrics(probs, gold, labels)
    assert m["vs_teacher"]["macro_f1"]["diff"] == pytest.approx(m["macro_f1"] - t["macro_f1"])
    assert m["vs_teacher"]["accuracy"]["diff"] == pytest.approx(m["accuracy"] - t["accuracy"])


def test_rows_without_gold_count_for_agreement_only() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    teacher = rng.dirichlet(np.ones(3), size=40)
    gold = [LABELS[i] for i in rng.integers(0, 3, size=40)]
    part = [g if i % 4 == 0 else "" for i, g in enumerate(gold)]
    m = quality_metrics(probs, part, LABELS, teacher_probs=teacher, resamples=200)
    rows = [i for i in range(40) if i % 4 == 0]
    on_gold = quality_metrics(
        probs[rows], [gold[i] for i in rows], LABELS, teacher_probs=teacher[rows], resamples=200
    )
    for key in ("accuracy", "macro_f1", "ece", "per_class", "vs_teacher"):
        assert m[key] == on_gold[key], key
    assert (m["n"], m["n_gold"]) == (40, 10)
    agree = probs.argmax(1) == teacher.argmax(1)
    assert m["teacher_agreement"] == pytest.approx(agree.mean())
    lo, hi = m["ci95"]["teacher_agreement"]
    assert lo <= agree.mean() <= hi and lo < hi
    none = quality_metrics(probs, [""] * 40, LABELS, teacher_probs=teacher, resamples=200)
    assert none["accuracy"] is none["macro_f1"] is none["ece"] is None
    assert none["per_class"] == {} and none["n_gold"] == 0
    assert none["teacher_agreement"] == m["teacher_agreement"]
    assert none["ci95"]["accuracy"] is None and none["ci95"]["teacher_agreement"] == [lo, hi]
    # no gold and no teacher: nothing to measure against but the count
    bare = quality_metrics(probs, [""] * 40, LABELS, resamples=0)
    assert bare["teacher_agreement"] is None and bare["n"] == 40
