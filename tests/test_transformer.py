"""The transformer backend on real MiniLM weights: shapes, padded batches, save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smallfit import zoo
from smallfit.models import load
from smallfit.models.transformer import TransformerClassifier

TEXTS = [
    "I lost my card",
    "how do I top up my account with a bank transfer from abroad, and how long does it take?",
    "card not working",
    "why was I charged a fee for withdrawing cash at an ATM in another country last week",
    "hi",
]
LABELS = ["card_lost", "top_up", "fee", "other"]


@pytest.fixture(scope="module")
def model() -> TransformerClassifier:
    import torch

    torch.manual_seed(0)
    return TransformerClassifier.from_base(zoo.resolve("minilm-l6"), labels=LABELS, name="t")


def test_a_fresh_head_is_drawn_from_its_seed_not_the_process(model: TransformerClassifier) -> None:
    """Two fresh classifiers with one seed start alike whatever the process drew before (the
    head came from torch's unseeded process RNG, so no two fits of a run were alike)."""
    import torch

    torch.manual_seed(12345)  # whatever state the process is in
    again = TransformerClassifier.from_base(zoo.resolve("minilm-l6"), labels=LABELS, name="t")
    other = TransformerClassifier.from_base(
        zoo.resolve("minilm-l6"), labels=LABELS, name="t", seed=1
    )
    head = model.module.head.weight
    assert torch.equal(again.module.head.weight, head)
    assert not torch.equal(other.module.head.weight, head)


def test_probabilities_have_the_right_shape(model: TransformerClassifier) -> None:
    probs = model.predict_proba(TEXTS)
    assert probs.shape == (len(TEXTS), len(LABELS)) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert model.predict(TEXTS) == [LABELS[i] for i in probs.argmax(axis=1)]
    assert model.predict_proba([]).shape == (0, len(LABELS))


def test_padded_batches_match_single_texts(model: TransformerClassifier) -> None:
    batch = model.predict_proba(TEXTS)  # very different lengths: heavy padding
    single = np.concatenate([model.predict_proba([t]) for t in TEXTS])
    np.testing.assert_allclose(batch, single, atol=1e-5)


def test_no_pooler_is_loaded(model: TransformerClassifier) -> None:
    names = [n for n, _ in model.module.named_parameters()]
    assert not any("pooler" in n for n in names)


def test_save_and_load_round_trip(model: TransformerClassifier, tmp_path: Path) -> None:
    model.temperature = 1.7
    try:
        out = model.save(tmp_path / "m", metrics={"note": "x"})
        again = load(out)
    finally:
        model.temperature = 1.0
    assert isinstance(again, TransformerClassifier)
    assert again.labels == LABELS and again.temperature == pytest.approx(1.7)
    model.temperature = 1.7
    try:
        np.testing.assert_allclose(
            again.predict_proba(TEXTS), model.predict_proba(TEXTS), atol=1e-6
        )
    finally:
        model.temperature = 1.0
    files = {p.name for p in out.iterdir()}
    assert {"smallfit.json", "model.safetensors", "head.safetensors", "config.json"} <= files
    assert not {p for p in files if p.endswith((".bin", ".pkl", ".pt", ".joblib"))}
    info = again.info
    assert info.backend == "transformer" and info.bytes_on_disk > 80_000_000
    assert info.parameters == model.num_parameters


def test_a_checkpoint_with_legacy_layernorm_names_loads(snips_minilm: Path, tmp_path: Path) -> None:
    """Some transformers releases (5.3) save LayerNorm weights as ``gamma``/``beta``; a pruned
    (resized) model, which smallfit loads itself, must still load whoever saved it."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "legacy"
    shutil.copytree(snips_minilm, copy)
    weights = load_file(str(copy / "model.safetensors"))
    legacy = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        ): v
        for k, v in weights.items()
    }
    assert sum(k.endswith(".gamma") for k in legacy) > 10
    save_file(legacy, str(copy / "model.safetensors"), metadata={"format": "pt"})
    manifest = json.loads((copy / "smallfit.json").read_text("utf-8"))
    manifest["resized"] = True  # the path smallfit loads itself (pruned shapes)
    (copy / "smallfit.json").write_text(json.dumps(manifest), "utf-8")
    texts = ["play some jazz", "what is the weather in paris tomorrow", "book a table for two"]
    np.testing.assert_allclose(
        load(copy).predict_proba(texts), load(snips_minilm).predict_proba(texts), atol=1e-6
    )
