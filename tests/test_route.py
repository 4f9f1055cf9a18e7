"""Cascades on real models: routing rules, calibration for each kind of target, the saved
cascade loaded and run live (it must decide exactly as the calibration's replay), abstention on
real out-of-scope texts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_dataset

from smallfit.config import (
    AbstainConfig,
    DataConfig,
    EvalConfig,
    FitConfig,
    LinearStudent,
    ModelTeacher,
    RouteConfig,
    SelectConfig,
    parse_target,
)
from smallfit.data import load_dataset, read_split
from smallfit.errors import SmallfitError
from smallfit.models import load
from smallfit.pipeline import fit
from smallfit.route import Cascade, Tier, calibrate, confidence_scores, load_tiers
from smallfit.route.calibration import NEVER, TierOutputs
from smallfit.route.stage import route_run

pytestmark = pytest.mark.slow


def test_confidence_measures_order_sure_above_unsure() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.5, 0.4, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    for measure in ("max_prob", "margin", "entropy"):
        conf = confidence_scores(probs, measure)
        assert conf[0] > conf[1] > conf[2], measure
        assert np.all((conf >= -1e-9) & (conf <= 1 + 1e-9))
    assert confidence_scores(probs, "margin")[1] == pytest.approx(0.1)
    assert confidence_scores(probs, "entropy")[2] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(SmallfitError, match="unknown confidence"):
        confidence_scores(probs, "vibes")


def test_targets_parse_and_bad_ones_say_what_is_expected() -> None:
    assert parse_target("accuracy >= teacher - 0.5pt").value == pytest.approx(-0.005)
    assert parse_target("accuracy >= teacher - 0.5pt").relative_to_teacher
    assert parse_target("accuracy >= 0.92").value == 0.92
    assert parse_target("escalation <= 10%").value == pytest.approx(0.10)
    assert parse_target("cost <= 2.5").kind == "cost"
    for bad in ("accuracy <= 0.9", "escalation >= 10%", "latency <= 5", "accuracy >= 92"):
        with pytest.raises(ValueError, match=r"targets look like|accuracy target"):
            parse_target(bad)
    with pytest.raises(ValueError, match=r"route\.target"):
        FitConfig.model_validate({"data": {"train": "x"}, "route": {"target": "cheap please"}})


def test_calibration_replays_the_routing_rule_exactly() -> None:
    """Synthetic tiers with known answers: the chosen threshold keeps what the target allows."""
    rng = np.random.default_rng(0)
    n, k = 400, 4
    gold = rng.integers(0, k, n)
    sure = rng.random(n) < 0.7  # the cheap tier is right and sure on 70%, unsure elsewhere
    cheap = np.full((n, k), 0.1)
    cheap[np.arange(n), np.where(sure, gold, (gold + 1) % k)] = np.where(sure, 0.9, 0.4)
    cheap /= cheap.sum(1, keepdims=True)
    big = np.eye(k)[gold] * 0.97 + 0.01
    tiers = [
        TierOutputs("cheap", cheap, cost_per_1m_usd=0.1),
        TierOutputs("big", big, cost_per_1m_usd=10.0),
    ]
    cal = calibrate(tiers, gold, target="accuracy >= teacher - 0.5pt")
    assert cal.met_on_dev and cal.dev.accuracy == pytest.approx(1.0)
    assert cal.dev.escalation == pytest.approx(1 - sure.mean())  # every unsure row, no more
    assert cal.dev.cost_per_1m_usd == pytest.approx(0.1 + 10.0 * (1 - sure.mean()))
    budget = calibrate(tiers, gold, target="escalation <= 10%")
    assert budget.dev.escalation <= 0.10 and budget.met_on_dev
    cheap_only = calibrate(tiers, gold, target="cost <= 0.1")
    assert cheap_only.dev.escalation == 0 and cheap_only.thresholds == [0.0]
    impossible = calibrate(tiers, gold, target="cost <= 0.01")
    assert not impossible.met_on_dev
    curve = cal.curve
    assert [p.escalation for p in curve] == sorted(p.escalation for p in curve)
    assert [p.accuracy for p in curve] == sorted(p.accuracy for p in curve)
    assert all(0.0 <= t <= NEVER for p in curve for t in p.thresholds)


def test_an_accuracy_target_is_met_with_a_margin_for_the_dev_noise() -> None:
    """The cheap tier is wrong on 6% of rows, at random confidences: meeting "teacher - 2pt"
    exactly escalates until 2 points of errors are left; with a margin of standard errors of
    the paired difference, it escalates more, and the margin it keeps is that many standard
    errors."""
    rng = np.random.default_rng(1)
    n, k = 1000, 3
    gold = rng.integers(0, k, n)
    wrong = rng.random(n) < 0.06
    cheap = np.full((n, k), 0.0)
    conf = rng.uniform(0.4, 1.0, n)
    answer = np.where(wrong, (gold + 1) % k, gold)
    cheap[np.arange(n), answer] = conf
    cheap[np.arange(n), (answer + 1) % k] = 1 - conf
    big = np.eye(k)[gold]
    tiers = [TierOutputs("cheap", cheap), TierOutputs("big", big)]
    exact = calibrate(tiers, gold, target="accuracy >= teacher - 2pt")
    assert exact.dev.accuracy == pytest.approx(0.98, abs=1e-3)
    safe = calibrate(tiers, gold, target="accuracy >= teacher - 2pt", margin_se=1.645)
    assert safe.met_on_dev and safe.dev.escalation > exact.dev.escalation
    d = 1 - safe.dev.accuracy  # the share of rows the cascade gets wrong (the teacher: none)
    se = np.sqrt(d * (1 - d) * n / (n - 1) / n)
    assert safe.dev.accuracy - 1.645 * se >= 0.98 - 1e-9


def _with_out_of_scope(snips_slice: Path, out: Path) -> Path:
    """The SNIPS slice, its test file plus 30 movie-review sentences (SST-2) labelled ``oos``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text((snips_slice / "train.jsonl").read_text("utf-8"), "utf-8")
    reviews = read_split(shared_dataset("sst2") / "test.jsonl").texts[:30]
    oos = [json.dumps({"text": t, "label": "oos"}) for t in reviews]
    test = (snips_slice / "test.jsonl").read_text("utf-8").rstrip("\n").split("\n")
    (out / "test.jsonl").write_text("\n".join([*test, *oos]) + "\n", "utf-8")
    return out


