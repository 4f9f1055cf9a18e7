"""Knowing what it does not know: labels held out of training become out-of-scope test texts; every
out-of-scope score separates in-scope from out-of-scope on a constructed case; a real run (SNIPS
slice, two intents held out, plus movie reviews labelled ``oos``, a real MiniLM tier abstaining
on a score fitted on its training embeddings) measures every score's catch-against-loss curve
into ``cascade.json``, saves what the score needs, decides identically live, in replay and
served, and the report draws the curve."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import shared_dataset

from smallfit.config import (
    AbstainConfig,
    DataConfig,
    EvalConfig,
    FitConfig,
    GoldTeacher,
    LinearStudent,
    RouteConfig,
    SelectConfig,
    ServeConfig,
)
from smallfit.data import load_dataset, read_split
from smallfit.errors import DataError
from smallfit.models import load
from smallfit.models.base import Signals
from smallfit.route import Cascade, catch_curve, make_score, score_names
from smallfit.route.oos import LOSSES

SST2_REVIEWS = 30


def _with_reviews(snips_slice: Path, out: Path) -> Path:
    """The SNIPS slice, its test file plus movie-review sentences (SST-2) labelled ``oos``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text((snips_slice / "train.jsonl").read_text("utf-8"), "utf-8")
    reviews = read_split(shared_dataset("sst2") / "test.jsonl").texts[:SST2_REVIEWS]
    oos = [json.dumps({"text": t, "label": "oos"}) for t in reviews]
    test = (snips_slice / "test.jsonl").read_text("utf-8").rstrip("\n").split("\n")
    (out / "test.jsonl").write_text("\n".join([*test, *oos]) + "\n", "utf-8")
    return out


# -- holding labels out ------------------------------------------------------------------------


def test_held_out_labels_leave_training_and_become_out_of_scope(snips_slice: Path) -> None:
    base = DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl")
    full = load_dataset(base)
    data = load_dataset(base.model_copy(update={"hold_out_labels": 2}))
    assert len(data.held_out) == 2 and set(data.held_out) < set(full.labels)
    assert data.labels == sorted(set(full.labels) - set(data.held_out))
    for split in (data.train, data.dev, data.test):
        assert not set(split.labels) & set(data.held_out)
    # their test rows, and only those, are the out-of-scope texts; the rest of test is unmoved
    rows = list(zip(full.test.texts, full.test.labels, strict=True))
    held_test = [t for t, y in rows if y in data.held_out]
    assert data.out_of_scope == held_test and len(held_test) == 2 * 12
    assert set(data.out_of_scope_labels) == set(data.held_out)
    kept = [t for t, y in rows if y not in data.held_out]
    assert data.test.texts == kept
    # seeded: the same seed draws the same labels, other seeds others
    assert load_dataset(base.model_copy(update={"hold_out_labels": 2})).held_out == data.held_out
    draws = {
        tuple(load_dataset(base.model_copy(update={"hold_out_labels": 2, "seed": s})).held_out)
        for s in range(6)
    }
    assert len(draws) > 1
    named = load_dataset(base.model_copy(update={"hold_out_labels": ["RateBook", "GetWeather"]}))
    assert named.held_out == ["GetWeather", "RateBook"]
    # with no test file, the held-out rows carved into test are the out-of-scope texts
    carved = load_dataset(
        DataConfig(train=snips_slice / "train.jsonl", hold_out_labels=["PlayMusic"])
    )
    assert carved.out_of_scope and set(carved.out_of_scope_labels) == {"PlayMusic"}
    assert "PlayMusic" not in carved.train.labels + carved.dev.labels + carved.test.labels


def test_a_data_out_of_scope_label_and_held_out_labels_combine(
    snips_slice: Path, tmp_path: Path
) -> None:
    folder = _with_reviews(snips_slice, tmp_path)
    data = load_dataset(
        DataConfig(
            train=folder / "train.jsonl",
            test=folder / "test.jsonl",
            out_of_scope="oos",
            hold_out_labels=["PlayMusic"],
        )
    )
    assert data.out_of_scope_labels.count("oos") == SST2_REVIEWS
    assert data.out_of_scope_labels.count("PlayMusic") == 12
    assert "oos" not in data.labels and "PlayMusic" not in data.labels


