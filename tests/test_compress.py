"""Compression steps on a real MiniLM classifier: ONNX export parity on padded batches, int8,
lineage, and refusal of inapplicable steps before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from smallfit.compress import (
    OnnxExport,
    OrtDynamicInt8,
    OrtInt4Weight,
    OrtStaticInt8,
    compress,
    parse_step,
)
from smallfit.config import LinearStudent
from smallfit.distill import linear_args
from smallfit.errors import SmallfitError
from smallfit.models import load

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts(snips_texts: list[str]) -> list[str]:
    return snips_texts


@pytest.fixture(scope="module")
def trained_dir(snips_minilm: Path) -> Path:
    return snips_minilm


@pytest.fixture(scope="module")
def int8_dir(trained_dir: Path, texts: list[str], tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("c") / "int8"
    compress(trained_dir, [OnnxExport(), OrtDynamicInt8()], out_dir=out, check_texts=texts)
    return out


def test_onnx_export_matches_pytorch_on_padded_batches(trained_dir, texts, tmp_path) -> None:
    onnx_model = compress(trained_dir, [OnnxExport()], out_dir=tmp_path / "o", check_texts=texts)
    torch_model = load(trained_dir)
    mixed = [t for t in texts[:40]] + ["hi", "play the latest album by the beatles on spotify now"]
    diff = np.abs(onnx_model.predict_proba(mixed) - torch_model.predict_proba(mixed)).max()
    assert diff < 1e-4
    step = onnx_model.lineage["compression"][0]
    assert step["method"] == "onnx" and step["metrics"]["max_abs_logit_diff"] < 1e-3
    assert onnx_model.info.backend == "onnx"
    assert (tmp_path / "o" / "model.onnx").is_file()


def test_int8_is_smaller_and_agrees_with_float(int8_dir, trained_dir, texts) -> None:
    int8 = load(int8_dir)
    assert int8.quantization == "int8-dynamic (per-channel)"
    assert [s["method"] for s in int8.lineage["compression"]] == ["onnx", "int8-dynamic"]
    assert int8.info.bytes_on_disk < 0.35 * load(trained_dir).info.bytes_on_disk
    float_pred = load(trained_dir).predict(texts)
    agreement = np.mean([a == b for a, b in zip(int8.predict(texts), float_pred, strict=True)])
    assert agreement >= 0.97
    np.testing.assert_allclose(int8.predict_proba(texts[:5]).sum(1), 1.0, atol=1e-5)


def test_onnx_models_load_without_torch(int8_dir) -> None:
    import subprocess
    import sys

    code = (
        "import sys\nfrom smallfit.models import load\n"
        f"m = load({str(int8_dir)!r})\nprint(m.predict(['play some jazz'])[0])\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("NO-TORCH")


def test_inapplicable_steps_are_refused_before_any_work(int8_dir, trained_dir, texts, tmp_path):
    from smallfit.models.linear import LinearClassifier

    cases = [
        (int8_dir, [OrtDynamicInt8()], "already quantized"),
        (trained_dir, [OrtDynamicInt8()], "put an 'onnx' step before it"),
        (trained_dir, [OnnxExport(), OnnxExport()], r"step 2 \(onnx\).*this one is .onnx."),
    ]
    labels = ["a", "b"]
    linear = LinearClassifier.fit(
        ["play music", "book a table", "play jazz", "book dinner"],
        np.eye(2, dtype=np.float32)[[0, 1, 0, 1]],
        labels=labels,
        **linear_args(LinearStudent(char_ngrams=None)),
    ).save(tmp_path / "linear")
    cases.append((linear, [OnnxExport()], "transformer models and taggers; this one is 'linear'"))
    for source, steps, message in cases:
        out = tmp_path / "never"
        with pytest.raises(SmallfitError, match=message):
            compress(source, steps, out_dir=out, check_texts=texts)
        assert not out.exists()


def test_step_specs_parse_and_unknown_ones_are_refused() -> None:
    assert parse_step("onnx") == OnnxExport()
    assert parse_step("int8-dynamic:per_channel=false") == OrtDynamicInt8(per_channel=False)
    with pytest.raises(SmallfitError, match="known methods"):
        parse_step("prune-heads")
    with pytest.raises(SmallfitError, match="key=value"):
        parse_step("int8-dynamic:per_channel")


def test_int4_weights_are_smallest_and_agree(int8_dir, trained_dir, texts, tmp_path) -> None:
    from smallfit.compress.steps import OrtInt4Weight

    int4 = compress(
        trained_dir, [OnnxExport(), OrtInt4Weight()], out_dir=tmp_path / "i4", check_texts=texts
    )
    metrics = int4.lineage["compression"][-1]["metrics"]
    assert metrics["matmul_nbits_nodes"] == 36 and metrics["embedding_4bit"] is True
    assert int4.quantization == "int4-weight (block 128, int8 compute)"
    assert int4.info.bytes_on_disk < 0.6 * load(int8_dir).info.bytes_on_disk
    float_pred = load(trained_dir).predict(texts)
    agreement = np.mean([a == b for a, b in zip(int4.predict(texts), float_pred, strict=True)])
    assert agreement >= 0.97
    # Activations are quantized per block of a row, not per batch: batch-mates barely matter.
    one_by_one = np.concatenate([int4.predict_proba([t]) for t in texts[:40]])
    batched = int4.predict_proba(texts[:40])
    assert np.abs(one_by_one - batched).max() < 0.01
    assert (one_by_one.argmax(1) == batched.argmax(1)).all()
    with pytest.raises(SmallfitError, match="already quantized"):
        compress(int8_dir, [OrtInt4Weight()], out_dir=tmp_path / "x", check_texts=texts)


def test_onnx_graphs_give_the_embeddings_their_head_reads(int8_dir, trained_dir, texts) -> None:
    """An out-of-scope score that compares embeddings works on an exported (and quantized)
    student: the graph gives the pooled embedding beside the logits."""
    int8, torch_model = load(int8_dir), load(trained_dir)
    assert int8.signals == {"logits", "embeddings"}
    assert [s["method"] for s in int8.lineage["compression"]] == ["onnx", "int8-dynamic"]
    assert int8.lineage["compression"][0]["metrics"]["max_abs_embedding_diff"] < 1e-3
    out = int8.outputs(texts[:40], need=frozenset({"logits", "embeddings"}))
    np.testing.assert_allclose(out.probs, int8.predict_proba(texts[:40]), atol=1e-6)
    reference = torch_model.embed(texts[:40])
    cosine = (out.embeddings * reference).sum(1) / np.linalg.norm(out.embeddings, axis=1)
    assert cosine.min() > 0.95  # int8 weights, the same embedding


def test_length_groups_bound_the_padding_and_keep_every_row_once() -> None:
    from smallfit.models.onnx import PADDING_FREE, PADDING_SLACK, length_groups

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 64, size=500)
    groups = length_groups(lengths, 32)
    rows = np.concatenate(groups)
    assert sorted(rows.tolist()) == list(range(500))
    assert all(1 <= len(g) <= 32 for g in groups)
    for g in groups:
        padded, real = len(g) * lengths[g].max(), lengths[g].sum()
        assert len(g) == 1 or padded <= real * (1 + PADDING_SLACK) + PADDING_FREE
    # one length: full groups; a mixed micro-batch of 8 splits where padding would cost most
    assert [len(g) for g in length_groups(np.full(70, 12), 32)] == [32, 32, 6]
    batch = np.array([9, 40, 10, 11, 38, 12, 9, 41])
    grouped = [sorted(batch[g].tolist()) for g in length_groups(batch, 32)]
    assert grouped == [[9, 9, 10, 11, 12], [38, 40, 41]]


@pytest.mark.slow
def test_a_fused_export_runs_the_fused_kernels_and_agrees(
    snips_minilm: Path, snips_texts: list[str], tmp_path: Path
) -> None:
    import onnx

    fused = compress(
        snips_minilm,
        [OnnxExport(fuse=True), OrtDynamicInt8()],
        out_dir=tmp_path / "fused",
        check_texts=snips_texts,
    )
    export = fused.lineage["compression"][0]["metrics"]
    assert export["fused_operators"]["Attention"] == 6  # every layer's
    assert export["fused_operators"]["EmbedLayerNormalization"] == 1
    assert export["max_abs_logit_diff"] <= 1e-3 and export["max_abs_embedding_diff"] <= 1e-3
    ops = {n.op_type for n in onnx.load(str(tmp_path / "fused" / "model.onnx")).graph.node}
    assert {"QAttention", "QEmbedLayerNormalization"} <= ops  # the fused kernels, quantized
    assert export["layer_norms_as_ops"] == 12  # two a layer, as elementwise operators
    assert export["segment_ops_removed"] >= 10  # all-zero token types: two operators, not 15
    assert "LayerNormalization" not in ops
    plain = compress(
        snips_minilm, [OnnxExport(fuse=False), OrtDynamicInt8()], out_dir=tmp_path / "plain",
        check_texts=snips_texts,
    )  # fmt: skip
    agree = fused.predict_proba(snips_texts).argmax(1) == plain.predict_proba(snips_texts).argmax(1)
    assert agree.mean() >= 0.97


def test_fusing_refuses_an_encoder_it_has_no_fusions_for(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from smallfit.compress.onnx_fusion import export_fused

    mpnet = SimpleNamespace(config=SimpleNamespace(model_type="mpnet"))
    with pytest.raises(SmallfitError, match=r"BERT-family encoders .* this one is a mpnet"):
        export_fused(mpnet, None, None, tmp_path / "m.onnx", opset=18, outputs=["logits"])
    assert parse_step("onnx:fuse=true") == OnnxExport(fuse=True)


@pytest.mark.slow
def test_auto_fusion_falls_back_to_the_plain_export_where_it_does_not_apply(
    snips_minilm: Path, snips_texts: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``onnx`` fuses by default (``fuse: auto``); an encoder it has no fusions for (here: no
    model type listed) gets the plain export, with the reason in the step's metrics, while
    ``fuse=true`` refuses it."""
    import onnx

    from smallfit.compress import onnx_fusion

    monkeypatch.setattr(onnx_fusion, "FUSABLE", {})
    model = compress(
        snips_minilm, [OnnxExport()], out_dir=tmp_path / "auto", check_texts=snips_texts
    )
    export = model.lineage["compression"][0]["metrics"]
    assert export["fused"] is False and "BERT-family" in export["not_fused_because"]
    assert export["max_abs_logit_diff"] <= 1e-3
    ops = {n.op_type for n in onnx.load(str(tmp_path / "auto" / "model.onnx")).graph.node}
    assert "Attention" not in ops and "MatMul" in ops
    with pytest.raises(SmallfitError, match="BERT-family"):
        compress(
            snips_minilm, [OnnxExport(fuse=True)], out_dir=tmp_path / "on", check_texts=snips_texts
        )


@pytest.mark.slow
def test_4bit_after_an_auto_export_is_plain_and_a_fused_graph_is_refused(
    snips_minilm: Path, snips_texts: list[str], tmp_path: Path
) -> None:
    """In one chain, ``onnx`` ahead of ``int4-weight`` is not fused (its kernels take MatMul
    nodes); a fused graph saved on its own is refused by it, with the way out."""
    int4 = compress(
        snips_minilm, [OnnxExport(), OrtInt4Weight()], out_dir=tmp_path / "i4",
        check_texts=snips_texts,
    )  # fmt: skip
    assert int4.lineage["compression"][0]["fuse"] is False
    fused = tmp_path / "fused"
    compress(snips_minilm, [OnnxExport(fuse=True)], out_dir=fused, check_texts=snips_texts)
    for step in (OrtInt4Weight(), OrtStaticInt8()):
        with pytest.raises(SmallfitError, match="onnx:fuse=false"):
            compress(fused, [step], out_dir=tmp_path / step.method, check_texts=snips_texts)