@pytest.fixture(scope="module")
def routed_run(snips_slice: Path, snips_minilm: Path, tmp_path_factory: pytest.TempPathFactory):
    """A real run: the MiniLM classifier as the teacher, a linear student; cascade linear ->
    teacher, abstaining on the teacher's least sure 10% of in-scope dev queries."""
    data = _with_out_of_scope(snips_slice, tmp_path_factory.mktemp("oos-data"))
    config = FitConfig(
        run_dir=tmp_path_factory.mktemp("route") / "run",
        data=DataConfig(
            train=data / "train.jsonl",
            test=data / "test.jsonl",
            dev_fraction=0.25,
            out_of_scope="oos",
        ),
        teacher=ModelTeacher(path=snips_minilm),
        students=[LinearStudent()],
        evaluate=EvalConfig(latency_queries=10, warmup=2, throughput_batches=2, isolate=False),
        select=SelectConfig(quality_floor="0.1"),
        route=RouteConfig(
            tiers=["linear", "teacher"],
            target="accuracy >= teacher - 0.5pt",
            abstain=AbstainConfig(label="oos", in_scope_loss=0.1),
        ),
    )
    result = fit(config, progress=False, log=lambda _: None)
    return config, result


def test_fit_calibrates_saves_and_measures_the_cascade(routed_run) -> None:
    config, result = routed_run
    run = Path(config.run_dir)
    summary = json.loads((run / "cascade.json").read_text("utf-8"))
    assert summary["tiers"] == ["linear", "teacher"]
    assert summary["met_on_dev"] is True
    test = summary["test"]
    assert sum(test["answered_by"]) + test["abstained"] == pytest.approx(1.0)
    teacher = next(c for c in result.results.dump()["candidates"] if c["name"] == "teacher")
    # the reference abstains as the cascade does, so it is below the teacher's own accuracy
    assert summary["reference_accuracy"]["test"] < teacher["quality"]["accuracy"]
    assert test["accuracy"] >= summary["reference_accuracy"]["test"] - 0.05
    cascade = next(c for c in result.results.dump()["candidates"] if c["name"] == "cascade")
    assert cascade["backend"] == "cascade"
    assert cascade["quality"]["n"] == len(load_dataset(config.data).test)
    assert cascade["speed"]["threads"]["1"]["p50_ms"] > 0
    assert cascade["bytes_on_disk"] > sum(
        c["bytes_on_disk"] for c in result.results.dump()["candidates"] if c["name"] == "linear"
    )
    assert result.results.dump()["cascade"]["thresholds"] == summary["thresholds"]
    assert "cascade" in result.table
    # out of scope: the movie reviews are caught far more often than in-scope queries
    oos = summary["out_of_scope"]
    assert oos["n"] == 30 and oos["label"] == "oos"
    assert oos["caught"] > 2 * max(test["abstained"], 0.1)


