"""Layer dropping, structured pruning and magnitude pruning on a real MiniLM classifier:
shapes, lineage, quality within a stated bound of the uncompressed model, and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smallfit.compress import (
    DropLayers,
    HealConfig,
    OnnxExport,
    PruneMagnitude,
    PruneStructured,
    compress,
    parse_step,
)
from smallfit.compress.core import check_steps
from smallfit.compress.torch_steps import layers_to_keep
from smallfit.errors import SmallfitError
from smallfit.models import load
from smallfit.models.base import read_manifest

HEAL = HealConfig(epochs=1.0, batch_size=16)


def _agreement(a, b, texts: list[str]) -> float:
    return float(np.mean(np.array(a.predict(texts)) == np.array(b.predict(texts))))


def test_layer_choices() -> None:
    assert layers_to_keep(DropLayers(keep=3), 6) == [0, 2, 5]
    assert layers_to_keep(DropLayers(keep=4), 12) == [0, 4, 7, 11]
    assert layers_to_keep(DropLayers(keep=1), 6) == [5]
    assert layers_to_keep(DropLayers(keep=2, strategy="bottom"), 6) == [0, 1]
    assert layers_to_keep(DropLayers(keep=2, strategy="top"), 6) == [4, 5]
    scores = [0.1, 0.5, 0.0, 0.3, 0.2, 0.9]
    assert layers_to_keep(DropLayers(keep=3, strategy="importance"), 6, scores) == [1, 3, 5]


def test_step_specs_parse_nested_heal_options() -> None:
    step = parse_step("drop-layers:keep=3,strategy=top,heal.epochs=0.5")
    assert step == DropLayers(keep=3, strategy="top", heal=HealConfig(epochs=0.5))
    assert parse_step("prune:heads=0.25,ffn=0.4") == PruneStructured(heads=0.25, ffn=0.4)


@pytest.mark.slow
def test_drop_layers_heals_and_stays_close(snips_minilm: Path, snips_texts, tmp_path) -> None:
    model = compress(
        snips_minilm,
        [DropLayers(keep=3, heal=HEAL)],
        out_dir=tmp_path / "l3",
        check_texts=snips_texts,
    )
    source = load(snips_minilm)
    assert len(model.module.encoder.encoder.layer) == 3
    assert model.architecture()["layers"] == 3
    assert model.num_parameters < source.num_parameters - 5_000_000
    step = model.lineage["compression"][0]
    assert step["method"] == "drop-layers" and step["metrics"]["kept_layers"] == [0, 2, 5]
    assert step["metrics"]["heal"]["steps"] > 0
    # Bound: the healed 3-layer model keeps >= 85% of the 6-layer model's answers.
    assert _agreement(model, source, snips_texts) >= 0.85
    # It reloads, and exports to ONNX with parity.
    onnx = compress(
        tmp_path / "l3", [OnnxExport()], out_dir=tmp_path / "o", check_texts=snips_texts
    )
    assert onnx.lineage["compression"][-1]["metrics"]["max_abs_logit_diff"] < 1e-3
    assert [s["method"] for s in onnx.lineage["compression"]] == ["drop-layers", "onnx"]


@pytest.mark.slow
def test_importance_strategy_measures_every_layer(snips_minilm: Path, snips_texts, tmp_path):
    step = DropLayers(keep=4, strategy="importance", heal=HealConfig(epochs=0))
    model = compress(snips_minilm, [step], out_dir=tmp_path / "m", check_texts=snips_texts[:64])
    metrics = model.lineage["compression"][0]["metrics"]
    scores = metrics["layer_importance"]
    assert len(scores) == 6 and all(s >= 0 for s in scores)
    top4 = sorted(np.argsort(scores)[::-1][:4].tolist())
    assert metrics["kept_layers"] == top4


@pytest.mark.slow
def test_structured_pruning_removes_weights_physically(snips_minilm, snips_texts, tmp_path):
    step = PruneStructured(heads=0.25, ffn=0.3, importance_texts=64, heal=HEAL)
    model = compress(snips_minilm, [step], out_dir=tmp_path / "p", check_texts=snips_texts)
    metrics = model.lineage["compression"][0]["metrics"]
    assert metrics["heads_removed"] == 18 and metrics["heads_total"] == 72
    assert all(h >= 1 for h in metrics["heads_per_layer"])
    assert metrics["ffn_per_layer"] == [1075] * 6  # 1536 - round(0.3 * 1536)
    layer = model.module.encoder.encoder.layer[0]
    assert layer.intermediate.dense.weight.shape == (1075, 384)
    assert layer.output.dense.weight.shape == (384, 1075)
    heads0 = metrics["heads_per_layer"][0]
    assert layer.attention.self.query.weight.shape == (heads0 * 32, 384)
    assert layer.attention.output.dense.weight.shape == (384, heads0 * 32)
    assert model.num_parameters < load(snips_minilm).num_parameters * 0.9
    assert read_manifest(tmp_path / "p")["resized"] is True
    # Saved and reloaded at the pruned shapes, it answers the same.
    again = load(tmp_path / "p")
    texts = snips_texts[:32]
    np.testing.assert_allclose(again.predict_proba(texts), model.predict_proba(texts), atol=1e-5)
    assert _agreement(model, load(snips_minilm), snips_texts) >= 0.85
    onnx = compress(tmp_path / "p", [OnnxExport()], out_dir=tmp_path / "o", check_texts=texts)
    assert onnx.lineage["compression"][-1]["metrics"]["max_abs_logit_diff"] < 1e-3


@pytest.mark.slow
def test_magnitude_pruning_is_reported_honestly(snips_minilm, snips_texts, tmp_path) -> None:
    model = compress(
        snips_minilm,
        [PruneMagnitude(sparsity=0.5)],
        out_dir=tmp_path / "m",
        check_texts=snips_texts,
    )
    metrics = model.lineage["compression"][0]["metrics"]
    assert abs(metrics["encoder_linear_sparsity"] - 0.5) < 0.01
    assert metrics["weights_bytes_compressed"] < 0.9 * metrics["source_weights_bytes_compressed"]
    assert "no faster" in metrics["note"]
    weight = load(tmp_path / "m").module.encoder.encoder.layer[2].intermediate.dense.weight
    assert abs(float((weight == 0).float().mean()) - 0.5) < 0.01
    assert metrics["argmax_agreement"] >= 0.8


def test_inapplicable_torch_steps_are_refused() -> None:
    bert = {
        "kind": "transformer",
        "architecture": {
            "model_type": "bert",
            "layers": 6,
            "attention": [384] * 6,
            "ffn": [1536] * 6,
        },
    }
    mpnet = {**bert, "architecture": {**bert["architecture"], "model_type": "mpnet"}}
    cases = [
        (bert, [DropLayers(keep=6)], "only 6 layers"),
        (bert, [DropLayers(keep=3), DropLayers(keep=3)], r"step 2 \(drop-layers\).*only 3"),
        (bert, [PruneStructured()], "nothing to prune"),
        (mpnet, [PruneStructured(heads=0.2)], "pruning heads supports bert"),
        ({"kind": "linear"}, [PruneStructured(ffn=0.2)], "this one is 'linear'"),
        (bert, [OnnxExport(), PruneMagnitude()], r"step 2 \(magnitude\).*before 'onnx'"),
    ]
    for manifest, steps, message in cases:
        with pytest.raises(SmallfitError, match=message):
            check_steps(manifest, steps)
    assert check_steps(mpnet, [PruneStructured(ffn=0.2)])["kind"] == "transformer"


def test_trim_vocab_keeps_every_answer_on_its_texts_and_loads_with_standard_tooling(
    snips_minilm: Path, snips_slice: Path, snips_texts: list[str], tmp_path: Path
) -> None:
    """The trimmed model answers its own texts exactly as before; its tokenizer and weights
    load with transformers; a word it never saw is spelled out in kept pieces, not [UNK]; the
    evaluation reports the test texts holding such a word apart; ONNX keeps parity."""
    from transformers import AutoModel, AutoTokenizer

    from smallfit.compress import TrimVocab
    from smallfit.data import read_split
    from smallfit.evaluate import evaluate_candidate
    from smallfit.evaluate.config import EvalConfig
    from smallfit.models.vocab import unseen_rows, untrimmed_tokenizer

    source = load(snips_minilm)
    trimmed = compress(
        snips_minilm, [TrimVocab(unseen="spell")], out_dir=tmp_path / "tv", check_texts=snips_texts
    )
    metrics = trimmed.lineage["compression"][0]["metrics"]
    assert 1000 < metrics["vocab"] < 5000 and metrics["vocab_before"] == 30522
    assert metrics["embedding_parameters"] == metrics["vocab"] * 384
    assert trimmed.num_parameters < source.num_parameters - 9_000_000
    assert metrics["argmax_agreement"] == 1.0 and metrics["max_abs_prob_diff_seen"] < 1e-5
    np.testing.assert_allclose(
        trimmed.predict_proba(snips_texts), source.predict_proba(snips_texts), atol=1e-5
    )
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "tv")
    module = AutoModel.from_pretrained(tmp_path / "tv")
    assert module.config.vocab_size == len(tokenizer) == metrics["vocab"]
    # the position rows past max_length are gone; a text longer than that is cut as before
    assert (metrics["positions_before"], metrics["positions"]) == (512, source.max_length)
    assert module.config.max_position_embeddings == source.max_length
    long = [" ".join(snips_texts[:12])]
    assert len(tokenizer(long[0])["input_ids"]) > 2 * source.max_length
    np.testing.assert_allclose(trimmed.predict_proba(long), source.predict_proba(long), atol=1e-5)
    ids = tokenizer("zyzzyva quixotically")["input_ids"]
    assert tokenizer.unk_token_id not in ids and max(ids) < metrics["vocab"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "zyzzyva quixotically"

    test = read_split(snips_slice / "test.jsonl")
    untrimmed = untrimmed_tokenizer(tmp_path / "tv")
    assert untrimmed == snips_minilm.resolve() / "tokenizer.json"
    unseen = unseen_rows(untrimmed, tmp_path / "tv", test.texts)
    assert 0 < unseen.sum() < len(test)
    fast = EvalConfig(isolate=False, latency_queries=5, warmup=1, throughput_batches=1)
    result = evaluate_candidate(
        tmp_path / "tv", test=test, teacher_test_probs=None, config=fast
    ).result
    split = result.quality.unseen_vocab
    assert split is not None and split.texts == split.gold_texts == int(unseen.sum())
    gold = np.array([source.labels.index(y) for y in test.labels])
    guess = trimmed.predict_proba(test.texts).argmax(1)
    assert split.accuracy == pytest.approx(float((guess == gold)[unseen].mean()))

    onnx = compress(
        tmp_path / "tv", [OnnxExport()], out_dir=tmp_path / "o", check_texts=snips_texts
    )
    assert onnx.lineage["compression"][-1]["metrics"]["max_abs_logit_diff"] < 1e-3
    assert untrimmed_tokenizer(tmp_path / "o") == untrimmed


def test_trim_vocab_nearest_keeps_every_word_s_pieces_and_maps_dropped_ones_to_kept_rows(
    snips_minilm: Path, snips_slice: Path, snips_texts: list[str], tmp_path: Path
) -> None:
    """With ``unseen: nearest`` a word the texts never used tokenizes into the same pieces as
    before, each dropped piece taking a kept row of its own kind (word or ``##`` piece); the
    texts' own answers are unchanged; the embedding table shrinks as with ``spell``; the
    evaluation still finds the texts holding a dropped piece."""
    import json

    from tokenizers import Tokenizer
    from transformers import AutoModel, AutoTokenizer

    from smallfit.compress import TrimVocab
    from smallfit.compress.vocab_trim import stand_ins
    from smallfit.data import read_split
    from smallfit.models.vocab import unpack_kept, unseen_rows, untrimmed_tokenizer

    source = load(snips_minilm)
    trimmed = compress(
        snips_minilm,
        [TrimVocab()],  # unseen: nearest
        out_dir=tmp_path / "tv",
        check_texts=snips_texts,
    )
    metrics = trimmed.lineage["compression"][0]["metrics"]
    assert metrics["unseen"] == "nearest" and 300 < metrics["vocab"] < 5000
    assert metrics["stand_ins"] > 20_000  # every dropped word and piece but [unusedN]
    assert metrics["argmax_agreement"] == 1.0 and metrics["max_abs_prob_diff_seen"] < 1e-5
    np.testing.assert_allclose(
        trimmed.predict_proba(snips_texts), source.predict_proba(snips_texts), atol=1e-5
    )
    module = AutoModel.from_pretrained(tmp_path / "tv")
    assert module.config.vocab_size == metrics["vocab"]

    text = "zyzzyva quixotically photosynthesis"
    before = Tokenizer.from_file(str(snips_minilm / "tokenizer.json")).encode(text)
    after = AutoTokenizer.from_pretrained(tmp_path / "tv")(text)
    assert after.tokens() == before.tokens  # the same pieces, none spelled out
    assert max(after["input_ids"]) < metrics["vocab"]
    vocab = json.loads((tmp_path / "tv" / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]
    old = json.loads((snips_minilm / "tokenizer.json").read_text("utf-8"))["model"]["vocab"]
    token_of = {i: t for t, i in old.items()}
    kept_old = np.flatnonzero(unpack_kept(metrics["kept"]))
    assert len(kept_old) == metrics["vocab"]
    own = {new: token_of[int(o)] for new, o in enumerate(kept_old)}  # kept in their old order
    assert all(vocab[t] == new for new, t in own.items())
    for token in before.tokens[1:-1]:
        assert own[vocab[token]].startswith("##") == token.startswith("##")

    # the nearest row by cosine, of the right kind, on a toy table
    table = np.array(
        [[1, 0], [0, 1], [1, 0.1], [0.1, 1], [1, 1], [1, 0.2], [0.5, 1]], dtype=np.float32
    )
    toy = {"a": 0, "##b": 1, "c": 2, "##d": 3, "[unused0]": 4, "ab": 5, "xy": 6}
    assert stand_ins(table, toy, kept=[0, 1, 6], skip=set()) == {2: 0, 3: 1, 5: 6}
    assert stand_ins(table, toy, kept=[1, 6], skip=set()) == {0: 6, 2: 6, 3: 1, 5: 6}

    test = read_split(snips_slice / "test.jsonl")
    untrimmed = untrimmed_tokenizer(tmp_path / "tv")
    unseen = unseen_rows(untrimmed, tmp_path / "tv", test.texts)
    spelled = compress(
        snips_minilm, [TrimVocab(unseen="spell")], out_dir=tmp_path / "s", check_texts=snips_texts
    )
    # the same texts' tokens, less the ~1,900 single characters the texts did not use
    assert spelled.lineage["compression"][0]["metrics"]["vocab"] > metrics["vocab"] + 1500
    assert 0 < unseen.sum() < len(test)
    np.testing.assert_array_equal(unseen, unseen_rows(untrimmed, tmp_path / "s", test.texts))
