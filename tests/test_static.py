"""The static tier: token vectors distilled from a real encoder, a softmax head, served without
torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_linear import DATA, one_hot, read_jsonl, stratified

import smallfit.models
from smallfit import zoo
from smallfit.config import LinearStudent, StaticStudent
from smallfit.distill import linear_args
from smallfit.distill.static import fit_static, reduce_vectors
from smallfit.errors import SmallfitError
from smallfit.models.linear import LinearClassifier
from smallfit.models.static import StaticClassifier, _tokenizer

LABELS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def tokenizer_file() -> Path:
    return zoo.resolve("minilm-l6") / "tokenizer.json"


@pytest.fixture(scope="module")
def random_model(tokenizer_file: Path) -> StaticClassifier:
    tokenizer = _tokenizer(tokenizer_file)
    rng = np.random.default_rng(0)
    return StaticClassifier(
        labels=LABELS,
        tokenizer=tokenizer,
        vectors=rng.normal(size=(tokenizer.get_vocab_size(), 8)).astype(np.float32),
        coef=rng.normal(size=(3, 8)),
        intercept=np.array([0.5, 0.0, -0.5]),
    )


def test_a_text_is_the_normalised_sum_of_its_token_vectors(random_model: StaticClassifier) -> None:
    texts = ["my card was declined", "", "card card", "a much longer text about a top-up"]
    embedded = random_model.embed(texts)
    for text, row in zip(texts, embedded, strict=True):
        ids = random_model.tokenizer.encode(text, add_special_tokens=False).ids
        total = random_model.vectors[ids].sum(axis=0) if ids else np.zeros(8)
        norm = np.linalg.norm(total)
        np.testing.assert_allclose(row, total / norm if norm else total, atol=1e-6)
    # one at a time (the batch-1 path) gives what the batch gives
    for text, row in zip(texts, embedded, strict=True):
        np.testing.assert_allclose(random_model.embed([text])[0], row, atol=1e-6)
    # a text with no tokens reads as the intercepts alone
    signals = random_model.outputs([""], need=frozenset({"logits", "embeddings"}))
    assert signals.logits is not None and signals.embeddings is not None
    np.testing.assert_allclose(signals.logits[0], [0.5, 0.0, -0.5], atol=1e-6)
    assert not signals.embeddings.any()
    assert random_model.count_tokens(["card card", ""]).tolist() == [2, 0]


def test_save_load_round_trip_without_torch(random_model: StaticClassifier, tmp_path: Path) -> None:
    out = random_model.save(tmp_path / "static")
    manifest = json.loads((out / "smallfit.json").read_text())
    assert manifest["kind"] == "static"
    assert manifest["dims"] == 8 and manifest["vocabulary"] == 30522
    assert not [p for p in out.rglob("*") if p.suffix in (".pkl", ".pickle", ".joblib")]
    texts = ["where is my card", "top up failed", ""]
    loaded = smallfit.models.load(out)
    assert isinstance(loaded, StaticClassifier)
    # vectors are stored as float16: probabilities move by well under a thousandth
    np.testing.assert_allclose(
        loaded.predict_proba(texts), random_model.predict_proba(texts), atol=1e-3
    )
    script = (
        "import sys, smallfit.models as m\n"
        f"model = m.load({str(out)!r})\n"
        "print(model.predict(['where is my card']))\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_broken_model_directories_are_smallfit_errors(
    random_model: StaticClassifier, tmp_path: Path
) -> None:
    out = random_model.save(tmp_path / "static")
    (out / "static.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SmallfitError, match="corrupt weights"):
        smallfit.models.load(out)
    (out / "tokenizer.json").write_text("{")
    (out / "static.safetensors").unlink()
    with pytest.raises(SmallfitError, match=r"static\.safetensors missing"):
        smallfit.models.load(out)
    with pytest.raises(SmallfitError, match="head"):
        StaticClassifier(
            labels=LABELS,
            tokenizer=random_model.tokenizer,
            vectors=random_model.vectors,
            coef=np.zeros((2, 8)),
            intercept=np.zeros(3),
        )


def test_reduce_vectors_keeps_the_widest_directions_and_damps_frequent_tokens() -> None:
    rng = np.random.default_rng(0)
    wide = rng.normal(size=(500, 1)) * 10.0
    vectors = np.hstack([wide, rng.normal(size=(500, 5)) * 0.1])
    reduced, kept = reduce_vectors(vectors, dims=1, sif=None)
    assert reduced.shape == (500, 1)
    assert kept > 0.99
    assert abs(np.corrcoef(reduced[:, 0], wide[:, 0])[0, 1]) > 0.999
    whole, kept_all = reduce_vectors(vectors, dims=None, sif=1e-4)
    assert whole.shape == (500, 6) and kept_all == 1.0
    centred = vectors - vectors.mean(axis=0)
    scale = np.linalg.norm(whole, axis=1) / np.linalg.norm(centred, axis=1)
    assert np.all(np.diff(scale) > 0)  # rank 0 is the most frequent: the most damped
    assert 0 < scale[0] < scale[-1] <= 1


@pytest.mark.slow
def test_distilled_static_model_beats_chance_and_nears_the_linear_tier(tmp_path: Path) -> None:
    """Banking77, 2,000 training texts on gold labels: the static model from MiniLM-L6's token
    vectors against the linear tier trained on the same rows."""
    train_texts, train_gold = read_jsonl(DATA / "banking77" / "train.jsonl")
    test_texts, test_gold = read_jsonl(DATA / "banking77" / "test.jsonl")
    labels = sorted(set(train_gold))
    texts, gold = stratified(train_texts, train_gold, 2000)
    test, answers = stratified(test_texts, test_gold, 500)
    config = StaticStudent()
    model = fit_static(
        texts,
        one_hot(gold, labels),
        labels=labels,
        source=zoo.resolve(config.base),
        settings=config,
        lineage={"teacher": "gold"},
    )
    assert model.vectors.shape == (30522, 256)
    assert model.lineage["dims"] == 256 and model.lineage["teacher"] == "gold"
    assert 0.5 < model.lineage["variance_kept"] < 1.0
    accuracy = float(np.mean(np.array(model.predict(test)) == np.array(answers)))
    linear = LinearClassifier.fit(
        texts, one_hot(gold, labels), labels=labels, **linear_args(LinearStudent())
    )
    linear_accuracy = float(np.mean(np.array(linear.predict(test)) == np.array(answers)))
    assert accuracy > 0.7, accuracy  # chance: 0.013
    assert accuracy > linear_accuracy - 0.05, (accuracy, linear_accuracy)
    loaded = smallfit.models.load(model.save(tmp_path / "static"))
    agree = np.mean(np.array(loaded.predict(test)) == np.array(model.predict(test)))
    assert agree > 0.99