def test_the_saved_cascade_decides_live_as_the_replay_did(routed_run) -> None:
    config, _ = routed_run
    run = Path(config.run_dir)
    cascade = load(run / "models" / "cascade")
    assert isinstance(cascade, Cascade)
    assert cascade.labels[-1] == "oos" and cascade.abstain is not None
    test = load_dataset(config.data).test
    decisions = cascade.decide(test.texts)
    replayed = np.load(run / "results" / "cascade.test_probs.npy", allow_pickle=False)
    assert np.array_equal(decisions.probs.argmax(1), replayed.argmax(1))
    summary = json.loads((run / "cascade.json").read_text("utf-8"))
    for i, share in enumerate(summary["test"]["answered_by"]):
        assert (decisions.tier == i).mean() == pytest.approx(share)
    assert decisions.abstained.mean() == pytest.approx(summary["test"]["abstained"])
    # an abstention answers the out-of-scope label; the rows sum to one
    assert all(cascade.labels[i] == "oos" for i in decisions.probs[decisions.abstained].argmax(1))
    assert np.allclose(decisions.probs.sum(1), 1.0, atol=1e-5)
    assert not decisions.fallback.any()


def test_recalibrating_a_run_for_a_budget_target(routed_run) -> None:
    config, _ = routed_run
    summary = route_run(
        config.run_dir,
        RouteConfig(tiers=["linear", "teacher"], target="escalation <= 10%"),
        progress=False,
        log=lambda _: None,
    )
    assert summary.met_on_dev and summary.dev.escalation <= 0.10
    assert summary.out_of_scope is None  # no abstention configured this time
    results = json.loads((Path(config.run_dir) / "results.json").read_text("utf-8"))
    assert [c["name"] for c in results["candidates"]].count("cascade") == 1
    assert results["cascade"]["target"] == "escalation <= 10%"


def test_bad_tiers_and_thresholds_are_named(routed_run, snips_minilm: Path) -> None:
    config, _ = routed_run
    with pytest.raises(SmallfitError, match="'nope' is neither a model of the run"):
        route_run(config.run_dir, RouteConfig(tiers=["nope", "teacher"]), progress=False)
    tiers = load_tiers([snips_minilm, snips_minilm])
    with pytest.raises(SmallfitError, match="has no threshold"):
        Cascade(tiers)
    one = Cascade([Tier(model=tiers[0].model, threshold=None, path=tiers[0].path)])
    assert one.predict(["play some jazz"]) == tiers[0].model.predict(["play some jazz"])


