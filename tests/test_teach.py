"""Teachers from every source, and pool labelling cached by content hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from smallfit import zoo
from smallfit.config import DataConfig, GoldTeacher, ModelTeacher
from smallfit.data import load_dataset
from smallfit.errors import SmallfitError
from smallfit.models import load
from smallfit.run.layout import RunDir
from smallfit.teach import build_teacher, label_pool


@pytest.fixture(scope="module")
def dataset(snips_slice: Path):
    return load_dataset(
        DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl")
    )


def _hf_classifier(out: Path, labels: list[str]) -> Path:
    """A real HF sequence-classification directory on MiniLM weights (head untrained)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    base = zoo.resolve("minilm-l6")
    model = AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
    )
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(base)).save_pretrained(str(out))
    return out


def test_user_hf_classifier_is_a_teacher_with_columns_in_data_order(dataset, tmp_path) -> None:
    reversed_labels = list(reversed(dataset.labels))  # the user's model orders labels its own way
    hf_dir = _hf_classifier(tmp_path / "hf", reversed_labels)
    teacher = build_teacher(
        ModelTeacher(path=hf_dir), dataset, out_dir=tmp_path / "teacher", progress=False
    )
    assert teacher is not None and teacher.labels == reversed_labels
    texts = dataset.dev.texts[:20]
    probs = label_pool(
        teacher,
        texts,
        labels=dataset.labels,
        teacher_dir=tmp_path / "teacher",
        run=RunDir(tmp_path),
        progress=False,
    )
    direct = teacher.predict_proba(texts)
    assert probs.shape == (20, len(dataset.labels))
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    for j, label in enumerate(dataset.labels):
        np.testing.assert_allclose(probs[:, j], direct[:, reversed_labels.index(label)], atol=1e-5)
    # the saved teacher loads back as the same kind of classifier
    assert load(tmp_path / "teacher").info.backend == "hf-sequence"


def test_hf_classifier_without_label_names_is_refused(dataset, tmp_path) -> None:
    hf_dir = _hf_classifier(tmp_path / "hf", [f"LABEL_{i}" for i in range(len(dataset.labels))])
    with pytest.raises(SmallfitError, match="id2label"):
        build_teacher(ModelTeacher(path=hf_dir), dataset, out_dir=tmp_path / "t", progress=False)


def test_teacher_with_other_labels_is_refused(dataset, tmp_path) -> None:
    hf_dir = _hf_classifier(tmp_path / "hf", [*dataset.labels[:-1], "something_else"])
    with pytest.raises(SmallfitError, match="something_else"):
        build_teacher(ModelTeacher(path=hf_dir), dataset, out_dir=tmp_path / "t", progress=False)


def test_missing_teacher_dir_is_refused(dataset, tmp_path) -> None:
    with pytest.raises(SmallfitError, match="not a directory"):
        build_teacher(
            ModelTeacher(path=tmp_path / "nope"), dataset, out_dir=tmp_path / "t", progress=False
        )


def test_gold_teacher_builds_nothing(dataset, tmp_path) -> None:
    assert build_teacher(GoldTeacher(), dataset, out_dir=tmp_path / "t", progress=False) is None


def test_labelling_is_cached_by_content(dataset, tmp_path) -> None:
    hf_dir = _hf_classifier(tmp_path / "hf", dataset.labels)
    teacher = build_teacher(
        ModelTeacher(path=hf_dir), dataset, out_dir=tmp_path / "teacher", progress=False
    )
    kwargs = dict(
        labels=dataset.labels,
        teacher_dir=tmp_path / "teacher",
        run=RunDir(tmp_path),
        progress=False,
    )
    first = label_pool(teacher, dataset.dev.texts, **kwargs)
    again = label_pool(teacher, dataset.dev.texts, **kwargs)
    np.testing.assert_array_equal(first, again)
    ledger = (tmp_path / "labels" / "ledger.jsonl").read_text().splitlines()
    assert len(ledger) == 1  # the second call was served from the cache
    assert json.loads(ledger[0])["rows"] == len(dataset.dev)
    other = label_pool(teacher, dataset.dev.texts[:5], **kwargs)  # new texts: a new entry
    assert other.shape[0] == 5
    assert len((tmp_path / "labels" / "ledger.jsonl").read_text().splitlines()) == 2


def test_a_teacher_retrained_in_place_is_a_new_teacher(snips_slice, dataset, tmp_path) -> None:
    from smallfit.config import EvalConfig, FitConfig, LinearStudent, SelectConfig
    from smallfit.pipeline import fit

    hf_dir = _hf_classifier(tmp_path / "hf", dataset.labels)
    config = FitConfig(
        run_dir=tmp_path / "run",
        data=DataConfig(train=snips_slice / "train.jsonl", test=snips_slice / "test.jsonl"),
        teacher=ModelTeacher(path=hf_dir),
        students=[LinearStudent()],
        evaluate=EvalConfig(latency_queries=5, warmup=1, throughput_batches=1, isolate=False),
        select=SelectConfig(quality_floor="0.0"),
    )
    quiet = dict(progress=False, log=lambda _: None)
    assert "teacher" in fit(config, **quiet).stages_run
    assert "teacher" in fit(config, **quiet).stages_skipped
    # the user retrains their model and saves it over the old one, same path
    import torch
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(str(hf_dir))
    with torch.no_grad():
        model.classifier.weight.mul_(-1.0)
    model.save_pretrained(str(hf_dir))
    third = fit(config, **quiet)
    assert "teacher" in third.stages_run and "student:linear" in third.stages_run


def test_a_local_base_counts_by_its_contents(tmp_path, monkeypatch) -> None:
    """A fine-tuned teacher's (or a student's) ``base`` that is a local directory keys its
    stage by the directory's contents: retrained in place, it is a new base. A zoo alias or
    hub id leaves the key as it was."""
    from smallfit.config import FinetuneTeacher, TransformerStudent
    from smallfit.hashing import hash_json
    from smallfit.zoo import local_base

    base = tmp_path / "encoder"
    base.mkdir()
    (base / "config.json").write_text("{}")
    teacher = FinetuneTeacher(base=str(base))
    before = teacher.identity()
    assert before["base_content"] == local_base(str(base))["base_content"]
    (base / "config.json").write_text('{"retrained": true}')
    assert teacher.identity() != before
    alias = FinetuneTeacher(base="mpnet-base")
    assert alias.identity() == alias.model_dump(mode="json")
    student = TransformerStudent(name="s", base="minilm-l6")
    assert local_base(student.base) == {} and local_base(None) == {}
    assert hash_json(local_base(str(base))) != hash_json(local_base(str(tmp_path / "absent")))
    weights = tmp_path / "model.gguf"
    weights.write_bytes(b"GGUF")
    assert local_base(weights) == {"base_content": local_base(weights)["base_content"]}
    monkeypatch.chdir(tmp_path)
    (tmp_path / "minilm-l6").mkdir()  # a folder named like an alias: the alias is what loads
    assert local_base("minilm-l6") == {}