def test_bad_held_out_labels_name_the_key(snips_slice: Path) -> None:
    base = DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl")
    with pytest.raises(DataError, match=r"hold_out_labels.*at most 5") as err:
        load_dataset(base.model_copy(update={"hold_out_labels": 6}))
    assert err.value.field == "hold_out_labels"
    with pytest.raises(DataError, match=r"hold_out_labels names \['Weather'\]"):
        load_dataset(base.model_copy(update={"hold_out_labels": ["Weather"]}))
    with pytest.raises(ValueError, match=r"data\.hold_out_labels"):
        FitConfig.model_validate({"data": {"train": "x", "hold_out_labels": 0}})
    with pytest.raises(ValueError, match=r"route\.abstain\.score"):
        FitConfig.model_validate({"data": {"train": "x"}, "route": {"abstain": {"score": "vibes"}}})


# -- the scores ----------------------------------------------------------------------------------


def _constructed(seed: int = 0) -> tuple[Signals, np.ndarray, Signals, Signals]:
    """(training signals, their labels, in-scope signals, out-of-scope signals): 4 classes
    with tight clusters of embeddings and a head that reads them; the in-scope queries sit in
    the clusters, the out-of-scope ones between them (flat, small logits)."""
    rng = np.random.default_rng(seed)
    k, d = 4, 16
    centres = np.eye(k, d) * 3.0
    head = centres.T * 2.0  # logits = embedding @ head

    def signals(emb: np.ndarray) -> Signals:
        logits = emb @ head
        z = np.exp(logits - logits.max(1, keepdims=True))
        return Signals(probs=z / z.sum(1, keepdims=True), logits=logits, embeddings=emb)

    labels = np.repeat(np.arange(k), 50)
    train = centres[labels] + rng.normal(0, 0.3, (len(labels), d))
    inside = centres[np.arange(40) % k] + rng.normal(0, 0.3, (40, d))
    between = centres.mean(0) + rng.normal(0, 0.3, (40, d))
    return signals(train), labels, signals(inside), signals(between)


@pytest.mark.parametrize("name", score_names())
def test_every_score_ranks_in_scope_above_out_of_scope(name: str) -> None:
    train, labels, inside, between = _constructed()
    score = make_score(name).fit(train, labels)
    assert score(inside).min() > score(between).max(), name
    # what a fitted score keeps is all it needs: a fresh one loaded from it scores exactly the
    # same, so the run's thresholds and figures are the saved cascade's
    again = make_score(name).load_state(score.state())
    for queries in (inside, between):
        np.testing.assert_array_equal(again(queries), score(queries))