def test_the_route_command_recalibrates_a_run(routed_run) -> None:
    import subprocess
    import sys

    config, _ = routed_run
    out = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "route", str(config.run_dir), "--tiers",
         "linear,teacher", "--target", "escalation <= 20%", "-q"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "cascade: linear -> teacher, thresholds" in out.stdout
    summary = json.loads((Path(config.run_dir) / "cascade.json").read_text("utf-8"))
    assert summary["target"] == "escalation <= 20%" and summary["dev"]["escalation"] <= 0.2
    bad = subprocess.run(
        [sys.executable, "-m", "smallfit.cli", "route", str(config.run_dir), "--target", "cheap"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "route options" in bad.stderr and "target" in bad.stderr


def test_when_the_teacher_wins_the_cascade_is_the_way_off_it(
    snips_slice: Path, snips_minilm: Path, tmp_path: Path
) -> None:
    """No student reaches the floor, so the teacher is selected: the cascade is still built
    from the best local candidate to the teacher, and recommended when it keeps a real share
    of queries off the teacher (in the table, the JSON line and the report)."""
    config = FitConfig(
        run_dir=tmp_path / "run",
        data=DataConfig(
            train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl", dev_fraction=0.25
        ),
        teacher=ModelTeacher(path=snips_minilm),
        # a deliberately weak linear student: 30 word features, heavily regularised
        students=[LinearStudent(char_ngrams=None, max_features=30, C=0.05)],
        evaluate=EvalConfig(latency_queries=10, warmup=2, throughput_batches=2, isolate=False),
        select=SelectConfig(quality_floor="1.0 * teacher"),
        route=RouteConfig(target="escalation <= 50%"),
    )
    result = fit(config, progress=False, log=lambda _: None)
    assert result.chosen == "teacher"
    cascade = json.loads((result.run_dir / "cascade.json").read_text("utf-8"))
    assert cascade["tiers"] == ["linear", "teacher"]
    assert cascade["met_on_test"] and cascade["test"]["escalation"] <= 0.75
    line = json.loads(result.selection_json)
    assert result.recommended == "cascade" and line["recommended"]["name"] == "cascade"
    assert "answered before the teacher" in line["recommended"]["reason"]
    saved = json.loads((result.run_dir / "results.json").read_text("utf-8"))
    assert saved["selection"]["recommended"]["name"] == "cascade"
    row = next(r for r in result.table.splitlines() if r.split()[1:2] == ["cascade"])
    assert row.startswith("=>")
    assert "recommended: cascade" in result.table
    assert result.report is not None
    assert 'data-recommended="cascade"' in result.report.read_text("utf-8")


def test_the_cascade_is_not_recommended_without_a_real_local_share() -> None:
    from smallfit.route.stage import best_local, recommend
    from smallfit.run.records import (
        CandidateResult,
        CascadeSummary,
        Intervals,
        Latency,
        Point,
        Quality,
        Speed,
    )

    def summary(escalation: float, met: bool = True) -> CascadeSummary:
        # the fields recommend reads (model_construct: the rest of a summary is not needed)
        return CascadeSummary.model_construct(
            tiers=["linear", "teacher"],
            target="accuracy >= teacher - 0.5pt",
            met_on_dev=True,
            met_on_test=met,
            test=Point.model_construct(escalation=escalation),
        )

    cascade = summary(0.9)
    assert recommend("teacher", cascade, min_local=0.25)["name"] == "teacher"
    assert recommend("teacher", summary(0.5), min_local=0.25)["name"] == "cascade"
    missed = summary(0.1, met=False)
    assert "misses its target" in recommend("teacher", missed, min_local=0.25)["reason"]
    # a cascade that misses its own (stricter) target but clears the selection's floor
    over = recommend("teacher", missed, min_local=0.25, over_floor=True)
    assert over["name"] == "cascade" and "is over the quality floor" in over["reason"]
    assert (
        recommend("teacher", summary(0.9, met=False), min_local=0.25, over_floor=True)["name"]
        == "teacher"
    )  # over the floor, but too little kept local
    assert recommend("linear", cascade, min_local=0.25)["name"] == "linear"

    def candidate(
        name: str,
        accuracy: float,
        size: int,
        remote: bool = False,
        ci: list[float] | None = None,
        p50: float = 1.0,
    ) -> CandidateResult:
        # the fields best_local reads (model_construct: the rest of a result is not needed)
        intervals = Intervals.model_construct(accuracy=ci) if ci else None
        return CandidateResult.model_construct(
            name=name,
            bytes_on_disk=size,
            quality=Quality.model_construct(accuracy=accuracy, ci95=intervals),
            speed=Speed.model_construct(
                remote=remote, threads={"1": Latency.model_construct(p50_ms=p50)}
            ),
        )

    candidates = [
        candidate("teacher", 0.95, 9),
        candidate("a", 0.90, 5),
        candidate("b", 0.90, 3),
        candidate("api", 0.99, 1, remote=True),
    ]
    assert best_local(candidates, "accuracy") == "b"  # no interval: the best, then smaller
    # with intervals: the fastest the test set cannot tell from the best
    measured = [
        candidate("teacher", 0.95, 9),
        candidate("fp32", 0.948, 90, ci=[0.938, 0.958], p50=13.8),
        candidate("int8", 0.945, 24, ci=[0.936, 0.955], p50=3.1),
        candidate("l3", 0.92, 18, ci=[0.909, 0.932], p50=1.5),
    ]
    assert best_local(measured, "accuracy") == "int8"
