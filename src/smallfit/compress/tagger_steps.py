"""Compressing a token tagger: :func:`export_tagger` writes an ONNX tagger from a saved PyTorch
one with the dynamo exporter and checks it against PyTorch on padded batches;
:func:`quantize_tagger` writes an int8 copy (ONNX Runtime's dynamic quantization, per channel)
and reports how many tokens keep their tag."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from smallfit.compress.base import copy_tokenizer, export_graph, quiet
from smallfit.compress.onnx_layernorm import decompose_layer_norms
from smallfit.errors import SmallfitError
from smallfit.models.onnx import ONNX_FILE
from smallfit.models.tagger import TokenTagger
from smallfit.models.tagger_onnx import OnnxTagger


def _tag_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> tuple[float, float]:
    """The share of tokens with the same tag, and the largest probability difference."""
    same = sum(int((x.argmax(1) == y.argmax(1)).sum()) for x, y in zip(a, b, strict=True))
    total = sum(len(x) for x in a)
    diff = max(float(np.abs(x - y).max()) for x, y in zip(a, b, strict=True))
    return same / max(total, 1), diff


def export_tagger(
    src: Path,
    out: Path,
    check_texts: Sequence[str],
    *,
    opset: int = 18,
    tolerance: float = 1e-3,
    layer_norm: str = "ops",
) -> dict[str, Any]:
    """Export the PyTorch tagger in ``src`` to ``out`` and check it on ``check_texts`` (padded
    batches): a probability further than ``tolerance`` from PyTorch's is an error, nothing
    kept. ``layer_norm``: as :attr:`OnnxExport.layer_norm`."""
    import torch

    tagger = TokenTagger.load(src)

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tagger.module

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits

    texts = list(check_texts)[:256]
    sample = tagger.tokenizer(texts[:4] * 2, padding=True, return_tensors="pt")
    out.mkdir(parents=True, exist_ok=True)
    export_graph(Logits().eval(), sample, out / ONNX_FILE, opset=opset, outputs=["logits"])
    layer_norms = decompose_layer_norms(out / ONNX_FILE) if layer_norm == "ops" else 0
    copy_tokenizer(src, out)
    lineage = {**tagger.lineage, "exported_from": str(src)}
    exported = OnnxTagger(
        out,
        tagger.schema,
        name=tagger.name,
        max_length=tagger.max_length,
        parameters=tagger.num_parameters,
        lineage=lineage,
        tags=tagger.tags,
    )
    reference, _ = tagger.token_probs(texts)
    got, _ = exported.token_probs(texts)
    agreement, diff = _tag_agreement(reference, got)
    if not diff <= tolerance:
        shutil.rmtree(out)
        raise SmallfitError(
            f"the ONNX tagger differs from PyTorch by {diff:.3g} in a tag probability on padded "
            f"batches (tolerance {tolerance:g}); the export is wrong, not saved"
        )
    report = {
        "max_abs_prob_diff": diff,
        "tag_agreement": agreement,
        "check_texts": len(texts),
        "layer_norms_as_ops": layer_norms,
    }
    exported.lineage["export"] = report
    exported.save(out)
    return report


def quantize_tagger(
    src: Path, out: Path, check_texts: Sequence[str], *, per_channel: bool = True
) -> dict[str, Any]:
    """An int8 copy (dynamic, per-channel weights) of the ONNX tagger in ``src``, with the
    share of ``check_texts``' tokens whose tag it keeps."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = OnnxTagger.load(src)
    out.mkdir(parents=True, exist_ok=True)
    with quiet("", "onnxruntime"):
        quantize_dynamic(
            str(src / ONNX_FILE),
            str(out / ONNX_FILE),
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
        )
    copy_tokenizer(src, out)
    lineage = {**source.lineage, "quantized_from": str(src)}
    quantized = OnnxTagger(
        out,
        source.schema,
        name=source.name,
        max_length=source.max_length,
        parameters=source.parameters,
        quantization="int8-dynamic",
        lineage=lineage,
        tags=source.tags,
    )
    texts = list(check_texts)[:256]
    agreement, diff = _tag_agreement(source.token_probs(texts)[0], quantized.token_probs(texts)[0])
    report = {"tag_agreement": agreement, "max_abs_prob_diff": diff, "check_texts": len(texts)}
    quantized.lineage["quantize"] = report
    quantized.save(out)
    return report
