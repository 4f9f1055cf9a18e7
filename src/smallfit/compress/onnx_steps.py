"""ONNX export with the dynamo exporter, checked against PyTorch on padded batches."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from smallfit.compress.base import StepContext, copy_tokenizer, export_graph, register_step
from smallfit.compress.steps import OnnxExport
from smallfit.errors import SmallfitError
from smallfit.models.base import load_as, read_manifest
from smallfit.models.onnx import ONNX_FILE, OnnxClassifier

_EXPORTED = {"transformer": "onnx", "tagger": "tagger-onnx"}


def _onnx_can_apply(step: OnnxExport, manifest: dict[str, Any]) -> dict[str, Any]:
    if manifest["kind"] not in _EXPORTED:
        raise SmallfitError(
            f"ONNX export applies to transformer models and taggers; this one is "
            f"'{manifest['kind']}'"
        )
    return {**manifest, "kind": _EXPORTED[manifest["kind"]], "quantization": None}


GRAPH_OUTPUTS = ["logits", "embeddings"]
"""What the exported graph gives: the logits, and the pooled embedding the head reads (an
out-of-scope score may compare it with the training texts')."""


def _logits_graph(module: Any) -> Any:
    """(input_ids, attention_mask) -> (logits, pooled embedding): the graph that is exported."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            pooled = self.inner.embed(input_ids, attention_mask)
            return self.inner.head(self.inner.dropout(pooled)), pooled

    return Logits().eval()


@register_step(OnnxExport, precondition=_onnx_can_apply)
def _export(step: OnnxExport, model_dir: Path, out: Path, ctx: StepContext) -> dict[str, Any]:
    from smallfit.models.transformer import TransformerClassifier

    texts = ctx.check_texts
    if read_manifest(model_dir)["kind"] == "tagger":
        from smallfit.compress.tagger_steps import export_tagger

        return export_tagger(
            model_dir,
            out,
            texts,
            opset=step.opset,
            tolerance=step.tolerance,
            layer_norm=step.layer_norm,
        )

    model = load_as(model_dir, TransformerClassifier)
    out.mkdir(parents=True)
    copy_tokenizer(model_dir, out)
    if step.fuse:
        try:
            return _write_checked(model, step, out, texts, fuse=True)
        except SmallfitError as exc:
            if step.fuse is True:
                raise
            not_fused = {"fused": False, "not_fused_because": str(exc)}
            return {**_write_checked(model, step, out, texts, fuse=False), **not_fused}
    return _write_checked(model, step, out, texts, fuse=False)


def _write_checked(
    model: Any, step: OnnxExport, out: Path, texts: list[str], *, fuse: bool
) -> dict[str, Any]:
    """Export ``model`` into ``out`` (fused or plain), save it, and check it against PyTorch
    on padded batches; the check's figures (and the fused operators)."""
    import torch

    graph = _logits_graph(model.module)
    sample = model.tokenize(texts[:4] if len(texts) > 1 else texts * 2)
    fusion: dict[str, Any] = {}
    if fuse:
        from smallfit.compress.onnx_fusion import export_fused

        fusion = export_fused(
            model.module.encoder,
            graph,
            sample,
            out / ONNX_FILE,
            opset=step.opset,
            outputs=GRAPH_OUTPUTS,
        )
    else:
        export_graph(graph, sample, out / ONNX_FILE, opset=step.opset, outputs=GRAPH_OUTPUTS)
    if step.layer_norm == "ops":
        from smallfit.compress.onnx_layernorm import decompose_layer_norms

        fusion["layer_norms_as_ops"] = decompose_layer_norms(out / ONNX_FILE)
    exported = OnnxClassifier(
        out,
        labels=model.labels,
        name=model.name,
        max_length=model.max_length,
        temperature=model.temperature,
        parameters=model.num_parameters,
        lineage=model.lineage,
        architecture=model.architecture(),
        outputs=GRAPH_OUTPUTS,
    )
    exported.save(out)
    # Parity on padded batches (the known trap of the legacy exporter): the user's texts,
    # length-mixed so that most rows are padded.
    check = texts[:256]
    with torch.inference_mode():
        reference = model.logits(check)
    got = exported.logits(check)
    diff = float(np.abs(got - reference).max())
    embedded = exported.outputs(check, need=frozenset({"embeddings"})).embeddings
    embed_diff = float(np.abs(embedded - model.embed(check)).max())
    worst = max(diff, embed_diff)
    if not worst <= step.tolerance:
        kind = "fused " if fuse else ""
        raise SmallfitError(
            f"the {kind}ONNX export differs from PyTorch by {worst:.3g} in logits or embeddings "
            f"on padded batches (tolerance {step.tolerance:g}); the export is wrong, not saved"
        )
    agreement = float((got.argmax(1) == reference.argmax(1)).mean())
    return {
        "max_abs_logit_diff": diff,
        "max_abs_embedding_diff": embed_diff,
        "argmax_agreement": agreement,
        "check_texts": len(check),
        **fusion,
    }