def test_energy_reads_logits_at_the_tier_temperature() -> None:
    logits = np.array([[4.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    energy = make_score("energy")
    cold = energy(Signals(probs=np.full((2, 3), 1 / 3), logits=logits, temperature=1.0))
    assert cold == pytest.approx(np.log(np.exp(logits).sum(1)))
    hot = energy(Signals(probs=np.full((2, 3), 1 / 3), logits=logits, temperature=2.0))
    assert hot == pytest.approx(2.0 * np.log(np.exp(logits / 2.0).sum(1)))


def test_the_catch_curve_is_the_share_below_each_in_scope_quantile() -> None:
    rng = np.random.default_rng(1)
    test = rng.normal(1.0, 1.0, 2000)
    oos = rng.normal(-1.0, 1.0, 500)
    out = catch_curve(dev=test[:1000], test=test, oos=oos)
    points = out["curve"]
    assert [p["loss"] for p in points] == list(LOSSES)
    caught = [p["caught"] for p in points]
    assert caught == sorted(caught)  # more loss allowed, never fewer caught
    five = next(p for p in points if p["loss"] == 0.05)
    cut = np.quantile(test, 0.05, method="lower")
    assert five["caught"] == pytest.approx((oos < cut).mean())
    assert five["interval"][0] <= five["caught"] <= five["interval"][1]
    assert five["lost_dev"] == pytest.approx(0.05, abs=0.02)
    assert 0.9 < out["auroc"] < 0.95  # two unit normals 2 apart: Phi(2 / sqrt 2) = 0.921


def test_a_tier_gives_what_a_score_needs_or_is_refused(snips_linear: Path) -> None:
    from smallfit.errors import SmallfitError
    from smallfit.route import Abstain, Tier

    linear = load(snips_linear)
    texts = ["play some jazz", "will it rain tomorrow in paris"]
    out = linear.outputs(texts, need=frozenset({"logits"}))
    z = np.exp(out.logits - out.logits.max(1, keepdims=True))
    np.testing.assert_allclose(z / z.sum(1, keepdims=True), out.probs, atol=1e-5)
    np.testing.assert_allclose(out.probs, linear.predict_proba(texts), atol=1e-6)
    with pytest.raises(SmallfitError, match="gives no embeddings"):
        linear.outputs(texts, need=frozenset({"embeddings"}))
    tier = Tier(model=linear, threshold=None, path=snips_linear)
    with pytest.raises(SmallfitError, match="knn out-of-scope score needs embeddings"):
        Cascade(
            [tier], abstain=Abstain(label="oos", threshold=0.5, tier=0, score=make_score("knn"))
        )
    energy = Abstain(label="oos", threshold=1e9, tier=0, score=make_score("energy"))
    assert Cascade([tier], abstain=energy).decide(texts).abstained.all()  # logits suffice


def test_the_default_score_is_the_strongest_the_tier_gives(snips_linear: Path) -> None:
    from smallfit.route.scores import AUTO, AUTO_ORDER, resolve_score

    assert AbstainConfig().score == AUTO
    assert resolve_score(AUTO, load(snips_linear).signals) == "max_prob"  # no embeddings
    assert resolve_score(AUTO, frozenset({"logits", "embeddings"})) == AUTO_ORDER[0]
    assert resolve_score("energy", frozenset()) == "energy"  # a named score is kept as named
    with pytest.raises(ValueError, match="unknown score 'nope'"):
        AbstainConfig(score="nope")


# -- a real run ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def held_out_run(snips_slice: Path, tmp_path_factory: pytest.TempPathFactory):
    """A run on the SNIPS slice with 2 intents held out and 30 movie reviews labelled ``oos``:
    gold labels, a linear student, and a MiniLM (head fitted on the held-in training texts) as
    the one tier, abstaining on its ``knn`` score for 10% of in-scope dev queries."""
    import torch

    from smallfit import zoo
    from smallfit.models.transformer import TransformerClassifier
    from smallfit.pipeline import fit
    from smallfit.teach import one_hot
    from smallfit.train import warmstart_head

    folder = _with_reviews(snips_slice, tmp_path_factory.mktemp("held-out-data"))
    data_config = DataConfig(
        train=folder / "train.jsonl",
        test=folder / "test.jsonl",
        dev_fraction=0.25,
        out_of_scope="oos",
        hold_out_labels=2,
    )
    data = load_dataset(data_config)
    torch.manual_seed(0)
    minilm = TransformerClassifier.from_base(
        zoo.resolve("minilm-l6"), labels=data.labels, name="minilm", max_length=32
    )
    warmstart_head(
        minilm, data.train.texts, one_hot(data.train.labels, data.labels), progress=False
    )
    tier = minilm.save(tmp_path_factory.mktemp("held-out-minilm") / "minilm")
    config = FitConfig(
        run_dir=tmp_path_factory.mktemp("held-out") / "run",
        data=data_config,
        teacher=GoldTeacher(),
        students=[LinearStudent()],
        evaluate=EvalConfig(latency_queries=10, warmup=2, throughput_batches=2, isolate=False),
        select=SelectConfig(quality_floor="0.1"),
        route=RouteConfig(
            tiers=[str(tier)],
            target="accuracy >= 0.5",
            abstain=AbstainConfig(in_scope_loss=0.1, score="knn"),
        ),
    )
    fit(config, progress=False, log=lambda _: None)
    return config, data


def test_the_route_stage_measures_every_score_on_the_held_out_labels(held_out_run) -> None:
    config, data = held_out_run
    run = Path(config.run_dir)
    assert json.loads((run / "data.json").read_text("utf-8"))["held_out_labels"] == data.held_out
    oos = json.loads((run / "cascade.json").read_text("utf-8"))["out_of_scope"]
    assert oos["held_out_labels"] == data.held_out and oos["score"] == "knn"
    assert oos["n"] == SST2_REVIEWS + 24
    assert set(oos["by_label"]) == {"oos", *data.held_out}
    assert oos["by_label"]["oos"]["n"] == SST2_REVIEWS
    evaluation = oos["evaluation"]
    assert evaluation["chosen"] == "knn" and evaluation["best"] in score_names()
    assert set(evaluation["scores"]) == set(score_names())
    for name, entry in evaluation["scores"].items():
        assert entry["available"], name  # a transformer tier gives logits and embeddings
        caught = [p["caught"] for p in entry["curve"]]
        assert len(caught) == len(LOSSES) and caught == sorted(caught), name
        assert 0.0 <= entry["auroc"] <= 1.0, name
    assert evaluation["scores"]["knn"]["auroc"] > 0.8  # far better than chance
    # each score against max_prob at 5% loss, paired on the same resamples
    assert evaluation["scores"]["max_prob"]["vs_max_prob"] == {"diff": 0.0, "interval": [0, 0]}
    knn = evaluation["scores"]["knn"]
    five = next(p for p in knn["curve"] if p["loss"] == 0.05)
    base = next(p for p in evaluation["scores"]["max_prob"]["curve"] if p["loss"] == 0.05)
    assert knn["vs_max_prob"]["diff"] == pytest.approx(five["caught"] - base["caught"])
    lo, hi = knn["vs_max_prob"]["interval"]
    assert -1.0 <= lo <= hi <= 1.0
    # the cascade's own catch is the knn score's at the dev threshold for 10%
    point = next(p for p in evaluation["scores"]["knn"]["curve"] if p["loss"] == 0.1)
    assert oos["caught"] == pytest.approx(point["caught_dev"])
    assert oos["threshold"] == pytest.approx(point["threshold"])


def test_a_fitted_score_abstains_alike_live_in_replay_and_served(held_out_run) -> None:
    from smallfit.serve.app import create_app
    from smallfit.testing.http import serving

    config, data = held_out_run
    run = Path(config.run_dir)
    cascade_dir = run / "models" / "cascade"
    assert (cascade_dir / "abstain.safetensors").is_file()
    cascade = load(cascade_dir)
    assert isinstance(cascade, Cascade) and cascade.abstain is not None
    assert cascade.abstain.score.name == "knn" and cascade.abstain.score.fitted
    summary = json.loads((run / "cascade.json").read_text("utf-8"))
    # live on test, as the route stage's replay from saved signals decided
    live = cascade.decide(data.test.texts)
    replayed = np.load(run / "results" / "cascade.test_probs.npy", allow_pickle=False)
    assert np.array_equal(live.probs.argmax(1), replayed.argmax(1))
    assert live.abstained.mean() == pytest.approx(summary["test"]["abstained"])
    # live on the out-of-scope texts, as cascade.json says
    outside = cascade.decide(data.out_of_scope)
    assert outside.abstained.mean() == pytest.approx(summary["out_of_scope"]["caught"])
    assert outside.abstained.mean() > 2 * live.abstained.mean()
    # served: the same abstentions
    texts = [*data.test.texts[:40], *data.out_of_scope]
    offline = cascade.decide(texts)
    app = create_app(cascade_dir, ServeConfig(max_texts=256))
    with serving(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        answers = client.post("/v1/classify", json={"texts": texts}).json()["results"]
    assert [a["abstained"] for a in answers] == offline.abstained.tolist()
    assert all(a["label"] == "oos" for a in answers if a["abstained"])


def test_the_report_draws_the_catch_curve(held_out_run) -> None:
    from smallfit.report import write_report

    config, data = held_out_run
    html = Path(write_report(config.run_dir)).read_text("utf-8")
    curve = html.split('id="oos-curve"', 1)[1].split("</figure>", 1)[0]
    for name in score_names():
        assert f'data-score="{name}"' in curve, name
        assert f'<tr data-score="{name}"' in html, name
    assert "chosen-score" in curve
    for label in data.held_out:
        assert f'data-label="{label}"' in html
