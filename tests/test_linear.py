"""The linear (TF-IDF + logistic regression) backend on real data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

import smallfit.models
from smallfit.config import LinearStudent
from smallfit.distill import linear_args
from smallfit.errors import SmallfitError
from smallfit.models.linear import LinearClassifier
from smallfit.models.logistic import expand_targets

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")


def read_jsonl(path: Path) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            row = json.loads(line)
            texts.append(row["text"])
            labels.append(row["label"])
    return texts, labels


def stratified(texts: list[str], labels: list[str], n: int, seed: int = 0) -> tuple[list, list]:
    """``n`` rows taken round-robin over the labels, in a seeded shuffle."""
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i in rng.permutation(len(texts)):
        by_label.setdefault(labels[i], []).append(int(i))
    picked: list[int] = []
    while len(picked) < n and any(by_label.values()):
        for label in sorted(by_label):
            if by_label[label] and len(picked) < n:
                picked.append(by_label[label].pop())
    return [texts[i] for i in picked], [labels[i] for i in picked]


def one_hot(gold: list[str], labels: list[str]) -> np.ndarray:
    return np.eye(len(labels))[[labels.index(g) for g in gold]]


@pytest.fixture(scope="module")
def banking() -> dict:
    train_texts, train_gold = read_jsonl(DATA / "banking77" / "train.jsonl")
    test_texts, test_gold = read_jsonl(DATA / "banking77" / "test.jsonl")
    labels = sorted(set(train_gold))
    train = stratified(train_texts, train_gold, 2000)
    test = stratified(test_texts, test_gold, 500)
    return {"labels": labels, "train": train, "test": test}


@pytest.fixture(scope="module")
def hard_model(banking: dict) -> LinearClassifier:
    texts, gold = banking["train"]
    return LinearClassifier.fit(
        texts,
        one_hot(gold, banking["labels"]),
        labels=banking["labels"],
        **linear_args(LinearStudent(soft_labels=False)),
        lineage={"trained_on": "banking77 (2000 rows)", "teacher": "gold"},
    )


def test_banking77_accuracy_well_above_chance(hard_model: LinearClassifier, banking: dict) -> None:
    texts, gold = banking["test"]
    probs = hard_model.predict_proba(texts)
    assert probs.dtype == np.float32
    assert probs.shape == (500, 77)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = np.mean(np.array(hard_model.predict(texts)) == np.array(gold))
    assert accuracy > 0.6  # measured: 0.828 (chance: 0.013)


def test_features_match_sklearn_tfidf(hard_model: LinearClassifier, banking: dict) -> None:
    texts = banking["train"][0]
    reference = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2
    ).fit(texts)
    char = hard_model.blocks[1]
    assert char.terms == reference.get_feature_names_out().tolist()
    probe = banking["test"][0][:100]
    diff = abs(reference.transform(probe) - char.transform(probe)).max()
    assert diff < 1e-12


def test_info_and_lineage(hard_model: LinearClassifier) -> None:
    info = hard_model.info
    assert info.backend == "linear"
    assert info.parameters == hard_model.coef.size + hard_model.intercept.size
    assert info.parameters == 77 * hard_model.coef.shape[1] + 77
    lineage = info.lineage
    assert lineage["base"] == "tfidf-logreg"
    assert lineage["word_ngrams"] == [1, 2]
    assert lineage["char_ngrams"] == [2, 5]
    assert lineage["C"] == 10.0
    assert lineage["trained_on"] == "banking77 (2000 rows)"  # the caller's value wins
    assert lineage["teacher"] == "gold"


def test_save_load_round_trip(hard_model: LinearClassifier, banking: dict, tmp_path: Path) -> None:
    texts = banking["test"][0]
    out = hard_model.save(tmp_path / "linear", metrics={"accuracy": 0.8})
    loaded = smallfit.models.load(out)
    assert isinstance(loaded, LinearClassifier)
    assert loaded.labels == hard_model.labels
    assert loaded.info.lineage == hard_model.info.lineage
    assert np.allclose(loaded.predict_proba(texts), hard_model.predict_proba(texts))
    manifest = json.loads((out / "smallfit.json").read_text())
    assert manifest["kind"] == "linear"
    assert manifest["parameters"] == hard_model.num_parameters
    names = [p.name for p in out.rglob("*")]
    assert not [n for n in names if n.endswith((".pkl", ".pickle", ".joblib"))]
    assert loaded.info.bytes_on_disk > 0


def test_no_pickle_in_the_backend() -> None:
    source = Path(smallfit.models.linear.__file__).read_text()
    for word in ("import pickle", "joblib", "cloudpickle"):
        assert word not in source


def test_corrupt_save_dir_is_a_smallfit_error(hard_model: LinearClassifier, tmp_path: Path) -> None:
    out = hard_model.save(tmp_path / "linear")
    (out / "linear.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SmallfitError, match="corrupt"):
        smallfit.models.load(out)
    (out / "linear.safetensors").unlink()
    with pytest.raises(SmallfitError, match="missing"):
        smallfit.models.load(out)


def test_soft_labels_with_unseen_classes(banking: dict) -> None:
    labels = banking["labels"]
    unseen = set(labels[:3])
    texts, gold = banking["train"]
    kept = [(t, g) for t, g in zip(texts, gold, strict=True) if g not in unseen]
    texts = [t for t, _ in kept]
    # a stand-in teacher: a hard model that never saw three classes, so its columns are exact 0
    teacher = LinearClassifier.fit(
        texts,
        one_hot([g for _, g in kept], labels),
        labels=labels,
        **linear_args(LinearStudent(soft_labels=False, char_ngrams=None)),
    )
    targets = teacher.predict_proba(texts)
    assert (targets[:, :3] == 0).all()
    student = LinearClassifier.fit(
        texts,
        targets,
        labels=labels,
        **linear_args(LinearStudent(soft_labels=True, min_prob=0.01, char_ngrams=None)),
    )
    assert student.lineage["soft_labels"] is True
    probe = banking["test"][0]
    probs = student.predict_proba(probe)
    assert probs.shape == (len(probe), 77)
    assert (probs[:, :3] == 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    agreement = np.mean(probs.argmax(1) == teacher.predict_proba(probe).argmax(1))
    assert agreement > 0.8


def test_expand_targets_weights_are_the_kept_probabilities() -> None:
    targets = np.array([[0.7, 0.295, 0.005], [0.2, 0.3, 0.5]])
    rows, classes, weight = expand_targets(targets, soft=True, min_prob=0.01)
    assert rows.tolist() == [0, 0, 1, 1, 1]
    assert classes.tolist() == [0, 1, 0, 1, 2]
    np.testing.assert_allclose(weight, [0.7 / 0.995, 0.295 / 0.995, 0.2, 0.3, 0.5])
    rows, classes, weight = expand_targets(targets, soft=False, min_prob=0.01)
    assert classes.tolist() == [0, 2] and weight.tolist() == [1.0, 1.0]


@pytest.fixture(scope="module")
def sms() -> dict:
    train_texts, train_gold = read_jsonl(DATA / "sms_spam" / "train.jsonl")
    test_texts, test_gold = read_jsonl(DATA / "sms_spam" / "test.jsonl")
    return {
        "labels": sorted(set(train_gold)),
        "train": stratified(train_texts, train_gold, 1500),
        "test": (test_texts, test_gold),
    }


def test_sms_spam_binary(sms: dict, tmp_path: Path) -> None:
    texts, gold = sms["train"]
    model = LinearClassifier.fit(
        texts, one_hot(gold, sms["labels"]), labels=sms["labels"], **linear_args(LinearStudent())
    )
    assert model.coef.shape[0] == 1  # sklearn's binary regression: one row, sigmoid
    test_texts, test_gold = sms["test"]
    probs = model.predict_proba(test_texts)
    assert probs.shape == (len(test_texts), 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    accuracy = np.mean(np.array(model.predict(test_texts)) == np.array(test_gold))
    assert accuracy > 0.95  # measured: 0.990 (majority class: 0.867)
    loaded = smallfit.models.load(model.save(tmp_path / "sms"))
    assert np.allclose(loaded.predict_proba(test_texts), probs)


def test_deterministic_given_seed(sms: dict) -> None:
    texts, gold = sms["train"][0][:400], sms["train"][1][:400]
    targets = one_hot(gold, sms["labels"]) * 0.9 + 0.05
    fits = [
        LinearClassifier.fit(
            texts, targets, labels=sms["labels"], **linear_args(LinearStudent(seed=3))
        )
        for _ in range(2)
    ]
    probe = sms["test"][0][:200]
    assert np.array_equal(fits[0].predict_proba(probe), fits[1].predict_proba(probe))
    assert np.array_equal(fits[0].coef, fits[1].coef)


def test_empty_input_and_bad_targets(sms: dict) -> None:
    texts, gold = sms["train"][0][:50], sms["train"][1][:50]
    labels = sms["labels"]
    with pytest.raises(SmallfitError, match="shape"):
        LinearClassifier.fit(texts, np.ones((50, 3)), labels=labels, **linear_args(LinearStudent()))
    single = np.zeros((50, 2))
    single[:, 0] = 1.0
    with pytest.raises(SmallfitError, match="single class"):
        LinearClassifier.fit(texts, single, labels=labels, **linear_args(LinearStudent()))
    model = LinearClassifier.fit(
        texts, one_hot(gold, labels), labels=labels, **linear_args(LinearStudent())
    )
    assert model.predict_proba([]).shape == (0, 2)
    assert model.predict([]) == []
